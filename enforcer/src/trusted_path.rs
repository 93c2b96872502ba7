//! Resolving a policy path the way root may: following only links the instance could not
//! have planted. A rule such as `read_write = ["~/data"]` is opened by root before the instance
//! runs; had the instance replaced `~/data` with a link to another directory, root would grant
//! the instance that directory instead. So every symbolic link on the way must be root's and
//! sit in a directory the instance cannot write (or a sticky one, where it cannot replace
//! root's link). System links such as `/lib -> usr/lib` pass; links in the instance's home do
//! not.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Links followed before giving up, as the kernel does (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Who the instance is, to judge what it can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    pub uid: u32,
    pub gid: u32,
}

impl Writer {
    /// The user with UID `uid`, with its primary group (its UID as group when it has no
    /// account, as a dynamic user has none).
    pub fn of_uid(uid: u32) -> Self {
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |user| user.gid.as_raw());
        Self { uid, gid }
    }
}

#[derive(Debug, Error)]
pub enum UntrustedPath {
    #[error(
        "{}: goes through the link {}, which the instance could have planted ({why}); list the \
         place it points at instead, or make the link root's in a directory only root may write",
        .path.display(), .link.display()
    )]
    PlantableLink {
        path: PathBuf,
        link: PathBuf,
        why: String,
    },
    #[error("{}: more than {MAX_LINKS} links", .path.display())]
    TooManyLinks { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `path` (absolute) with every link on it resolved, or why one may not be followed. A part
/// that does not exist ends the walk: the rest is appended as written (the caller decides what
/// a missing path means).
pub fn resolve(path: &Path, writer: Writer) -> Result<PathBuf, UntrustedPath> {
    let mut pending: VecDeque<OsString> = components(path);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(pending.into_iter().fold(candidate, |p, part| p.join(part)));
            }
            Err(source) => {
                return Err(UntrustedPath::Io {
                    path: candidate,
                    source,
                });
            }
        };
        if !meta.file_type().is_symlink() {
            resolved = candidate;
            continue;
        }
        if let Some(why) = plantable(&resolved, &meta, writer) {
            return Err(UntrustedPath::PlantableLink {
                path: path.to_path_buf(),
                link: candidate,
                why,
            });
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(UntrustedPath::TooManyLinks {
                path: path.to_path_buf(),
            });
        }
        let target = fs::read_link(&candidate).map_err(|source| UntrustedPath::Io {
            path: candidate.clone(),
            source,
        })?;
        if target.is_absolute() {
            resolved = PathBuf::from("/");
        }
        for part in components(&target).into_iter().rev() {
            pending.push_front(part);
        }
    }
    Ok(resolved)
}

/// The parts of `path` that name something: `.` and the root dropped, `..` kept.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Why the instance could have put the link `link` (in directory `dir`) there, if it could.
fn plantable(dir: &Path, link: &fs::Metadata, writer: Writer) -> Option<String> {
    if link.uid() != 0 {
        return Some(format!("it belongs to UID {}, not root", link.uid()));
    }
    let dir_meta = fs::metadata(dir).ok()?;
    let mode = dir_meta.mode();
    let sticky = mode & 0o1000 != 0;
    let writable = dir_meta.uid() == writer.uid
        || (mode & 0o020 != 0 && dir_meta.gid() == writer.gid)
        || mode & 0o002 != 0;
    // In a sticky directory only the link's owner (root) may replace it.
    (writable && (dir_meta.uid() == writer.uid || !sticky)).then(|| {
        format!(
            "its directory {} is writable by the instance (owner {}, mode {:o})",
            dir.display(),
            dir_meta.uid(),
            mode & 0o7777
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const INSTANCE: Writer = Writer {
        uid: 4_000_123,
        gid: 4_000_123,
    };

    /// Needs root to give files away; skipped otherwise.
    fn as_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn system_links_are_followed_and_missing_parts_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        symlink("real", dir.path().join("link")).unwrap();
        let resolved = resolve(&dir.path().join("link/./missing/x"), INSTANCE);
        if !as_root() {
            // The test's own links are not root's: refused as they should be.
            assert!(resolved.is_err());
            return;
        }
        let real = fs::canonicalize(&real).unwrap();
        assert_eq!(resolved.unwrap(), real.join("missing/x"));
        assert_eq!(
            resolve(&dir.path().join("link/../real"), INSTANCE).unwrap(),
            real
        );
    }

    #[test]
    fn a_link_the_instance_owns_or_could_replace_is_refused() {
        if !as_root() {
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        // The instance's home: its own, so any link in it could be its doing.
        std::os::unix::fs::chown(home.path(), Some(INSTANCE.uid), Some(INSTANCE.gid)).unwrap();
        let planted = home.path().join("data");
        symlink(target.path(), &planted).unwrap();
        let error = resolve(&planted.join("file"), INSTANCE).unwrap_err();
        assert!(
            error.to_string().contains("writable by the instance"),
            "{error}"
        );
        // Its own link, anywhere.
        let elsewhere = tempfile::tempdir().unwrap();
        let own = elsewhere.path().join("own");
        symlink(target.path(), &own).unwrap();
        std::os::unix::fs::lchown(&own, Some(INSTANCE.uid), None).unwrap();
        let error = resolve(&own, INSTANCE).unwrap_err();
        assert!(error.to_string().contains("not root"), "{error}");
        // Root's link in a sticky, world-writable directory (as /tmp): it cannot replace it.
        fs::set_permissions(
            elsewhere.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        let roots = elsewhere.path().join("roots");
        symlink(target.path(), &roots).unwrap();
        assert_eq!(
            resolve(&roots, INSTANCE).unwrap(),
            fs::canonicalize(target.path()).unwrap()
        );
    }
}
