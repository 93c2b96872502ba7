//! Which files a command and its descendants read, write and execute, seen through fanotify,
//! and nothing of any other process on the host.
//!
//! fanotify watches mounts, not processes. So the run gets a mount namespace of its own, a
//! private copy of the host's mount table: its mounts are objects of their own (over the same
//! file systems), and marks on them report only what goes through them, which is what the
//! processes that joined the namespace do ([`FileWatch::namespace`], joined by the child before
//! exec). The copy looks exactly like the host's table, so the command sees the same files at the
//! same paths, and the paths reported are the host's.
//!
//! What these events cannot tell: anything of files that are neither regular files nor
//! directories (fanotify reports a descriptor only for those two, so device nodes such as
//! `/dev/null`, FIFOs and sockets never show; which also spares the reader opening them), the
//! creation, removal and renaming of directory entries (only the open of a created file
//! shows; dirent events need file handles, which mount marks do not report), and the mode of
//! an open (an open for writing counts as a read too; a policy has no write-only list anyway).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::fanotify::{EventFFlags, Fanotify, FanotifyEvent, InitFlags, MarkFlags, MaskFlags};
use thiserror::Error;

use crate::{mounts, paths};

/// What every mount reports. No `FAN_ACCESS`: each read follows an open, reported already, and
/// it would report every `read(2)`.
const MASK: MaskFlags = MaskFlags::FAN_OPEN
    .union(MaskFlags::FAN_OPEN_EXEC)
    .union(MaskFlags::FAN_MODIFY)
    .union(MaskFlags::FAN_CLOSE_WRITE)
    .union(MaskFlags::FAN_ONDIR);

/// What `readlink` appends to the path of an unlinked file.
const DELETED: &[u8] = b" (deleted)";

