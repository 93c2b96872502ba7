//! isolate's eBPF programs: cgroup socket-address hooks that refuse, with EPERM, every
//! destination the confined UID's policy does not allow and every bind to a local port it does
//! not list; packet hooks for what those cannot see (portless protocols going out, connections
//! and datagrams coming in). UIDs without a policy pass untouched.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "atomic_xadd: see add_one")]

mod families;
mod unix;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_ktime_get_ns,
    },
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::{SkBuffContext, SockAddrContext},
};
use isolate_ebpf_common::{
    AllowValue, BlockEvent, COUNTERS_PER_INSTANCE, CounterKey, DnsOrigin, DnsRedirect,
    EVENTS_PER_CPU_SECOND, EventBudget, FAMILY_V4, FAMILY_V6, HOOK_BIND, HOOK_CONNECT, HOOK_EGRESS,
    HOOK_INGRESS, HOOK_SENDMSG, HostV4Key, HostV6Key, HostValue, INSTANCE_OBSERVE, InstanceState,
    KEY_HEADER_BITS, MAX_ALLOW_ENTRIES, MAX_DNS_ORIGINS, MAX_HOST_ENTRIES, MAX_INSTANCES,
    MAX_LISTEN_ENTRIES, PROTO_OTHER, PROTO_TCP, PROTO_UDP, V4Key, V6Key,
};

/// Return values of a cgroup sock_addr program.
const VERDICT_ALLOW: i32 = 1;
const VERDICT_DENY: i32 = 0; // the caller gets EPERM

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[map(name = "INSTANCES")]
static INSTANCES: HashMap<u32, InstanceState> =
    HashMap::with_max_entries(MAX_INSTANCES, BPF_F_NO_PREALLOC);

#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<V4Key, AllowValue> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);

#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<V6Key, AllowValue> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);

/// What `network.listen` lists: local addresses and ports, with the same push-down as the
/// allow tries.
#[map(name = "LISTEN_V4")]
static LISTEN_V4: LpmTrie<V4Key, AllowValue> = LpmTrie::with_max_entries(MAX_LISTEN_ENTRIES, 0);

#[map(name = "LISTEN_V6")]
static LISTEN_V6: LpmTrie<V6Key, AllowValue> = LpmTrie::with_max_entries(MAX_LISTEN_ENTRIES, 0);

/// User space creates every counter of an instance up front, so increments are never lost to a
/// racing first insert on two CPUs.
#[map(name = "BLOCKED")]
static BLOCKED: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_INSTANCES * COUNTERS_PER_INSTANCE, BPF_F_NO_PREALLOC);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Created by user space with the instance's counters, like them.
#[map(name = "EVENT_BUDGET")]
static EVENT_BUDGET: PerCpuHashMap<u32, EventBudget> =
    PerCpuHashMap::with_max_entries(MAX_INSTANCES, BPF_F_NO_PREALLOC);

const WINDOW_NS: u64 = 1_000_000_000;

#[map(name = "DNS_REDIRECT")]
static DNS_REDIRECT: HashMap<u32, DnsRedirect> =
    HashMap::with_max_entries(MAX_INSTANCES, BPF_F_NO_PREALLOC);

#[map(name = "DNS_ORIGINS")]
static DNS_ORIGINS: LruHashMap<u64, DnsOrigin> = LruHashMap::with_max_entries(MAX_DNS_ORIGINS, 0);

/// Addresses that DNS answers admitted, each with the port rules of the names that answered
/// it and when they expire. Judged alongside the allow tries.
#[map(name = "HOSTS_V4")]
static HOSTS_V4: HashMap<HostV4Key, HostValue> =
    HashMap::with_max_entries(MAX_HOST_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "HOSTS_V6")]
static HOSTS_V6: HashMap<HostV6Key, HostValue> =
    HashMap::with_max_entries(MAX_HOST_ENTRIES, BPF_F_NO_PREALLOC);

const DNS_PORT: u16 = 53;

#[cgroup_sock_addr(connect4)]
pub fn isolate_connect4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn isolate_connect6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, HOOK_CONNECT)
}

/// Unconnected UDP: `sendto`/`sendmsg` with a destination address.
#[cgroup_sock_addr(sendmsg4)]
pub fn isolate_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn isolate_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, HOOK_SENDMSG)
}

