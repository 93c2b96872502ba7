//! The TCP ports Landlock lets the instance connect to, derived from its network policy.
//!
//! Landlock judges TCP connects by destination port only (never by address), so it can only
//! repeat the port part of the policy: the union of the ports of every rule that allows TCP.
//! The address part stays with the network layers (eBPF, nftables).

use isolate_policy::{DnsSetting, NetRule, Network, PortRange, Protocol};

/// Landlock has no port ranges: each allowed port is one rule. Above this many ports the
/// ruleset would grow for little gain, so TCP connect is then left to the network layers.
pub const MAX_PORT_RULES: usize = 1024;

/// Why TCP connect is left unrestricted by Landlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrestricted {
    /// This policy entry allows every TCP port.
    AllPorts(String),
    /// The union has this many ports, more than [`MAX_PORT_RULES`].
    TooManyPorts(usize),
}

impl std::fmt::Display for Unrestricted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unrestricted::AllPorts(entry) => write!(f, "`{entry}` allows every TCP port"),
            Unrestricted::TooManyPorts(count) => write!(
                f,
                "the policy allows {count} TCP ports, more than the {MAX_PORT_RULES} port rules \
                 isolate gives Landlock (it has no ranges): list fewer ports to restrict them"
            ),
        }
    }
}

/// The union of the TCP ports `network` allows, as sorted, merged ranges (empty when no rule
/// allows TCP); or why Landlock cannot restrict TCP connect.
pub fn tcp_connect_ports(network: &Network) -> Result<Vec<PortRange>, Unrestricted> {
    let entries = (network.allow_v4.iter().map(entry))
        .chain(network.allow_v6.iter().map(entry))
        .chain(
            network
                .hosts
                .iter()
                .map(|r| (r.ports, r.protocol, r.to_string())),
        );
    // The resolvers the network layers keep reachable: DNS falls back to TCP for long answers.
    let resolvers = (network.dns != DnsSetting::None).then(|| PortRange::single(53));
    tcp_port_union(entries, resolvers)
}

/// The TCP ports `network.listen` lets the instance bind, as sorted, merged ranges, with port
/// 0 (an ephemeral port, as clients bind before they connect); or why Landlock cannot
/// restrict TCP bind. Landlock judges the port only; the address of each entry stays with
/// the eBPF layer.
pub fn tcp_bind_ports(network: &Network) -> Result<Vec<PortRange>, Unrestricted> {
    let entries = (network.listen_v4.iter().map(entry)).chain(network.listen_v6.iter().map(entry));
    tcp_port_union(entries, Some(PortRange::single(0)))
}

/// A rule's (ports, protocol, spelling), as [`tcp_port_union`] takes it.
fn entry<N: std::fmt::Display>(rule: &NetRule<N>) -> (Option<PortRange>, Protocol, String) {
    (rule.ports, rule.protocol, rule.to_string())
}

/// The TCP ports of `entries` and `extra`, merged; an entry allowing every TCP port, or more
/// than [`MAX_PORT_RULES`] ports in all, leaves TCP unrestricted.
fn tcp_port_union(
    entries: impl Iterator<Item = (Option<PortRange>, Protocol, String)>,
    extra: Option<PortRange>,
) -> Result<Vec<PortRange>, Unrestricted> {
    let mut ranges: Vec<PortRange> = extra.into_iter().collect();
    for (ports, protocol, entry) in entries {
        if protocol == Protocol::Udp {
            continue;
        }
        match ports {
            Some(range) => ranges.push(range),
            None => return Err(Unrestricted::AllPorts(entry)),
        }
    }
    let ranges = merge(ranges);
    let count = port_count(&ranges);
    if count > MAX_PORT_RULES {
        return Err(Unrestricted::TooManyPorts(count));
    }
    Ok(ranges)
}

/// How many ports `ranges` cover (ranges must not overlap, as [`merge`] makes them).
pub fn port_count(ranges: &[PortRange]) -> usize {
    ranges
        .iter()
        .map(|r| usize::from(r.last - r.first) + 1)
        .sum()
}

