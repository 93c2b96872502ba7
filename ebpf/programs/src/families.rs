//! Socket families no other hook judges (AF_VSOCK reaches the host of a VM, Bluetooth, TIPC,
//! RDS, SMC, ...): a confined UID may create only IPv4, IPv6, unix and netlink sockets. A BPF
//! LSM program on `socket_create` refuses the rest with EPERM, counts and reports each, and
//! works in daemon mode too (the seccomp filter of `isolate exec` covers only its own child,
//! and records nothing). It loads and attaches with the unix-socket programs, and judges only
//! the cgroup subtree they do.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use isolate_ebpf_common::{FAMILY_OTHER, HOOK_SOCKET, PROTO_OTHER, UNIX_CONFIG_MAGIC};

use crate::unix::{LSM_ALLOW, LSM_DENY, config, in_scope};
use crate::{confined_caller, record_block};

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;

/// `int socket_create(int family, int type, int protocol, int kern)`.
#[lsm(hook = "socket_create")]
pub fn isolate_socket_create(ctx: LsmContext) -> i32 {
    // The result of an earlier BPF LSM program on this hook comes last: keep a refusal.
    let earlier: i32 = ctx.arg(4);
    if earlier != 0 {
        return earlier;
    }
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        // The kernel's own sockets, made on no task's behalf.
        return LSM_ALLOW;
    }
    let Some((uid, _)) = confined_caller() else {
        return LSM_ALLOW;
    };
    let family: i32 = ctx.arg(0);
    if matches!(family, AF_UNIX | AF_INET | AF_INET6 | AF_NETLINK) {
        return LSM_ALLOW;
    }
    let config = config();
    // Without its configuration (cannot happen: user space fills it in before loading) the
    // program cannot tell its cgroup: refuse rather than judge blind.
    if config.magic == UNIX_CONFIG_MAGIC && !in_scope(config.cgroup_id) {
        return LSM_ALLOW;
    }
    let port = u16::try_from(family).unwrap_or(u16::MAX);
    if record_block::<true>(uid, FAMILY_OTHER, PROTO_OTHER, HOOK_SOCKET, [0; 16], port) {
        // The UID only observes.
        return LSM_ALLOW;
    }
    LSM_DENY
}