/// `bind` to a local address: refused unless `network.listen` lists it. Port 0 (the kernel
/// picks an ephemeral port, as clients do before they connect or send) always passes: what
/// arrives on such a port is judged by the ingress program.
#[cgroup_sock_addr(bind4)]
pub fn isolate_bind4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, HOOK_BIND)
}

#[cgroup_sock_addr(bind6)]
pub fn isolate_bind6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, HOOK_BIND)
}

/// A redirected socket's answers arrive from isolate's resolver: they are made to come from the
/// resolver the socket addressed (resolver libraries drop answers from anyone else). Always
/// lets the datagram through (recvmsg programs cannot refuse).
#[cgroup_sock_addr(recvmsg4)]
pub fn isolate_recvmsg4(ctx: SockAddrContext) -> i32 {
    let Some(redirect) = dns_redirect_of_caller() else {
        return VERDICT_ALLOW;
    };
    // SAFETY: as in port_and_protocol.
    let (ip, port) = unsafe {
        let sa = ctx.sock_addr;
        (
            core::ptr::read_volatile(&raw const (*sa).user_ip4),
            core::ptr::read_volatile(&raw const (*sa).user_port),
        )
    };
    if ip.to_ne_bytes() != redirect.addr_v4 || u16::from_be(port as u16) != redirect.port {
        return VERDICT_ALLOW;
    }
    // SAFETY: the context is the sock_addr the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: the value is copied out at once.
    if let Some(origin) = unsafe { DNS_ORIGINS.get(&cookie) }
        && origin.family == FAMILY_V4
    {
        let [a, b, c, d, ..] = origin.addr;
        // SAFETY: recvmsg4 programs may write the source address and port.
        unsafe {
            let sa = ctx.sock_addr;
            core::ptr::write_volatile(&raw mut (*sa).user_ip4, u32::from_ne_bytes([a, b, c, d]));
            core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(origin.port.to_be()));
        }
    }
    VERDICT_ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn isolate_recvmsg6(ctx: SockAddrContext) -> i32 {
    let Some(redirect) = dns_redirect_of_caller() else {
        return VERDICT_ALLOW;
    };
    let (addr, port) = sock_addr_v6(&ctx);
    // A v6 socket that asked a v4-mapped resolver was sent to the mapped v4 resolver.
    let from_resolver = addr == redirect.addr_v6 || addr == v4_mapped(redirect.addr_v4);
    if !from_resolver || port != redirect.port {
        return VERDICT_ALLOW;
    }
    // SAFETY: the context is the sock_addr the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: the value is copied out at once.
    if let Some(origin) = unsafe { DNS_ORIGINS.get(&cookie) }
        && origin.family == FAMILY_V6
    {
        write_sock_addr_v6(&ctx, origin.addr, origin.port);
    }
    VERDICT_ALLOW
}

/// The resolver the calling UID's DNS queries go to, when it is confined and has one.
#[inline(always)]
fn dns_redirect_of_caller() -> Option<DnsRedirect> {
    let uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: the value is copied out at once; user space only replaces whole entries.
    unsafe { DNS_REDIRECT.get(&uid) }.copied()
}

/// Sends a DNS query (TCP or UDP to port 53, whatever the address) of a UID that has a
/// resolver to that resolver instead, and remembers where it was going. `false` when the
/// query stays as it is (the UID has no resolver, or this is not DNS).
#[inline(always)]
fn redirect_dns_v4(ctx: &SockAddrContext, uid: u32, addr: [u8; 4], port: u16, proto: u8) -> bool {
    if port != DNS_PORT || proto == PROTO_OTHER {
        return false;
    }
    // SAFETY: the value is copied out at once.
    let Some(redirect) = (unsafe { DNS_REDIRECT.get(&uid) }).copied() else {
        return false;
    };
    let mut origin = [0u8; 16];
    origin[..4].copy_from_slice(&addr);
    remember_origin(ctx, origin, FAMILY_V4);
    // SAFETY: connect4 and sendmsg4 programs may write the destination address and port.
    unsafe {
        let sa = ctx.sock_addr;
        core::ptr::write_volatile(
            &raw mut (*sa).user_ip4,
            u32::from_ne_bytes(redirect.addr_v4),
        );
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(redirect.port.to_be()));
    }
    true
}