/// Sorts `ranges` and merges those that overlap or touch.
fn merge(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort_unstable();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(range.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn network(allow: &str, dns: &str) -> Network {
        let text = format!("user = \"a\"\n[network]\nallow = [{allow}]\ndns = {dns}\n");
        isolate_policy::parse_str(&text, Path::new("/x/t.toml"))
            .unwrap()
            .network
    }

    fn ports(ranges: &[PortRange]) -> Vec<String> {
        ranges.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn bind_ports_are_the_listed_tcp_ports_and_the_ephemeral_one() {
        let text = "user = \"a\"\n[network]\nlisten = [\"127.0.0.1:8787/tcp\", \"[::1]:9000-9001\", \"0.0.0.0:53/udp\"]\n";
        let net = isolate_policy::parse_str(text, Path::new("/x/t.toml"))
            .unwrap()
            .network;
        assert_eq!(
            ports(&tcp_bind_ports(&net).unwrap()),
            ["0", "8787", "9000-9001"]
        );
        let none = network("", "\"none\"");
        assert_eq!(
            ports(&tcp_bind_ports(&none).unwrap()),
            ["0"],
            "nothing to serve"
        );
        let every = "user = \"a\"\n[network]\nlisten = [\"127.0.0.1\"]\n";
        let every = isolate_policy::parse_str(every, Path::new("/x/t.toml"))
            .unwrap()
            .network;
        assert!(matches!(
            tcp_bind_ports(&every),
            Err(Unrestricted::AllPorts(_))
        ));
    }

    #[test]
    fn union_of_tcp_ports_over_addresses_hosts_and_dns() {
        let net = network(
            r#""10.0.0.0/8:443", "[2001:db8::/32]:8000-8010/tcp", "api.example.com:443/tcp", "10.1.0.0/16:444", "192.0.2.1:5353/udp""#,
            "\"system\"",
        );
        assert_eq!(
            ports(&tcp_connect_ports(&net).unwrap()),
            ["53", "443-444", "8000-8010"]
        );
    }

    #[test]
    fn no_dns_and_no_tcp_rule_means_no_tcp_port() {
        let net = network(r#""192.0.2.1:53/udp""#, "\"none\"");
        assert_eq!(tcp_connect_ports(&net).unwrap(), []);
    }

    #[test]
    fn a_tcp_rule_without_ports_leaves_tcp_unrestricted() {
        let net = network(r#""10.0.0.0/8:443", "192.168.0.0/16""#, "\"none\"");
        assert_eq!(
            tcp_connect_ports(&net),
            Err(Unrestricted::AllPorts("192.168.0.0/16".into()))
        );
        let host = network(r#""api.example.com/tcp""#, "\"none\"");
        assert!(matches!(
            tcp_connect_ports(&host),
            Err(Unrestricted::AllPorts(entry)) if entry == "api.example.com/tcp"
        ));
    }

    #[test]
    fn a_udp_rule_without_ports_does_not_open_tcp() {
        let net = network(r#""10.0.0.0/8/udp", "10.0.0.0/8:22""#, "\"none\"");
        assert_eq!(ports(&tcp_connect_ports(&net).unwrap()), ["22"]);
    }

    #[test]
    fn more_ports_than_the_cap_leave_tcp_unrestricted() {
        let at_cap = network(r#""10.0.0.0/8:1-1024""#, "\"none\"");
        assert_eq!(port_count(&tcp_connect_ports(&at_cap).unwrap()), 1024);
        let above = network(r#""10.0.0.0/8:1-1024", "10.0.0.0/8:2000""#, "\"none\"");
        assert_eq!(
            tcp_connect_ports(&above),
            Err(Unrestricted::TooManyPorts(1025))
        );
    }

    #[test]
    fn touching_and_overlapping_ranges_merge() {
        let merged = merge(vec![
            PortRange {
                first: 10,
                last: 20,
            },
            PortRange::single(21),
            PortRange {
                first: 15,
                last: 18,
            },
            PortRange::single(65535),
            PortRange {
                first: 30,
                last: 40,
            },
        ]);
        assert_eq!(ports(&merged), ["10-21", "30-40", "65535"]);
    }
}
