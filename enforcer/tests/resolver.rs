//! isolate's resolver (`dns::Listener`) driven directly, with the eBPF layer's real host maps and
//! the test upstream of `common::dns_upstream` at 127.0.0.2:53: observing (the coming learn
//! mode) and enforcing, for the same policy and questions.
//!
//! Each test runs in its own network namespace, where port 53 on loopback is the test's own.

mod common;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::ExitCode;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use isolate_ebpf_common::{
    CounterKey, FAMILY_V4, HOOK_DNS, HostV4Key, HostValue, PROTO_TCP, PROTO_UDP, map_names,
};
use isolate_enforcer::bpf::{BlockedAttempt, boot_clock, compile_rules};
use isolate_enforcer::dns::{Layers, Listener, Resolver, Service};
use isolate_policy::{HostRule, Protocol};

use common::dns_upstream::{Upstream, Zone};
use common::sandbox::Sandbox;

const UID: u32 = 4242;
const LISTED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UNLISTED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn main() -> ExitCode {
    common::run_tests(&[
        (
            "observing_an_unlisted_name_is_answered_recorded_and_named_but_admitted_nowhere",
            observing,
        ),
        (
            "enforcing_the_same_name_is_refused_and_never_leaves",
            enforcing,
        ),
    ])
}

/// With `observe`, the policy listing only `a.example`: `b.example` is answered with the
/// upstream's address and recorded and counted as a refusal; its address is named but not in
/// the host maps (nor the report of admissions), while `a.example` is admitted as always.
fn observing() {
    let upstream = upstream();
    let mut sandbox = Sandbox::new();
    let (resolver, refusals) = resolver(&mut sandbox, true);

    assert_eq!(
        ask(&resolver, "a.example."),
        (ResponseCode::NoError, vec![LISTED])
    );
    assert_eq!(
        ask(&resolver, "b.example."),
        (ResponseCode::NoError, vec![UNLISTED])
    );
    let attempt = refusals.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(attempt.what(), "dns b.example A");
    assert_eq!((attempt.uid, attempt.hook), (UID, "dns"));
    assert!(refusals.try_recv().is_err(), "a.example is no refusal");
    assert!(
        upstream
            .asked()
            .iter()
            .any(|(name, _, _)| name == "b.example")
    );

    assert_eq!(
        resolver.name_of(IpAddr::V4(UNLISTED)).as_deref(),
        Some("b.example")
    );
    assert_eq!(
        resolver.reporter().name_of(IpAddr::V4(LISTED)).as_deref(),
        Some("a.example")
    );
    let report = resolver.reporter().report();
    let admitted: Vec<(&str, IpAddr)> = report
        .admitted
        .iter()
        .map(|(name, addr, _)| (name.as_str(), *addr))
        .collect();
    assert_eq!(admitted, [("a.example", IpAddr::V4(LISTED))]);
    assert_eq!((report.answered, report.refused, report.failed), (1, 1, 0));

    let now_ns = u64::try_from(boot_clock().as_nanos()).unwrap();
    let admits = |addr: Ipv4Addr| {
        host_value(&sandbox, addr).is_some_and(|value| value.permits(443, PROTO_TCP, now_ns))
    };
    assert!(admits(LISTED), "a.example's address is in the host map");
    assert_eq!(host_value(&sandbox, UNLISTED), None, "b.example's is not");
    assert_eq!(dns_refusals(&sandbox), 1);
}

/// Without `observe`, the same question is answered REFUSED and never reaches the upstream.
fn enforcing() {
    let upstream = upstream();
    let mut sandbox = Sandbox::new();
    let (resolver, refusals) = resolver(&mut sandbox, false);

    assert_eq!(
        ask(&resolver, "b.example."),
        (ResponseCode::Refused, vec![])
    );
    let attempt = refusals.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(attempt.what(), "dns b.example A");
    upstream.assert_never_asked("b.example");
    assert_eq!(resolver.name_of(IpAddr::V4(UNLISTED)), None);
    assert_eq!(host_value(&sandbox, UNLISTED), None);
    assert_eq!(dns_refusals(&sandbox), 1);
}

fn upstream() -> Upstream {
    let zone = Zone::default()
        .a("a.example", &[LISTED], 60)
        .a("b.example", &[UNLISTED], 60);
    Upstream::start("127.0.0.2:53".parse().unwrap(), zone).unwrap()
}

/// A resolver for a policy listing only `a.example`, admitting into the sandbox's host maps;
/// [`UID`] is confined there (with no address rules), so it has counters.
fn resolver(sandbox: &mut Sandbox, observe: bool) -> (Resolver, Receiver<BlockedAttempt>) {
    let no_rules = compile_rules(&[], &[]).unwrap();
    sandbox.layer().apply_instance(UID, &no_rules).unwrap();
    let (refusals, refused) = std::sync::mpsc::channel();
    let service = Service {
        instance: "resolver-test".into(),
        uid: UID,
        hosts: vec![HostRule {
            pattern: "a.example".into(),
            ports: None,
            protocol: Protocol::Any,
        }],
        upstreams: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
        layers: Layers {
            bpf: Some(sandbox.layer().host_maps().unwrap()),
            nft: false,
        },
        refusals,
        observe,
    };
    (Listener::bind().unwrap().serve(service).unwrap(), refused)
}

/// Asks `resolver` for `name`'s A records over UDP: the response code and the addresses.
fn ask(resolver: &Resolver, name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
    let mut query = Message::new();
    query
        .set_id(7)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
        .send_to(
            &query.to_vec().unwrap(),
            (Ipv4Addr::LOCALHOST, resolver.endpoint().port),
        )
        .unwrap();
    let mut buffer = [0_u8; 4096];
    let len = socket.recv(&mut buffer).unwrap();
    let reply = Message::from_vec(&buffer[..len]).unwrap();
    assert_eq!(reply.id(), 7, "a reply to our question");
    let addresses = reply
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    (reply.response_code(), addresses)
}

/// What the sandbox's IPv4 host map holds for `addr` and [`UID`].
fn host_value(sandbox: &Sandbox, addr: Ipv4Addr) -> Option<HostValue> {
    let data = aya::maps::MapData::from_pin(sandbox.pins.map(map_names::HOSTS_V4)).unwrap();
    let map = aya::maps::Map::from_map_data(data).unwrap();
    let hosts = aya::maps::HashMap::<_, HostV4Key, HostValue>::try_from(map).unwrap();
    let key = HostV4Key {
        uid: UID,
        addr: addr.octets(),
    };
    hosts.get(&key, 0).ok()
}

/// The refused questions the eBPF layer's counters hold for [`UID`] (all over UDP, IPv4).
fn dns_refusals(sandbox: &Sandbox) -> u64 {
    let key = CounterKey {
        uid: UID,
        family: FAMILY_V4,
        protocol: PROTO_UDP,
        hook: HOOK_DNS,
        _pad: 0,
    };
    let counts = sandbox.layer.as_ref().unwrap().blocked_counts(UID).unwrap();
    counts.get(&key).copied().unwrap_or(0)
}
