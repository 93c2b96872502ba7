//! Renders an [`NftPolicy`] into one nftables JSON transaction (the `nftables` crate's schema).
//!
//! The table it builds, in `nft list ruleset` spelling:
//!
//! ```text
//! table inet isolate-NAME {
//!     counter blocked_v4_tcp { … }                      # and _udp, _other, and v6 likewise
//!     set allow_v4_tcp_443 { type ipv4_addr; flags interval; elements = { … } }
//!     chain output {
//!         type filter hook output priority filter; policy accept;
//!         meta skuid UID jump confined
//!     }
//!     chain confined {
//!         ct state established,related accept
//!         tcp dport 443 ip daddr @allow_v4_tcp_443 accept      # one rule per set
//!         limit rate 10/second log prefix "isolate-NAME-blocked " flags skuid
//!         meta nfproto ipv4 meta l4proto tcp counter name "blocked_v4_tcp" drop
//!         …                                                  # udp, other; v6 likewise
//!     }
//! }
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use ipnet::IpNet;
use isolate_policy::{HostRule, PortRange, Protocol};
use nftables::expr::{
    CT, Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range,
    SetItem,
};
use nftables::schema::{
    self, Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{self, JumpTarget, Log, LogFlag, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::NftPolicy;

/// The base chain on the output hook.
pub const CHAIN_OUTPUT: &str = "output";
/// The regular chain the instance UID's packets jump to.
pub const CHAIN_CONFINED: &str = "confined";
/// The NAT chain that sends the UID's DNS queries to isolate's resolver.
pub const CHAIN_DNS: &str = "dns";
/// "dstnat" on the output hook: before the filter chain (0), which then judges where the packet
/// really goes.
const DNS_PRIORITY: i32 = -100;
/// The named counters of dropped packets: (name, family, transport protocol), the family and
/// protocol as metrics label them.
pub const COUNTERS: [(&str, &str, &str); 6] = [
    ("blocked_v4_other", "ipv4", "other"),
    ("blocked_v4_tcp", "ipv4", "tcp"),
    ("blocked_v4_udp", "ipv4", "udp"),
    ("blocked_v6_other", "ipv6", "other"),
    ("blocked_v6_tcp", "ipv6", "tcp"),
    ("blocked_v6_udp", "ipv6", "udp"),
];

/// Priority 0 ("filter") on the output hook. It runs after conntrack (-200), so `ct state` is
/// known, and after output DNAT (-100), so the destination judged is where the packet really
/// goes. Relative to other tables it does not matter for safety: a drop in any base chain is
/// final, while an accept elsewhere only passes the packet on to the next chain — ours.
const OUTPUT_PRIORITY: i32 = 0;

/// What every isolate table's name starts with.
pub const TABLE_PREFIX: &str = "isolate-";

/// The instance's table: `isolate-<instance>`.
pub fn table_name(instance: &str) -> String {
    format!("{TABLE_PREFIX}{instance}")
}

/// The prefix of the kernel log lines of blocked packets (the trailing space separates it from
/// the fields the kernel appends). At most 49 bytes for a 32-byte name; nft's limit is 127.
pub fn log_prefix(instance: &str) -> String {
    format!("isolate-{instance}-blocked ")
}

/// The name of the allow-list set of one family (`v4`/`v6`) and (protocol, ports) group, such as
/// `allow_v4_any` or `allow_v6_tcp_8000_8080`.
pub fn set_name(family: &str, protocol: Protocol, ports: Option<PortRange>) -> String {
    let ports = match ports {
        None => String::new(),
        Some(p) if p.first == p.last => format!("_{}", p.first),
        Some(p) => format!("_{}_{}", p.first, p.last),
    };
    format!("allow_{family}_{protocol}{ports}")
}

/// The set of addresses DNS answers admitted for the policy's host rule `host`, such as
/// `host_v4_1a2b3c4d`: named after the rule itself (a digest of it as written), so that a
/// re-applied table carries over the elements of the rules it still has, and only those.
/// Its elements carry their own timeout.
pub fn host_set_name(v6: bool, host: &HostRule) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(host.to_string().as_bytes());
    let short = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    format!("host_{}_{short:08x}", if v6 { "v6" } else { "v4" })
}

/// Counter values carried over when a policy is re-applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// One allow-list set: the networks of one family that share a (protocol, ports) group.
#[derive(Debug, Clone)]
pub(super) struct AllowSet {
    pub name: String,
    v6: bool,
    protocol: Protocol,
    ports: Option<PortRange>,
    nets: BTreeSet<IpNet>,
    /// The policy entries it was built from, spelled as in the policy file (for errors).
    pub entries: Vec<String>,
    /// Filled at run time, element by element with a timeout (a host name's set), rather than
    /// with the networks here.
    dynamic: bool,
}

/// Renders the whole table, replacing whatever table of that name exists (see [`replace_table`]).
/// Counters start at zero.
pub fn render(policy: &NftPolicy) -> Nftables<'static> {
    render_with_counters(policy, &BTreeMap::new(), &[])
}

