//! Normalisation: the smallest equivalent rule lists, in a fixed order, so
//! that two policies allowing the same traffic produce the same maps, sets and
//! printed output.
//!
//! Network rules are grouped by (protocol, ports); within a group overlapping
//! and adjacent networks are merged and the result sorted. Groups come in
//! (protocol, ports) order: any-protocol all-ports first. Hosts, sockets, paths
//! and resolvers keep the order of their first occurrence, without duplicates.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::{DnsSetting, Filesystem, NetRule, Network, Policy, PortRange, Protocol};

/// Merge and sort IPv4 rules (see the module docs).
pub fn normalise_v4(rules: &[NetRule<Ipv4Net>]) -> Vec<NetRule<Ipv4Net>> {
    normalise_rules(rules, |nets| Ipv4Net::aggregate(&nets.to_vec()))
}

/// Merge and sort IPv6 rules (see the module docs).
pub fn normalise_v6(rules: &[NetRule<Ipv6Net>]) -> Vec<NetRule<Ipv6Net>> {
    normalise_rules(rules, |nets| Ipv6Net::aggregate(&nets.to_vec()))
}

fn normalise_rules<N: Copy + Ord>(
    rules: &[NetRule<N>],
    aggregate: impl Fn(&[N]) -> Vec<N>,
) -> Vec<NetRule<N>> {
    let mut groups: BTreeMap<(Protocol, Option<PortRange>), Vec<N>> = BTreeMap::new();
    for rule in rules {
        groups
            .entry((rule.protocol, rule.ports))
            .or_default()
            .push(rule.net);
    }
    let mut out = Vec::new();
    for ((protocol, ports), nets) in groups {
        let mut merged = aggregate(&nets);
        merged.sort();
        out.extend(merged.into_iter().map(|net| NetRule {
            net,
            ports,
            protocol,
        }));
    }
    out
}

impl Network {
    /// Normalise in place (see the module docs).
    pub fn normalise(&mut self) {
        self.allow_v4 = normalise_v4(&self.allow_v4);
        self.allow_v6 = normalise_v6(&self.allow_v6);
        self.listen_v4 = normalise_v4(&self.listen_v4);
        self.listen_v6 = normalise_v6(&self.listen_v6);
        dedup_keep_first(&mut self.hosts);
        dedup_keep_first(&mut self.unix_sockets);
        if let DnsSetting::Servers(servers) = &mut self.dns {
            dedup_keep_first(servers);
        }
    }
}

impl Filesystem {
    /// Drop repeated paths, keeping the first occurrence in each list.
    pub fn normalise(&mut self) {
        dedup_keep_first(&mut self.read_only);
        dedup_keep_first(&mut self.read_write);
        dedup_keep_first(&mut self.exec);
    }
}

impl Policy {
    /// Normalise in place. Parsing already does this; it is idempotent.
    pub fn normalise(&mut self) {
        self.network.normalise();
        self.filesystem.normalise();
    }
}

fn dedup_keep_first<T: Eq + Hash + Clone>(items: &mut Vec<T>) {
    let mut seen = HashSet::new();
    items.retain(|item| seen.insert(item.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule4(net: &str, ports: Option<(u16, u16)>, protocol: Protocol) -> NetRule<Ipv4Net> {
        NetRule {
            net: net.parse().unwrap(),
            ports: ports.map(|(first, last)| PortRange { first, last }),
            protocol,
        }
    }

    fn any4(net: &str) -> NetRule<Ipv4Net> {
        rule4(net, None, Protocol::Any)
    }

    #[test]
    fn merges_adjacent_halves() {
        let out = normalise_v4(&[any4("10.128.0.0/9"), any4("10.0.0.0/9")]);
        assert_eq!(out, vec![any4("10.0.0.0/8")]);
    }

    #[test]
    fn merges_overlapping_and_duplicates() {
        let out = normalise_v4(&[
            any4("10.1.2.0/24"),
            any4("10.0.0.0/8"),
            any4("10.0.0.0/8"),
            any4("192.168.1.1/32"),
        ]);
        assert_eq!(out, vec![any4("10.0.0.0/8"), any4("192.168.1.1/32")]);
    }

    #[test]
    fn adjacent_but_not_siblings_stay_apart() {
        let out = normalise_v4(&[any4("10.0.0.1/32"), any4("10.0.0.2/32")]);
        assert_eq!(out, vec![any4("10.0.0.1/32"), any4("10.0.0.2/32")]);
        // Three adjacent /24s make a /23 and a /24.
        let out = normalise_v4(&[
            any4("10.0.2.0/24"),
            any4("10.0.1.0/24"),
            any4("10.0.0.0/24"),
        ]);
        assert_eq!(out, vec![any4("10.0.0.0/23"), any4("10.0.2.0/24")]);
    }

    #[test]
    fn groups_by_protocol_and_ports() {
        let out = normalise_v4(&[
            rule4("10.0.0.0/9", Some((443, 443)), Protocol::Tcp),
            rule4("10.128.0.0/9", Some((80, 80)), Protocol::Tcp),
            rule4("10.128.0.0/9", Some((443, 443)), Protocol::Tcp),
            rule4("10.0.0.0/9", None, Protocol::Udp),
            any4("172.16.0.0/12"),
        ]);
        assert_eq!(
            out,
            vec![
                any4("172.16.0.0/12"),
                rule4("10.128.0.0/9", Some((80, 80)), Protocol::Tcp),
                rule4("10.0.0.0/8", Some((443, 443)), Protocol::Tcp),
                rule4("10.0.0.0/9", None, Protocol::Udp),
            ]
        );
    }

    #[test]
    fn v6_merges_too() {
        let r = |net: &str| NetRule::<Ipv6Net> {
            net: net.parse().unwrap(),
            ports: None,
            protocol: Protocol::Any,
        };
        let out = normalise_v6(&[
            r("2001:db8:8000::/33"),
            r("2001:db8::/33"),
            r("2001:db8:1::/48"),
        ]);
        assert_eq!(out, vec![r("2001:db8::/32")]);
    }

    #[test]
    fn dedup_keeps_first_order() {
        let mut v = vec![3, 1, 3, 2, 1];
        dedup_keep_first(&mut v);
        assert_eq!(v, vec![3, 1, 2]);
    }
}
