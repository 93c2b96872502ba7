//! The one definition of every type shared by isolate's eBPF programs and user space:
//! map names, map keys and values, and the block-event record. Everything is `#[repr(C)]`
//! with explicit padding so both sides agree on the layout byte for byte.
#![no_std]
#![allow(
    clippy::pub_underscore_fields,
    reason = "explicit padding fields keep the kernel/user layout obvious"
)]

/// Names of the maps in the eBPF object, as user space looks them up.
pub mod map_names {
    /// `HashMap<u32 uid, InstanceState>`: which UIDs are confined, and their policy generation.
    pub const INSTANCES: &str = "INSTANCES";
    /// `LpmTrie<V4Key, AllowValue>`: allowed IPv4 destinations per (uid, generation).
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `LpmTrie<V6Key, AllowValue>`: allowed IPv6 destinations per (uid, generation).
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `PerCpuHashMap<CounterKey, u64>`: blocked attempts.
    pub const BLOCKED: &str = "BLOCKED";
    /// `RingBuf` of `BlockEvent`s.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuHashMap<u32 uid, EventBudget>`: how many events each CPU sent for a UID this
    /// second, and how many it did not send.
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    /// `HashMap<UnixKey, u32>`: allowed unix-socket locations per (uid, generation).
    pub const UNIX_ALLOW: &str = "UNIX_ALLOW";
    /// `LpmTrie<V4Key, AllowValue>`: local IPv4 addresses and ports an instance may serve on
    /// (`network.listen`), per (uid, generation).
    pub const LISTEN_V4: &str = "LISTEN_V4";
    /// `LpmTrie<V6Key, AllowValue>`: as `LISTEN_V4`, for IPv6.
    pub const LISTEN_V6: &str = "LISTEN_V6";
    /// `HashMap<u32 uid, DnsRedirect>`: where a confined UID's DNS queries go instead (the
    /// resolver of isolate that follows its answers). A UID without an entry keeps its
    /// destinations.
    pub const DNS_REDIRECT: &str = "DNS_REDIRECT";
    /// `LruHashMap<u64 socket cookie, DnsOrigin>`: the resolver a redirected socket asked, so
    /// that its answers seem to come from there.
    pub const DNS_ORIGINS: &str = "DNS_ORIGINS";
    /// `HashMap<HostV4Key, HostValue>`: IPv4 addresses a DNS answer admitted for a UID.
    pub const HOSTS_V4: &str = "HOSTS_V4";
    /// `HashMap<HostV6Key, HostValue>`: as `HOSTS_V4`, for IPv6.
    pub const HOSTS_V6: &str = "HOSTS_V6";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const CONNECT4: &str = "isolate_connect4";
    pub const CONNECT6: &str = "isolate_connect6";
    pub const SENDMSG4: &str = "isolate_sendmsg4";
    pub const SENDMSG6: &str = "isolate_sendmsg6";
    pub const BIND4: &str = "isolate_bind4";
    pub const BIND6: &str = "isolate_bind6";
    pub const EGRESS: &str = "isolate_egress";
    pub const INGRESS: &str = "isolate_ingress";
    /// Answers to redirected DNS queries: their source becomes the resolver asked.
    pub const RECVMSG4: &str = "isolate_recvmsg4";
    pub const RECVMSG6: &str = "isolate_recvmsg6";
    /// Every cgroup `sock_addr` program, in attach order.
    pub const SOCK_ADDR: [&str; 8] = [
        CONNECT4, CONNECT6, SENDMSG4, SENDMSG6, BIND4, BIND6, RECVMSG4, RECVMSG6,
    ];
    /// Every `cgroup_skb` program (packet hooks).
    pub const SKB: [&str; 2] = [EGRESS, INGRESS];
    /// BPF LSM program on `unix_stream_connect` (stream and seqpacket connects).
    pub const UNIX_STREAM_CONNECT: &str = "isolate_unix_stream_connect";
    /// BPF LSM program on `unix_may_send` (datagrams, connected or not).
    pub const UNIX_MAY_SEND: &str = "isolate_unix_may_send";
    /// BPF LSM program on `socket_create`: socket families no other hook judges.
    pub const SOCKET_CREATE: &str = "isolate_socket_create";
    /// Every BPF LSM program and the hook it attaches to: the unix-socket allowlist and the
    /// socket-family check. They load (or are refused by the kernel) together.
    pub const LSM: [(&str, &str); 3] = [
        (UNIX_STREAM_CONNECT, "unix_stream_connect"),
        (UNIX_MAY_SEND, "unix_may_send"),
        (SOCKET_CREATE, "socket_create"),
    ];
}

