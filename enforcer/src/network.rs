//! The network rules an instance's layers enforce: the policy's address rules, plus the
//! resolvers its `dns` setting keeps reachable, plus the current addresses of its host names.

use std::net::{IpAddr, ToSocketAddrs};

use ipnet::{Ipv4Net, Ipv6Net};
use isolate_policy::{DnsSetting, HostRule, NetRule, Network, PortRange, Protocol};

/// Address rules of both families, normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveRules {
    pub v4: Vec<NetRule<Ipv4Net>>,
    pub v6: Vec<NetRule<Ipv6Net>>,
    /// Host names that could not be resolved now (they are retried on the next refresh).
    pub unresolved: Vec<String>,
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
        unresolved: Vec::new(),
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
                push(rules, addr, host.ports, host.protocol);
            }
        }
        Ok(_) | Err(_) => {
            tracing::warn!(host = %host.pattern, "cannot resolve: not reachable until it resolves");
            rules.unresolved.push(host.pattern.clone());
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
}
