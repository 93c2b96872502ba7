//! The VM suite's cache under `~/.cache/isolate/vm`: content keys and atomic builds.
//!
//! Every cached artifact is built next to its final place (`<name>.partial`) and renamed into
//! place only when complete, so an interrupted build is never mistaken for a finished one.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::util;

/// The root of everything the VM suite downloads or builds.
pub fn root() -> PathBuf {
    util::cache_dir().join("vm")
}

/// A small, stable content hash (FNV-1a, 64 bits) for cache keys. Not cryptographic: it only
/// has to change when an input changes.
pub struct Key(u64);

impl Key {
    pub fn new(purpose: &str) -> Self {
        let mut key = Key(0xcbf2_9ce4_8422_2325);
        key.add(purpose.as_bytes());
        key
    }

    /// Mixes in one input; inputs are length-delimited so `["ab", "c"]` differs from `["a", "bc"]`.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn add_str(&mut self, text: &str) -> &mut Self {
        self.add(text.as_bytes())
    }

    /// Mixes in a file's contents (or a directory's files, sorted by path).
    pub fn add_path(&mut self, path: &Path) -> anyhow::Result<&mut Self> {
        if path.is_dir() {
            let mut entries = fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()?;
            entries.sort();
            for entry in entries {
                self.add_str(&entry.file_name().unwrap_or_default().to_string_lossy());
                self.add_path(&entry)?;
            }
        } else {
            let bytes =
                fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            self.add(&bytes);
        }
        Ok(self)
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Builds `dest` (a file or a directory) through `build`, which receives a scratch path to
/// fill; the result is renamed to `dest` only when `build` succeeds. Does nothing when `dest`
/// already exists.
pub fn build_once(
    dest: &Path,
    build: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if dest.exists() {
        return Ok(());
    }
    let parent = dest.parent().context("cache path without parent")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let partial = partial_path(dest);
    remove(&partial)?;
    build(&partial).with_context(|| format!("cannot build {}", dest.display()))?;
    fs::rename(&partial, dest)
        .with_context(|| format!("cannot move {} into place", partial.display()))?;
    Ok(())
}

/// Removes the siblings of `keep` whose names start with `prefix` (older versions of a
/// content-keyed artifact), so the cache does not grow with every change.
pub fn prune_siblings(keep: &Path, prefix: &str) -> anyhow::Result<()> {
    let Some(dir) = keep.parent() else {
        return Ok(());
    };
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path != keep && name.starts_with(prefix) {
            eprintln!("vmtest: removing stale cache entry {}", path.display());
            remove(&path)?;
        }
    }
    Ok(())
}

/// Removes a file or a directory tree; a missing path is fine.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    result.with_context(|| format!("cannot remove {}", path.display()))
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_length_delimited() {
        let mut a = Key::new("t");
        a.add_str("ab").add_str("c");
        let mut b = Key::new("t");
        b.add_str("a").add_str("bc");
        assert_ne!(a.hex(), b.hex());
        let mut c = Key::new("t");
        c.add_str("ab").add_str("c");
        assert_eq!(a.hex(), c.hex());
        // Cache names must not change between builds of xtask.
        assert_eq!(Key::new("").hex(), "a8c7f832281a39c5");
    }
}