/// Name of the global (in `.rodata`) that user space fills with `UnixConfig` at load time.
pub const UNIX_CONFIG_GLOBAL: &str = "ISOLATE_UNIX_CONFIG";

/// Entries in each LPM trie (all instances together).
pub const MAX_ALLOW_ENTRIES: u32 = 1 << 20;
/// Entries in each listen trie (all instances together): an instance serves on a few ports.
pub const MAX_LISTEN_ENTRIES: u32 = 1 << 14;
/// Confined UIDs.
pub const MAX_INSTANCES: u32 = 4096;
/// Counters each confined UID has: (IPv4, IPv6) × (TCP, UDP, other) × (connect, sendmsg,
/// egress, bind, ingress, dns), unix (stream, datagram), and other socket families.
pub const COUNTERS_PER_INSTANCE: u32 = 2 * 3 * 6 + 2 + 1;
/// Port rules one destination prefix can carry.
pub const MAX_PORT_RULES: usize = 8;

/// Addresses DNS answers admitted (all instances together, per family).
pub const MAX_HOST_ENTRIES: u32 = 1 << 16;
/// Port rules one admitted address can carry (host rules of the policy that answered it).
pub const MAX_HOST_RULES: usize = 4;
/// Redirected sockets remembered at once (least recently used are forgotten first).
pub const MAX_DNS_ORIGINS: u32 = 1 << 14;

/// Allowed unix-socket locations (all instances together).
pub const MAX_UNIX_ENTRIES: u32 = 1 << 16;

/// Bits of `PortRule::protocols`.
pub const PROTO_TCP: u8 = 1;
pub const PROTO_UDP: u8 = 2;
/// Anything else (ICMP from ping sockets, SCTP, ...): no ports; allowed only by a rule that
/// names neither protocol nor ports.
pub const PROTO_OTHER: u8 = 4;
pub const PROTO_ANY: u8 = PROTO_TCP | PROTO_UDP | PROTO_OTHER;
/// Unix sockets, in counters and events only (never in a `PortRule`): stream and seqpacket
/// connects, and datagrams.
pub const PROTO_STREAM: u8 = 8;
pub const PROTO_DGRAM: u8 = 16;

/// Per-UID state: the generation whose entries in the allow tries are in force.
///
/// Policy updates write the new generation's entries aside, then flip `generation` here in
/// one map update, so a connect sees either the whole old policy or the whole new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceState {
    pub generation: u32,
    /// `INSTANCE_*` bits.
    pub flags: u32,
}

/// `InstanceState::flags`: the UID only observes (learn mode). Its refusals are counted and
/// reported as ever, then let through, so one run shows everything its policy still lacks.
pub const INSTANCE_OBSERVE: u32 = 1;

/// Bits of an LPM key spent on (uid, generation) before the address starts.
pub const KEY_HEADER_BITS: u32 = 64;

/// LPM trie key data for IPv4: the prefix length always covers `uid` and `generation` in
/// full (`KEY_HEADER_BITS` + CIDR length), so their byte order does not matter; the
/// address is in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V4Key {
    pub uid: u32,
    pub generation: u32,
    pub addr: [u8; 4],
}

