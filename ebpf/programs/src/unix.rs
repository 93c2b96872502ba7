//! The unix-socket allowlist: BPF LSM programs on `unix_stream_connect` (stream and seqpacket
//! connects) and `unix_may_send` (every datagram, connected or not, and datagram connects).
//!
//! Why the LSM and not `cgroup/connect_unix`: no aya version knows that attach type (6.7+
//! only, too), and it sees the path as the caller wrote it. These hooks run after the kernel
//! resolved the address, with the peer's `struct sock` in hand, so symlinks, relative paths,
//! `..` and bind-mounted directories are all resolved by the kernel's own lookup, on 6.1 too.
//!
//! What identifies an allowed socket is where it is bound: the directory that holds it
//! (device and inode) and its name there, read from the peer's bound dentry
//! (`unix_sk(peer)->path.dentry`). Not the socket file's own inode: servers (PostgreSQL,
//! systemd's sockets, ...) remove and re-create their socket when they restart, which would
//! silently refuse an allowed socket until the policy is applied again.
//!
//! For a confined UID (in `INSTANCES`, and inside the cgroup the layer was attached at — LSM
//! programs attach globally, so the programs check the cgroup themselves):
//! - a peer socket created by the same UID inside that cgroup subtree is allowed (the
//!   instance talking to itself, as Landlock's abstract-socket scoping allows); the same UID's
//!   sockets elsewhere (another program of a shared user) are judged like anyone's;
//! - an unnamed peer is allowed: it cannot be reached by name, only through a descriptor the
//!   process already holds (`socketpair`, a connected datagram socket, `SCM_RIGHTS`);
//! - a pathname peer is allowed when its (directory, name) is in `UNIX_ALLOW` under the UID's
//!   generation;
//! - everything else (other pathname sockets, abstract sockets of other UIDs) is refused with
//!   EPERM, counted and reported.
//!
//! aya has no CO-RE: the field offsets differ between kernels (e.g. `unix_sock.path` is at
//! 784 on 6.1 and 6.12 but 792 on 6.18), so user space reads them from the running kernel's
//! BTF and patches them into `ISOLATE_UNIX_CONFIG` before loading; the programs read kernel
//! memory with `bpf_probe_read_kernel` at those offsets.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};
use isolate_ebpf_common::{
    FAMILY_UNIX, HOOK_UNIX, MAX_UNIX_ENTRIES, PROTO_DGRAM, PROTO_STREAM, UNIX_CONFIG_MAGIC,
    UNIX_PEER_ABSTRACT, UNIX_PEER_PATH, UNIX_PEER_UNKNOWN, UnixConfig, UnixKey,
};

use crate::{confined_caller, record_block};

/// LSM verdicts: 0 lets the operation go on, a negative errno refuses it.
pub(crate) const LSM_ALLOW: i32 = 0;
pub(crate) const LSM_DENY: i32 = -1; // -EPERM

/// Filled in by user space at load time (`aya::EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static ISOLATE_UNIX_CONFIG: UnixConfig = UnixConfig::UNSET;

#[map(name = "UNIX_ALLOW")]
static UNIX_ALLOW: HashMap<UnixKey, u32> =
    HashMap::with_max_entries(MAX_UNIX_ENTRIES, BPF_F_NO_PREALLOC);

/// `int unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)`;
/// `other` is the listening socket being connected to.
#[lsm(hook = "unix_stream_connect")]
pub fn isolate_unix_stream_connect(ctx: LsmContext) -> i32 {
    // The result of an earlier BPF LSM program on this hook comes last: keep a refusal.
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let Some((uid, generation)) = confined_caller() else {
        return LSM_ALLOW;
    };
    let other: u64 = ctx.arg(1);
    judge(uid, generation, other, PROTO_STREAM)
}

/// `int unix_may_send(struct socket *sock, struct socket *other)`: every datagram send (and a
/// datagram connect), with the peer's `struct socket`.
#[lsm(hook = "unix_may_send")]
pub fn isolate_unix_may_send(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(2);
    if earlier != 0 {
        return earlier;
    }
    let Some((uid, generation)) = confined_caller() else {
        return LSM_ALLOW;
    };
    let config = config();
    let other: u64 = ctx.arg(1);
    let Some(sk) = read::<u64>(other, config.socket_sk) else {
        return refuse(uid, PROTO_DGRAM, UNIX_PEER_UNKNOWN, 0, 0);
    };
    judge(uid, generation, sk, PROTO_DGRAM)
}