#[derive(Debug, Error)]
pub enum FileWatchError {
    #[error("fanotify_init (it needs CAP_SYS_ADMIN): {0}")]
    Init(#[source] Errno),
    #[error("unshare(CLONE_NEWNS), the run's own mount namespace: {0}")]
    Unshare(#[source] Errno),
    #[error("making the mounts of the run's namespace private: {0}")]
    MakePrivate(#[source] Errno),
    #[error("{path}: {source}")]
    Proc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// The root mount must be watched; any other may stay unwatched ([`FileWatch::unmarked`]).
    #[error("fanotify_mark of the mount at {}: {source}", mount.display())]
    Mark {
        mount: PathBuf,
        #[source]
        source: Errno,
    },
}

/// How a file was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Opened (in any mode; fanotify does not say which).
    Read,
    /// Modified, or closed after an open for writing.
    Write,
    /// Opened to be executed (a program, a script, an ELF interpreter).
    Exec,
}

impl Access {
    /// What an event's mask reports; the queued events of one file and process merge their
    /// masks. An open for execution is only `Exec`: a policy's exec list grants read too.
    fn of(mask: MaskFlags) -> impl Iterator<Item = Access> {
        let exec = mask.contains(MaskFlags::FAN_OPEN_EXEC);
        let write = mask.intersects(MaskFlags::FAN_MODIFY | MaskFlags::FAN_CLOSE_WRITE);
        let read = mask.contains(MaskFlags::FAN_OPEN) && !exec;
        [
            (read, Access::Read),
            (write, Access::Write),
            (exec, Access::Exec),
        ]
        .into_iter()
        .filter_map(|(reported, access)| reported.then_some(access))
    }
}

/// One access of a process of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAccess {
    /// Absolute, as the host sees it; an unlinked file's path without the " (deleted)" that
    /// `readlink` adds (the command needed the file there).
    pub path: PathBuf,
    pub access: Access,
    pub pid: i32,
    /// Its `/proc/PID/comm` when the event was read (empty if it has exited by then).
    pub program: String,
    /// When the event was read: fanotify gives no time of its own.
    pub at: SystemTime,
}

/// The watch of one run: a fanotify group marking every mount of a private mount namespace.
/// Dropping it closes the group (its marks go) and this process's hold on the namespace,
/// which ends with the last process in it.
#[derive(Debug)]
pub struct FileWatch {
    group: Fanotify,
    namespace: OwnedFd,
    unmarked: Vec<(PathBuf, Errno)>,
    supervisor: i32,
}

impl FileWatch {
    /// Makes the private namespace and marks its mounts. Needs `CAP_SYS_ADMIN`.
    pub fn start() -> Result<Self, FileWatchError> {
        // Unlimited queue and marks: an event lost is a file the learned policy would refuse.
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_QUEUE
                | InitFlags::FAN_UNLIMITED_MARKS,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(FileWatchError::Init)?;
        let (namespace, unmarked) = std::thread::scope(|scope| {
            scope
                .spawn(|| marked_namespace(&group))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        for (mount, errno) in &unmarked {
            tracing::debug!(mount = %mount.display(), %errno, "accesses through this mount go unseen");
        }
        Ok(Self {
            group,
            namespace,
            unmarked,
            supervisor: nix::unistd::getpid().as_raw(),
        })
    }

    /// The namespace the child joins (`setns(fd, CLONE_NEWNS)`) before exec.
    pub fn namespace(&self) -> BorrowedFd<'_> {
        self.namespace.as_fd()
    }

    /// The mounts of the namespace that fanotify refused to mark, with its reason.
    pub fn unmarked(&self) -> &[(PathBuf, Errno)] {
        &self.unmarked
    }

    /// Every access reported since the last call; does not wait for more.
    pub fn read(&mut self) -> Vec<FileAccess> {
        let mut accesses = Vec::new();
        loop {
            match self.group.read_events() {
                Ok(events) if !events.is_empty() => {
                    for event in &events {
                        self.record(event, &mut accesses);
                    }
                    // Dropping `events` closes their descriptors.
                }
                Ok(_) | Err(Errno::EAGAIN) => return accesses,
                Err(errno) => {
                    tracing::warn!(%errno, "reading file accesses failed; some may be lost");
                    return accesses;
                }
            }
        }
    }

    fn record(&self, event: &FanotifyEvent, accesses: &mut Vec<FileAccess>) {
        if event.mask().contains(MaskFlags::FAN_Q_OVERFLOW) {
            tracing::warn!("the fanotify queue overflowed: file accesses were lost");
            return;
        }
        // Whatever this process does in the namespace is not the command's.
        if event.pid() == self.supervisor {
            return;
        }
        let Some(path) = event.fd().and_then(path_of) else {
            return;
        };
        let program = fs::read_to_string(format!("{}/{}/comm", paths::PROC, event.pid()))
            .map(|comm| comm.trim_end().to_owned())
            .unwrap_or_default();
        let at = SystemTime::now();
        accesses.extend(Access::of(event.mask()).map(|access| FileAccess {
            path: path.clone(),
            access,
            pid: event.pid(),
            program: program.clone(),
            at,
        }));
    }
}

/// Runs in a thread of its own, which alone enters the namespace and ends with it:
/// `unshare(CLONE_NEWNS)` is allowed per thread (it unshares the thread's root and working
/// directory too), and the process's other threads stay in the host's namespace.
fn marked_namespace(group: &Fanotify) -> Result<(OwnedFd, Vec<(PathBuf, Errno)>), FileWatchError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(FileWatchError::Unshare)?;
    // No mount or unmount in the namespace reaches the host, and none of the host's appears in
    // the namespace unmarked.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(FileWatchError::MakePrivate)?;
    let proc_error = |path| move |source| FileWatchError::Proc { path, source };
    let namespace = fs::File::open(paths::THREAD_MOUNT_NAMESPACE)
        .map_err(proc_error(paths::THREAD_MOUNT_NAMESPACE))?
        .into();
    let table =
        fs::read_to_string(paths::THREAD_MOUNTINFO).map_err(proc_error(paths::THREAD_MOUNTINFO))?;
    let mut unmarked = Vec::new();
    for mount in mounts::parse(&table) {
        let flags = MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT;
        match group.mark(flags, MASK, AT_FDCWD, Some(&mount.mount_point)) {
            Ok(()) => {}
            Err(source) if mount.mount_point == Path::new("/") => {
                return Err(FileWatchError::Mark {
                    mount: mount.mount_point,
                    source,
                });
            }
            Err(errno) => unmarked.push((mount.mount_point, errno)),
        }
    }
    Ok((namespace, unmarked))
}

/// The path of an event's file. `readlink` of a descriptor walks up to the root of the file's
/// mount namespace, so a file of the run's namespace shows at its path there, which is the
/// host's path of it.
fn path_of(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    let link = fs::read_link(format!("{}/self/fd/{}", paths::PROC, fd.as_raw_fd())).ok()?;
    let unlinked = nix::sys::stat::fstat(fd).is_ok_and(|stat| stat.st_nlink == 0);
    match link.as_os_str().as_bytes().strip_suffix(DELETED) {
        Some(path) if unlinked => Some(PathBuf::from(std::ffi::OsStr::from_bytes(path))),
        _ => Some(link),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accesses(mask: MaskFlags) -> Vec<Access> {
        Access::of(mask).collect()
    }

    #[test]
    fn masks_become_accesses() {
        assert_eq!(accesses(MaskFlags::FAN_OPEN), [Access::Read]);
        assert_eq!(
            accesses(MaskFlags::FAN_OPEN | MaskFlags::FAN_OPEN_EXEC),
            [Access::Exec]
        );
        assert_eq!(accesses(MaskFlags::FAN_MODIFY), [Access::Write]);
        assert_eq!(
            accesses(MaskFlags::FAN_OPEN | MaskFlags::FAN_MODIFY | MaskFlags::FAN_CLOSE_WRITE),
            [Access::Read, Access::Write]
        );
        assert_eq!(
            accesses(MaskFlags::FAN_OPEN | MaskFlags::FAN_ONDIR),
            [Access::Read]
        );
    }
}