/// LPM trie key data for IPv6, as `V4Key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Key {
    pub uid: u32,
    pub generation: u32,
    pub addr: [u8; 16],
}

/// An inclusive port range and the protocols it allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub first: u16,
    pub last: u16,
    pub protocols: u8,
    pub _pad: [u8; 3],
}

/// What an allowed destination prefix permits. User space pushes every rule down to the
/// longer prefixes it contains, so the longest-prefix match alone carries every rule that
/// covers an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowValue {
    pub count: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}

impl AllowValue {
    /// Whether `port` over `protocol` (a `PROTO_*` bit) is allowed.
    #[inline(always)]
    #[allow(
        clippy::inline_always,
        reason = "eBPF programs must not call out for this"
    )]
    pub fn permits(&self, port: u16, protocol: u8) -> bool {
        let mut i = 0;
        while i < MAX_PORT_RULES {
            if i as u32 >= self.count {
                return false;
            }
            let rule = &self.rules[i];
            if rule.protocols & protocol != 0 && rule.first <= port && port <= rule.last {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Where a UID's DNS queries (TCP and UDP port 53, to any address) are sent instead:
/// isolate's resolver for it, on loopback. Addresses in network byte order, port in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsRedirect {
    pub addr_v4: [u8; 4],
    pub addr_v6: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

/// The resolver a redirected socket addressed: its answers are made to come from there.
/// `addr` as in `BlockEvent::addr`; `port` in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrigin {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Key of an address a DNS answer admitted for `uid` (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostV4Key {
    pub uid: u32,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostV6Key {
    pub uid: u32,
    pub addr: [u8; 16],
}

/// One way an admitted address may be reached, until `expires_ns` (`bpf_ktime_get_boot_ns`,
/// `CLOCK_BOOTTIME`): the answer's TTL plus a grace period. A rule whose time has passed
/// permits nothing, whether or not user space has removed it yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostRule {
    pub expires_ns: u64,
    pub first: u16,
    pub last: u16,
    pub protocols: u8,
    pub _pad: [u8; 3],
}

/// What an admitted address permits: the port rules of the host rules whose names answered it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostValue {
    pub rules: [HostRule; MAX_HOST_RULES],
}

impl HostValue {
    /// Whether `port` over `protocol` is permitted at boot-clock time `now_ns`.
    #[inline(always)]
    #[allow(
        clippy::inline_always,
        reason = "eBPF programs must not call out for this"
    )]
    pub fn permits(&self, port: u16, protocol: u8, now_ns: u64) -> bool {
        let mut i = 0;
        while i < MAX_HOST_RULES {
            let rule = &self.rules[i];
            if now_ns < rule.expires_ns
                && rule.protocols & protocol != 0
                && rule.first <= port
                && port <= rule.last
            {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Address families, as in `BlockEvent::family` and `CounterKey::family`.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
/// Unix sockets (`AF_UNIX`).
pub const FAMILY_UNIX: u8 = 1;
/// Any socket family but IPv4, IPv6, unix and netlink: refused when a socket is created (the
/// family's number is in `BlockEvent::port`).
pub const FAMILY_OTHER: u8 = 0;

/// Which hook refused, as in `BlockEvent::hook` and `CounterKey::hook`.
pub const HOOK_CONNECT: u8 = 1;
pub const HOOK_SENDMSG: u8 = 2;
/// The `cgroup_skb/egress` backstop (packets of protocols the socket hooks do not judge).
pub const HOOK_EGRESS: u8 = 3;
/// The BPF LSM unix-socket hooks (`unix_stream_connect`, `unix_may_send`).
pub const HOOK_UNIX: u8 = 4;
/// `bind` to a local address and port `network.listen` does not list.
pub const HOOK_BIND: u8 = 5;
/// The `cgroup_skb/ingress` program: a connection (TCP SYN) or datagram arriving for a port
/// `network.listen` does not list. Its events carry the sender's address in `addr` and the
/// instance's local port in `port`.
pub const HOOK_INGRESS: u8 = 6;
/// The BPF LSM `socket_create` hook: a socket of a family no other hook judges.
pub const HOOK_SOCKET: u8 = 7;
/// A DNS question isolate's resolver refused (the name is not in the policy). Counted by
/// user space, in the same counters, under the family and protocol the question came over.
pub const HOOK_DNS: u8 = 8;
/// Every hook of the address families (not unix), in counter order.
pub const INET_HOOKS: [u8; 6] = [
    HOOK_CONNECT,
    HOOK_SENDMSG,
    HOOK_EGRESS,
    HOOK_BIND,
    HOOK_INGRESS,
    HOOK_DNS,
];

/// Key of the blocked-attempt counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterKey {
    pub uid: u32,
    pub family: u8,
    pub protocol: u8,
    pub hook: u8,
    pub _pad: u8,
}

/// Longest file name of a socket in `UnixKey::name` (`sun_path` holds 108 bytes with the
/// terminating NUL), rounded up so the key has no implicit padding.
pub const UNIX_NAME_LEN: usize = 112;

/// Where an allowed unix socket lives: the directory that holds it (device and inode, as the
/// kernel sees them: `i_sb->s_dev` in the kernel's `dev_t` encoding `major << 20 | minor`,
/// and `i_ino`) and its file name there, NUL-padded. The kernel side reads both from the
/// peer socket's bound dentry (`unix_sk(peer)->path.dentry`), so symlinks and relative paths
/// are resolved by the kernel's own lookup, and a server that removes and re-creates its
/// socket (a new inode, same place) stays allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixKey {
    pub uid: u32,
    pub generation: u32,
    pub dir_ino: u64,
    pub dir_dev: u32,
    pub _pad: u32,
    pub name: [u8; UNIX_NAME_LEN],
}

impl Default for UnixKey {
    fn default() -> Self {
        Self {
            uid: 0,
            generation: 0,
            dir_ino: 0,
            dir_dev: 0,
            _pad: 0,
            name: [0; UNIX_NAME_LEN],
        }
    }
}

/// `UnixConfig::magic` once user space has filled the configuration in.
pub const UNIX_CONFIG_MAGIC: u32 = 0x1501_a7e5;

/// What the unix-socket programs need to know and cannot find out themselves: aya has no
/// CO-RE, so the offsets of the kernel fields they read come from the running kernel's BTF
/// (user space reads them at load time), and the cgroup whose subtree they judge (LSM
/// programs attach globally, not to a cgroup). Offsets are in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixConfig {
    /// `UNIX_CONFIG_MAGIC` when filled in; the programs refuse confined UIDs' connects
    /// otherwise (they cannot judge them).
    pub magic: u32,
    pub _pad: u32,
    /// ID of the cgroup the layer was attached at (the inode number of its cgroup2
    /// directory; 1 is the root): only its tasks and its descendants' are judged.
    pub cgroup_id: u64,
    /// `struct unix_sock`: `addr` (NULL for an unnamed socket).
    pub unix_sock_addr: u32,
    /// `struct unix_sock`: `path.dentry` (NULL for an abstract or unnamed socket).
    pub unix_sock_dentry: u32,
    /// `struct dentry`: `d_parent`, `d_name.name`, `d_inode`.
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub dentry_inode: u32,
    /// `struct inode`: `i_ino`, `i_sb`.
    pub inode_ino: u32,
    pub inode_sb: u32,
    /// `struct super_block`: `s_dev`.
    pub sb_dev: u32,
    /// `struct sock`: `sk_uid`.
    pub sock_uid: u32,
    /// `struct socket`: `sk`.
    pub socket_sk: u32,
    /// `struct sock`: `sk_cgrp_data.cgroup` (the cgroup of the task that made the socket).
    pub sock_cgroup: u32,
    /// `struct cgroup`: `kn`; `struct kernfs_node`: `id` (the cgroup ID), `parent`.
    pub cgroup_kn: u32,
    pub kernfs_id: u32,
    pub kernfs_parent: u32,
}

