//! The one way isolate writes a digest: SHA-256 as `sha256:<hex>`, stable across builds and
//! toolchains (it is saved in state files and compared across versions).

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

/// SHA-256 over `parts`, one after the other, as `sha256:<hex>`.
pub fn sha256<I, P>(parts: I) -> String
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .fold(String::from("sha256:"), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_sha256_of_the_concatenation() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            super::sha256(["a", "bc"]),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
