//! The instance's user: an existing account, or a UID allocated for the run from a reserved
//! range (as systemd's `DynamicUser=` does) and released afterwards. An instance gets the same
//! dynamic UID run after run: the one that owns its kept home, else one derived from its name.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use isolate_policy::{Policy, UserSpec};
use nix::unistd::{Uid, User};
use thiserror::Error;

use crate::paths::DYNAMIC_UID_LOCKS as DYNAMIC_LOCK_DIR;

/// The kernel's overflow UID (`nobody`): files and peers of unknown owner show as it, and
/// many services run as it, so it can never be one instance's own.
const OVERFLOW_UID: u32 = 65534;

/// The range dynamic UIDs come from: one no other allocator uses. systemd allocates its
/// `DynamicUser=` UIDs from 61184–65519 and container ranges from 524288 up, and shadow's
/// subordinate UIDs (`/etc/subuid`, for rootless containers) start at 100000; 65536–99999 is
/// none of theirs.
pub const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 90_000..=99_999;

#[derive(Debug, Error)]
pub enum UserError {
    #[error(
        "{file}: user: no user named `{name}` exists; create it (e.g. `useradd --system {name}`) or set user = \"dynamic\""
    )]
    Unknown { file: PathBuf, name: String },
    #[error("{file}: user: `{name}` is root (UID 0); an instance needs a user of its own")]
    Root { file: PathBuf, name: String },
    #[error(
        "{file}: user: `{name}` has UID {OVERFLOW_UID}, the overflow user that unrelated services \
         share; give the instance a user of its own (e.g. `useradd --system isolate-NAME`) or set \
         user = \"dynamic\""
    )]
    Shared { file: PathBuf, name: String },
    #[error(
        "{file}: user: the home of `{name}`, {}, does not exist, and the instance's programs keep \
         their state there; create it (`mkdir -m 0700 {} && chown {name}: {}`) or give the user \
         one that exists (`usermod -d DIR {name}`)", .home.display(), .home.display(), .home.display()
    )]
    NoHome {
        file: PathBuf,
        name: String,
        home: PathBuf,
    },
    #[error("cannot look up user `{name}`: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("every UID in {}..={} is taken; cannot allocate a dynamic user", DYNAMIC_UIDS.start(), DYNAMIC_UIDS.end())]
    Exhausted,
    #[error("dynamic user {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// The user a child runs as.
#[derive(Debug)]
pub struct InstanceUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    dynamic: bool,
    /// For a dynamic user: the lock file that reserves the UID (removed on drop).
    lease: Option<PathBuf>,
}

impl InstanceUser {
    /// Resolves the policy's user; a dynamic one is allocated now and held until dropped.
    pub fn resolve(policy: &Policy) -> Result<Self, UserError> {
        match &policy.user {
            UserSpec::Named(name) => Self::named(policy, name),
            UserSpec::Dynamic => Self::dynamic(&policy.name, true),
        }
    }

    /// For a run: the user, whose home must exist (a named user's is not made here; programs
    /// such as opencode fail obscurely without one).
    pub fn resolve_for_run(policy: &Policy, dry_run: bool) -> Result<Self, UserError> {
        let user = if dry_run {
            Self::preview(policy)?
        } else {
            Self::resolve(policy)?
        };
        if !user.dynamic && !user.home.is_dir() {
            return Err(UserError::NoHome {
                file: policy.source.clone(),
                name: user.name.clone(),
                home: user.home.clone(),
            });
        }
        Ok(user)
    }

    /// As `resolve`, but changes nothing: a dynamic user is the UID that would be allocated
    /// now, without reserving it or preparing its home (for `--dry-run`).
    pub fn preview(policy: &Policy) -> Result<Self, UserError> {
        match &policy.user {
            UserSpec::Named(name) => Self::named(policy, name),
            UserSpec::Dynamic => Self::dynamic(&policy.name, false),
        }
    }

    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    fn named(policy: &Policy, name: &str) -> Result<Self, UserError> {
        let user = User::from_name(name)
            .map_err(|source| UserError::Lookup {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| UserError::Unknown {
                file: policy.source.clone(),
                name: name.to_owned(),
            })?;
        if user.uid.is_root() {
            return Err(UserError::Root {
                file: policy.source.clone(),
                name: name.to_owned(),
            });
        }
        if user.uid.as_raw() == OVERFLOW_UID {
            return Err(UserError::Shared {
                file: policy.source.clone(),
                name: name.to_owned(),
            });
        }
        Ok(Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            dynamic: false,
            lease: None,
        })
    }

