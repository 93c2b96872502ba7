//! The network rules an instance's layers enforce: the policy's address rules, plus the
//! resolvers its `dns` setting keeps reachable, plus the current addresses of its host names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

use ipnet::{Ipv4Net, Ipv6Net};
use isolate_policy::{DnsSetting, HostRule, NetRule, Network, PortRange, Protocol};

/// Address rules of both families, normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveRules {
    pub v4: Vec<NetRule<Ipv4Net>>,
    pub v6: Vec<NetRule<Ipv6Net>>,
    /// Host names that could not be resolved now (they are retried on the next refresh).
    pub unresolved: Vec<String>,
    /// Answers that were not admitted, as `name → address (why)`: see [`never_admitted`].
    pub refused: Vec<String>,
    /// Host names are followed through isolate's resolver (see [`followed_rules`]) rather
    /// than resolved here.
    pub followed: bool,
    /// Where the nftables layer translates the instance's DNS queries to: isolate's resolver,
    /// when no eBPF layer sends them there already (see [`EffectiveRules::translating_dns`]).
    pub dns_translated_to: Option<ResolverEndpoint>,
    /// Learn mode: the layers count and report what these rules refuse, and let it through.
    pub observe: bool,
}

/// Where isolate's resolver for one instance listens: loopback, one port for UDP and TCP in
/// both families. The eBPF layer sends the instance's DNS queries there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolverEndpoint {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub port: u16,
}

/// The rules when the instance's DNS answers are followed: the policy's address rules, and
/// its resolver (once it listens) instead of the upstream resolvers, which only isolate asks.
/// Host names open nothing here: each address is admitted as an answer to the instance's own
/// lookup gives it.
pub fn followed_rules(network: &Network, resolver: Option<ResolverEndpoint>) -> EffectiveRules {
    let mut rules = EffectiveRules {
        v4: network.allow_v4.clone(),
        v6: network.allow_v6.clone(),
        followed: true,
        ..EffectiveRules::default()
    };
    if let Some(resolver) = resolver {
        let port = Some(PortRange {
            first: resolver.port,
            last: resolver.port,
        });
        push(&mut rules, IpAddr::V4(resolver.v4), port, Protocol::Any);
        push(&mut rules, IpAddr::V6(resolver.v6), port, Protocol::Any);
    }
    rules.v4 = isolate_policy::normalise_v4(&rules.v4);
    rules.v6 = isolate_policy::normalise_v6(&rules.v6);
    rules
}

impl EffectiveRules {
    /// These rules, with the nftables layer translating the instance's DNS queries to
    /// `resolver` (for an instance whose queries no eBPF layer redirects).
    #[must_use]
    pub fn translating_dns(mut self, resolver: ResolverEndpoint) -> Self {
        self.dns_translated_to = Some(resolver);
        self
    }
}

/// Computes the rules in force now. `resolv_conf` is the text of `/etc/resolv.conf` (for
/// `dns = "system"`); `resolve` turns a host name into addresses.
pub fn effective_rules(
    network: &Network,
    resolv_conf: &str,
    resolve: impl Fn(&str) -> std::io::Result<Vec<IpAddr>>,
) -> EffectiveRules {
    let mut rules = EffectiveRules {
        v4: network.allow_v4.clone(),
        v6: network.allow_v6.clone(),
        ..EffectiveRules::default()
    };
    let dns_port = Some(PortRange {
        first: 53,
        last: 53,
    });
    for server in dns_servers(&network.dns, resolv_conf) {
        push(&mut rules, server, dns_port, Protocol::Any);
    }
    for host in &network.hosts {
        resolve_host(&mut rules, host, &resolve);
    }
    rules.v4 = isolate_policy::normalise_v4(&rules.v4);
    rules.v6 = isolate_policy::normalise_v6(&rules.v6);
    rules
}

/// Resolves with the system resolver (getaddrinfo).
pub fn system_resolve(host: &str) -> std::io::Result<Vec<IpAddr>> {
    Ok((host, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// The resolvers `dns` names: `system` reads the `nameserver` lines of resolv.conf.
pub fn dns_servers(dns: &DnsSetting, resolv_conf: &str) -> Vec<IpAddr> {
    match dns {
        DnsSetting::None => Vec::new(),
        DnsSetting::Servers(servers) => servers.clone(),
        DnsSetting::System => resolv_conf
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some("nameserver"))
                    .then(|| words.next())
                    .flatten()
                    // A scoped v6 address (fe80::1%eth0) keeps only its address.
                    .and_then(|addr| addr.split('%').next()?.parse().ok())
            })
            .collect(),
    }
}

fn resolve_host(
    rules: &mut EffectiveRules,
    host: &HostRule,
    resolve: impl Fn(&str) -> std::io::Result<Vec<IpAddr>>,
) {
    // A wildcard has no addresses of its own; only names seen in DNS answers could match it,
    // and following answers is not built yet.
    if host.pattern.starts_with("*.") {
        tracing::warn!(
            host = %host.pattern,
            "wildcard host names are not enforced yet: list the names themselves"
        );
        rules.unresolved.push(host.pattern.clone());
        return;
    }
    match resolve(&host.pattern) {
        Ok(addrs) if !addrs.is_empty() => {
            for addr in addrs {
                if let Some(why) = never_admitted(addr) {
                    tracing::warn!(
                        host = %host.pattern,
                        %addr,
                        "not admitted: a name never opens a {why} address; list the address itself if it is meant"
                    );
                    rules
                        .refused
                        .push(format!("{} → {addr} ({why})", host.pattern));
                    continue;
                }
                push(rules, addr, host.ports, host.protocol);
            }
        }
        Ok(_) | Err(_) => {
            tracing::warn!(host = %host.pattern, "cannot resolve: not reachable until it resolves");
            rules.unresolved.push(host.pattern.clone());
        }
    }
}