/// As `redirect_dns_v4`, for IPv6 sockets (a v4-mapped resolver goes to the mapped v4 one).
#[inline(always)]
fn redirect_dns_v6(ctx: &SockAddrContext, uid: u32, addr: [u8; 16], port: u16, proto: u8) -> bool {
    if port != DNS_PORT || proto == PROTO_OTHER {
        return false;
    }
    // SAFETY: the value is copied out at once.
    let Some(redirect) = (unsafe { DNS_REDIRECT.get(&uid) }).copied() else {
        return false;
    };
    remember_origin(ctx, addr, FAMILY_V6);
    let to = if is_v4_mapped(&addr) {
        v4_mapped(redirect.addr_v4)
    } else {
        redirect.addr_v6
    };
    write_sock_addr_v6(ctx, to, redirect.port);
    true
}

#[inline(always)]
fn remember_origin(ctx: &SockAddrContext, addr: [u8; 16], family: u8) {
    // SAFETY: the context is the sock_addr the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let origin = DnsOrigin {
        addr,
        port: DNS_PORT,
        family,
        _pad: [0; 5],
    };
    // A full map forgets its least recently used socket: that socket's answers then come
    // from the resolver's own address, which resolver libraries drop (no answer, no leak).
    let _ = DNS_ORIGINS.insert(&cookie, &origin, 0);
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

#[inline(always)]
fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&v4);
    addr
}

/// The IPv6 address (network order bytes) and port (host order) of a sock_addr context.
#[inline(always)]
fn sock_addr_v6(ctx: &SockAddrContext) -> ([u8; 16], u16) {
    // SAFETY: as in port_and_protocol.
    let (words, port) = unsafe {
        let sa = ctx.sock_addr;
        (
            [
                core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*sa).user_port),
        )
    };
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&words[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&words[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&words[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&words[3].to_ne_bytes());
    (addr, u16::from_be(port as u16))
}

#[inline(always)]
fn write_sock_addr_v6(ctx: &SockAddrContext, addr: [u8; 16], port: u16) {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    // SAFETY: connect6, sendmsg6 and recvmsg6 programs may write the address and port, one
    // u32 at a time.
    unsafe {
        let sa = ctx.sock_addr;
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[0], word(0));
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[1], word(4));
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[2], word(8));
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], word(12));
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port.to_be()));
    }
}

/// Whether a DNS answer admitted (`addr`, `port`, `proto`) for `uid`, and has not expired.
#[inline(always)]
fn admitted_v4(uid: u32, addr: [u8; 4], port: u16, proto: u8) -> bool {
    // SAFETY: the value is only read.
    unsafe { HOSTS_V4.get(&HostV4Key { uid, addr }) }
        .is_some_and(|host| host.permits(port, proto, unsafe { bpf_ktime_get_boot_ns() }))
}

#[inline(always)]
fn admitted_v6(uid: u32, addr: [u8; 16], port: u16, proto: u8) -> bool {
    // SAFETY: the value is only read.
    unsafe { HOSTS_V6.get(&HostV6Key { uid, addr }) }
        .is_some_and(|host| host.permits(port, proto, unsafe { bpf_ktime_get_boot_ns() }))
}

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

