//! Where the eBPF layer keeps its kernel objects in bpffs, so enforcement outlives the process
//! that applied it and a later process can find and adopt it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::paths::BPFFS;

/// Mounts bpffs at `/sys/fs/bpf` when nothing of type bpf is mounted there.
pub fn ensure_bpffs() -> io::Result<()> {
    crate::mounts::ensure_mounted("bpf", BPFFS)
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
