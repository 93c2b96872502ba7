//! What the child does between fork and exec to become the confined instance: join the
//! instance cgroup, lose every privilege, and restrict itself with Landlock.
//!
//! Runs in the forked child of a single-threaded supervisor, so the small allocations the
//! `caps` crate makes are safe here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

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
    pub landlock: Option<PreparedRuleset>,
    pub supervisor_pid: libc::pid_t,
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
        Ok(())
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