/// [`render`], with counters starting at `seeds` (by name) rather than zero.
pub(super) fn render_with_counters(
    policy: &NftPolicy,
    seeds: &BTreeMap<String, CounterValue>,
    host_seeds: &[HostElement],
) -> Nftables<'static> {
    let table = table_name(policy.instance);
    let sets = allow_sets(policy);
    let mut batch = replace_table(&table);
    for (name, _, _) in COUNTERS {
        batch.push(add(NfListObject::Counter(counter(
            &table,
            name,
            seeds.get(name).copied(),
        ))));
    }
    for set in &sets {
        batch.push(add(NfListObject::Set(Box::new(set.to_schema(&table)))));
    }
    // Addresses admitted into host sets the new table still has stay admitted.
    let kept: Vec<HostElement> = host_seeds
        .iter()
        .filter(|seed| sets.iter().any(|set| set.dynamic && set.name == seed.set))
        .cloned()
        .collect();
    batch.extend(timed_elements(&table, &kept));
    batch.push(add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: table.clone().into(),
        name: CHAIN_CONFINED.into(),
        ..Chain::default()
    })));
    batch.push(add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: table.clone().into(),
        name: CHAIN_OUTPUT.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Output),
        prio: Some(OUTPUT_PRIORITY),
        // Other UIDs' packets are none of this table's business.
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })));
    for expr in confined_rules(policy, &sets) {
        batch.push(add(rule(&table, CHAIN_CONFINED, expr)));
    }
    if let Some(resolver) = policy.dns_redirect {
        batch.extend(dns_redirect(&table, policy.uid, resolver));
    }
    // Last, so that the UID is diverted only into a complete chain (the batch is atomic anyway).
    let divert = vec![
        matches(meta(MetaKey::Skuid), Expression::Number(policy.uid)),
        Statement::Jump(JumpTarget {
            target: CHAIN_CONFINED.into(),
        }),
    ];
    batch.push(add(rule(&table, CHAIN_OUTPUT, divert)));
    Nftables {
        objects: batch.into(),
    }
}

/// One address a DNS answer admitted for a host rule, for `timeout_secs`, in the rule's set
/// (see [`host_set_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostElement {
    pub set: String,
    pub addr: std::net::IpAddr,
    pub timeout_secs: u32,
}

/// Puts `elements` in their host sets with their timeouts. Each element is added, deleted and
/// added again: `add` alone leaves an element already there with its old timeout.
pub(super) fn admit_elements(table: &str, elements: &[HostElement]) -> Nftables<'static> {
    let mut batch = Vec::new();
    for element in elements {
        let plain = element_object(table, &element.set, text(element.addr.to_string()));
        batch.push(add(plain.clone()));
        batch.push(NfObject::CmdObject(NfCmd::Delete(plain)));
        batch.extend(timed_elements(table, std::slice::from_ref(element)));
    }
    Nftables {
        objects: batch.into(),
    }
}

/// `add element` of each of `elements`, with its timeout.
fn timed_elements(table: &str, elements: &[HostElement]) -> Vec<NfObject<'static>> {
    elements
        .iter()
        .map(|element| {
            let timed = Expression::Named(NamedExpression::Elem(Elem {
                val: Box::new(text(element.addr.to_string())),
                timeout: Some(element.timeout_secs),
                expires: None,
                comment: None,
                counter: None,
            }));
            add(element_object(table, &element.set, timed))
        })
        .collect()
}