/// The backstop: packets of protocols the socket hooks do not judge (ICMP from ping sockets,
/// anything a socket type without a sock_addr hook sends). TCP and UDP were judged at connect
/// or sendmsg time, and their replies (an instance serving on a port answers anyone who
/// reached it) must flow, so they pass here — unless the packet carries a source route (IPv4
/// options, an IPv6 routing header, set with `setsockopt` or per datagram): it then goes to
/// its first hop, not to the destination that was judged, so it is judged again by the
/// header's destination.
#[cgroup_skb(egress)]
pub fn isolate_egress(ctx: SkBuffContext) -> i32 {
    if plain_tcp_or_udp(&ctx) {
        return VERDICT_ALLOW;
    }
    let Some((uid, generation)) = confined_socket(&ctx) else {
        return VERDICT_ALLOW;
    };
    match ethertype(&ctx) {
        ETH_P_IP => {
            let (Ok(version_ihl), Ok(protocol), Ok(daddr)) = (
                ctx.load::<u8>(0),
                ctx.load::<u8>(9),
                ctx.load::<[u8; 4]>(16),
            ) else {
                return VERDICT_DENY;
            };
            let header_len = usize::from(version_ihl & 0x0f) * 4;
            let proto = protocol_bit(u32::from(protocol));
            if proto == PROTO_OTHER {
                return judge_v4_addr::<false>(uid, generation, daddr, 0, proto, HOOK_EGRESS);
            }
            if header_len == 20 {
                // No options: the destination is the one judged.
                return VERDICT_ALLOW;
            }
            let Ok(port) = ctx.load::<u16>(header_len + 2) else {
                return VERDICT_DENY;
            };
            judge_v4_addr::<false>(
                uid,
                generation,
                daddr,
                u16::from_be(port),
                proto,
                HOOK_EGRESS,
            )
        }
        ETH_P_IPV6 => {
            let (Some(transport), Ok(daddr)) =
                (Ipv6Transport::read(&ctx), ctx.load::<[u8; 16]>(24))
            else {
                return VERDICT_DENY;
            };
            let proto = protocol_bit(u32::from(transport.protocol));
            if proto == PROTO_OTHER {
                return judge_v6_addr::<false>(uid, generation, daddr, 0, proto, HOOK_EGRESS);
            }
            if !transport.routed {
                return VERDICT_ALLOW;
            }
            let Ok(port) = ctx.load::<u16>(transport.offset + 2) else {
                return VERDICT_DENY;
            };
            judge_v6_addr::<false>(
                uid,
                generation,
                daddr,
                u16::from_be(port),
                proto,
                HOOK_EGRESS,
            )
        }
        // Neither IPv4 nor IPv6: nothing a policy speaks of; fail closed.
        _ => VERDICT_DENY,
    }
}

/// The skb's EtherType. Packet data starts at the network header in cgroup_skb programs, and
/// `protocol` holds the big-endian 16-bit EtherType, zero-extended.
#[inline(always)]
fn ethertype(ctx: &SkBuffContext) -> u32 {
    u32::from(u16::from_be(ctx.skb.protocol() as u16))
}

/// The packet's first `N` bytes from the network header on, read in place (direct packet
/// access, no helper call) when the kernel holds them in the skb's linear part, as it does
/// the headers of what local sockets send and receive.
#[inline(always)]
fn linear_header<const N: usize>(ctx: &SkBuffContext) -> Option<&[u8; N]> {
    // SAFETY: cgroup_skb programs may read `data` and `data_end`.
    let (data, end) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).data as usize, (*skb).data_end as usize)
    };
    if data + N > end {
        return None;
    }
    // SAFETY: the N bytes lie within the packet's linear data (checked just above, as the
    // verifier requires before any read through the pointer).
    Some(unsafe { &*(data as *const [u8; N]) })
}

/// IPv4 version 4 with a 20-byte header: no options.
const IPV4_WITHOUT_OPTIONS: u8 = 0x45;

/// Whether an outgoing packet is TCP or UDP with nothing that sends it elsewhere than its
/// header's destination (no IPv4 options, no IPv6 extension header): the socket hooks judged
/// its flow, so it passes before any map is read. Everything else (`false`) takes the whole
/// path, confined UID or not.
#[inline(always)]
fn plain_tcp_or_udp(ctx: &SkBuffContext) -> bool {
    let is_tcp_or_udp = |protocol: u8| {
        let protocol = u32::from(protocol);
        protocol == IPPROTO_TCP || protocol == IPPROTO_UDP
    };
    match ethertype(ctx) {
        ETH_P_IP => linear_header::<20>(ctx)
            .is_some_and(|header| header[0] == IPV4_WITHOUT_OPTIONS && is_tcp_or_udp(header[9])),
        ETH_P_IPV6 => linear_header::<40>(ctx).is_some_and(|header| is_tcp_or_udp(header[6])),
        _ => false,
    }
}

/// Whether an arriving packet is a TCP segment that opens no connection (anything but a SYN
/// without ACK), with no IPv4 options or IPv6 extension header to step over: the ingress
/// program lets every such segment pass, so it passes before any map is read.
#[inline(always)]
fn tcp_within_a_connection(ctx: &SkBuffContext) -> bool {
    // Where the TCP flags are: 13 bytes into the TCP header.
    const V4_FLAGS: usize = 20 + 13;
    const V6_FLAGS: usize = 40 + 13;
    let continues = |flags: u8| flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_ACK != 0;
    match ethertype(ctx) {
        ETH_P_IP => linear_header::<{ V4_FLAGS + 1 }>(ctx).is_some_and(|header| {
            header[0] == IPV4_WITHOUT_OPTIONS
                && u32::from(header[9]) == IPPROTO_TCP
                && continues(header[V4_FLAGS])
        }),
        ETH_P_IPV6 => linear_header::<{ V6_FLAGS + 1 }>(ctx).is_some_and(|header| {
            u32::from(header[6]) == IPPROTO_TCP && continues(header[V6_FLAGS])
        }),
        _ => false,
    }
}

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// IPv6 extension headers a packet may carry before its transport header, that the packet
/// programs step over: hop-by-hop options, routing, destination options.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DEST_OPTIONS: u8 = 60;
/// How many of them it steps over before it gives up and drops the packet.
const IPV6_MAX_EXTENSION_HEADERS: usize = 4;