#[inline(always)]
pub(crate) fn config() -> UnixConfig {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold the value
    // the object was built with (user space patches it before loading).
    unsafe { core::ptr::read_volatile(&raw const ISOLATE_UNIX_CONFIG) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address (it fails instead of faulting).
    unsafe { bpf_probe_read_kernel(base.wrapping_add(u64::from(offset)) as *const T).ok() }
}

/// Judges a connect or send of confined `uid` to the unix socket whose `struct sock` is `sk`.
#[inline(always)]
fn judge(uid: u32, generation: u32, sk: u64, protocol: u8) -> i32 {
    let config = config();
    if config.magic != UNIX_CONFIG_MAGIC {
        // Cannot happen (user space fills the configuration in before loading); refuse
        // rather than judge blind.
        return refuse(uid, protocol, UNIX_PEER_UNKNOWN, 0, 0);
    }
    if !in_scope(config.cgroup_id) {
        return LSM_ALLOW;
    }
    // struct unix_sock begins with its struct sock: `sk` is the unix_sock too.
    let Some(owner) = read::<u32>(sk, config.sock_uid) else {
        return refuse(uid, protocol, UNIX_PEER_UNKNOWN, 0, 0);
    };
    if owner == uid && made_in_scope(&config, sk) {
        return LSM_ALLOW;
    }
    let Some(address) = read::<u64>(sk, config.unix_sock_addr) else {
        return refuse(uid, protocol, UNIX_PEER_UNKNOWN, 0, 0);
    };
    if address == 0 {
        // Unnamed: reachable only through a descriptor already held.
        return LSM_ALLOW;
    }
    let Some(dentry) = read::<u64>(sk, config.unix_sock_dentry) else {
        return refuse(uid, protocol, UNIX_PEER_UNKNOWN, 0, 0);
    };
    if dentry == 0 {
        return refuse(uid, protocol, UNIX_PEER_ABSTRACT, 0, 0);
    }
    if is_allowed(&config, uid, generation, dentry) {
        return LSM_ALLOW;
    }
    // For the audit trail: the socket file's own device and inode.
    let inode = read::<u64>(dentry, config.dentry_inode).unwrap_or(0);
    let ino = read::<u64>(inode, config.inode_ino).unwrap_or(0);
    let sb = read::<u64>(inode, config.inode_sb).unwrap_or(0);
    let dev = read::<u32>(sb, config.sb_dev).unwrap_or(0);
    refuse(uid, protocol, UNIX_PEER_PATH, dev, ino)
}

/// Deepest cgroup level searched for the layer's cgroup among the caller's ancestors.
const MAX_CGROUP_LEVEL: i32 = 32;

/// Whether the calling task is in the cgroup the layer was attached at or below it, as for
/// the cgroup programs. The cgroup's level is not taken from user space (its view of the
/// hierarchy may be a cgroup namespace's): the caller's ancestors are compared one by one.
#[inline(always)]
pub(crate) fn in_scope(cgroup_id: u64) -> bool {
    let mut level = 0;
    while level <= MAX_CGROUP_LEVEL {
        // SAFETY: a helper call without pointers.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == cgroup_id {
            return true;
        }
        if ancestor == 0 {
            // Deeper than the caller's own cgroup.
            return false;
        }
        level += 1;
    }
    false
}

/// Whether the socket `sk` was made by a task in the layer's cgroup or below it: its cgroup
/// (`sk_cgrp_data.cgroup`) or one of that cgroup's ancestors is the layer's.
#[inline(always)]
fn made_in_scope(config: &UnixConfig, sk: u64) -> bool {
    let Some(cgroup) = read::<u64>(sk, config.sock_cgroup) else {
        return false;
    };
    let Some(mut node) = read::<u64>(cgroup, config.cgroup_kn) else {
        return false;
    };
    let mut level = 0;
    while level <= MAX_CGROUP_LEVEL {
        let Some(id) = read::<u64>(node, config.kernfs_id) else {
            return false;
        };
        if id == config.cgroup_id {
            return true;
        }
        match read::<u64>(node, config.kernfs_parent) {
            Some(parent) if parent != 0 => node = parent,
            _ => return false,
        }
        level += 1;
    }
    false
}

/// Whether the socket bound at `dentry` is in `uid`'s allowlist.
#[inline(always)]
fn is_allowed(config: &UnixConfig, uid: u32, generation: u32, dentry: u64) -> bool {
    let Some(parent) = read::<u64>(dentry, config.dentry_parent) else {
        return false;
    };
    let Some(dir) = read::<u64>(parent, config.dentry_inode) else {
        return false;
    };
    let Some(dir_ino) = read::<u64>(dir, config.inode_ino) else {
        return false;
    };
    let Some(sb) = read::<u64>(dir, config.inode_sb) else {
        return false;
    };
    let Some(dir_dev) = read::<u32>(sb, config.sb_dev) else {
        return false;
    };
    let Some(name) = read::<u64>(dentry, config.dentry_name) else {
        return false;
    };
    let mut key = UnixKey {
        uid,
        generation,
        dir_ino,
        dir_dev,
        ..UnixKey::default()
    };
    // A name longer than any key's (at most 107 bytes) is cut short and matches nothing.
    // SAFETY: the helper copes with any address and writes only into `key.name`.
    if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut key.name) }.is_err() {
        return false;
    }
    UNIX_ALLOW.get_ptr(&key).is_some()
}

#[inline(always)]
fn refuse(uid: u32, protocol: u8, kind: u8, dev: u32, ino: u64) -> i32 {
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&ino.to_le_bytes());
    addr[8..12].copy_from_slice(&dev.to_le_bytes());
    addr[12] = kind;
    if record_block::<true>(uid, FAMILY_UNIX, protocol, HOOK_UNIX, addr, 0) {
        // The UID only observes.
        return LSM_ALLOW;
    }
    LSM_DENY
}