fn element_object(table: &str, set: &str, value: Expression<'static>) -> NfListObject<'static> {
    NfListObject::Element(schema::Element {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: set.to_owned().into(),
        elem: vec![value].into(),
    })
}

/// The chain that sends the UID's DNS queries to isolate's resolver:
/// `meta skuid UID meta nfproto ipv4 meta l4proto { tcp, udp } th dport 53 dnat ip to
/// 127.0.0.1:PORT`, and likewise for IPv6. At the NAT priority of the output hook, so the filter
/// chain judges the translated destination.
fn dns_redirect(
    table: &str,
    uid: u32,
    resolver: crate::network::ResolverEndpoint,
) -> Vec<NfObject<'static>> {
    let mut batch = vec![add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: CHAIN_DNS.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Output),
        prio: Some(DNS_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }))];
    for (nfproto, family, addr) in [
        ("ipv4", stmt::NATFamily::IP, resolver.v4.to_string()),
        ("ipv6", stmt::NATFamily::IP6, resolver.v6.to_string()),
    ] {
        let tcp_udp = NamedExpression::Set(vec![
            SetItem::Element(text("tcp")),
            SetItem::Element(text("udp")),
        ]);
        let expr = vec![
            matches(meta(MetaKey::Skuid), Expression::Number(uid)),
            matches(meta(MetaKey::Nfproto), text(nfproto)),
            matches(meta(MetaKey::L4proto), Expression::Named(tcp_udp)),
            matches(payload("th", "dport"), Expression::Number(53)),
            Statement::DNAT(Some(stmt::NAT {
                addr: Some(text(addr)),
                family: Some(family),
                port: Some(Expression::Number(u32::from(resolver.port))),
                flags: None,
            })),
        ];
        batch.push(add(rule(table, CHAIN_DNS, expr)));
    }
    batch
}

/// `add table` + `delete table` + `add table`: the classic idiom that makes one transaction
/// replace the table whether or not it exists, so re-applying is idempotent and atomic.
pub(super) fn replace_table(table: &str) -> Vec<NfObject<'static>> {
    let mut batch = delete_table(table);
    batch.push(add(table_object(table)));
    batch
}

/// `add table` + `delete table`: deletes the table, without an error when it does not exist.
pub(super) fn delete_table(table: &str) -> Vec<NfObject<'static>> {
    vec![
        add(table_object(table)),
        NfObject::CmdObject(NfCmd::Delete(table_object(table))),
    ]
}

/// The allow-list sets of both families, in a deterministic order.
pub(super) fn allow_sets(policy: &NftPolicy) -> Vec<AllowSet> {
    let v4 = policy
        .v4
        .iter()
        .map(|r| (IpNet::V4(r.net), r.protocol, r.ports, r.to_string()));
    let v6 = policy
        .v6
        .iter()
        .map(|r| (IpNet::V6(r.net), r.protocol, r.ports, r.to_string()));
    let mut sets = group(false, v4);
    sets.extend(group(true, v6));
    for host in policy.hosts {
        for v6 in [false, true] {
            sets.push(AllowSet {
                name: host_set_name(v6, host),
                v6,
                protocol: host.protocol,
                ports: host.ports,
                nets: BTreeSet::new(),
                entries: vec![host.to_string()],
                dynamic: true,
            });
        }
    }
    sets
}

/// The allow-set with that one set alone, for finding which set the kernel refuses.
pub(super) fn add_set(table: &str, set: &AllowSet) -> NfObject<'static> {
    add(NfListObject::Set(Box::new(set.to_schema(table))))
}

type Group = (Protocol, Option<PortRange>);

fn group(
    v6: bool,
    rules: impl Iterator<Item = (IpNet, Protocol, Option<PortRange>, String)>,
) -> Vec<AllowSet> {
    let mut groups: BTreeMap<Group, (BTreeSet<IpNet>, Vec<String>)> = BTreeMap::new();
    for (net, protocol, ports, entry) in rules {
        let (nets, entries) = groups.entry((protocol, ports)).or_default();
        nets.insert(net.trunc());
        entries.push(entry);
    }
    let family = if v6 { "v6" } else { "v4" };
    groups
        .into_iter()
        .map(|((protocol, ports), (nets, entries))| AllowSet {
            name: set_name(family, protocol, ports),
            v6,
            protocol,
            ports,
            nets,
            entries,
            dynamic: false,
        })
        .collect()
}

