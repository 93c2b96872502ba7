//! The instance's user: an existing account, or a UID allocated for the run from a reserved
//! range (as systemd's `DynamicUser=` does) and released afterwards.

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

/// The range dynamic UIDs come from (systemd's `DynamicUser=` range).
pub const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

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
        for uid in DYNAMIC_UIDS {
            if User::from_uid(Uid::from_raw(uid)).ok().flatten().is_some() {
                continue;
            }
            let lease = Path::new(DYNAMIC_LOCK_DIR).join(uid.to_string());
            if reserve {
                match fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lease)
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_error(lease.display().to_string())(e)),
                }
            } else if lease.exists() {
                continue;
            }
            let user = Self {
                name: format!("isolate-{instance}"),
                uid,
                gid: uid,
                home: crate::paths::instance_state(instance),
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
