//! Inbound confinement by the eBPF layer on the running kernel (`network.listen`): a confined
//! server may bind only what its policy lists, and nothing else of its accepts a connection or
//! a datagram, ephemeral ports and `listen()` without `bind` included. Isolate's programs are
//! attached to a child cgroup (the guest's root cgroup in the VM suite) inside a private
//! network namespace; the servers run as the confined UID, the clients as root.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use common::probe::{self, Server, start_server};
use common::sandbox::Sandbox;
use ipnet::{Ipv4Net, Ipv6Net};
use isolate_ebpf_common::{
    CounterKey, FAMILY_V4, FAMILY_V6, HOOK_BIND, HOOK_INGRESS, PROTO_TCP, PROTO_UDP,
};
use isolate_enforcer::bpf::compile_rules;
use isolate_policy::{NetRule, PortRange, Protocol};

// Not 65534: the kernel reports packets without a full socket as the overflow UID (nobody).
const CONFINED: u32 = 65533;
const OTHER: u32 = 65532;
const SERVED: u16 = 8787;

fn main() -> ExitCode {
    if let Some(code) = probe::main_if_probe() {
        return code;
    }
    common::run_tests(&[
        (
            "a_bind_to_an_unlisted_address_port_or_protocol_is_refused",
            unlisted_bind,
        ),
        (
            "an_unlisted_port_accepts_no_connection_even_without_bind",
            unlisted_port,
        ),
        (
            "a_listed_port_serves_and_answers_to_allowed_flows_arrive",
            listed_port,
        ),
        ("other_uids_serve_untouched", other_uids),
    ])
}

fn rule<N>(net: &str, port: Option<u16>, protocol: Protocol) -> NetRule<N>
where
    N: std::str::FromStr,
    N::Err: std::fmt::Debug,
{
    NetRule {
        net: net.parse().unwrap(),
        ports: port.map(PortRange::single),
        protocol,
    }
}

/// Puts `allow` (outbound) and `listen` (inbound) in force for the confined UID.
fn apply(
    sandbox: &mut Sandbox,
    allow: &[NetRule<Ipv4Net>],
    listen_v4: &[NetRule<Ipv4Net>],
    listen_v6: &[NetRule<Ipv6Net>],
) {
    let rules = compile_rules(allow, &[])
        .and_then(|rules| rules.with_listen(listen_v4, listen_v6))
        .unwrap();
    sandbox
        .layer()
        .apply_instance(CONFINED, &rules)
        .expect("apply policy");
}

fn serve(sandbox: &Sandbox, uid: u32, kind: &str, addr: &str) -> Result<Server, i32> {
    start_server(sandbox.cgroup.path(), uid, kind, addr)
}

/// Whether a connection to `target` is accepted (an unanswered SYN times out).
fn connects(target: SocketAddr, timeout: Duration) -> bool {
    match TcpStream::connect_timeout(&target, timeout) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::TimedOut => false,
        Err(e) => panic!("connect to {target}: {e}"),
    }
}

fn loopback(server: &Server) -> SocketAddr {
    let port = server.local.port();
    if server.local.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
    }
}

fn counts(sandbox: &mut Sandbox) -> BTreeMap<(u8, u8, u8), u64> {
    sandbox
        .layer()
        .blocked_counts(CONFINED)
        .unwrap()
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(key, count): (CounterKey, u64)| ((key.family, key.protocol, key.hook), count))
        .collect()
}

/// Long enough for an allowed loopback connect in a slow emulated guest.
const ALLOWED_WAIT: Duration = Duration::from_secs(5);
/// A dropped SYN is retried after a second: a refused connect shows well before.
const REFUSED_WAIT: Duration = Duration::from_millis(500);

fn unlisted_bind() {
    let mut sandbox = Sandbox::new();
    apply(
        &mut sandbox,
        &[],
        &[rule("127.0.0.1/32", Some(SERVED), Protocol::Tcp)],
        &[],
    );
    for (kind, addr, why) in [
        ("tcp", "127.0.0.1:8788", "another port"),
        (
            "tcp",
            "0.0.0.0:8787",
            "every address, where only loopback is listed",
        ),
        ("udp", "127.0.0.1:8787", "UDP, where only TCP is listed"),
        ("tcp", "[::1]:8787", "IPv6, where only IPv4 is listed"),
    ] {
        match serve(&sandbox, CONFINED, kind, addr) {
            Err(code) => assert_eq!(code, libc::EPERM, "{kind} bind {addr} ({why})"),
            Ok(server) => {
                let _ = server.outcome();
                panic!("{kind} bind {addr} was allowed ({why})");
            }
        }
    }
    let listed = serve(&sandbox, CONFINED, "tcp", "127.0.0.1:8787").expect("the listed bind");
    assert!(connects(loopback(&listed), ALLOWED_WAIT));
    assert_eq!(listed.outcome(), 0);
    assert_eq!(
        counts(&mut sandbox),
        BTreeMap::from([
            ((FAMILY_V4, PROTO_TCP, HOOK_BIND), 2),
            ((FAMILY_V4, PROTO_UDP, HOOK_BIND), 1),
            ((FAMILY_V6, PROTO_TCP, HOOK_BIND), 1),
        ]),
        "each refused bind counted once, as a bind"
    );
}

