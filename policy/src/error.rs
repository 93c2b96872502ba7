//! Errors a user can cause, each naming the file, the place in it, the field,
//! and (where we can tell) the fix.

use std::fmt;
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

/// A byte offset in a [`Doc`] and its position: where [`Doc::pos_from`] goes on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    offset: usize,
    pos: Pos,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            offset: 0,
            pos: Pos { line: 1, col: 1 },
        }
    }
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
        self.pos_from(&mut Cursor::default(), offset)
    }

    /// As [`Doc::pos`], scanning only from `cursor` when `offset` lies after it, and moving
    /// `cursor` there. A file with an error in every item would otherwise cost a scan from the
    /// start per error: minutes for the 200,000 errors a 1 MiB file can hold.
    pub fn pos_from(&self, cursor: &mut Cursor, offset: usize) -> Pos {
        // An offset past the end (or inside a character) means the end, as it always has.
        let offset = if self.text.is_char_boundary(offset) {
            offset
        } else {
            self.text.len()
        };
        if offset < cursor.offset {
            *cursor = Cursor::default();
        }
        let between = &self.text[cursor.offset..offset];
        let pos = match between.rfind('\n') {
            Some(newline) => Pos {
                line: cursor.pos.line + between.matches('\n').count(),
                col: between[newline + 1..].chars().count() + 1,
            },
            None => Pos {
                line: cursor.pos.line,
                col: cursor.pos.col + between.chars().count(),
            },
        };
        *cursor = Cursor { offset, pos };
        pos
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_from_a_cursor_are_those_from_the_start() {
        let text = "a = 1\nbé = \"ü\"\n\n[x]\ny = [1,\n 2]";
        let doc = Doc {
            text,
            path: Path::new("t.toml"),
        };
        assert_eq!(doc.pos(0), Pos { line: 1, col: 1 });
        assert_eq!(doc.pos(text.find('ü').unwrap()), Pos { line: 2, col: 7 });
        assert_eq!(doc.pos(text.len() + 5), doc.pos(text.len()));
        // Forwards, backwards, inside a character and past the end, in one cursor's life.
        let offsets = [0, 3, 3, 9, 2, 8, text.len(), 7, 1000, 11, 12, 20];
        let mut cursor = Cursor::default();
        for offset in offsets {
            assert_eq!(
                doc.pos_from(&mut cursor, offset),
                doc.pos(offset),
                "{offset}"
            );
        }
    }
}
