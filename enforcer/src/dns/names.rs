//! Which of a policy's host rules a queried name matches.

use isolate_policy::HostRule;

/// Whether `name` (lower case, no trailing dot) matches `pattern`: the name itself, or for
/// `*.suffix` any name strictly below the suffix (`a.suffix`, `a.b.suffix`; not `suffix`).
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => pattern == name,
    }
}

/// The indices of the host rules `name` matches, in policy order.
pub fn matching_rules(hosts: &[HostRule], name: &str) -> Vec<usize> {
    hosts
        .iter()
        .enumerate()
        .filter(|(_, host)| matches(&host.pattern, name))
        .map(|(index, _)| index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_themselves_only() {
        assert!(matches("api.example.com", "api.example.com"));
        assert!(!matches("api.example.com", "x.api.example.com"));
        assert!(!matches("api.example.com", "example.com"));
        assert!(!matches("api.example.com", "api.example.com.evil"));
    }

    #[test]
    fn a_wildcard_matches_names_strictly_below_its_suffix() {
        let pattern = "*.githubusercontent.com";
        assert!(matches(pattern, "raw.githubusercontent.com"));
        assert!(matches(pattern, "a.b.githubusercontent.com"));
        assert!(!matches(pattern, "githubusercontent.com"));
        assert!(!matches(pattern, "evilgithubusercontent.com"));
        assert!(!matches(pattern, ".githubusercontent.com"));
        assert!(!matches(pattern, "githubusercontent.com.evil"));
    }
}