fn unlisted_port() {
    let mut sandbox = Sandbox::new();
    apply(
        &mut sandbox,
        &[],
        &[rule("127.0.0.1/32", Some(SERVED), Protocol::Tcp)],
        &[],
    );
    // Port 0 is the kernel's pick, as clients bind: allowed, but nothing may arrive there.
    for (kind, addr) in [
        ("tcp", "127.0.0.1:0"),
        ("tcp-autobind", "0.0.0.0:0"),
        ("tcp-autobind", "[::]:0"),
    ] {
        let server = serve(&sandbox, CONFINED, kind, addr).expect("an ephemeral port is bound");
        let target = loopback(&server);
        assert!(
            !connects(target, REFUSED_WAIT),
            "{kind} {addr}: a connection to unlisted {target} was accepted"
        );
        assert_eq!(
            server.outcome(),
            libc::ETIMEDOUT,
            "{kind} {addr}: the server got a connection"
        );
    }
    let counted = counts(&mut sandbox);
    assert!(
        counted.get(&(FAMILY_V4, PROTO_TCP, HOOK_INGRESS)) >= Some(&2),
        "{counted:?}"
    );
    assert!(
        counted.get(&(FAMILY_V6, PROTO_TCP, HOOK_INGRESS)) >= Some(&1),
        "{counted:?}"
    );
    let events = sandbox.layer().events().unwrap().read();
    assert!(
        events
            .iter()
            .any(|e| e.hook == "ingress" && e.destination.is_loopback() && e.port > 0),
        "an ingress event names the sender and the port: {events:?}"
    );
}

fn listed_port() {
    let mut sandbox = Sandbox::new();
    apply(
        &mut sandbox,
        // The instance may send to 127.0.0.1:5353 over UDP: what comes back from there arrives.
        &[rule("127.0.0.1/32", Some(5353), Protocol::Udp)],
        &[
            rule("127.0.0.1/32", Some(SERVED), Protocol::Tcp),
            // The unspecified address in a policy file means every address (0.0.0.0/0).
            rule("0.0.0.0/0", Some(9000), Protocol::Tcp),
        ],
        &[],
    );
    let listed = serve(&sandbox, CONFINED, "tcp", "127.0.0.1:8787").unwrap();
    assert!(connects(loopback(&listed), ALLOWED_WAIT));
    assert_eq!(listed.outcome(), 0, "the listed port accepted");
    let every = serve(&sandbox, CONFINED, "tcp", "0.0.0.0:9000").unwrap();
    assert!(connects(loopback(&every), ALLOWED_WAIT));
    assert_eq!(
        every.outcome(),
        0,
        "the listed port on every address accepted"
    );

    for (from, arrives) in [(5353, true), (5354, false)] {
        let server = serve(&sandbox, CONFINED, "udp", "127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind(("127.0.0.1", from)).unwrap();
        sender.send_to(b"answer", loopback(&server)).unwrap();
        let expected = if arrives { 0 } else { libc::ETIMEDOUT };
        assert_eq!(
            server.outcome(),
            expected,
            "a datagram from 127.0.0.1:{from} (allowed destination: {arrives})"
        );
    }
    assert_eq!(
        counts(&mut sandbox),
        BTreeMap::from([((FAMILY_V4, PROTO_UDP, HOOK_INGRESS), 1)]),
        "only the stranger's datagram was refused"
    );
}

fn other_uids() {
    let mut sandbox = Sandbox::new();
    apply(&mut sandbox, &[], &[], &[]);
    let server = serve(&sandbox, OTHER, "tcp", "127.0.0.1:0").expect("others bind freely");
    assert!(connects(loopback(&server), ALLOWED_WAIT));
    assert_eq!(server.outcome(), 0);
    let refused = serve(&sandbox, CONFINED, "tcp", "127.0.0.1:8787");
    assert_eq!(
        refused.err(),
        Some(libc::EPERM),
        "an empty listen list serves nothing"
    );
}