/// Inbound: what arrives for the instance's sockets. A new TCP connection (SYN without ACK)
/// or a UDP datagram passes only when `network.listen` lists its local address and port, so
/// a `listen()` without `bind` (the kernel picks an ephemeral port, and no bind hook runs) is
/// covered too. A datagram from an address and port the instance may send to passes as well:
/// the answers to its own allowed flows (DNS replies, QUIC). Everything else of TCP (the
/// rest of a connection, SYN-ACKs to its own connects) and other protocols pass: a connection
/// can only exist once its first packet passed.
#[cgroup_skb(ingress)]
pub fn isolate_ingress(ctx: SkBuffContext) -> i32 {
    if tcp_within_a_connection(&ctx) {
        return VERDICT_ALLOW;
    }
    let Some((uid, generation)) = confined_socket(&ctx) else {
        return VERDICT_ALLOW;
    };
    match ethertype(&ctx) {
        ETH_P_IP => ingress_v4(&ctx, uid, generation),
        ETH_P_IPV6 => ingress_v6(&ctx, uid, generation),
        _ => VERDICT_DENY,
    }
}

#[inline(always)]
fn ingress_v4(ctx: &SkBuffContext, uid: u32, generation: u32) -> i32 {
    let (Ok(version_ihl), Ok(protocol), Ok(saddr), Ok(daddr)) = (
        ctx.load::<u8>(0),
        ctx.load::<u8>(9),
        ctx.load::<[u8; 4]>(12),
        ctx.load::<[u8; 4]>(16),
    ) else {
        return VERDICT_DENY;
    };
    let transport = usize::from(version_ihl & 0x0f) * 4;
    let Some(arrival) = Arrival::read(ctx, protocol, transport) else {
        return VERDICT_DENY;
    };
    match arrival {
        Arrival::Pass => VERDICT_ALLOW,
        Arrival::Judge {
            proto,
            source_port,
            local_port,
        } => {
            if permits_v4(&LISTEN_V4, uid, generation, daddr, local_port, proto)
                || (proto == PROTO_UDP
                    && (permits_v4(&ALLOW_V4, uid, generation, saddr, source_port, proto)
                        || admitted_v4(uid, saddr, source_port, proto)))
            {
                return VERDICT_ALLOW;
            }
            let mut peer = [0u8; 16];
            peer[..4].copy_from_slice(&saddr);
            let let_through =
                record_block::<false>(uid, FAMILY_V4, proto, HOOK_INGRESS, peer, local_port);
            verdict(let_through)
        }
    }
}

#[inline(always)]
fn ingress_v6(ctx: &SkBuffContext, uid: u32, generation: u32) -> i32 {
    let (Some(transport), Ok(saddr), Ok(daddr)) = (
        Ipv6Transport::read(ctx),
        ctx.load::<[u8; 16]>(8),
        ctx.load::<[u8; 16]>(24),
    ) else {
        return VERDICT_DENY;
    };
    let Some(arrival) = Arrival::read(ctx, transport.protocol, transport.offset) else {
        return VERDICT_DENY;
    };
    match arrival {
        Arrival::Pass => VERDICT_ALLOW,
        Arrival::Judge {
            proto,
            source_port,
            local_port,
        } => {
            // A v4-mapped local address is never seen here: such packets arrive as IPv4.
            if permits_v6(&LISTEN_V6, uid, generation, daddr, local_port, proto)
                || (proto == PROTO_UDP
                    && (permits_v6(&ALLOW_V6, uid, generation, saddr, source_port, proto)
                        || admitted_v6(uid, saddr, source_port, proto)))
            {
                return VERDICT_ALLOW;
            }
            let let_through =
                record_block::<false>(uid, FAMILY_V6, proto, HOOK_INGRESS, saddr, local_port);
            verdict(let_through)
        }
    }
}

