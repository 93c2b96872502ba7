//! Turns a policy's allow rules into LPM-trie entries.
//!
//! The trie answers with the longest matching prefix only, so every prefix's entry must carry
//! the port rules of all shorter prefixes that contain it ("push-down"). Then the longest match
//! alone tells whether (address, port, protocol) is allowed: every rule whose network contains
//! the address belongs to a prefix of that address, hence to the match or one containing it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
#[cfg(test)]
use isolate_ebpf_common::PROTO_OTHER;
use isolate_ebpf_common::{AllowValue, MAX_PORT_RULES, PROTO_ANY, PROTO_TCP, PROTO_UDP, PortRule};
use isolate_policy::{NetRule, PortRange, Protocol};
use thiserror::Error;

/// Map entries for one instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompiledRules {
    pub v4: Vec<(Ipv4Net, AllowValue)>,
    pub v6: Vec<(Ipv6Net, AllowValue)>,
    /// Local addresses and ports the instance may serve on (`network.listen`), compiled the
    /// same way: binds and arrivals are judged against them.
    pub listen_v4: Vec<(Ipv4Net, AllowValue)>,
    pub listen_v6: Vec<(Ipv6Net, AllowValue)>,
    /// Allowed pathname unix sockets (absolute paths, as in `network.unix_sockets`). They
    /// are resolved to the place they live when the rules are applied, since that can change
    /// between compiling and applying. Every other unix socket a confined process connects
    /// or sends to is refused, except its own and unnamed ones (see `bpf::unix`).
    pub unix_sockets: Vec<PathBuf>,
    /// Learn mode: what these rules refuse is counted and reported, then let through
    /// (`INSTANCE_OBSERVE`).
    pub observe: bool,
}

impl CompiledRules {
    /// These rules, observing (see `observe`) or not.
    #[must_use]
    pub fn observing(mut self, observe: bool) -> Self {
        self.observe = observe;
        self
    }

    /// These rules with `paths` as the allowed unix sockets.
    #[must_use]
    pub fn with_unix_sockets(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.unix_sockets = paths.into_iter().collect();
        self
    }

    /// These rules with `v4` and `v6` (`network.listen`) as what the instance may serve on.
    pub fn with_listen(
        mut self,
        v4: &[NetRule<Ipv4Net>],
        v6: &[NetRule<Ipv6Net>],
    ) -> Result<Self, RulesError> {
        self.listen_v4 = push_down(v4)?;
        self.listen_v6 = push_down(v6)?;
        Ok(self)
    }

    /// Entries in both allow tries (listen entries and unix sockets not counted).
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A network prefix of either family, as the push-down needs it.
trait Prefix: Copy + Ord + std::fmt::Display {
    fn prefix_len(&self) -> u8;
    /// The prefix of length `len` (≤ ours) that contains this one.
    fn ancestor(&self, len: u8) -> Self;
}

impl Prefix for Ipv4Net {
    fn prefix_len(&self) -> u8 {
        Ipv4Net::prefix_len(self)
    }
    fn ancestor(&self, len: u8) -> Self {
        Ipv4Net::new(self.network(), len)
            .expect("len <= 32")
            .trunc()
    }
}

impl Prefix for Ipv6Net {
    fn prefix_len(&self) -> u8 {
        Ipv6Net::prefix_len(self)
    }
    fn ancestor(&self, len: u8) -> Self {
        Ipv6Net::new(self.network(), len)
            .expect("len <= 128")
            .trunc()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RulesError {
    #[error(
        "{net} is covered by {count} different port/protocol rules; the eBPF layer holds at most \
         {MAX_PORT_RULES} per address: merge port ranges in network.allow or network.listen"
    )]
    TooManyPortRules { net: String, count: usize },
}

/// Compiles allow rules of both families into trie entries.
pub fn compile_rules(
    v4: &[NetRule<Ipv4Net>],
    v6: &[NetRule<Ipv6Net>],
) -> Result<CompiledRules, RulesError> {
    Ok(CompiledRules {
        v4: push_down(v4)?,
        v6: push_down(v6)?,
        listen_v4: Vec::new(),
        listen_v6: Vec::new(),
        unix_sockets: Vec::new(),
        observe: false,
    })
}

fn push_down<N: Prefix>(rules: &[NetRule<N>]) -> Result<Vec<(N, AllowValue)>, RulesError> {
    let mut own: BTreeMap<N, Vec<PortRule>> = BTreeMap::new();
    for rule in rules {
        let entry = own.entry(rule.net).or_default();
        let port_rule = port_rule(rule);
        if !entry.contains(&port_rule) {
            entry.push(port_rule);
        }
    }
    own.keys()
        .map(|&net| {
            // Every prefix of `net` that has rules of its own, `net` included.
            let mut collected: Vec<PortRule> = Vec::new();
            for len in 0..=net.prefix_len() {
                for rule in own.get(&net.ancestor(len)).into_iter().flatten() {
                    if !collected.contains(rule) {
                        collected.push(*rule);
                    }
                }
            }
            allow_value(&collected)
                .map(|value| (net, value))
                .ok_or_else(|| RulesError::TooManyPortRules {
                    net: net.to_string(),
                    count: collected.len(),
                })
        })
        .collect()
}

fn port_rule<N>(rule: &NetRule<N>) -> PortRule {
    let (first, last, protocols) = port_bits(rule.ports, rule.protocol);
    PortRule {
        first,
        last,
        protocols,
        _pad: [0; 3],
    }
}

/// A rule's ports and protocol as the programs read them: (first, last, `PROTO_*` bits).
pub(crate) fn port_bits(ports: Option<PortRange>, protocol: Protocol) -> (u16, u16, u8) {
    let (first, last) = ports.map_or((0, u16::MAX), |p| (p.first, p.last));
    let protocols = match protocol {
        // Protocols without ports are covered only when the rule does not name ports.
        Protocol::Any if ports.is_none() => PROTO_ANY,
        Protocol::Any => PROTO_TCP | PROTO_UDP,
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    (first, last, protocols)
}

fn allow_value(rules: &[PortRule]) -> Option<AllowValue> {
    if rules.len() > MAX_PORT_RULES {
        return None;
    }
    let mut value = AllowValue {
        count: rules.len() as u32,
        ..AllowValue::default()
    };
    value.rules[..rules.len()].copy_from_slice(rules);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use isolate_policy::PortRange;

    fn rule(net: &str, ports: Option<(u16, u16)>, protocol: Protocol) -> NetRule<Ipv4Net> {
        NetRule {
            net: net.parse().unwrap(),
            ports: ports.map(|(first, last)| PortRange { first, last }),
            protocol,
        }
    }

    fn compile(v4: &[NetRule<Ipv4Net>]) -> Result<CompiledRules, RulesError> {
        compile_rules(v4, &[])
    }

    fn value_of<'a>(compiled: &'a CompiledRules, net: &str) -> &'a AllowValue {
        let net: Ipv4Net = net.parse().unwrap();
        &compiled.v4.iter().find(|(n, _)| *n == net).unwrap().1
    }

