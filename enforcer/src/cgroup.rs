//! The cgroup v2 hierarchy: where it is mounted, and child cgroups that clean up after
//! themselves.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 file system is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NotMounted,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error("cgroup {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The mount point of the cgroup2 hierarchy (e.g. `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts), read from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = crate::mounts::mounts().map_err(CgroupError::MountInfo)?;
    mounts
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(CgroupError::NotMounted)
}

/// A cgroup this process created. Dropping it kills whatever still runs inside and removes it.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `parent/name`; fails if it already exists, so two users never share one.
    pub fn create(parent: &Path, name: &str) -> Result<Self, CgroupError> {
        let path = parent.join(name);
        fs::create_dir(&path).map_err(|source| CgroupError::Io {
            path: path.clone(),
            action: "create",
            source,
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `value` to the interface file `file` (e.g. `pids.max`) of `controller`. When the
    /// file is missing, the controller is enabled for this cgroup first, in its parent's
    /// `cgroup.subtree_control`, if the parent has it; otherwise nothing is written and the
    /// answer says why (`Ok(Some(reason))`). Other failures are errors.
    pub fn set_limit(
        &self,
        controller: &str,
        file: &str,
        value: &str,
    ) -> Result<Option<String>, CgroupError> {
        let target = self.path.join(file);
        if !target.exists() {
            let parent = self.path.parent().expect("a child cgroup");
            let offered = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
            if !offered.split_whitespace().any(|c| c == controller) {
                return Ok(Some(format!(
                    "the {controller} controller is not available to {} (the cgroups above it \
                     do not delegate it)",
                    parent.display()
                )));
            }
            fs::write(
                parent.join("cgroup.subtree_control"),
                format!("+{controller}"),
            )
            .map_err(|source| CgroupError::Io {
                path: parent.to_path_buf(),
                action: "enable a controller",
                source,
            })?;
        }
        fs::write(&target, value).map_err(|source| self.io_error("set a limit", source))?;
        Ok(None)
    }

    /// PIDs currently in this cgroup (not in its children).
    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = fs::read_to_string(self.path.join("cgroup.procs"))
            .map_err(|source| self.io_error("list processes", source))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Kills every process in the cgroup and its descendants (`cgroup.kill`, kernel 5.14+;
    /// older kernels get SIGKILL sent to each listed process).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            return fs::write(kill_file, "1").map_err(|source| self.io_error("kill", source));
        }
        for pid in self.processes()? {
            let pid = nix::unistd::Pid::from_raw(pid.cast_signed());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        Ok(())
    }

    /// Kills what runs inside, waits for the cgroup to empty, and removes it.
    pub fn remove(self) -> Result<(), CgroupError> {
        let result = self.remove_now();
        std::mem::forget(self);
        result
    }

    fn remove_now(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        // Killed processes leave the cgroup asynchronously; rmdir says EBUSY until they have.
        let mut last_error = None;
        for _ in 0..200 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last_error = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(self.io_error("remove", last_error.expect("the loop ran")))
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> CgroupError {
        CgroupError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_now() {
            tracing::warn!("{e}");
        }
    }
}
