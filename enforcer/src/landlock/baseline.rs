//! The few paths practically every process needs, added to every plan so that a policy only
//! names the service's own trees. Without them a dynamically linked program cannot even start
//! (the kernel opens its ELF interpreter with exec rights; the loader reads `ld.so.cache` and
//! the shared libraries).
//!
//! Kept small on purpose, and read-only except two sinks. Each entry is shown in the plan as
//! `[baseline]`; one the system lacks (e.g. `/lib64` on NixOS) is skipped when the ruleset is
//! prepared. Not in it, because they are the service's business and belong in its policy:
//! `/tmp`, `/dev/shm`, `/dev/tty`, `/etc/ssl`, `/usr/bin`, the home directory.
//!
//! `/proc` is granted as a whole: `/proc/self` cannot be granted alone, as the rule would be
//! opened by the supervisor and resolve to the supervisor's own `/proc/<pid>`. What `/proc`
//! shows of other processes stays subject to the usual permission checks.

/// Read and write (writes are discarded).
pub const READ_WRITE: &[&str] = &["/dev/null", "/dev/zero"];

/// Read only.
pub const READ_ONLY: &[&str] = &[
    // Randomness for runtimes that read it rather than calling getrandom(2).
    "/dev/random",
    "/dev/urandom",
    // The dynamic loader's index and the shared libraries.
    "/etc/ld.so.cache",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    // User, group and host name lookups (getpwuid, getaddrinfo) and the local time zone.
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    // The process's own state (/proc/self/…) and the CPU count (sysconf, runtimes).
    "/proc",
    "/sys/devices/system/cpu",
];

/// Read and execute: the ELF interpreters (glibc's and musl's) of this architecture.
#[cfg(target_arch = "x86_64")]
pub const EXEC: &[&str] = &["/lib64/ld-linux-x86-64.so.2", "/lib/ld-musl-x86_64.so.1"];
/// Read and execute: the ELF interpreters (glibc's and musl's) of this architecture.
#[cfg(target_arch = "aarch64")]
pub const EXEC: &[&str] = &["/lib/ld-linux-aarch64.so.1", "/lib/ld-musl-aarch64.so.1"];
/// Read and execute: no known ELF interpreter for this architecture; list it in `exec`.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const EXEC: &[&str] = &[];
