//! Placeholder until the fanotify watcher lands (types only).
use std::path::PathBuf;

/// How a file was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    Write,
    Exec,
}

/// One access seen.
#[derive(Debug, Clone)]
pub struct FileAccess {
    pub path: PathBuf,
    pub access: Access,
    pub pid: i32,
    pub program: String,
    pub at: std::time::SystemTime,
}