/// Why a host name's answer `addr` is never admitted, if it is not: a name that answers
/// loopback, the unspecified address, link-local (the cloud metadata service at
/// 169.254.169.254) or multicast would open a local service or a whole segment to the
/// instance (DNS rebinding). An address listed itself in `network.allow` is allowed as listed.
pub fn never_admitted(addr: IpAddr) -> Option<&'static str> {
    // A v4-mapped answer reaches an IPv4 host: judge it as one.
    let addr = addr.to_canonical();
    if addr.is_loopback() {
        Some("loopback")
    } else if addr.is_unspecified() {
        Some("unspecified")
    } else if addr.is_multicast() {
        Some("multicast")
    } else {
        match addr {
            IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
            IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
            _ => None,
        }
    }
}

fn push(rules: &mut EffectiveRules, addr: IpAddr, ports: Option<PortRange>, protocol: Protocol) {
    match addr {
        IpAddr::V4(a) => rules.v4.push(NetRule {
            net: Ipv4Net::from(a),
            ports,
            protocol,
        }),
        // A v4-mapped answer reaches an IPv4 host: judge it as one.
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => push(rules, IpAddr::V4(v4), ports, protocol),
            None => rules.v6.push(NetRule {
                net: Ipv6Net::from(a),
                ports,
                protocol,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn network(toml: &str) -> Network {
        isolate_policy::parse_str(toml, Path::new("/x/test.toml"))
            .unwrap()
            .network
    }

    #[test]
    fn system_dns_allows_port_53_to_each_nameserver() {
        let net = network("user = \"a\"\n[network]\nallow = []\n");
        let conf = "# comment\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nsearch example\n";
        let rules = effective_rules(&net, conf, |_| Ok(vec![]));
        assert_eq!(rules.v4.len(), 1);
        assert_eq!(rules.v4[0].net.to_string(), "10.0.0.53/32");
        assert_eq!(
            rules.v4[0].ports,
            Some(PortRange {
                first: 53,
                last: 53
            })
        );
        assert_eq!(rules.v6[0].net.to_string(), "fe80::1/128");
    }

    #[test]
    fn dns_none_adds_nothing_and_servers_are_used_as_given() {
        let none = network("user = \"a\"\n[network]\ndns = \"none\"\n");
        assert!(
            effective_rules(&none, "nameserver 1.1.1.1\n", |_| Ok(vec![]))
                .v4
                .is_empty()
        );
        let listed = network("user = \"a\"\n[network]\ndns = [\"192.0.2.53\"]\n");
        let rules = effective_rules(&listed, "nameserver 1.1.1.1\n", |_| Ok(vec![]));
        assert_eq!(rules.v4[0].net.to_string(), "192.0.2.53/32");
    }

    #[test]
    fn host_names_become_address_rules_with_their_ports() {
        let net = network(
            "user = \"a\"\n[network]\ndns = \"none\"\nallow = [\"api.example.com:443/tcp\", \"gone.example:80\", \"*.wild.example:443\"]\n",
        );
        let rules = effective_rules(&net, "", |host| match host {
            "api.example.com" => Ok(vec![
                "192.0.2.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
                "::ffff:192.0.2.8".parse().unwrap(),
            ]),
            _ => Err(std::io::Error::other("NXDOMAIN")),
        });
        let v4: Vec<String> = rules.v4.iter().map(ToString::to_string).collect();
        assert_eq!(v4, ["192.0.2.7/32:443/tcp", "192.0.2.8/32:443/tcp"]);
        assert_eq!(rules.v6[0].to_string(), "[2001:db8::7/128]:443/tcp");
        assert_eq!(rules.unresolved, ["gone.example", "*.wild.example"]);
    }

    #[test]
    fn names_that_answer_local_addresses_open_nothing() {
        let net = network(
            "user = \"a\"\n[network]\ndns = \"none\"\nallow = [\"rebind.example:80\", \"127.0.0.1/32:8080\"]\n",
        );
        let answers = [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.2",
            "192.0.2.9",
        ];
        let rules = effective_rules(&net, "", |_| {
            Ok(answers.iter().map(|a| a.parse().unwrap()).collect())
        });
        let v4: Vec<String> = rules.v4.iter().map(ToString::to_string).collect();
        // Only the public answer, and the loopback address listed as itself.
        assert_eq!(v4, ["192.0.2.9/32:80", "127.0.0.1/32:8080"]);
        assert!(rules.v6.is_empty(), "{:?}", rules.v6);
        assert_eq!(
            rules.refused.len(),
            answers.len() - 1,
            "{:?}",
            rules.refused
        );
        assert!(
            rules
                .refused
                .contains(&"rebind.example → 169.254.169.254 (link-local)".to_owned())
        );
    }
}
