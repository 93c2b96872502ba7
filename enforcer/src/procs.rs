//! The processes a UID runs, from `/proc`: an instance's UID is confined host-wide by the
//! daemon and shares files and unix sockets with whatever else runs as it, so isolate warns
//! when a named user runs processes outside the instance, and refuses to take enforcement away
//! while an instance's processes run.

use std::fmt;
use std::path::Path;

use crate::paths;

/// One process, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup2 path (`/isolate/my-project`), or empty where it has none.
    pub cgroup: String,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pid, self.comm)
    }
}

impl Process {
    /// Whether it runs in instance `name`'s cgroup (or below it).
    pub fn in_instance(&self, name: &str) -> bool {
        let own = format!("/{}/{name}", paths::CGROUP_SUBTREE);
        self.cgroup == own || self.cgroup.starts_with(&format!("{own}/"))
    }
}

/// The processes whose real or effective UID is `uid`. Processes that end while the list is
/// read are left out.
pub fn of_uid(uid: u32) -> Vec<Process> {
    of_uid_in(Path::new(paths::PROC), uid)
}

fn of_uid_in(proc: &Path, uid: u32) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut found: Vec<Process> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            if !runs_as(&status, uid) {
                return None;
            }
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
            Some(Process {
                pid,
                comm: comm.trim_end().to_owned(),
                cgroup: unified_cgroup(&cgroup).to_owned(),
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// Whether the `Uid:` line of a `/proc/PID/status` (real, effective, saved, fs) names `uid`
/// as real or effective UID.
fn runs_as(status: &str, uid: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .is_some_and(|ids| {
            ids.split_whitespace()
                .take(2)
                .any(|id| id.parse() == Ok(uid))
        })
}

/// The cgroup2 path in a `/proc/PID/cgroup` (its `0::PATH` line).
fn unified_cgroup(text: &str) -> &str {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("")
}

/// At most `limit` processes, for a message: `12 (sleep), 34 (bash) and 3 more`.
pub fn list(processes: &[Process], limit: usize) -> String {
    let shown: Vec<String> = processes
        .iter()
        .take(limit)
        .map(ToString::to_string)
        .collect();
    match processes.len().saturating_sub(limit) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(processes: &[(u32, &str, &str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, uids, comm, cgroup) in processes {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir(&p).unwrap();
            std::fs::write(
                p.join("status"),
                format!("Name:\tx\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n"),
            )
            .unwrap();
            std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(p.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        dir
    }

    #[test]
    fn finds_a_uids_processes_and_where_they_run() {
        let proc = fake_proc(&[
            (
                30,
                "1001\t1001\t1001\t1001",
                "opencode",
                "/isolate/my-project",
            ),
            (
                12,
                "1001\t1001\t1001\t1001",
                "ssh-agent",
                "/user.slice/user-1001.slice",
            ),
            (40, "0\t1001\t0\t1001", "setuid", "/"),
            (50, "1002\t1002\t1002\t1002", "other", "/"),
            (60, "0\t0\t1001\t0", "saved-only", "/"),
        ]);
        let found = of_uid_in(proc.path(), 1001);
        let pids: Vec<u32> = found.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [12, 30, 40], "real or effective UID, in PID order");
        assert!(found[1].in_instance("my-project"));
        assert!(!found[0].in_instance("my-project"));
        assert!(
            !found[1].in_instance("my"),
            "a prefix of the name is another instance"
        );
        assert_eq!(list(&found, 2), "12 (ssh-agent), 30 (opencode) and 1 more");
        assert_eq!(
            list(&found, 5),
            "12 (ssh-agent), 30 (opencode), 40 (setuid)"
        );
    }
}