    #[test]
    fn longer_prefix_inherits_the_rules_of_the_shorter() {
        let compiled = compile(&[
            rule("10.0.0.0/8", Some((443, 443)), Protocol::Tcp),
            rule("10.1.0.0/16", Some((80, 80)), Protocol::Tcp),
        ])
        .unwrap();
        let inner = value_of(&compiled, "10.1.0.0/16");
        assert!(inner.permits(443, PROTO_TCP), "inherited from 10.0.0.0/8");
        assert!(inner.permits(80, PROTO_TCP));
        assert!(!inner.permits(80, PROTO_UDP));
        let outer = value_of(&compiled, "10.0.0.0/8");
        assert!(outer.permits(443, PROTO_TCP));
        assert!(!outer.permits(80, PROTO_TCP), "not pushed up");
    }

    #[test]
    fn no_ports_means_every_port_and_protocol() {
        let compiled = compile(&[rule("127.0.0.1/32", None, Protocol::Any)]).unwrap();
        let value = value_of(&compiled, "127.0.0.1/32");
        assert!(value.permits(1, PROTO_TCP));
        assert!(value.permits(65535, PROTO_UDP));
        assert!(value.permits(0, PROTO_OTHER), "ICMP too");
    }

    #[test]
    fn ports_or_a_protocol_exclude_portless_protocols() {
        let compiled = compile(&[
            rule("10.0.0.0/8", Some((1, 65535)), Protocol::Any),
            rule("10.1.0.0/16", None, Protocol::Tcp),
        ])
        .unwrap();
        assert!(!value_of(&compiled, "10.0.0.0/8").permits(0, PROTO_OTHER));
        assert!(!value_of(&compiled, "10.1.0.0/16").permits(0, PROTO_OTHER));
        assert!(
            value_of(&compiled, "10.1.0.0/16").permits(22, PROTO_UDP),
            "inherited"
        );
    }

    #[test]
    fn v6_rules_push_down_like_v4() {
        let outer = NetRule {
            net: "2001:db8::/32".parse().unwrap(),
            ports: Some(PortRange {
                first: 443,
                last: 443,
            }),
            protocol: Protocol::Tcp,
        };
        let inner = NetRule {
            net: "2001:db8:1::/48".parse().unwrap(),
            ports: None,
            protocol: Protocol::Udp,
        };
        let compiled = compile_rules(&[], &[outer, inner]).unwrap();
        let (_, value) = compiled
            .v6
            .iter()
            .find(|(n, _)| n.prefix_len() == 48)
            .unwrap();
        assert!(value.permits(443, PROTO_TCP));
        assert!(value.permits(53, PROTO_UDP));
        assert!(!value.permits(80, PROTO_TCP));
    }

    #[test]
    fn too_many_rules_on_one_prefix_is_an_error() {
        let rules: Vec<_> = (1..=9)
            .map(|p| rule("10.0.0.0/8", Some((p, p)), Protocol::Tcp))
            .collect();
        let error = compile(&rules).unwrap_err();
        assert_eq!(
            error,
            RulesError::TooManyPortRules {
                net: "10.0.0.0/8".into(),
                count: 9
            }
        );
    }
}