impl UnixConfig {
    /// The value in the object before user space fills it in (not all zeros, so that the
    /// compiler keeps it in `.rodata`, where the loader can patch it).
    pub const UNSET: Self = Self {
        magic: 1,
        _pad: 0,
        cgroup_id: 0,
        unix_sock_addr: 0,
        unix_sock_dentry: 0,
        dentry_parent: 0,
        dentry_name: 0,
        dentry_inode: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        sock_uid: 0,
        socket_sk: 0,
        sock_cgroup: 0,
        cgroup_kn: 0,
        kernfs_id: 0,
        kernfs_parent: 0,
    };
}

/// `BlockEvent::addr` of a refused unix-socket attempt: the peer socket file's inode number
/// (bytes 0..8, little-endian `u64`), its device (bytes 8..12, little-endian `u32`, the
/// kernel's `dev_t` encoding `major << 20 | minor`; both 0 for an abstract socket) and
/// the kind of address (byte 12, `UNIX_PEER_*`).
pub const UNIX_PEER_PATH: u8 = 0;
pub const UNIX_PEER_ABSTRACT: u8 = 1;
/// The programs could not read the peer (they refuse what they cannot judge).
pub const UNIX_PEER_UNKNOWN: u8 = 2;

/// Events one CPU sends per confined UID and second; beyond them an attempt is still refused
/// and counted, and its event is counted in `EventBudget::unsent` instead of being sent, so
/// that one flooding instance can fill neither the ring buffer nor the audit trail, and
/// hides no other instance's refusals.
pub const EVENTS_PER_CPU_SECOND: u32 = 100;