/// Where an IPv6 packet's transport header starts, past the extension headers the programs
/// step over (hop-by-hop, routing, destination options).
struct Ipv6Transport {
    /// The transport protocol (the last `next header`).
    protocol: u8,
    /// Offset of its header from the network header.
    offset: usize,
    /// Whether a routing header was among them (the packet goes to its first segment).
    routed: bool,
}

impl Ipv6Transport {
    /// `None` when the header cannot be read, or there are more extension headers than the
    /// programs step over (then they cannot find the ports, so they cannot judge).
    #[inline(always)]
    fn read(ctx: &SkBuffContext) -> Option<Self> {
        let mut transport = Ipv6Transport {
            protocol: ctx.load::<u8>(6).ok()?,
            offset: 40,
            routed: false,
        };
        let mut i = 0;
        while i < IPV6_MAX_EXTENSION_HEADERS {
            if !is_stepped_over(transport.protocol) {
                return Some(transport);
            }
            transport.routed |= transport.protocol == IPV6_ROUTING;
            // Each of these starts with (next header, length in 8-octet units beyond the
            // first 8).
            let next = ctx.load::<u8>(transport.offset).ok()?;
            let length = ctx.load::<u8>(transport.offset + 1).ok()?;
            transport.protocol = next;
            transport.offset += (usize::from(length) + 1) * 8;
            i += 1;
        }
        (!is_stepped_over(transport.protocol)).then_some(transport)
    }
}

#[inline(always)]
fn is_stepped_over(next_header: u8) -> bool {
    next_header == IPV6_HOP_BY_HOP
        || next_header == IPV6_ROUTING
        || next_header == IPV6_DEST_OPTIONS
}

/// What the ingress program makes of an arriving packet's transport header.
enum Arrival {
    /// Not the start of anything: the rest of a TCP connection, or another protocol.
    Pass,
    /// A new TCP connection or a UDP datagram, to be judged.
    Judge {
        proto: u8,
        source_port: u16,
        local_port: u16,
    },
}

impl Arrival {
    /// `None` when the header cannot be read (the packet is then dropped).
    #[inline(always)]
    fn read(ctx: &SkBuffContext, protocol: u8, transport: usize) -> Option<Self> {
        let protocol = u32::from(protocol);
        if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
            return Some(Arrival::Pass);
        }
        // Both headers start with the source and destination ports, big-endian.
        let source_port = u16::from_be(ctx.load::<u16>(transport).ok()?);
        let local_port = u16::from_be(ctx.load::<u16>(transport + 2).ok()?);
        if protocol == IPPROTO_UDP {
            return Some(Arrival::Judge {
                proto: PROTO_UDP,
                source_port,
                local_port,
            });
        }
        let flags = ctx.load::<u8>(transport + 13).ok()?;
        if flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0 {
            Some(Arrival::Judge {
                proto: PROTO_TCP,
                source_port,
                local_port,
            })
        } else {
            Some(Arrival::Pass)
        }
    }
}

/// The UID owning a packet's socket, and its policy generation when the UID is confined.
#[inline(always)]
fn confined_socket(ctx: &SkBuffContext) -> Option<(u32, u32)> {
    let uid = ctx.get_socket_uid();
    // SAFETY: the value is copied out at once; user space only replaces whole entries.
    let state = unsafe { INSTANCES.get(&uid) }?;
    Some((uid, state.generation))
}

/// The UID of the calling task, and its policy generation when the UID is confined.
#[inline(always)]
fn confined_caller() -> Option<(u32, u32)> {
    let uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: the value is copied out at once; user space only replaces whole entries.
    let state = unsafe { INSTANCES.get(&uid) }?;
    Some((uid, state.generation))
}

/// The destination port (host order) and protocol bit of a sock_addr context.
#[inline(always)]
fn port_and_protocol(ctx: &SockAddrContext) -> (u16, u8) {
    // SAFETY: the kernel hands every sock_addr program a valid context; fields are read one
    // u32 at a time, as the verifier wants.
    let (port, protocol) = unsafe {
        let sa = ctx.sock_addr;
        (
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).protocol),
        )
    };
    (u16::from_be(port as u16), protocol_bit(protocol))
}

