//! The eBPF egress layer end to end on the running kernel: isolate's programs attached to a
//! child cgroup (never the root cgroup on the host) inside a private network namespace, judged
//! by real connects and datagrams from a client running as the confined UID.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use common::probe::{self, Mode, accept_one, received};
use common::sandbox::{Sandbox, loaded_isolate_programs, still_loaded_after_grace};
use ipnet::{Ipv4Net, Ipv6Net};
use isolate_ebpf_common::{
    CounterKey, FAMILY_V4, FAMILY_V6, HOOK_CONNECT, HOOK_EGRESS, HOOK_SENDMSG, PROTO_OTHER,
    PROTO_TCP, PROTO_UDP,
};
use isolate_enforcer::bpf::{BpfLayer, CompiledRules, PinDir, compile_rules};
use isolate_policy::{NetRule, PortRange, Protocol};

// Not 65534: the kernel reports packets without a full socket as the overflow UID (nobody).
const CONFINED: u32 = 65533;
const OTHER: u32 = 65532;

fn main() -> ExitCode {
    if let Some(code) = probe::main_if_probe() {
        return code;
    }
    common::run_tests(&[
        (
            "tcp_v4_allowed_passes_and_forbidden_is_refused_at_once",
            tcp_v4,
        ),
        ("tcp_v6_allowed_passes_and_forbidden_is_refused", tcp_v6),
        ("v4_mapped_v6_is_judged_by_the_v4_policy", v4_mapped_v6),
        ("udp_connected_and_unconnected_are_judged", udp),
        ("icmp_is_judged_by_the_egress_backstop", icmp),
        ("other_uids_are_untouched", other_uid),
        ("counters_rise_by_exactly_the_blocked_attempts", counters),
        (
            "all_counters_read_at_once_equal_each_uids_own",
            counters_at_once,
        ),
        (
            "a_batch_of_swaps_leaves_only_the_new_generations",
            batch_of_swaps,
        ),
        ("events_carry_pid_comm_and_destination", events),
        (
            "enforcement_survives_the_loader_and_is_adopted",
            survives_loader,
        ),
        ("detach_removes_everything", detach_removes_everything),
        (
            "policy_update_under_load_never_lets_a_forbidden_connect_through",
            update_under_load,
        ),
        (
            "pin_directories_others_own_or_may_write_are_refused",
            untrusted_pins,
        ),
        (
            "a_pin_removed_behind_the_layers_back_detaches_nothing_while_it_runs",
            removed_pin,
        ),
        (
            "a_source_route_cannot_send_around_the_judged_destination",
            source_route,
        ),
    ])
}

/// IPv4 options with a loose source route (`IP_OPTIONS`, LSRR) send a datagram to its first
/// hop while `sendto` names an allowed destination: the egress program judges such packets by
/// the header's destination. Some kernels (6.18) refuse the option to unprivileged sockets
/// already; Debian's 6.1 and 6.12 accept it (the VM suite).
fn source_route() {
    let mut sandbox = Sandbox::new();
    let allowed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = allowed.local_addr().unwrap();
    apply(
        &mut sandbox,
        &[v4("127.0.0.1/32", Some(target.port()), Protocol::Udp)],
        &[],
    );
    let send = |first_hop: &str| {
        let exe = std::env::current_exe().unwrap();
        sandbox
            .command_as(CONFINED, &exe)
            .args(["probe", "udp-source-routed", &target.to_string(), first_hop])
            .status()
            .unwrap()
            .code()
            .unwrap()
    };
    let refused_by_kernel = i32::from(probe::SOURCE_ROUTE_REFUSED);
    let through_allowed = send("127.0.0.1");
    let through_forbidden = send("127.0.0.9");
    if through_forbidden == refused_by_kernel {
        assert_eq!(through_allowed, refused_by_kernel);
        eprintln!(
            "this kernel refuses IP_OPTIONS to unprivileged sockets: nothing to route around"
        );
        return;
    }
    assert_eq!(
        through_allowed, 0,
        "a route through the allowed destination itself"
    );
    assert_eq!(
        through_forbidden,
        libc::EPERM,
        "a datagram routed through a forbidden first hop was sent"
    );
    let counts = sandbox.layer().blocked_counts(CONFINED).unwrap();
    let key = CounterKey {
        uid: CONFINED,
        family: FAMILY_V4,
        protocol: PROTO_UDP,
        hook: HOOK_EGRESS,
        _pad: 0,
    };
    assert_eq!(counts[&key], 1, "{counts:?}");
}

