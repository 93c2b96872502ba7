//! The nftables layer on the running kernel. Every test runs in its own network namespace
//! (`common::run_tests`), and rulesets are per namespace: the host's ruleset is never touched.
//! Traffic goes over loopback, whose packets pass the output hook like any other.

mod common;
mod uid_client;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, ExitCode};

use common::probe::{accept_one, received};
use ipnet::{Ipv4Net, Ipv6Net};
use isolate_enforcer::nft::{self, NftError, NftPolicy};
use isolate_policy::{HostRule, LogSettings, NetRule, PortRange, Protocol, Rate, RateUnit};
use serde_json::Value;
use uid_client::{Mode, TIMED_OUT};

/// UIDs no other test binary uses (the eBPF tests use 65533 and 65534).
const CONFINED: u32 = 65531;
const OTHER: u32 = 65532;
const INSTANCE: &str = "demo";

fn main() -> ExitCode {
    if let Some(code) = uid_client::main_if_client() {
        return code;
    }
    common::run_tests(&[
        ("render_builds_the_table_the_policy_describes", render),
        ("render_is_deterministic", render_is_deterministic),
        ("apply_twice_leaves_one_identical_table", apply_twice),
        ("a_changed_policy_replaces_the_old_one", replace),
        ("remove_leaves_nothing_and_spares_other_tables", remove),
        ("a_refused_policy_changes_nothing", refused),
        ("many_instances_go_in_at_once_or_not_at_all", many_at_once),
        ("tcp_allowed_connects_forbidden_times_out", tcp),
        (
            "observing_the_table_counts_what_it_would_drop_and_lets_it_through",
            observe,
        ),
        ("udp_forbidden_is_dropped_and_counted_exactly", udp),
        ("other_uids_are_untouched", other_uid),
        ("icmp_is_allowed_only_by_a_rule_without_ports", icmp),
        (
            "host_sets_admit_addresses_and_keep_them_across_a_reapply",
            host_sets,
        ),
    ])
}

// ---- policy helpers ----

fn v4(net: &str, ports: Option<PortRange>, protocol: Protocol) -> NetRule<Ipv4Net> {
    NetRule {
        net: net.parse().unwrap(),
        ports,
        protocol,
    }
}

fn v6(net: &str, ports: Option<PortRange>, protocol: Protocol) -> NetRule<Ipv6Net> {
    NetRule {
        net: net.parse().unwrap(),
        ports,
        protocol,
    }
}

fn port(p: u16) -> PortRange {
    PortRange::single(p)
}

const LOG: LogSettings = LogSettings {
    rate: Rate {
        count: 7,
        per: RateUnit::Minute,
    },
};

fn policy<'a>(v4: &'a [NetRule<Ipv4Net>], v6: &'a [NetRule<Ipv6Net>]) -> NftPolicy<'a> {
    NftPolicy {
        instance: INSTANCE,
        uid: CONFINED,
        v4,
        v6,
        hosts: &[],
        dns_redirect: None,
        log: &LOG,
        observe: false,
    }
}

// ---- nft helpers (run nft directly, to see what the kernel holds) ----

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The names of every table in the namespace.
fn tables() -> Vec<String> {
    let json: Value = serde_json::from_str(&nft(&["-j", "list", "tables"])).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| Some(o.get("table")?["name"].as_str()?.to_owned()))
        .collect()
}

fn ruleset() -> String {
    nft(&["list", "ruleset"])
}

fn counters() -> BTreeMap<String, u64> {
    nft::counters(INSTANCE).expect("read counters")
}

/// The objects of one kind in a rendered batch (`{"add": {KIND: …}}`).
fn added<'a>(batch: &'a Value, kind: &str) -> Vec<&'a Value> {
    batch["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("add")?.get(kind))
        .collect()
}

// ---- traffic helpers ----

fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    (listener, local)
}

fn udp_listen(addr: &str) -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind(addr).unwrap();
    let local = socket.local_addr().unwrap();
    (socket, local)
}

fn assert_connects(uid: u32, listener: &TcpListener, addr: SocketAddr) {
    assert_eq!(
        uid_client::run(uid, Mode::Tcp, addr),
        0,
        "uid {uid} must reach {addr}"
    );
    assert!(
        accept_one(listener).is_some(),
        "the listener on {addr} got the connection"
    );
}

fn assert_times_out(listener: &TcpListener, addr: SocketAddr) {
    assert_eq!(
        uid_client::run(CONFINED, Mode::Tcp, addr),
        TIMED_OUT,
        "a connect to {addr} must go unanswered"
    );
    assert!(
        accept_one(listener).is_none(),
        "the forbidden listener on {addr} got a connection"
    );
}

