//! What the policy tests share.

use std::path::Path;

use isolate_policy::PolicyError;

/// Assert the error's file, position and field, and that `needle` is in the displayed error
/// (message or help).
#[track_caller]
pub fn assert_error(
    error: &PolicyError,
    path: &Path,
    line: usize,
    col: usize,
    field: &str,
    needle: &str,
) {
    assert_eq!(error.path, path, "{error}");
    assert_eq!(
        (error.line, error.col, error.field.as_str()),
        (line, col, field),
        "{error}"
    );
    assert!(
        error.to_string().contains(needle),
        "`{needle}` not in:\n{error}"
    );
}