impl AllowSet {
    fn to_schema(&self, table: &str) -> schema::Set<'static> {
        let elem: Vec<Expression<'static>> = self
            .nets
            .iter()
            .map(|net| {
                Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(text(net.network().to_string())),
                    len: u32::from(net.prefix_len()),
                }))
            })
            .collect();
        schema::Set {
            family: NfFamily::INet,
            table: table.to_owned().into(),
            name: self.name.clone().into(),
            set_type: SetTypeValue::Single(if self.v6 {
                SetType::Ipv6Addr
            } else {
                SetType::Ipv4Addr
            }),
            flags: Some(HashSet::from([if self.dynamic {
                SetFlag::Timeout
            } else {
                SetFlag::Interval
            }])),
            elem: (!self.dynamic).then(|| elem.into()),
            ..schema::Set::default()
        }
    }

    /// `[meta l4proto …] [tcp|udp|th dport …] ip[6] daddr @set accept`.
    fn allow_rule(&self) -> Vec<Statement<'static>> {
        let mut expr = Vec::new();
        // As in the eBPF layer: "any" without ports is every protocol (ICMP too); with ports it
        // is TCP and UDP, the protocols that have ports.
        match (self.protocol, self.ports) {
            (Protocol::Any, None) => {}
            (Protocol::Any, Some(ports)) => {
                let tcp_udp = NamedExpression::Set(vec![
                    SetItem::Element(text("tcp")),
                    SetItem::Element(text("udp")),
                ]);
                expr.push(matches(meta(MetaKey::L4proto), Expression::Named(tcp_udp)));
                expr.push(matches(payload("th", "dport"), port_expr(ports)));
            }
            // `tcp dport` and `udp dport` imply their protocol.
            (protocol, Some(ports)) => {
                expr.push(matches(
                    payload(protocol.as_str(), "dport"),
                    port_expr(ports),
                ));
            }
            (protocol, None) => expr.push(matches(meta(MetaKey::L4proto), text(protocol.as_str()))),
        }
        let family = if self.v6 { "ip6" } else { "ip" };
        expr.push(matches(
            payload(family, "daddr"),
            text(format!("@{}", self.name)),
        ));
        expr.push(Statement::Accept(None));
        expr
    }
}

fn confined_rules(policy: &NftPolicy, sets: &[AllowSet]) -> Vec<Vec<Statement<'static>>> {
    // Replies of allowed (or inbound) connections; conntrack runs before this chain.
    let mut rules = vec![vec![
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(CT {
                key: "state".into(),
                family: None,
                dir: None,
            })),
            right: Expression::List(vec![text("established"), text("related")]),
            op: Operator::IN,
        }),
        Statement::Accept(None),
    ]];
    rules.extend(sets.iter().map(AllowSet::allow_rule));
    // The limit gates the log only: a packet over the rate skips this rule and is still counted
    // and dropped by the next ones.
    let rate = policy.log.rate;
    rules.push(vec![
        Statement::Limit(stmt::Limit {
            rate: rate.count,
            rate_unit: None,
            per: Some(rate.per.as_str().into()),
            burst: None,
            burst_unit: None,
            inv: None,
        }),
        Statement::Log(Some(Log {
            prefix: Some(log_prefix(policy.instance).into()),
            flags: Some(HashSet::from([LogFlag::Skuid])),
            ..Log::new(None)
        })),
    ]);
    for (family, nfproto) in [("v4", "ipv4"), ("v6", "ipv6")] {
        // `other` last: it has no protocol match and takes what tcp and udp left.
        for protocol in ["tcp", "udp", "other"] {
            let mut expr = vec![matches(meta(MetaKey::Nfproto), text(nfproto))];
            if protocol != "other" {
                expr.push(matches(meta(MetaKey::L4proto), text(protocol)));
            }
            expr.push(Statement::Counter(stmt::Counter::Named(
                format!("blocked_{family}_{protocol}").into(),
            )));
            // Observing, the packet goes back to the output chain, whose policy accepts it:
            // a verdict still, so it does not fall through to the `other` counter too.
            expr.push(if policy.observe {
                Statement::Return(None)
            } else {
                Statement::Drop(None)
            });
            rules.push(expr);
        }
    }
    rules
}

fn counter(table: &str, name: &str, seed: Option<CounterValue>) -> schema::Counter<'static> {
    // The crate's schema holds u32 values: a seed beyond that saturates (packets of blocked
    // attempts never get there; bytes might, after 4 GiB of blocked traffic).
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    schema::Counter {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: name.to_owned().into(),
        handle: None,
        packets: seed.map(|s| clamp(s.packets)),
        bytes: seed.map(|s| clamp(s.bytes)),
    }
}

fn table_object(table: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: table.to_owned().into(),
        handle: None,
    })
}

fn rule(table: &str, chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

fn add(object: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(object))
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn text(s: impl Into<Cow<'static, str>>) -> Expression<'static> {
    Expression::String(s.into())
}

fn port_expr(ports: PortRange) -> Expression<'static> {
    let (first, last) = (u32::from(ports.first), u32::from(ports.last));
    if first == last {
        Expression::Number(first)
    } else {
        Expression::Range(Box::new(Range {
            range: [Expression::Number(first), Expression::Number(last)],
        }))
    }
}
