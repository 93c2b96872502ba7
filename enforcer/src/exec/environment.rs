//! What the child's environment is made of, besides what it inherits from the caller: the
//! policy's `environment`, and its `environment_file` (secrets such as provider API keys),
//! which root reads at start so the instance never needs to be able to read it.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EnvironmentError {
    #[error("environment_file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "environment_file {}: {why}, and it holds secrets; make it root's alone: chown root {} && chmod 600 {}",
        .path.display(), .path.display(), .path.display()
    )]
    Exposed { path: PathBuf, why: String },
    #[error("environment_file {}:{line}: {why}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// The changes the child makes to the environment it inherits, in order (`None`: unset), and
/// whether it passes on systemd socket activation. Applied by the child itself, between fork
/// and exec, because `LISTEN_PID` must be the child's own PID.
#[derive(Debug, Default)]
pub struct ChildEnvironment {
    pub changes: Vec<(CString, Option<CString>)>,
    /// Set `LISTEN_PID` to the child's PID (the caller's `LISTEN_FDS` descriptors are kept).
    pub listen_pid: bool,
}

impl ChildEnvironment {
    pub fn unset(&mut self, key: &str) {
        self.changes.push((c_string(key.as_bytes()), None));
    }

    pub fn set(&mut self, key: &str, value: impl AsRef<OsStr>) {
        self.changes.push((
            c_string(key.as_bytes()),
            Some(c_string(value.as_ref().as_bytes())),
        ));
    }
}

/// A C string of `bytes`, cut at a NUL (keys are checked names; values come from the policy,
/// whose validation refuses NULs, or from the system).
fn c_string(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).expect("no NUL before the end")
}

/// systemd socket activation aimed at this process: the number of descriptors it passed (from
/// 3 on), when `LISTEN_PID` is this process and `LISTEN_FDS` is a positive number.
pub fn socket_activation() -> Option<i32> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    (pid == std::process::id() && fds > 0).then_some(fds)
}

/// Reads `path` (as root): it must be owned by root and readable by no one else.
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, EnvironmentError> {
    let read_error = |source| EnvironmentError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_error)?;
    let why = if meta.uid() != 0 {
        Some(format!("it is owned by UID {}", meta.uid()))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!(
            "group or others may read or write it (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    if let Some(why) = why {
        return Err(EnvironmentError::Exposed {
            path: path.to_path_buf(),
            why,
        });
    }
    let text = fs::read_to_string(path).map_err(read_error)?;
    parse(&text).map_err(|(line, why)| EnvironmentError::Syntax {
        path: path.to_path_buf(),
        line,
        why,
    })
}

/// `KEY=VALUE` lines, as systemd's `EnvironmentFile=` has them: blank lines and `#` comments
/// are skipped, `export ` before a key is allowed, a value in matching quotes loses them.
/// An error is (1-based line, what is wrong).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut variables = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((index + 1, "expected KEY=VALUE".into()));
        };
        let key = key.trim();
        if !isolate_policy::is_variable_name(key) {
            return Err((index + 1, format!("`{key}` is not a variable name")));
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|&q| value.strip_prefix(q)?.strip_suffix(q))
            .unwrap_or(value);
        variables.push((key.to_owned(), unquoted.to_owned()));
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_exports_and_quotes() {
        let text = "# provider keys\n\nANTHROPIC_API_KEY=sk-1\nexport OPENAI_API_KEY = \"sk 2\"\nEMPTY=\nQ='a=b'\n";
        let vars = parse(text).unwrap();
        let expected = [
            ("ANTHROPIC_API_KEY", "sk-1"),
            ("OPENAI_API_KEY", "sk 2"),
            ("EMPTY", ""),
            ("Q", "a=b"),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(vars, expected);
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        assert_eq!(parse("A=1\njust text\n").unwrap_err().0, 2);
        let (line, why) = parse("A=1\n\n9X=2\n").unwrap_err();
        assert_eq!((line, why.as_str()), (3, "`9X` is not a variable name"));
    }
}
