//! Every fixed path isolate uses, in one place: where its state, pins, sockets and the kernel's
//! interfaces live. Options that move one (`--state-dir`, `--control-socket`, …) default to
//! these.

use std::path::{Path, PathBuf};

/// bpffs's usual mount point; isolate mounts it here when nothing is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// securityfs, where the kernel lists its active LSMs.
pub const SECURITYFS: &str = "/sys/kernel/security";
/// The active LSMs, comma-separated (below securityfs).
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";
/// The kernel's own BTF (type information), needed by the BPF LSM programs.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// procfs: the processes of the host (of this PID namespace).
pub const PROC: &str = "/proc";
/// The mounts of this process's mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// The mounts of the calling thread's mount namespace (a thread may have one of its own).
pub const THREAD_MOUNTINFO: &str = "/proc/thread-self/mountinfo";
/// The calling thread's mount namespace; an open descriptor of it keeps the namespace alive.
pub const THREAD_MOUNT_NAMESPACE: &str = "/proc/thread-self/ns/mnt";
/// The system resolver configuration (`dns = "system"` keeps its name servers reachable).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// journald's native protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where the daemon listens for `isolate status`, `reload` and `exec`.
pub const CONTROL_SOCKET: &str = "/run/isolate/control.sock";
/// Where the daemon records what it enforces (lost at reboot, with the pins it describes).
pub const DAEMON_STATE_DIR: &str = "/run/isolate/daemon";
/// Allocated dynamic UIDs, one lock file each, so two runs never share one.
pub const DYNAMIC_UID_LOCKS: &str = "/run/isolate/dynamic-uids";
/// Per-instance state that persists: dynamic users' homes, private temporary directories.
pub const STATE_DIR: &str = "/var/lib/isolate";

/// Below the cgroup2 root: where instance cgroups live.
pub const CGROUP_SUBTREE: &str = "isolate";
/// Below bpffs: the daemon's eBPF layer.
const DAEMON_PINS: &str = "isolate/daemon";
/// Below bpffs: one directory per running `isolate exec` instance.
const EXEC_PINS: &str = "isolate/exec";

/// The daemon's eBPF pins.
pub fn daemon_pins() -> PathBuf {
    Path::new(BPFFS).join(DAEMON_PINS)
}

/// The directory that holds every `isolate exec` run's pins.
pub fn exec_pins_root() -> PathBuf {
    Path::new(BPFFS).join(EXEC_PINS)
}

/// One `isolate exec` instance's eBPF pins.
pub fn exec_pins(instance: &str) -> PathBuf {
    exec_pins_root().join(instance)
}

/// An instance's state directory (a dynamic user's home).
pub fn instance_state(instance: &str) -> PathBuf {
    Path::new(STATE_DIR).join(instance)
}

/// An instance's private temporary directory, made fresh for each run.
pub fn instance_tmp(instance: &str) -> PathBuf {
    instance_state(instance).join("tmp")
}