/// Per CPU and confined UID: the event budget of the current second. User space creates it
/// with the instance's counters and reads `unsent`, so that the audit trail's count of
/// suppressed records is exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// `bpf_ktime_get_ns` when the current one-second window began.
    pub window_start_ns: u64,
    /// Events sent in the current window.
    pub sent: u32,
    pub _pad: u32,
    /// Events of this UID not sent from this CPU (the budget was spent, or the ring buffer
    /// was full), ever.
    pub unsent: u64,
}

/// One blocked attempt, sent to user space through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEvent {
    /// `bpf_ktime_get_ns` (monotonic clock).
    pub timestamp_ns: u64,
    pub uid: u32,
    pub pid: u32,
    pub comm: [u8; 16],
    /// Destination address in network byte order; IPv4 uses the first four bytes. `bind`:
    /// the local address asked for; `ingress`: the sender's address. Unix sockets
    /// (`FAMILY_UNIX`): the peer's device and inode, see `UNIX_PEER_PATH`.
    pub addr: [u8; 16],
    /// Destination port in host byte order (`bind`, `ingress`: the instance's local port).
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    pub hook: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], Copy, has explicit padding and is valid for any bit
    // pattern.
    unsafe impl aya::Pod for super::InstanceState {}
    unsafe impl aya::Pod for super::V4Key {}
    unsafe impl aya::Pod for super::V6Key {}
    unsafe impl aya::Pod for super::PortRule {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::BlockEvent {}
    unsafe impl aya::Pod for super::EventBudget {}
    unsafe impl aya::Pod for super::UnixKey {}
    unsafe impl aya::Pod for super::UnixConfig {}
    unsafe impl aya::Pod for super::DnsRedirect {}
    unsafe impl aya::Pod for super::DnsOrigin {}
    unsafe impl aya::Pod for super::HostV4Key {}
    unsafe impl aya::Pod for super::HostV6Key {}
    unsafe impl aya::Pod for super::HostRule {}
    unsafe impl aya::Pod for super::HostValue {}
}