/// A link's pin is its only reference besides the process that attached it: the layer holds
/// its links, so a pin someone removes does not silently detach a program while it runs (and
/// `is_attached` says the attachment is no longer whole).
fn removed_pin() {
    let mut sandbox = Sandbox::new();
    let (_listener, addr) = listen("127.0.0.1:0");
    apply(&mut sandbox, &[], &[]);
    assert_refused(&sandbox, Mode::Tcp, addr);
    let pin = sandbox
        .pins
        .link(isolate_ebpf_common::program_names::CONNECT4);
    std::fs::remove_file(&pin).unwrap();
    assert_refused(&sandbox, Mode::Tcp, addr);
    assert!(!sandbox.layer().is_attached(), "the missing pin is noticed");
}

/// Another user who could plant isolate's pin directory could replace or delete its pins
/// (deleting a link's pin detaches the program): such a directory is refused, and nothing
/// is attached.
fn untrusted_pins() {
    use std::os::unix::fs::PermissionsExt as _;
    let cgroup = isolate_enforcer::cgroup::Cgroup::create(
        &isolate_enforcer::cgroup::cgroup2_mount().unwrap(),
        &common::sandbox::unique_name("untrusted"),
    )
    .unwrap();
    for (owner, mode, why) in [
        (65534, 0o755, "is owned by UID 65534, not root"),
        (0, 0o777, "is writable by group or others (mode 777)"),
    ] {
        let planted = std::path::PathBuf::from(isolate_enforcer::paths::BPFFS)
            .join(common::sandbox::unique_name("planted"));
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(mode)).unwrap();
        let pins = PinDir::new(planted.join("pins"));
        let error = match BpfLayer::attach(cgroup.path(), pins) {
            Ok(layer) => {
                layer.detach().unwrap();
                let _ = std::fs::remove_dir_all(&planted);
                panic!("attached below {}", planted.display());
            }
            Err(e) => e.to_string(),
        };
        let empty = std::fs::read_dir(&planted).unwrap().next().is_none();
        std::fs::remove_dir(&planted).unwrap();
        assert!(error.contains(why), "{error}");
        assert!(empty, "nothing was pinned below {}", planted.display());
    }
}

fn v4(net: &str, port: Option<u16>, protocol: Protocol) -> NetRule<Ipv4Net> {
    NetRule {
        net: net.parse().unwrap(),
        ports: port.map(|p| PortRange { first: p, last: p }),
        protocol,
    }
}

fn v6(net: &str, port: Option<u16>, protocol: Protocol) -> NetRule<Ipv6Net> {
    NetRule {
        net: net.parse().unwrap(),
        ports: port.map(|p| PortRange { first: p, last: p }),
        protocol,
    }
}

fn apply(sandbox: &mut Sandbox, v4_rules: &[NetRule<Ipv4Net>], v6_rules: &[NetRule<Ipv6Net>]) {
    let rules = compile_rules(v4_rules, v6_rules).unwrap();
    sandbox
        .layer()
        .apply_instance(CONFINED, &rules)
        .expect("apply policy");
}

fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    (listener, local)
}

fn assert_refused(sandbox: &Sandbox, mode: Mode, target: SocketAddr) {
    let outcome = probe::run(sandbox, CONFINED, mode, target);
    assert_eq!(
        outcome.code,
        libc::EPERM,
        "{mode:?} to {target} must be refused with EPERM"
    );
    assert!(
        outcome.elapsed < Duration::from_secs(2),
        "the refusal must be immediate, took {:?}",
        outcome.elapsed
    );
}

fn assert_allowed(sandbox: &Sandbox, uid: u32, mode: Mode, target: SocketAddr) {
    let outcome = probe::run(sandbox, uid, mode, target);
    assert_eq!(
        outcome.code, 0,
        "{mode:?} to {target} as uid {uid} must be allowed"
    );
}

