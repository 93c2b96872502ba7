//! Reading policy files and directories, and the checks that span files:
//! instance names and named users must be unique.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Errors, PolicyError, Pos, at};
use crate::model::{Policy, UserSpec};
use crate::validate::{self, Parsed};

/// Read and validate one policy file. Its `name` may differ from the file
/// name (an explicitly named file is not part of a directory of instances).
pub fn load_file(path: &Path) -> Result<Policy, Errors> {
    let mut loader = Loader::default();
    loader.file(path, false);
    loader.finish().map(|mut policies| policies.remove(0))
}

/// Read and validate every `*.toml` file of `dir` (sorted by name; other
/// files, and names starting with `.`, are ignored). Each file's `name`, if
/// set, must equal its file stem; names and named users must be unique.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, Errors> {
    let loaded = load_dir_partly(dir)?;
    if loaded.failed.is_empty() {
        Ok(loaded.policies)
    } else {
        Err(Errors(
            loaded.failed.into_values().flat_map(|e| e.0).collect(),
        ))
    }
}

/// A directory of policies where some files may be broken: the valid policies,
/// and the errors of each file that is not.
#[derive(Debug, Clone, Default)]
pub struct DirLoad {
    /// Policies of the files without errors, in file-name order.
    pub policies: Vec<Policy>,
    /// Each file with errors (it cannot be read, it is invalid, or it repeats
    /// an earlier file's name or user). Its instance is the file stem.
    pub failed: BTreeMap<PathBuf, Errors>,
}

/// [`load_dir`] for a daemon that must go on with the good files when one is
/// broken: the same files, the same rules, but each broken file is set aside
/// on its own. A repeated name or user fails the later file only. `Err` means
/// the directory itself cannot be listed: then nothing in it is known.
pub fn load_dir_partly(dir: &Path) -> Result<DirLoad, Errors> {
    if let Some(error) = untrusted(dir) {
        return Err(Errors(vec![error]));
    }
    let files = policy_files(dir)
        .map_err(|e| Errors(vec![io_error(dir, "cannot list the directory", &e)]))?;
    let mut loader = Loader::default();
    for file in files {
        loader.file(&file, true);
    }
    loader.check_unique();
    let mut failed: BTreeMap<PathBuf, Errors> = BTreeMap::new();
    for error in loader.errors {
        failed.entry(error.path.clone()).or_default().0.push(error);
    }
    let policies = loader
        .parsed
        .into_iter()
        .map(|p| p.policy)
        .filter(|p| !failed.contains_key(&p.source))
        .collect();
    Ok(DirLoad { policies, failed })
}

/// Like [`load_dir`] for each directory in `paths`, and [`load_file`] for
/// each file, with the uniqueness checks across all of them.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Policy>, Errors> {
    let mut loader = Loader::default();
    for path in paths {
        if path.is_dir() {
            loader.dir(path);
        } else {
            loader.file(path, false);
        }
    }
    loader.finish()
}

#[derive(Default)]
struct Loader {
    parsed: Vec<Parsed>,
    errors: Vec<PolicyError>,
}

impl Loader {
    fn dir(&mut self, dir: &Path) {
        if let Some(error) = untrusted(dir) {
            self.errors.push(error);
            return;
        }
        match policy_files(dir) {
            Ok(files) => {
                for file in files {
                    self.file(&file, true);
                }
            }
            Err(e) => self
                .errors
                .push(io_error(dir, "cannot list the directory", &e)),
        }
    }

    fn file(&mut self, path: &Path, stem_must_match: bool) {
        // The directory too: whoever may write it may swap the file for another.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(error) = untrusted(path).or_else(|| dir.and_then(untrusted)) {
            self.errors.push(error);
            return;
        }
        match fs::read_to_string(path) {
            Ok(text) => match validate::parse(&text, path, stem_must_match) {
                Ok(parsed) => self.parsed.push(parsed),
                Err(errors) => self.errors.extend(errors),
            },
            Err(e) => self.errors.push(io_error(path, "cannot read the file", &e)),
        }
    }

    fn finish(mut self) -> Result<Vec<Policy>, Errors> {
        self.check_unique();
        if self.errors.is_empty() {
            Ok(self.parsed.into_iter().map(|p| p.policy).collect())
        } else {
            Err(Errors(self.errors))
        }
    }

    /// Two instances with one name would share nftables tables and pins; two
    /// with one user would share every UID-keyed rule. The error goes to the
    /// later file and names the earlier one. Dynamic users never conflict.
    fn check_unique(&mut self) {
        let mut names: HashMap<&str, &Parsed> = HashMap::new();
        let mut users: HashMap<&str, &Parsed> = HashMap::new();
        for parsed in &self.parsed {
            let policy = &parsed.policy;
            if let Some(first) = names.insert(&policy.name, parsed) {
                let message = format!(
                    "instance name `{}` is also used by {}",
                    policy.name,
                    first.policy.source.display()
                );
                let help = "give each instance its own name (and file name)".to_owned();
                self.errors
                    .push(error(parsed, parsed.name_at, "name", message, help));
                names.insert(&policy.name, first);
            }
            if let UserSpec::Named(user) = &policy.user
                && let Some(first) = users.insert(user, parsed)
            {
                let message = format!(
                    "user `{user}` is also used by instance `{}` ({})",
                    first.policy.name,
                    first.policy.source.display()
                );
                let help = "give each instance its own user, or use user = \"dynamic\"".to_owned();
                self.errors
                    .push(error(parsed, parsed.user_at, "user", message, help));
                users.insert(user, first);
            }
        }
    }
}

fn error(parsed: &Parsed, pos: Pos, field: &str, message: String, help: String) -> PolicyError {
    at(&parsed.policy.source, pos, field, message, Some(help))
}

/// The `*.toml` files of `dir`, sorted.
fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_policy = path.extension().is_some_and(|ext| ext == "toml") && !name.starts_with('.');
        if is_policy && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Why a policy file or directory cannot be trusted, if it cannot (as sshd's `StrictModes`):
/// whoever may change a policy decides what its instance may reach, so only root, or the user
/// reading it (`isolate check` as oneself), may own it, and no one else may write it.
fn untrusted(path: &Path) -> Option<PolicyError> {
    use std::os::unix::fs::MetadataExt as _;
    // A missing file is reported by the read that follows, with its own words.
    let meta = fs::metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let reader = unsafe { libc::geteuid() };
    let shown = path.display();
    let (message, help) = if meta.uid() != 0 && meta.uid() != reader {
        (
            format!(
                "is owned by UID {}, who could change what the instance may do",
                meta.uid()
            ),
            format!("make root its owner: chown root {shown}"),
        )
    } else if meta.mode() & 0o022 != 0 && !(meta.is_dir() && meta.mode() & 0o1000 != 0) {
        // A sticky directory (/tmp) lets no one replace another's files.
        (
            format!(
                "is writable by group or others (mode {:o}), who could change what the instance may do",
                meta.mode() & 0o7777
            ),
            format!("chmod go-w {shown}"),
        )
    } else {
        return None;
    };
    Some(at(
        path,
        Pos { line: 0, col: 0 },
        "file",
        message,
        Some(help),
    ))
}

fn io_error(path: &Path, what: &str, error: &std::io::Error) -> PolicyError {
    at(
        path,
        Pos { line: 0, col: 0 },
        "file",
        format!("{what}: {error}"),
        None,
    )
}
