//! The socket families a confined child may create. The network layers judge IP and unix
//! sockets; any other family (`AF_VSOCK` reaches the VM host's services, Bluetooth, TIPC,
//! RDS, SMC, …) would go around them, so `socket()` and `socketpair()` of another family fail
//! with EPERM. `io_uring` can create sockets without either system call
//! (`IORING_OP_SOCKET`), so setting one up fails the same way (as in Docker's default
//! profile; programs fall back to ordinary system calls).
//!
//! A seccomp filter, built by the parent and installed by the child last, after Landlock.
//! Where the eBPF layer's BPF LSM program judges socket families (and records each refusal,
//! which seccomp cannot), the filter leaves them to it and refuses only `io_uring_setup`.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The families the layers judge (netlink is how programs talk to the kernel: routes,
/// addresses).
pub const ALLOWED_FAMILIES: [(libc::c_int, &str); 4] = [
    (libc::AF_INET, "inet"),
    (libc::AF_INET6, "inet6"),
    (libc::AF_UNIX, "unix"),
    (libc::AF_NETLINK, "netlink"),
];

/// The filter: EPERM for `io_uring_setup` and, with `refuse_families`, for `socket`/
/// `socketpair` of any other family; every other system call passes.
pub fn filter(refuse_families: bool) -> Result<BpfProgram, BackendError> {
    let other_family = SeccompRule::new(
        ALLOWED_FAMILIES
            .iter()
            .map(|&(family, _)| {
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    family.cast_unsigned().into(),
                )
            })
            .collect::<Result<_, _>>()?,
    )?;
    // An empty rule list matches whatever the arguments.
    let mut rules = BTreeMap::from([(libc::SYS_io_uring_setup, vec![])]);
    if refuse_families {
        rules.insert(libc::SYS_socket, vec![other_family.clone()]);
        rules.insert(libc::SYS_socketpair, vec![other_family]);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.cast_unsigned()),
        arch,
    )?
    .try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_builds_for_this_architecture() {
        let families = filter(true).unwrap();
        let io_uring_only = filter(false).unwrap();
        // Architecture check, the system calls and their argument checks, two actions.
        assert!(
            families.len() > io_uring_only.len() + 8,
            "{} vs {}",
            families.len(),
            io_uring_only.len()
        );
    }
}