#[inline(always)]
fn judge_v4(ctx: &SockAddrContext, hook: u8) -> i32 {
    let Some((uid, generation)) = confined_caller() else {
        return VERDICT_ALLOW;
    };
    // SAFETY: as in port_and_protocol.
    let ip = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_ip4) };
    let (port, proto) = port_and_protocol(ctx);
    if hook == HOOK_BIND && port == 0 {
        return VERDICT_ALLOW;
    }
    // user_ip4 is in network byte order in memory: its native bytes are the address bytes.
    let addr = ip.to_ne_bytes();
    if hook != HOOK_BIND && redirect_dns_v4(ctx, uid, addr, port, proto) {
        return VERDICT_ALLOW;
    }
    judge_v4_addr::<true>(uid, generation, addr, port, proto, hook)
}

#[inline(always)]
fn judge_v4_addr<const IN_TASK: bool>(
    uid: u32,
    generation: u32,
    addr: [u8; 4],
    port: u16,
    proto: u8,
    hook: u8,
) -> i32 {
    let rules = if hook == HOOK_BIND {
        &LISTEN_V4
    } else {
        &ALLOW_V4
    };
    if permits_v4(rules, uid, generation, addr, port, proto)
        || (hook != HOOK_BIND && admitted_v4(uid, addr, port, proto))
    {
        return VERDICT_ALLOW;
    }
    let mut dest = [0u8; 16];
    dest[..4].copy_from_slice(&addr);
    verdict(record_block::<IN_TASK>(
        uid, FAMILY_V4, proto, hook, dest, port,
    ))
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let Some((uid, generation)) = confined_caller() else {
        return VERDICT_ALLOW;
    };
    let (addr, _) = sock_addr_v6(ctx);
    let (port, proto) = port_and_protocol(ctx);
    if hook == HOOK_BIND && port == 0 {
        return VERDICT_ALLOW;
    }
    if hook != HOOK_BIND && redirect_dns_v6(ctx, uid, addr, port, proto) {
        return VERDICT_ALLOW;
    }
    // ::ffff:a.b.c.d reaches an IPv4 host: judge it by the IPv4 policy, so a v6 socket is no
    // way around it.
    if is_v4_mapped(&addr) {
        let [.., a, b, c, d] = addr;
        return judge_v4_addr::<true>(uid, generation, [a, b, c, d], port, proto, hook);
    }
    judge_v6_addr::<true>(uid, generation, addr, port, proto, hook)
}

#[inline(always)]
fn judge_v6_addr<const IN_TASK: bool>(
    uid: u32,
    generation: u32,
    addr: [u8; 16],
    port: u16,
    proto: u8,
    hook: u8,
) -> i32 {
    let rules = if hook == HOOK_BIND {
        &LISTEN_V6
    } else {
        &ALLOW_V6
    };
    if permits_v6(rules, uid, generation, addr, port, proto)
        || (hook != HOOK_BIND && admitted_v6(uid, addr, port, proto))
    {
        return VERDICT_ALLOW;
    }
    verdict(record_block::<IN_TASK>(
        uid, FAMILY_V6, proto, hook, addr, port,
    ))
}

/// Whether `rules` (an allow or listen trie) let `uid`'s policy `generation` reach or serve
/// (`addr`, `port`, `proto`).
#[inline(always)]
fn permits_v4(
    rules: &LpmTrie<V4Key, AllowValue>,
    uid: u32,
    generation: u32,
    addr: [u8; 4],
    port: u16,
    proto: u8,
) -> bool {
    let key = Key::new(
        KEY_HEADER_BITS + 32,
        V4Key {
            uid,
            generation,
            addr,
        },
    );
    rules
        .get(&key)
        .is_some_and(|allowed| allowed.permits(port, proto))
}

#[inline(always)]
fn permits_v6(
    rules: &LpmTrie<V6Key, AllowValue>,
    uid: u32,
    generation: u32,
    addr: [u8; 16],
    port: u16,
    proto: u8,
) -> bool {
    let key = Key::new(
        KEY_HEADER_BITS + 128,
        V6Key {
            uid,
            generation,
            addr,
        },
    );
    rules
        .get(&key)
        .is_some_and(|allowed| allowed.permits(port, proto))
}

#[inline(always)]
fn protocol_bit(protocol: u32) -> u8 {
    match protocol {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => PROTO_OTHER,
    }
}

