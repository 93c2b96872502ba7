//! Any text through `isolate_policy::parse_str`: no panic, no hang; what parses prints back
//! (`to_toml`, `to_toml_with_origins`) to the same policy.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/isolate/instances/fuzz.toml");
    let policy = match isolate_policy::parse_str(text, path) {
        Ok(policy) => policy,
        Err(errors) => {
            assert!(!errors.is_empty(), "an error without errors");
            // Displaying must not panic either (positions, help lines).
            let _ = errors.to_string();
            return;
        }
    };
    for printed in [policy.to_toml(), policy.to_toml_with_origins()] {
        let again = isolate_policy::parse_str(&printed, path)
            .unwrap_or_else(|e| panic!("the printed policy does not parse: {e}\n{printed}"));
        assert_eq!(again, policy, "printed as:\n{printed}");
    }
});
