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
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const CONNECT4: &str = "isolate_connect4";
    pub const CONNECT6: &str = "isolate_connect6";
    pub const SENDMSG4: &str = "isolate_sendmsg4";
    pub const SENDMSG6: &str = "isolate_sendmsg6";
    pub const EGRESS: &str = "isolate_egress";
    /// Every cgroup `sock_addr` program, in attach order.
    pub const SOCK_ADDR: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
}

/// Entries in each LPM trie (all instances together).
pub const MAX_ALLOW_ENTRIES: u32 = 1 << 20;
/// Confined UIDs.
pub const MAX_INSTANCES: u32 = 4096;
/// Port rules one destination prefix can carry.
pub const MAX_PORT_RULES: usize = 8;

/// Bits of `PortRule::protocols`.
pub const PROTO_TCP: u8 = 1;
pub const PROTO_UDP: u8 = 2;
/// Anything else (ICMP from ping sockets, SCTP, ...): no ports; allowed only by a rule that
/// names neither protocol nor ports.
pub const PROTO_OTHER: u8 = 4;
pub const PROTO_ANY: u8 = PROTO_TCP | PROTO_UDP | PROTO_OTHER;

/// Per-UID state: the generation whose entries in the allow tries are in force.
///
/// Policy updates write the new generation's entries aside, then flip `generation` here in
/// one map update, so a connect sees either the whole old policy or the whole new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceState {
    pub generation: u32,
    pub flags: u32,
}

/// Bits of `InstanceState::flags`.
pub const INSTANCE_FLAG_NONE: u32 = 0;

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

/// Address families, as in `BlockEvent::family` and `CounterKey::family`.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Which hook refused, as in `BlockEvent::layer` and `CounterKey::layer`.
pub const LAYER_CONNECT: u8 = 1;
pub const LAYER_SENDMSG: u8 = 2;
/// The `cgroup_skb/egress` backstop (packets of protocols the socket hooks do not judge).
pub const LAYER_EGRESS: u8 = 3;

/// Key of the blocked-attempt counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterKey {
    pub uid: u32,
    pub family: u8,
    pub protocol: u8,
    pub layer: u8,
    pub _pad: u8,
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
    /// Destination address in network byte order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    /// Destination port in host byte order.
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    pub layer: u8,
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
}
