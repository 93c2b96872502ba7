//! isolate's eBPF programs: cgroup socket-address hooks that refuse, with EPERM, every
//! destination the confined UID's policy does not allow. UIDs without a policy pass untouched.
#![no_std]
#![no_main]

mod unix;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{HashMap, LpmTrie, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::{SkBuffContext, SockAddrContext},
};
use isolate_ebpf_common::{
    AllowValue, BlockEvent, COUNTERS_PER_INSTANCE, CounterKey, FAMILY_V4, FAMILY_V6, HOOK_CONNECT,
    HOOK_EGRESS, HOOK_SENDMSG, InstanceState, KEY_HEADER_BITS, MAX_ALLOW_ENTRIES, MAX_INSTANCES,
    PROTO_OTHER, PROTO_TCP, PROTO_UDP, V4Key, V6Key,
};

/// Return values of a cgroup sock_addr program.
const VERDICT_ALLOW: i32 = 1;
const VERDICT_DENY: i32 = 0; // the caller gets EPERM

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[map(name = "INSTANCES")]
static INSTANCES: HashMap<u32, InstanceState> = HashMap::with_max_entries(MAX_INSTANCES, 0);

#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<V4Key, AllowValue> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);

#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<V6Key, AllowValue> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);

/// User space creates every counter of an instance up front, so increments are never lost to a
/// racing first insert on two CPUs.
#[map(name = "BLOCKED")]
static BLOCKED: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_INSTANCES * COUNTERS_PER_INSTANCE, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

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

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

/// The backstop: packets of protocols the socket hooks do not judge (ICMP from ping sockets,
/// anything a socket type without a sock_addr hook sends). TCP and UDP were judged at connect
/// or sendmsg time, and their replies (an instance serving on a port answers anyone who
/// reached it) must flow, so they pass here.
#[cgroup_skb(egress)]
pub fn isolate_egress(ctx: SkBuffContext) -> i32 {
    let uid = ctx.get_socket_uid();
    // SAFETY: the value is copied out at once; user space only replaces whole entries.
    let Some(state) = (unsafe { INSTANCES.get(&uid) }) else {
        return VERDICT_ALLOW;
    };
    let generation = state.generation;
    // Packet data starts at the network header in cgroup_skb programs.
    // `protocol` holds the skb's big-endian 16-bit EtherType, zero-extended.
    match u32::from(u16::from_be(ctx.skb.protocol() as u16)) {
        ETH_P_IP => {
            let (Ok(protocol), Ok(daddr)) = (ctx.load::<u8>(9), ctx.load::<[u8; 4]>(16)) else {
                return VERDICT_DENY;
            };
            if u32::from(protocol) == IPPROTO_TCP || u32::from(protocol) == IPPROTO_UDP {
                return VERDICT_ALLOW;
            }
            judge_v4_addr::<false>(uid, generation, daddr, 0, PROTO_OTHER, HOOK_EGRESS)
        }
        ETH_P_IPV6 => {
            let (Ok(next_header), Ok(daddr)) = (ctx.load::<u8>(6), ctx.load::<[u8; 16]>(24)) else {
                return VERDICT_DENY;
            };
            if u32::from(next_header) == IPPROTO_TCP || u32::from(next_header) == IPPROTO_UDP {
                return VERDICT_ALLOW;
            }
            judge_v6_addr::<false>(uid, generation, daddr, 0, PROTO_OTHER, HOOK_EGRESS)
        }
        // Neither IPv4 nor IPv6: nothing a policy speaks of; fail closed.
        _ => VERDICT_DENY,
    }
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
    // user_ip4 is in network byte order in memory: its native bytes are the address bytes.
    judge_v4_addr::<true>(uid, generation, ip.to_ne_bytes(), port, proto, hook)
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
    let key = Key::new(
        KEY_HEADER_BITS + 32,
        V4Key {
            uid,
            generation,
            addr,
        },
    );
    if let Some(allowed) = ALLOW_V4.get(&key)
        && allowed.permits(port, proto)
    {
        return VERDICT_ALLOW;
    }
    let mut dest = [0u8; 16];
    dest[..4].copy_from_slice(&addr);
    record_block::<IN_TASK>(uid, FAMILY_V4, proto, hook, dest, port);
    VERDICT_DENY
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let Some((uid, generation)) = confined_caller() else {
        return VERDICT_ALLOW;
    };
    // SAFETY: as in port_and_protocol.
    let words = unsafe {
        let sa = ctx.sock_addr;
        [
            core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
        ]
    };
    let (port, proto) = port_and_protocol(ctx);
    // ::ffff:a.b.c.d reaches an IPv4 host: judge it by the IPv4 policy, so a v6 socket is no
    // way around it.
    if words[0] == 0 && words[1] == 0 && words[2] == 0x0000_ffff_u32.to_be() {
        return judge_v4_addr::<true>(uid, generation, words[3].to_ne_bytes(), port, proto, hook);
    }
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&words[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&words[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&words[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&words[3].to_ne_bytes());
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
    let key = Key::new(
        KEY_HEADER_BITS + 128,
        V6Key {
            uid,
            generation,
            addr,
        },
    );
    if let Some(allowed) = ALLOW_V6.get(&key)
        && allowed.permits(port, proto)
    {
        return VERDICT_ALLOW;
    }
    record_block::<IN_TASK>(uid, FAMILY_V6, proto, hook, addr, port);
    VERDICT_DENY
}

#[inline(always)]
fn protocol_bit(protocol: u32) -> u8 {
    match protocol {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => PROTO_OTHER,
    }
}

/// Counts the blocked attempt and queues an event for the audit trail. A full ring buffer
/// loses the event, never the verdict or the count.
#[inline(always)]
fn record_block<const IN_TASK: bool>(
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
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *count += 1 };
    } else {
        let _ = BLOCKED.insert(&counter, &1, 0);
    }
    if let Some(mut entry) = EVENTS.reserve::<BlockEvent>(0) {
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
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
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
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
