//! What the child does between fork and exec to become the confined instance: leave the
//! caller's session, join the instance cgroup, lose every privilege, restrict itself with
//! Landlock, and let no descriptor of the caller's through but those passed on purpose.
//!
//! Runs in the forked child of a single-threaded supervisor, so the small allocations the
//! `caps` crate makes are safe here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use caps::CapSet;

use crate::landlock::PreparedRuleset;

/// Everything the child needs, prepared by the parent before the fork.
pub struct ChildSetup {
    /// `cgroup.procs` of the instance cgroup, opened for writing.
    pub cgroup_procs: OwnedFd,
    pub uid: u32,
    pub gid: u32,
    /// The directory to start in.
    pub workdir: CString,
    /// A mount namespace to join (learn mode's, whose mounts are watched).
    pub mount_namespace: Option<OwnedFd>,
    pub landlock: Option<PreparedRuleset>,
    pub supervisor_pid: libc::pid_t,
    /// Descriptors above 2 that the child keeps (sorted); every other one closes at exec.
    pub keep_fds: Vec<RawFd>,
    /// The seccomp filter of socket families, installed last.
    pub seccomp: Option<seccompiler::BpfProgram>,
    /// What the child changes in the environment it inherits.
    pub environment: super::environment::ChildEnvironment,
}

impl ChildSetup {
    /// Called from `pre_exec`. The order matters: the bounding set can only be dropped while
    /// still privileged; the UID change clears the permitted and effective sets; Landlock comes
    /// last so nothing above is hindered by it.
    pub fn enter(&mut self) -> io::Result<()> {
        // The supervisor blocks the signals it forwards; the child must receive them.
        nix::sys::signal::SigSet::empty()
            .thread_set_mask()
            .map_err(io::Error::from)?;
        // A session of its own: no controlling terminal of the caller's, so the child cannot
        // push keystrokes into the caller's shell (TIOCSTI) or take over its terminal.
        check(unsafe { libc::setsid() })?;
        // While still root (it needs CAP_SYS_ADMIN and CAP_SYS_CHROOT). It moves the root and
        // working directory to the namespace's, hence the chdir to the workdir below.
        if let Some(namespace) = &self.mount_namespace {
            nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(io::Error::from)?;
        }
        self.set_environment()?;
        join_cgroup(&self.cgroup_procs)?;
        // No setuid binary, file capability or exec can give privileges back.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        caps::clear(None, CapSet::Bounding).map_err(io::Error::other)?;
        caps::clear(None, CapSet::Ambient).map_err(io::Error::other)?;
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
        }
        for set in [CapSet::Inheritable, CapSet::Permitted] {
            caps::clear(None, set).map_err(io::Error::other)?;
        }
        // Die with the supervisor rather than outlive it unsupervised. Set after the UID
        // change, which clears it; then make sure the supervisor did not die before.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
        if unsafe { libc::getppid() } != self.supervisor_pid {
            return Err(io::Error::other("the supervisor exited during start-up"));
        }
        // SAFETY: a NUL-terminated path prepared by the parent.
        check(unsafe { libc::chdir(self.workdir.as_ptr()) })?;
        if let Some(ruleset) = self.landlock.take() {
            ruleset.restrict_self().map_err(io::Error::other)?;
        }
        if let Some(filter) = &self.seccomp {
            seccompiler::apply_filter(filter).map_err(io::Error::other)?;
        }
        close_at_exec_all_but(&self.keep_fds)
    }
}

impl ChildSetup {
    /// Applies the environment changes to this (the child's) environment, which the exec
    /// then passes on; `LISTEN_PID` becomes this process's PID.
    fn set_environment(&self) -> io::Result<()> {
        for (key, value) in &self.environment.changes {
            // SAFETY: NUL-terminated strings prepared by the parent; this process has one
            // thread, so nothing reads the environment meanwhile.
            check(unsafe {
                match value {
                    Some(value) => libc::setenv(key.as_ptr(), value.as_ptr(), 1),
                    None => libc::unsetenv(key.as_ptr()),
                }
            })?;
        }
        if self.environment.listen_pid {
            let pid = format!("{}\0", std::process::id());
            // SAFETY: as above; `pid` is NUL-terminated.
            check(unsafe { libc::setenv(c"LISTEN_PID".as_ptr(), pid.as_ptr().cast(), 1) })?;
        }
        Ok(())
    }
}

/// `close_range(2)` flag: mark the range close-on-exec instead of closing it now (the
/// descriptor that reports a failed exec to the parent must stay open until then).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Marks every descriptor above 2 close-on-exec except `keep` (sorted), which are made to
/// survive the exec: whatever the caller had open (a socket to a forbidden destination, a
/// file outside the policy) never reaches the command.
fn close_at_exec_all_but(keep: &[RawFd]) -> io::Result<()> {
    let mut first: libc::c_uint = 3;
    for &fd in keep {
        let fd = fd.cast_unsigned();
        if fd > first {
            close_range_at_exec(first, fd - 1);
        }
        first = fd + 1;
        // SAFETY: fcntl on a descriptor number; the parent checked it is open.
        check(unsafe { libc::fcntl(fd.cast_signed(), libc::F_SETFD, 0) })?;
    }
    close_range_at_exec(first, libc::c_uint::MAX);
    Ok(())
}

fn close_range_at_exec(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range only changes descriptor flags.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC) };
    if ret == 0 {
        return;
    }
    // Kernels before 5.11 lack the flag: mark each open descriptor in turn.
    // SAFETY: sysconf has no preconditions.
    let open_max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let limit = u64::try_from(open_max).unwrap_or(1024).min(1 << 20);
    let last = u64::from(last).min(limit);
    for fd in u64::from(first)..last {
        // SAFETY: fcntl on a descriptor number; EBADF for closed ones is ignored.
        unsafe { libc::fcntl(fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

fn join_cgroup(procs: &OwnedFd) -> io::Result<()> {
    // Writing "0" moves the writing process.
    // SAFETY: writes one byte from a static buffer to an open descriptor.
    let written = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
    if written == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
