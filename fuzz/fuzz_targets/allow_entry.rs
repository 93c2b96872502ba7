//! Any string through `isolate_policy::parse_allow_entry`: no panic; an entry prints as a
//! string that parses to the same entry.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entry) = isolate_policy::parse_allow_entry(text) else {
        return;
    };
    let printed = entry.to_string();
    assert_eq!(
        isolate_policy::parse_allow_entry(&printed).as_ref(),
        Ok(&entry),
        "`{text}` printed as `{printed}`"
    );
});