// ---- tests ----

fn render() {
    let v4_rules = [
        v4("10.0.0.0/8", None, Protocol::Any),
        v4("127.0.0.1/32", Some(port(8787)), Protocol::Tcp),
        v4("192.168.0.0/16", Some(port(53)), Protocol::Udp),
        v4(
            "127.0.0.0/8",
            Some(PortRange {
                first: 8000,
                last: 8080,
            }),
            Protocol::Any,
        ),
    ];
    let v6_rules = [
        v6("2001:db8::/32", None, Protocol::Any),
        v6("::1/128", Some(port(443)), Protocol::Tcp),
    ];
    let policy = policy(&v4_rules, &v6_rules);
    let batch = serde_json::to_value(nft::render(&policy)).unwrap();

    let tables = added(&batch, "table");
    assert!(
        tables
            .iter()
            .all(|t| t["name"] == "isolate-demo" && t["family"] == "inet"),
        "only the instance's table: {tables:?}"
    );
    let chains = added(&batch, "chain");
    let names: Vec<&str> = chains.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["confined", "output"]);
    let output = chains[1];
    assert_eq!(output["hook"], "output");
    assert_eq!(output["type"], "filter");
    assert_eq!(output["prio"], 0);
    assert_eq!(output["policy"], "accept", "other UIDs pass");

    let sets: BTreeMap<&str, &Value> = added(&batch, "set")
        .into_iter()
        .map(|s| (s["name"].as_str().unwrap(), s))
        .collect();
    assert_eq!(
        sets.keys().copied().collect::<Vec<_>>(),
        [
            "allow_v4_any",
            "allow_v4_any_8000_8080",
            "allow_v4_tcp_8787",
            "allow_v4_udp_53",
            "allow_v6_any",
            "allow_v6_tcp_443",
        ]
    );
    for set in sets.values() {
        assert_eq!(set["flags"], serde_json::json!(["interval"]));
    }
    assert_eq!(sets["allow_v6_tcp_443"]["type"], "ipv6_addr");
    assert_eq!(
        sets["allow_v4_any"]["elem"],
        serde_json::json!([{"prefix": {"addr": "10.0.0.0", "len": 8}}])
    );
    let counters: Vec<&str> = added(&batch, "counter")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let names: Vec<&str> = nft::COUNTERS.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(counters, names);

    // What the kernel holds, in nft's own spelling.
    nft::apply(&policy).expect("apply");
    // Without /etc/protocols (a minimal system), nft prints protocol numbers.
    let text = nft(&["list", "table", "inet", "isolate-demo"])
        .replace("{ 6, 17 }", "{ tcp, udp }")
        .replace("l4proto 6 ", "l4proto tcp ")
        .replace("l4proto 17 ", "l4proto udp ");
    for expected in [
        "type filter hook output priority filter; policy accept;",
        "meta skuid 65531 jump confined",
        "ct state established,related accept",
        "\t\tip daddr @allow_v4_any accept",
        "meta l4proto { tcp, udp } th dport 8000-8080 ip daddr @allow_v4_any_8000_8080 accept",
        "tcp dport 8787 ip daddr @allow_v4_tcp_8787 accept",
        "udp dport 53 ip daddr @allow_v4_udp_53 accept",
        "tcp dport 443 ip6 daddr @allow_v6_tcp_443 accept",
        "limit rate 7/minute",
        "log prefix \"isolate-demo-blocked \" flags skuid",
        "meta nfproto ipv4 meta l4proto tcp counter name \"blocked_v4_tcp\" drop",
        "meta nfproto ipv6 counter name \"blocked_v6_other\" drop",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

fn render_is_deterministic() {
    let mut v4_rules = vec![
        v4("10.0.0.0/8", None, Protocol::Any),
        v4("192.168.1.0/24", Some(port(443)), Protocol::Tcp),
        v4("172.16.0.0/12", None, Protocol::Any),
    ];
    let json = |rules: &[NetRule<Ipv4Net>]| {
        serde_json::to_string(&nft::render(&policy(rules, &[]))).unwrap()
    };
    let first = json(&v4_rules);
    assert_eq!(first, json(&v4_rules), "same policy, same output");
    v4_rules.reverse();
    assert_eq!(
        first,
        json(&v4_rules),
        "the order of the rules does not matter"
    );
}

fn apply_twice() {
    let rules = [v4("10.0.0.0/8", None, Protocol::Any)];
    assert!(!nft::is_applied(INSTANCE).unwrap());
    nft::apply(&policy(&rules, &[])).expect("first apply");
    let once = ruleset();
    nft::apply(&policy(&rules, &[])).expect("second apply");
    assert_eq!(tables(), ["isolate-demo"], "exactly one table");
    assert_eq!(ruleset(), once, "the same ruleset after a re-apply");
    assert!(nft::is_applied(INSTANCE).unwrap());
}

fn replace() {
    let (first, first_addr) = listen("127.0.0.1:0");
    let (second, second_addr) = listen("127.0.0.1:0");
    let (_udp, udp_addr) = udp_listen("127.0.0.1:0");
    let allow_first = [v4(
        "127.0.0.1/32",
        Some(port(first_addr.port())),
        Protocol::Tcp,
    )];
    let allow_second = [v4(
        "127.0.0.1/32",
        Some(port(second_addr.port())),
        Protocol::Tcp,
    )];

    nft::apply(&policy(&allow_first, &[])).unwrap();
    assert_connects(CONFINED, &first, first_addr);
    assert_times_out(&second, second_addr);
    for _ in 0..2 {
        uid_client::run(CONFINED, Mode::Udp, udp_addr);
    }
    assert_eq!(counters()["blocked_v4_udp"], 2);

    nft::apply(&policy(&allow_second, &[])).unwrap();
    assert_eq!(tables(), ["isolate-demo"]);
    assert_connects(CONFINED, &second, second_addr);
    assert_times_out(&first, first_addr);
    uid_client::run(CONFINED, Mode::Udp, udp_addr);
    assert_eq!(
        counters()["blocked_v4_udp"],
        3,
        "counters carry over a replace"
    );
}

fn remove() {
    // Someone else's table, which isolate must leave alone.
    nft(&["add", "table", "inet", "host-fw"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "host-fw",
        "out",
        "{ type filter hook output priority 10 ; }",
    ]);
    nft(&["add", "rule", "inet", "host-fw", "out", "counter"]);
    let host = nft(&["list", "table", "inet", "host-fw"]);

    nft::apply(&policy(&[v4("10.0.0.0/8", None, Protocol::Any)], &[])).unwrap();
    nft::remove(INSTANCE).expect("remove");
    assert_eq!(tables(), ["host-fw"], "nothing of isolate's is left");
    assert!(!nft::is_applied(INSTANCE).unwrap());
    assert!(matches!(
        nft::counters(INSTANCE),
        Err(NftError::NotApplied { .. })
    ));
    nft::remove(INSTANCE).expect("removing what is not there is fine");
    assert_eq!(
        nft(&["list", "table", "inet", "host-fw"]),
        host,
        "the other table is untouched"
    );
}

fn many_at_once() {
    let (listener, addr) = listen("127.0.0.1:0");
    let allowed = [v4("127.0.0.1/32", Some(port(addr.port())), Protocol::Tcp)];
    let overlapping = [
        v4("10.0.0.0/8", None, Protocol::Any),
        v4("10.1.0.0/16", None, Protocol::Any),
    ];
    let named = |instance, uid, v4| NftPolicy {
        instance,
        uid,
        ..policy(v4, &[])
    };
    // One refused table in the batch: nothing of it is applied.
    let error = nft::apply_many(&[
        named("first", CONFINED, &allowed),
        named("second", CONFINED + 1, &overlapping),
    ])
    .unwrap_err();
    assert!(error.to_string().contains("instance first"), "{error}");
    assert!(tables().is_empty(), "{:?}", tables());

    nft::apply_many(&[
        named("first", CONFINED, &allowed),
        named("second", CONFINED + 1, &[]),
    ])
    .unwrap();
    assert_eq!(tables(), ["isolate-first", "isolate-second"]);
    assert_connects(CONFINED, &listener, addr);
    assert_eq!(
        uid_client::run(CONFINED + 1, Mode::Udp, addr),
        libc::EPERM,
        "the second table judges its own UID"
    );
    // Applied again at once: counters carry over, as one by one.
    nft::apply_many(&[
        named("first", CONFINED, &allowed),
        named("second", CONFINED + 1, &[]),
    ])
    .unwrap();
    assert_eq!(tables(), ["isolate-first", "isolate-second"]);
    assert_eq!(nft::counters("second").unwrap()["blocked_v4_udp"], 1);

    // Removed at once, with one that is not there: both go, and nothing else.
    nft(&["add", "table", "inet", "host-fw"]);
    nft::remove_many(&["first", "absent", "second"]).expect("remove at once");
    assert_eq!(tables(), ["host-fw"]);
}

fn refused() {
    // Overlapping networks in one group: normalisation never produces this, nft refuses it.
    let overlapping = [
        v4("10.0.0.0/8", None, Protocol::Any),
        v4("10.1.0.0/16", None, Protocol::Any),
    ];
    let error = nft::apply(&policy(&overlapping, &[])).unwrap_err();
    assert!(tables().is_empty(), "a refused first apply leaves nothing");

    nft::apply(&policy(&[v4("192.168.0.0/16", None, Protocol::Any)], &[])).unwrap();
    let before = ruleset();
    let again = nft::apply(&policy(&overlapping, &[])).unwrap_err();
    assert_eq!(ruleset(), before, "a refused apply changes nothing");
    assert_eq!(again.to_string(), error.to_string());

    let NftError::Rejected {
        instance,
        culprit,
        stderr,
    } = &error
    else {
        panic!("expected Rejected, got {error:?}");
    };
    assert_eq!(instance, INSTANCE);
    assert!(stderr.contains("conflicting intervals"), "{stderr}");
    let culprit = culprit.as_deref().expect("the set is named");
    assert!(
        culprit.contains("allow_v4_any") && culprit.contains("10.1.0.0/16"),
        "{culprit}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("instance demo: nft refused")
            && message.contains("nothing was changed"),
        "{message}"
    );

    // A name that cannot make a table is refused before nft runs.
    let bad = NftPolicy {
        instance: "Not A Name",
        ..policy(&[], &[])
    };
    assert!(matches!(
        nft::apply(&bad),
        Err(NftError::InvalidInstance { .. })
    ));
    assert_eq!(ruleset(), before);
}

fn tcp() {
    let (allowed, allowed_addr) = listen("127.0.0.1:0");
    let (forbidden, forbidden_addr) = listen("127.0.0.1:0");
    let (allowed_v6, allowed_v6_addr) = listen("[::1]:0");
    let (forbidden_v6, forbidden_v6_addr) = listen("[::1]:0");
    nft::apply(&policy(
        &[v4(
            "127.0.0.1/32",
            Some(port(allowed_addr.port())),
            Protocol::Tcp,
        )],
        &[v6(
            "::1/128",
            Some(port(allowed_v6_addr.port())),
            Protocol::Any,
        )],
    ))
    .unwrap();

    assert_connects(CONFINED, &allowed, allowed_addr);
    assert_times_out(&forbidden, forbidden_addr);
    assert_connects(CONFINED, &allowed_v6, allowed_v6_addr);
    assert_times_out(&forbidden_v6, forbidden_v6_addr);

    // A dropped SYN is retransmitted within the timeout now and then: count packets, not
    // attempts (the UDP test checks exact counts).
    let counts = counters();
    assert!(counts["blocked_v4_tcp"] >= 1, "{counts:?}");
    assert!(counts["blocked_v6_tcp"] >= 1, "{counts:?}");
    assert_eq!(counts["blocked_v4_udp"] + counts["blocked_v6_udp"], 0);
}

/// Learn mode's table: a connect the rules do not allow goes through, and is counted.
fn observe() {
    let (forbidden, forbidden_addr) = listen("127.0.0.1:0");
    let rules = [v4("127.0.0.2/32", None, Protocol::Any)];
    let observing = NftPolicy {
        observe: true,
        ..policy(&rules, &[])
    };
    nft::apply(&observing).unwrap();
    assert_connects(CONFINED, &forbidden, forbidden_addr);
    let counts = counters();
    // Counted once: as TCP, not again as `other`.
    assert!(counts["blocked_v4_tcp"] >= 1, "{counts:?}");
    assert_eq!(counts["blocked_v4_other"], 0, "{counts:?}");
    // The same rules, enforcing: dropped.
    nft::apply(&policy(&rules, &[])).unwrap();
    assert_times_out(&forbidden, forbidden_addr);
}

fn udp() {
    let (allowed, allowed_addr) = udp_listen("127.0.0.1:0");
    let (forbidden, forbidden_addr) = udp_listen("127.0.0.1:0");
    let (forbidden_v6, forbidden_v6_addr) = udp_listen("[::1]:0");
    nft::apply(&policy(
        &[v4(
            "127.0.0.0/8",
            Some(port(allowed_addr.port())),
            Protocol::Udp,
        )],
        &[],
    ))
    .unwrap();

    assert_eq!(uid_client::run(CONFINED, Mode::Udp, allowed_addr), 0);
    assert!(received(&allowed), "the allowed datagram arrived");
    // A drop on the output hook fails the send with EPERM.
    for _ in 0..3 {
        assert_eq!(
            uid_client::run(CONFINED, Mode::Udp, forbidden_addr),
            libc::EPERM
        );
    }
    for _ in 0..2 {
        assert_eq!(
            uid_client::run(CONFINED, Mode::Udp, forbidden_v6_addr),
            libc::EPERM
        );
    }
    assert!(!received(&forbidden), "a forbidden datagram arrived");
    assert!(!received(&forbidden_v6), "a forbidden datagram arrived");

    let expected: BTreeMap<String, u64> = nft::COUNTERS
        .iter()
        .map(|(name, _, _)| (name.to_string(), 0))
        .chain([("blocked_v4_udp".into(), 3), ("blocked_v6_udp".into(), 2)])
        .collect();
    assert_eq!(counters(), expected);

    // Every table at once (what status and metrics read): the same counts, and only isolate's
    // inet tables, whatever else holds counters.
    nft(&["add", "table", "inet", "other-tool"]);
    nft(&["add", "counter", "inet", "other-tool", "blocked_v4_udp"]);
    nft(&["add", "table", "ip", "isolate-not-inet"]);
    nft(&["add", "counter", "ip", "isolate-not-inet", "blocked_v4_udp"]);
    assert_eq!(
        nft::all_counters().unwrap(),
        BTreeMap::from([(INSTANCE.to_owned(), expected)])
    );
}

fn other_uid() {
    let (listener, addr) = listen("127.0.0.1:0");
    let (udp, udp_addr) = udp_listen("[::1]:0");
    nft::apply(&policy(&[], &[])).unwrap();

    assert_times_out(&listener, addr);
    let blocked = counters();
    assert_connects(OTHER, &listener, addr);
    assert_eq!(uid_client::run(OTHER, Mode::Udp, udp_addr), 0);
    assert!(received(&udp));
    // Root (this process) too.
    assert!(std::net::TcpStream::connect(addr).is_ok());
    assert_eq!(counters(), blocked, "nothing of other UIDs was counted");
}

fn icmp() {
    // Let every group open ping sockets (this namespace only).
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").unwrap();
    let loopback_v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let loopback_v6: SocketAddr = "[::1]:0".parse().unwrap();
    // v4: an "any" rule without ports covers ICMP; v6: ports or a protocol exclude it.
    nft::apply(&policy(
        &[v4("127.0.0.1/32", None, Protocol::Any)],
        &[v6("::1/128", Some(port(443)), Protocol::Any)],
    ))
    .unwrap();

    assert_eq!(uid_client::run(CONFINED, Mode::Icmp, loopback_v4), 0);
    // The IPv6 ping socket does not report the drop (the kernel ignores its output's result
    // there); the counter shows it.
    uid_client::run(CONFINED, Mode::Icmp, loopback_v6);
    let counts = counters();
    assert_eq!(counts["blocked_v4_other"], 0, "{counts:?}");
    assert_eq!(counts["blocked_v6_other"], 1, "{counts:?}");
}

/// A host rule's set starts empty; an address admitted into it (with a timeout) is reached; a
/// re-applied table keeps it; a table without that rule does not.
fn host_sets() {
    let (listener, addr) = listen("127.0.0.1:0");
    let host = |pattern: &str| HostRule {
        pattern: pattern.into(),
        ports: Some(port(addr.port())),
        protocol: Protocol::Tcp,
    };
    let (a, b) = (host("a.example"), host("b.example"));
    let both = [a.clone(), b.clone()];
    let with_hosts = |hosts| NftPolicy {
        hosts,
        ..policy(&[], &[])
    };
    nft::apply(&with_hosts(&both)).unwrap();
    assert_times_out(&listener, addr);

    let element = nft::HostElement {
        set: nft::host_set_name(false, &a),
        addr: addr.ip(),
        timeout_secs: 600,
    };
    nft::admit(INSTANCE, std::slice::from_ref(&element)).unwrap();
    assert_connects(CONFINED, &listener, addr);
    // Admitting it again (a later answer) refreshes it rather than failing.
    nft::admit(INSTANCE, &[element]).unwrap();

    nft::apply(&with_hosts(&both)).unwrap();
    assert_connects(CONFINED, &listener, addr);
    // Another rule's set shares nothing with it.
    nft::apply(&with_hosts(std::slice::from_ref(&b))).unwrap();
    assert_times_out(&listener, addr);
}