fn tcp_v4() {
    let mut sandbox = Sandbox::new();
    let (allowed, allowed_addr) = listen("127.0.0.1:0");
    let (wrong_port, wrong_port_addr) = listen("127.0.0.1:0");
    let (wrong_host, wrong_host_addr) = listen("127.0.0.2:0");
    apply(
        &mut sandbox,
        &[v4("127.0.0.1/32", Some(allowed_addr.port()), Protocol::Tcp)],
        &[],
    );

    assert_allowed(&sandbox, CONFINED, Mode::Tcp, allowed_addr);
    assert!(
        accept_one(&allowed).is_some(),
        "the allowed listener got the connection"
    );
    for (listener, addr) in [
        (&wrong_port, wrong_port_addr),
        (&wrong_host, wrong_host_addr),
    ] {
        assert_refused(&sandbox, Mode::Tcp, addr);
        assert!(
            accept_one(listener).is_none(),
            "blocked listener {addr} received a connection"
        );
    }
}

fn tcp_v6() {
    let mut sandbox = Sandbox::new();
    let (allowed, allowed_addr) = listen("[::1]:0");
    let (blocked, blocked_addr) = listen("[::1]:0");
    apply(
        &mut sandbox,
        &[],
        &[v6("::1/128", Some(allowed_addr.port()), Protocol::Tcp)],
    );

    assert_allowed(&sandbox, CONFINED, Mode::Tcp, allowed_addr);
    assert!(accept_one(&allowed).is_some());
    assert_refused(&sandbox, Mode::Tcp, blocked_addr);
    assert!(
        accept_one(&blocked).is_none(),
        "blocked listener received a connection"
    );
}

fn v4_mapped_v6() {
    let mut sandbox = Sandbox::new();
    // A dual-stack listener on [::] accepts v4-mapped connections.
    let (allowed, allowed_addr) = listen("[::]:0");
    let (blocked, blocked_addr) = listen("[::]:0");
    // Only the IPv4 policy allows it; the v6 policy is empty.
    apply(
        &mut sandbox,
        &[v4("127.0.0.1/32", Some(allowed_addr.port()), Protocol::Any)],
        &[],
    );
    let mapped =
        |port: u16| -> SocketAddr { format!("[::ffff:127.0.0.1]:{port}").parse().unwrap() };

    assert_allowed(&sandbox, CONFINED, Mode::Tcp, mapped(allowed_addr.port()));
    assert!(accept_one(&allowed).is_some());
    assert_refused(&sandbox, Mode::Tcp, mapped(blocked_addr.port()));
    assert!(accept_one(&blocked).is_none());

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_refused(
        &sandbox,
        Mode::UdpSendto,
        mapped(udp.local_addr().unwrap().port()),
    );
    assert!(!received(&udp), "a refused datagram arrived");
}

fn udp() {
    let mut sandbox = Sandbox::new();
    let allowed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let blocked = UdpSocket::bind("127.0.0.1:0").unwrap();
    let allowed_addr = allowed.local_addr().unwrap();
    let blocked_addr = blocked.local_addr().unwrap();
    // UDP only: a TCP connect to the same port stays forbidden.
    apply(
        &mut sandbox,
        &[v4("127.0.0.1/32", Some(allowed_addr.port()), Protocol::Udp)],
        &[],
    );

    for mode in [Mode::UdpConnect, Mode::UdpSendto] {
        assert_allowed(&sandbox, CONFINED, mode, allowed_addr);
        assert!(received(&allowed), "{mode:?}: the allowed datagram arrived");
        assert_refused(&sandbox, mode, blocked_addr);
        assert!(!received(&blocked), "{mode:?}: a refused datagram arrived");
    }
    let (_tcp, tcp_addr) = listen(&format!("127.0.0.1:{}", allowed_addr.port()));
    assert_refused(&sandbox, Mode::Tcp, tcp_addr);
}

fn icmp() {
    // Let every group open ping sockets in this test's network namespace.
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").unwrap();
    let mut sandbox = Sandbox::new();
    let target: SocketAddr = "127.0.0.1:0".parse().unwrap();
    apply(
        &mut sandbox,
        &[v4("127.0.0.2/32", None, Protocol::Any)],
        &[],
    );
    assert_refused(&sandbox, Mode::IcmpSendto, target);
    assert_allowed(
        &sandbox,
        CONFINED,
        Mode::IcmpSendto,
        "127.0.0.2:0".parse().unwrap(),
    );
    let counts = sandbox.layer().blocked_counts(CONFINED).unwrap();
    let key = CounterKey {
        uid: CONFINED,
        family: FAMILY_V4,
        protocol: PROTO_OTHER,
        hook: HOOK_EGRESS,
        _pad: 0,
    };
    assert_eq!(counts[&key], 1, "{counts:?}");
    let events = sandbox.layer().events().unwrap().read();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].protocol, events[0].hook), ("other", "egress"));

    // A rule with ports covers TCP and UDP only.
    apply(
        &mut sandbox,
        &[v4("127.0.0.0/8", Some(7), Protocol::Any)],
        &[],
    );
    assert_refused(&sandbox, Mode::IcmpSendto, "127.0.0.2:0".parse().unwrap());
}