/// The verdict of a cgroup program on an attempt its rules refuse: allowed after all when
/// [`record_block`] says the UID only observes.
#[inline(always)]
fn verdict(let_through: bool) -> i32 {
    if let_through {
        VERDICT_ALLOW
    } else {
        VERDICT_DENY
    }
}

/// Counts and reports an attempt `uid`'s rules refuse (see [`report_block`]), and tells the
/// caller whether to let it through all the same: `true` when the UID only observes
/// (`INSTANCE_OBSERVE`, learn mode). Every caller that refuses after it returns its allow
/// verdict instead then; the fail-closed refusals of what cannot be judged (unreadable
/// packets) record nothing and stay.
#[inline(always)]
fn record_block<const IN_TASK: bool>(
    uid: u32,
    family: u8,
    protocol: u8,
    hook: u8,
    addr: [u8; 16],
    port: u16,
) -> bool {
    report_block::<IN_TASK>(uid, family, protocol, hook, addr, port);
    observes(uid)
}

/// Whether `uid` only observes. Looked up again rather than carried from `confined_caller`,
/// so only the refusal path pays for it (one hash lookup).
#[inline(always)]
fn observes(uid: u32) -> bool {
    // SAFETY: the value is only read; user space only replaces whole entries.
    unsafe { INSTANCES.get(&uid) }.is_some_and(|state| state.flags & INSTANCE_OBSERVE != 0)
}

/// Counts the blocked attempt and queues an event for the audit trail, within the UID's
/// event budget. An event not sent (budget spent, ring buffer full) is counted as unsent:
/// never the verdict or the count is lost, and every event is either sent or counted.
#[inline(always)]
fn report_block<const IN_TASK: bool>(
    uid: u32,
    family: u8,
    protocol: u8,
    hook: u8,
    addr: [u8; 16],
    port: u16,
) {
    let counter = CounterKey {
        uid,
        family,
        protocol,
        hook,
        _pad: 0,
    };
    if let Some(count) = BLOCKED.get_ptr_mut(&counter) {
        add_one(count);
    } else {
        let _ = BLOCKED.insert(&counter, &1, 0);
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !within_budget(uid, now) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<BlockEvent>(0) else {
        count_unsent(uid);
        return;
    };
    // Packet hooks run outside the sender's task on older kernels, which refuse these
    // helpers there (6.1: pid_tgid, 6.12: comm); their events carry no pid or comm.
    let (pid, comm) = if IN_TASK {
        let pid_tgid = bpf_get_current_pid_tgid();
        (
            (pid_tgid >> 32) as u32,
            bpf_get_current_comm().unwrap_or_default(),
        )
    } else {
        (0, [0; 16])
    };
    entry.write(BlockEvent {
        timestamp_ns: now,
        uid,
        pid,
        comm,
        addr,
        port,
        family,
        protocol,
        hook,
        _pad: [0; 3],
    });
    entry.submit(0);
}

/// Takes one event from this CPU's budget of `uid` for the second; when it is spent, counts
/// the event as unsent instead. A UID without a budget (user space creates it with the
/// instance's counters) sends every event. Not inlined: inlined into the packet programs, it
/// made LLVM spill a register left undefined on one path, which the verifier refuses.
#[inline(never)]
fn within_budget(uid: u32, now: u64) -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(&uid) else {
        return true;
    };
    // SAFETY: this CPU's slot of a live map value.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) >= WINDOW_NS {
        budget.window_start_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= EVENTS_PER_CPU_SECOND {
        add_one(&raw mut budget.unsent);
        return false;
    }
    budget.sent += 1;
    true
}

/// Counts an event of `uid` that could not be sent (the ring buffer was full).
#[inline(always)]
fn count_unsent(uid: u32) {
    if let Some(budget) = EVENT_BUDGET.get_ptr_mut(&uid) {
        // SAFETY: as in within_budget.
        add_one(unsafe { &raw mut (*budget).unsent });
    }
}

/// Adds one to a per-CPU count atomically: a packet hook in a softirq can interrupt a socket
/// hook on the same CPU, and a plain read-modify-write would then lose one of the two.
#[inline(always)]
fn add_one(count: *mut u64) {
    // SAFETY: `count` points into a live map value, aligned for u64. The BPF target has
    // no compare-and-swap, so core's AtomicU64 offers no fetch_add; the intrinsic is the
    // kernel's atomic add (`lock xadd`).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            count, 1,
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
