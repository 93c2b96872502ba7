//! Errors a user can cause, each naming the file, the place in it, the field,
//! and (where we can tell) the fix.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a policy file.
///
/// Displays as `{path}:{line}:{col}: {field}: {message}`, followed by a line
/// `  help: {help}` when there is a suggestion. Errors that concern a whole file
/// (it cannot be read, say) have `line == 0` and `col == 0` and display as
/// `{path}: {field}: {message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{}", location(.path, *.line, *.col), .field, .message, help_line(.help.as_deref()))]
pub struct PolicyError {
    /// The policy file.
    pub path: PathBuf,
    /// 1-based line of the offending value (0: the whole file).
    pub line: usize,
    /// 1-based column, in characters, of the offending value (0: the whole file).
    pub col: usize,
    /// Dotted path of the field, e.g. `network.allow[2]` (0-based index).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

fn location(path: &Path, line: usize, col: usize) -> String {
    if line == 0 {
        format!("{}: ", path.display())
    } else {
        format!("{}:{line}:{col}: ", path.display())
    }
}

fn help_line(help: Option<&str>) -> String {
    help.map(|h| format!("\n  help: {h}")).unwrap_or_default()
}

/// Every problem found while loading one or more policy files, in file order.
///
/// Loading does not stop at the first bad value, so a user can fix a file in
/// one go. Never empty when returned as an error. Displays one error after the
/// other, each as [`PolicyError`] does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Errors(pub Vec<PolicyError>);

impl Errors {
    /// The individual errors.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl From<PolicyError> for Errors {
    fn from(error: PolicyError) -> Self {
        Errors(vec![error])
    }
}

impl From<Vec<PolicyError>> for Errors {
    fn from(errors: Vec<PolicyError>) -> Self {
        Errors(errors)
    }
}

impl IntoIterator for Errors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Errors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A 1-based line and column (in characters) in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

/// The text being parsed and where it came from: turns byte spans into
/// [`PolicyError`]s.
#[derive(Clone, Copy)]
pub(crate) struct Doc<'a> {
    pub text: &'a str,
    pub path: &'a Path,
}

impl Doc<'_> {
    /// Line and column of a byte offset.
    pub fn pos(&self, offset: usize) -> Pos {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Pos {
            line: before.matches('\n').count() + 1,
            col: before[line_start..].chars().count() + 1,
        }
    }

    /// An error at the start of `span`.
    pub fn error(
        &self,
        span: &Range<usize>,
        field: &str,
        message: String,
        help: Option<String>,
    ) -> PolicyError {
        self.error_at(self.pos(span.start), field, message, help)
    }

    /// An error at `pos`.
    pub fn error_at(
        &self,
        pos: Pos,
        field: &str,
        message: String,
        help: Option<String>,
    ) -> PolicyError {
        at(self.path, pos, field, message, help)
    }
}

/// An error in `path` at `pos`.
pub(crate) fn at(
    path: &Path,
    pos: Pos,
    field: &str,
    message: String,
    help: Option<String>,
) -> PolicyError {
    PolicyError {
        path: path.to_path_buf(),
        line: pos.line,
        col: pos.col,
        field: field.to_owned(),
        message,
        help,
    }
}