fn other_uid() {
    let mut sandbox = Sandbox::new();
    let (listener, addr) = listen("127.0.0.1:0");
    apply(&mut sandbox, &[], &[]);
    assert_refused(&sandbox, Mode::Tcp, addr);
    assert_allowed(&sandbox, OTHER, Mode::Tcp, addr);
    assert!(
        accept_one(&listener).is_some(),
        "the unconfined UID reached its destination"
    );
}

fn counters() {
    let mut sandbox = Sandbox::new();
    let (_listener, tcp_addr) = listen("127.0.0.1:0");
    let udp = UdpSocket::bind("[::1]:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    apply(&mut sandbox, &[], &[]);
    for _ in 0..3 {
        assert_refused(&sandbox, Mode::Tcp, tcp_addr);
    }
    for _ in 0..2 {
        assert_refused(&sandbox, Mode::UdpSendto, udp_addr);
    }
    assert_allowed(&sandbox, OTHER, Mode::Tcp, tcp_addr);

    let counts = sandbox.layer().blocked_counts(CONFINED).unwrap();
    let key = |family, protocol, hook| CounterKey {
        uid: CONFINED,
        family,
        protocol,
        hook,
        _pad: 0,
    };
    assert_eq!(
        counts[&key(FAMILY_V4, PROTO_TCP, HOOK_CONNECT)],
        3,
        "{counts:?}"
    );
    assert_eq!(
        counts[&key(FAMILY_V6, PROTO_UDP, HOOK_SENDMSG)],
        2,
        "{counts:?}"
    );
    assert_eq!(
        counts.values().sum::<u64>(),
        5,
        "nothing else counted: {counts:?}"
    );
    assert!(
        sandbox.layer().blocked_counts(OTHER).unwrap().is_empty(),
        "an unconfined UID has no counters"
    );
}

/// The batch read of every counter (status and scrape at 1,000 instances) must give each
/// UID exactly what reading its own counters gives: with enough instances that the read takes
/// several batches, a lost or repeated batch shows as a missing or different count.
fn counters_at_once() {
    const INSTANCES: u32 = 300;
    let mut sandbox = Sandbox::new();
    let (_listener, tcp_addr) = listen("127.0.0.1:0");
    let rules = compile_rules(&[], &[]).unwrap();
    let uids: Vec<u32> = std::iter::once(CONFINED)
        .chain((0..INSTANCES - 1).map(|n| 40_000 + n))
        .collect();
    let batch: Vec<(u32, &CompiledRules)> = uids.iter().map(|uid| (*uid, &rules)).collect();
    for applied in sandbox.layer().apply_instances(&batch) {
        applied.expect("apply policy");
    }
    for _ in 0..3 {
        assert_refused(&sandbox, Mode::Tcp, tcp_addr);
    }

    let mut asked = uids.clone();
    asked.push(OTHER);
    let at_once = sandbox.layer().blocked_counts_of(&asked).unwrap();
    assert_eq!(at_once.len(), asked.len());
    let mut entries = 0;
    for uid in &uids {
        let own = sandbox.layer().blocked_counts(*uid).unwrap();
        assert!(!own.is_empty(), "uid {uid} has its counters created");
        assert_eq!(at_once[uid], own, "uid {uid}");
        entries += own.len();
    }
    assert!(entries > 4096, "{entries} counters fit in one batch");
    assert!(
        at_once[&OTHER].is_empty(),
        "an unconfined UID has no counters"
    );
    let refused: u64 = at_once[&CONFINED].values().sum();
    assert_eq!(refused, 3, "{:?}", at_once[&CONFINED]);
}

/// Many instances swapped in one batch (a reload) lose their old generations' entries, all
/// of them and nobody else's, though the maps are read once for the whole batch; removed in
/// one batch, they leave nothing.
fn batch_of_swaps() {
    const INSTANCES: u32 = 50;
    let mut sandbox = Sandbox::new();
    let small = compile_rules(&[v4("10.0.0.0/8", None, Protocol::Any)], &[]).unwrap();
    let large = compile_rules(
        &[
            v4("10.0.0.0/8", None, Protocol::Any),
            v4("192.0.2.0/24", Some(443), Protocol::Tcp),
        ],
        &[v6("2001:db8::/32", None, Protocol::Any)],
    )
    .unwrap();
    let uids: Vec<u32> = (0..INSTANCES).map(|n| 40_000 + n).collect();
    // One instance outside the batches keeps its entries throughout.
    sandbox.layer().apply_instance(CONFINED, &large).unwrap();
    let others = (large.v4.len(), large.v6.len());
    for rules in [&small, &large, &small] {
        let batch: Vec<(u32, &CompiledRules)> = uids.iter().map(|uid| (*uid, rules)).collect();
        for applied in sandbox.layer().apply_instances(&batch) {
            applied.expect("apply policy");
        }
        let n = INSTANCES as usize;
        assert_eq!(
            sandbox.layer().all_entries(),
            (n * rules.v4.len() + others.0, n * rules.v6.len() + others.1),
            "only the current generations' entries are left"
        );
    }
    assert_eq!(sandbox.layer().entry_counts(CONFINED).unwrap(), others);

    // Removed together (a cleanup), they leave only the other instance's entries.
    sandbox.layer().remove_instances(&uids).unwrap();
    assert_eq!(sandbox.layer().all_entries(), others);
    assert_eq!(sandbox.layer().instances(), vec![CONFINED]);
    assert!(sandbox.layer().blocked_counts(uids[0]).unwrap().is_empty());
}

fn events() {
    let mut sandbox = Sandbox::new();
    let (_listener, v4_addr) = listen("127.0.0.1:0");
    let (_listener6, v6_addr) = listen("[::1]:0");
    apply(&mut sandbox, &[], &[]);
    // Events left from nothing: the ring starts empty.
    assert!(sandbox.layer().events().unwrap().read().is_empty());

    let first = probe::run(&sandbox, CONFINED, Mode::Tcp, v4_addr);
    let second = probe::run(&sandbox, CONFINED, Mode::Tcp, v6_addr);
    let events = sandbox.layer().events().unwrap().read();
    assert_eq!(events.len(), 2, "{events:?}");

    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_string_lossy();
    let comm: String = exe_name.chars().take(15).collect();
    for (event, outcome, addr) in [
        (&events[0], &first, v4_addr),
        (&events[1], &second, v6_addr),
    ] {
        assert_eq!(event.uid, CONFINED);
        assert_eq!(event.pid, outcome.pid, "the event names the probe's pid");
        assert_eq!(event.comm, comm);
        assert_eq!(event.destination, addr.ip());
        assert_eq!(event.port, addr.port());
        assert_eq!(event.protocol, "tcp");
        assert_eq!(event.hook, "connect");
    }
    assert_eq!(
        events[0].to_string(),
        format!(
            "tcp {v4_addr} uid={CONFINED} pid={} comm={comm} layer=ebpf-connect",
            first.pid
        )
    );
}

fn survives_loader() {
    let mut sandbox = Sandbox::new();
    let (_listener, addr) = listen("127.0.0.1:0");
    apply(&mut sandbox, &[], &[]);
    // The process drops every handle it had: the pins keep enforcement in place.
    drop(sandbox.layer.take());
    assert_refused(&sandbox, Mode::Tcp, addr);

    // Attaching again adopts the pinned state rather than loading a second copy.
    let mut adopted = BpfLayer::attach(&sandbox.attached_at, sandbox.pins.clone()).unwrap();
    assert_eq!(
        adopted.instances(),
        vec![CONFINED],
        "the adopted maps hold the instance"
    );
    let blocked: u64 = adopted.blocked_counts(CONFINED).unwrap().values().sum();
    assert_eq!(blocked, 1, "counters survived");
    adopted
        .apply_instance(
            CONFINED,
            &compile_rules(&[v4("127.0.0.1/32", Some(addr.port()), Protocol::Tcp)], &[]).unwrap(),
        )
        .unwrap();
    sandbox.layer = Some(adopted);
    assert_allowed(&sandbox, CONFINED, Mode::Tcp, addr);
}

fn detach_removes_everything() {
    let before = loaded_isolate_programs();
    let mut sandbox = Sandbox::new();
    let ours: BTreeSet<u32> = loaded_isolate_programs()
        .difference(&before)
        .copied()
        .collect();
    // Plus the three BPF LSM programs (unix sockets, socket families) where the kernel runs them.
    let unix_programs = match sandbox.layer().unix_support() {
        isolate_enforcer::bpf::UnixSupport::Enforced => 3,
        isolate_enforcer::bpf::UnixSupport::Unavailable(_) => 0,
    };
    assert_eq!(
        ours.len(),
        10 + unix_programs,
        "eight sock_addr programs (connect, sendmsg, bind, recvmsg), the egress backstop, the \
         ingress program and the unix-socket programs loaded"
    );
    let (_listener, addr) = listen("127.0.0.1:0");
    apply(&mut sandbox, &[], &[]);
    assert_refused(&sandbox, Mode::Tcp, addr);
    sandbox.layer.take().unwrap().detach().unwrap();
    assert!(!sandbox.pins.path().exists(), "nothing stays in bpffs");
    assert_allowed(&sandbox, CONFINED, Mode::Tcp, addr);
    assert_eq!(
        still_loaded_after_grace(&ours),
        0,
        "every program was unloaded"
    );
}

fn update_under_load() {
    const ROUNDS: u32 = 400;
    const MIN_SWAPS: u32 = 50;
    const MAX_CLIENTS: u32 = 20;
    let mut sandbox = Sandbox::new();
    let (allowed, allowed_addr) = listen("127.0.0.1:0");
    let (_blocked, blocked_addr) = listen("127.0.0.1:0");
    // Keep the allowed listener's backlog empty while the client hammers it.
    std::thread::spawn(move || {
        for stream in allowed.incoming() {
            drop(stream);
        }
    });
    let extra_port = blocked_addr.port().wrapping_add(1);
    let policy_a = compile_rules(
        &[v4("127.0.0.1/32", Some(allowed_addr.port()), Protocol::Tcp)],
        &[],
    )
    .unwrap();
    let policy_b = compile_rules(
        &[
            v4("127.0.0.0/8", Some(extra_port), Protocol::Tcp),
            v4("127.0.0.1/32", Some(allowed_addr.port()), Protocol::Tcp),
            v4("10.0.0.0/8", None, Protocol::Any),
        ],
        &[v6("2001:db8::/32", None, Protocol::Any)],
    )
    .unwrap();
    sandbox.layer().apply_instance(CONFINED, &policy_a).unwrap();

    // Each swap waits for an RCU grace period (a few to tens of ms, longer while the client
    // keeps the CPUs busy), so a client may finish before many swaps: clients run one after
    // another until the policy has changed often enough during them.
    let mut swaps = 0;
    let mut rounds = 0;
    for client_run in 1.. {
        let mut client = probe::run_loop(
            sandbox.cgroup.path(),
            CONFINED,
            allowed_addr,
            blocked_addr,
            ROUNDS,
        );
        while client.try_wait().unwrap().is_none() {
            let next: &CompiledRules = if swaps % 2 == 0 { &policy_b } else { &policy_a };
            sandbox.layer().apply_instance(CONFINED, next).unwrap();
            swaps += 1;
        }
        rounds += ROUNDS;
        assert!(
            client.wait().unwrap().success(),
            "during {swaps} policy swaps a forbidden connect got through or an allowed one was \
             refused"
        );
        if swaps >= MIN_SWAPS || client_run == MAX_CLIENTS {
            break;
        }
    }
    assert!(
        swaps >= MIN_SWAPS,
        "the policy changed only {swaps} times during {rounds} rounds"
    );
    eprintln!("{swaps} policy swaps during {rounds} rounds of allowed + forbidden connects");
    let counts: u64 = sandbox
        .layer()
        .blocked_counts(CONFINED)
        .unwrap()
        .values()
        .sum();
    assert_eq!(
        counts,
        u64::from(rounds),
        "every forbidden attempt was counted"
    );
    // Old generations were removed as the swaps went: only the last policy's entries remain.
    let last = if swaps % 2 == 0 { &policy_a } else { &policy_b };
    assert_eq!(
        sandbox.layer().entry_counts(CONFINED).unwrap(),
        (last.v4.len(), last.v6.len())
    );
    let destinations: BTreeSet<IpAddr> = sandbox
        .layer()
        .events()
        .unwrap()
        .read()
        .iter()
        .map(|e| e.destination)
        .collect();
    assert_eq!(destinations, BTreeSet::from([blocked_addr.ip()]));
}