    fn dynamic(instance: &str, reserve: bool) -> Result<Self, UserError> {
        let io_error = |what: String| move |source| UserError::Io { what, source };
        if reserve {
            fs::create_dir_all(DYNAMIC_LOCK_DIR).map_err(io_error(DYNAMIC_LOCK_DIR.into()))?;
        }
        let home = crate::paths::instance_state(instance);
        let homes = kept_homes();
        let home_owner = homes
            .iter()
            .find(|(_, owner)| owner.as_str() == instance)
            .map(|(uid, _)| *uid);
        for uid in dynamic_uid_candidates(instance, home_owner) {
            // Another instance's kept home belongs to this UID: whoever got it could read it.
            let others = homes.get(&uid).is_some_and(|owner| owner != instance);
            if others || User::from_uid(Uid::from_raw(uid)).ok().flatten().is_some() {
                continue;
            }
            let lease = Path::new(DYNAMIC_LOCK_DIR).join(uid.to_string());
            // A lease names its instance: one left by an earlier run of this instance (killed
            // before it could remove it; the caller has made sure none runs now) is its own.
            let ours = fs::read_to_string(&lease).is_ok_and(|holder| holder == instance);
            if reserve && !ours {
                match fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lease)
                {
                    Ok(mut file) => {
                        io::Write::write_all(&mut file, instance.as_bytes())
                            .map_err(io_error(lease.display().to_string()))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_error(lease.display().to_string())(e)),
                }
            } else if !reserve && !ours && lease.exists() {
                continue;
            }
            let user = Self {
                name: format!("isolate-{instance}"),
                uid,
                gid: uid,
                home,
                dynamic: true,
                lease: reserve.then_some(lease),
            };
            if reserve {
                user.prepare_home()?;
            }
            return Ok(user);
        }
        Err(UserError::Exhausted)
    }

    /// A dynamic user's home persists across runs (like a systemd `StateDirectory=`); it is handed,
    /// contents and all, to whichever UID this run got.
    fn prepare_home(&self) -> Result<(), UserError> {
        let io_error = |source| UserError::Io {
            what: self.home.display().to_string(),
            source,
        };
        fs::create_dir_all(&self.home).map_err(io_error)?;
        let owner =
            std::os::unix::fs::MetadataExt::uid(&fs::metadata(&self.home).map_err(io_error)?);
        if owner != self.uid {
            chown_tree(&self.home, self.uid, self.gid).map_err(io_error)?;
        }
        // The instance's state is its own: no other user lists or reads it.
        fs::set_permissions(
            &self.home,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(io_error)?;
        Ok(())
    }
}

/// The dynamic UIDs that own an instance's kept home, and that instance's name.
fn kept_homes() -> std::collections::BTreeMap<u32, String> {
    let Ok(entries) = fs::read_dir(crate::paths::STATE_DIR) else {
        return std::collections::BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let uid = std::os::unix::fs::MetadataExt::uid(&entry.metadata().ok()?);
            let name = entry.file_name().into_string().ok()?;
            DYNAMIC_UIDS.contains(&uid).then_some((uid, name))
        })
        .collect()
}

/// The dynamic UIDs to try for `instance`, best first: the one that owns its kept home (the
/// UID of its last run), then every UID of the range, starting at a slot derived from the name
/// so that an instance finds its own UID free again unless another took it meanwhile.
fn dynamic_uid_candidates(instance: &str, home_owner: Option<u32>) -> impl Iterator<Item = u32> {
    let (first, count) = (
        *DYNAMIC_UIDS.start(),
        DYNAMIC_UIDS.end() - DYNAMIC_UIDS.start() + 1,
    );
    // FNV-1a: small, and stable across builds (the slot must not move with the toolchain).
    let hash = instance
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let slot = u32::try_from(hash % u64::from(count)).expect("below count");
    let preferred = home_owner.filter(|uid| DYNAMIC_UIDS.contains(uid));
    let walk = (0..count).map(move |i| first + (slot + i) % count);
    preferred
        .into_iter()
        .chain(walk.filter(move |uid| Some(*uid) != preferred))
}

/// `chown -hR uid:gid path`, by descriptor: each directory is opened without following a link
/// and its entries are changed relative to it, so a link the instance planted in its home
/// (even swapped in while this runs) is changed itself, never what it points at.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    chown_dir(&dir, uid, gid)
}

fn chown_dir(dir: &fs::File, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::fchown(dir, Some(uid), Some(gid))?;
    // The open directory's entries, listed through its descriptor rather than its path.
    let listing = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string());
    for entry in fs::read_dir(listing)? {
        let entry = entry?;
        let name =
            std::ffi::CString::new(entry.file_name().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated name relative to an open directory.
        let child = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if child >= 0 {
            // SAFETY: openat returned a descriptor this function now owns.
            let child = unsafe { fs::File::from_raw_fd(child) };
            chown_dir(&child, uid, gid)?;
            continue;
        }
        // Not a directory (a file, or a link, changed itself): by name, without following.
        // SAFETY: as above.
        let changed = unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if changed != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Drop for InstanceUser {
    fn drop(&mut self) {
        if let Some(lease) = &self.lease {
            let _ = fs::remove_file(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_keeps_its_dynamic_uid_and_none_comes_from_systemds_ranges() {
        let first: Vec<u32> = dynamic_uid_candidates("my-project", None).take(3).collect();
        let again: Vec<u32> = dynamic_uid_candidates("my-project", None).take(3).collect();
        assert_eq!(first, again, "the same name starts at the same UID");
        assert_ne!(
            dynamic_uid_candidates("other-project", None).next(),
            first.first().copied(),
            "another name starts elsewhere"
        );
        let all: std::collections::BTreeSet<u32> =
            dynamic_uid_candidates("my-project", Some(95_000)).collect();
        assert_eq!(all.len(), DYNAMIC_UIDS.count(), "every UID once");
        assert!(all.iter().all(|uid| DYNAMIC_UIDS.contains(uid)));
        assert!(
            all.iter()
                .all(|uid| !(61_184..=65_519).contains(uid) && !(100_000..).contains(uid)),
            "neither systemd's DynamicUser= range nor /etc/subuid's"
        );
        assert_eq!(
            dynamic_uid_candidates("my-project", Some(95_000)).next(),
            Some(95_000),
            "the UID that owns the kept home comes first"
        );
        assert_eq!(
            dynamic_uid_candidates("my-project", Some(1000)).next(),
            first.first().copied(),
            "a home owner outside the range is not a dynamic UID"
        );
    }
}
