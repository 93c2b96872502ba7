//! Where the eBPF layer keeps its kernel objects in bpffs, so enforcement outlives the process
//! that applied it and a later process can find and adopt it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::paths::BPFFS;

/// Mounts bpffs at `/sys/fs/bpf` when nothing of type bpf is mounted there: for root alone
/// (as systemd mounts it), since whoever can write there can plant the directories isolate
/// pins into, or delete pins and so detach programs.
pub fn ensure_bpffs() -> io::Result<()> {
    crate::mounts::ensure_mounted("bpf", BPFFS, Some("mode=0700"))
}

/// The pins of one attachment: `<dir>/maps/<MAP>` and `<dir>/links/<program>`.
#[derive(Debug, Clone)]
pub struct PinDir {
    dir: PathBuf,
}

impl PinDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.dir.join("links").join(program)
    }

    /// Whether an attachment is pinned here (its maps are the last thing to be removed).
    pub fn exists(&self) -> bool {
        self.dir.join("maps").is_dir()
    }

    /// Why the pin directory cannot be trusted, if it cannot: each directory from just below
    /// bpffs's root down to it that exists must be a directory of root's that no one else
    /// may write (a planted one would let its owner replace or delete pins).
    pub fn untrusted(&self) -> Option<(PathBuf, String)> {
        use std::os::unix::fs::MetadataExt as _;
        let root = Path::new(BPFFS);
        for dir in self
            .dir
            .ancestors()
            .take_while(|d| *d != root && *d != Path::new("/"))
        {
            let meta = match fs::symlink_metadata(dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Some((dir.to_path_buf(), e.to_string())),
            };
            let why = if !meta.is_dir() {
                "is not a directory".to_owned()
            } else if meta.uid() != 0 {
                format!("is owned by UID {}, not root", meta.uid())
            } else if meta.mode() & 0o022 != 0 {
                format!(
                    "is writable by group or others (mode {:o})",
                    meta.mode() & 0o7777
                )
            } else {
                continue;
            };
            return Some((dir.to_path_buf(), why));
        }
        None
    }

    pub fn create(&self) -> io::Result<()> {
        fs::create_dir_all(self.dir.join("maps"))?;
        fs::create_dir_all(self.dir.join("links"))
    }

    /// Removes every pin and the directories. Unpinning a link detaches its program once no
    /// process holds it open any more.
    pub fn remove(&self) -> io::Result<()> {
        for sub in ["links", "maps"] {
            match fs::read_dir(self.dir.join(sub)) {
                Ok(entries) => {
                    for entry in entries {
                        fs::remove_file(entry?.path())?;
                    }
                    fs::remove_dir(self.dir.join(sub))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
