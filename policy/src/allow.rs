//! The allow-entry syntax: `ADDR_OR_CIDR_OR_HOST[:PORT[-PORT]][/tcp|/udp]`,
//! and the pieces the table form shares with it (networks, hosts, ports,
//! protocols).
//!
//! These functions know nothing of files or spans; they return a [`Problem`]
//! that the caller places at the offending value.

use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::{HostRule, NetRule, PortRange, Protocol};

/// What is wrong with a value, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub message: String,
    pub help: Option<String>,
}

impl Problem {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A parsed allow entry, before normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub target: Target,
    pub ports: Option<PortRange>,
    pub protocol: Protocol,
}

/// Where an allow entry points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    V4(Ipv4Net),
    V6(Ipv6Net),
    /// A validated, lower-case hostname or `*.` pattern.
    Host(String),
}

/// A network: IPv4-mapped IPv6 networks become their IPv4 equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Net {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

const SYNTAX_HELP: &str = "write ADDRESS[/PREFIX][:PORT[-PORT]][/tcp|/udp] or HOST[:PORT[-PORT]][/tcp|/udp], \
     e.g. \"10.0.0.0/8\", \"[2001:db8::/32]:443\" or \"api.example.com:443\"";

/// Parse the string form of an allow entry.
pub(crate) fn parse_entry(text: &str) -> Result<Entry, Problem> {
    if text.trim().is_empty() {
        return Err(Problem::new("empty allow entry").help(SYNTAX_HELP));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(Problem::new(format!("`{text}` contains spaces")).help(SYNTAX_HELP));
    }
    let (rest, protocol) = split_protocol(text)?;
    let (addr, ports, bracketed) = split_ports(rest)?;
    let ports = ports.map(parse_ports).transpose()?;
    let target = parse_target(addr).map_err(|problem| {
        // `2001:db8::/32:443` is the common slip: suggest the brackets.
        match addr.rsplit_once(':') {
            Some((net, port))
                if !bracketed
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && parse_net(net).is_ok() =>
            {
                Problem::new(format!("`{addr}` is not a valid IPv6 network")).help(format!(
                    "an IPv6 address with a port needs brackets: \"[{net}]:{port}\""
                ))
            }
            _ => problem,
        }
    })?;
    Ok(Entry {
        target,
        ports,
        protocol,
    })
}

/// One string of `network.allow`, parsed on its own: the rule it stands for, before the
/// policy's normalisation. Displays as the entry that [`crate::Policy::to_toml`] prints, which
/// parses back to the same rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// An IPv4 network (IPv4-mapped IPv6 networks included).
    V4(NetRule<Ipv4Net>),
    /// An IPv6 network.
    V6(NetRule<Ipv6Net>),
    /// A hostname or `*.` pattern.
    Host(HostRule),
}

impl std::fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowEntry::V4(rule) => rule.fmt(f),
            AllowEntry::V6(rule) => rule.fmt(f),
            AllowEntry::Host(rule) => rule.fmt(f),
        }
    }
}

/// Why a string is not an allow entry: what is wrong and, where we can tell, the fix. In a
/// policy file the same problem becomes a [`crate::PolicyError`] at the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AllowEntryError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

/// Parse an allow entry, `ADDR_OR_CIDR_OR_HOST[:PORT[-PORT]][/tcp|/udp]`, as an item of
/// `network.allow` would be.
pub fn parse_allow_entry(text: &str) -> Result<AllowEntry, AllowEntryError> {
    let Entry {
        target,
        ports,
        protocol,
    } = parse_entry(text).map_err(|Problem { message, help }| AllowEntryError { message, help })?;
    Ok(match target {
        Target::V4(net) => AllowEntry::V4(NetRule {
            net,
            ports,
            protocol,
        }),
        Target::V6(net) => AllowEntry::V6(NetRule {
            net,
            ports,
            protocol,
        }),
        Target::Host(pattern) => AllowEntry::Host(HostRule {
            pattern,
            ports,
            protocol,
        }),
    })
}

/// Split off a trailing `/tcp` or `/udp`. A last `/` segment starting with a
/// letter is a protocol (prefix lengths are digits, hostnames have no `/`).
fn split_protocol(text: &str) -> Result<(&str, Protocol), Problem> {
    match text.rsplit_once('/') {
        Some((rest, word)) if word.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            match word.to_ascii_lowercase().as_str() {
                "tcp" => Ok((rest, Protocol::Tcp)),
                "udp" => Ok((rest, Protocol::Udp)),
                _ => Err(Problem::new(format!("unknown protocol `{word}`"))
                    .help("end the entry with /tcp or /udp, or leave it off to allow both")),
            }
        }
        _ => Ok((text, Protocol::Any)),
    }
}

/// Split `ADDR[:PORTS]` or `[ADDR][:PORTS]`. More than one colon without
/// brackets means an IPv6 address without a port.
fn split_ports(text: &str) -> Result<(&str, Option<&str>, bool), Problem> {
    if let Some(inner) = text.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(Problem::new(format!("`{text}` has no closing `]`")).help(SYNTAX_HELP));
        };
        return match after.strip_prefix(':') {
            Some(ports) => Ok((addr, Some(ports), true)),
            None if after.is_empty() => Ok((addr, None, true)),
            None => Err(Problem::new(format!("unexpected `{after}` after `]`"))
                .help(format!("write \"[{addr}]:PORT\""))),
        };
    }
    match text.matches(':').count() {
        1 => {
            let (addr, ports) = text.split_once(':').unwrap_or((text, ""));
            Ok((addr, Some(ports), false))
        }
        _ => Ok((text, None, false)),
    }
}

/// An IP address, CIDR or hostname.
fn parse_target(text: &str) -> Result<Target, Problem> {
    let looks_like_ip =
        text.contains([':', '/']) || text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if looks_like_ip {
        return Ok(match parse_net(text)? {
            Net::V4(net) => Target::V4(net),
            Net::V6(net) => Target::V6(net),
        });
    }
    parse_host(text).map(Target::Host)
}

/// `ADDR` or `ADDR/PREFIX`. A bare address means a single host (/32, /128).
/// Host bits must be clear; IPv4-mapped IPv6 becomes IPv4.
pub(crate) fn parse_net(text: &str) -> Result<Net, Problem> {
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        let family = if addr_text.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        };
        let problem = Problem::new(format!("`{addr_text}` is not a valid {family} address"));
        if addr_text.bytes().any(|b| b.is_ascii_alphabetic()) && !addr_text.contains(':') {
            problem.help(
                "a hostname takes no prefix length (in the table form it goes in `host = ...`)",
            )
        } else {
            problem
        }
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(
                Problem::new(format!("`/{p}` is not a prefix length")).help(format!(
                    "write the prefix length as a number from 0 to {max}"
                )),
            );
        }
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(
                    Problem::new(format!("prefix /{p} is too long for `{addr}`"))
                        .help(format!("the prefix length is at most /{max}")),
                );
            }
        },
    };
    let net = ipnet::IpNet::new(addr, prefix).expect("prefix checked above");
    if let IpAddr::V6(v6) = addr
        && let Some(v4) = v6.to_ipv4_mapped()
        && prefix < 96
    {
        return Err(Problem::new(format!(
            "IPv4-mapped network `{text}` has a prefix shorter than /96"
        ))
        .help(format!(
            "write it as IPv4 (\"{v4}/N\", N = prefix - 96), or use ::ffff:0:0/96 for all of IPv4"
        )));
    }
    if net.network() != addr {
        return Err(
            Problem::new(format!("`{text}` has host bits set")).help(format!(
                "did you mean {}? (or {addr}/{max} for the single address)",
                net.trunc()
            )),
        );
    }
    Ok(match net {
        ipnet::IpNet::V4(v4) => Net::V4(v4),
        ipnet::IpNet::V6(v6) => match v6.network().to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => Net::V4(
                Ipv4Net::new(v4, prefix - 96)
                    .expect("a /96../128 mapped prefix is a valid IPv4 prefix"),
            ),
            _ => Net::V6(v6),
        },
    })
}

/// A hostname or a `*.` wildcard, returned lower-cased with any trailing dot
/// removed.
pub(crate) fn parse_host(text: &str) -> Result<String, Problem> {
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let bad = |why: String| {
        Err(Problem::new(format!("`{text}` is not a valid hostname: {why}"))
            .help("use DNS names such as \"api.example.com\" or \"*.example.com\" (non-ASCII names in punycode)"))
    };
    if name.is_empty() {
        return bad("it is empty".into());
    }
    if !name.is_ascii() {
        return bad("it is not ASCII".into());
    }
    if name.len() > 253 {
        return bad(format!(
            "it is {} characters long (at most 253)",
            name.len()
        ));
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.contains('*') {
        return Err(Problem::new(format!("`{text}` has a misplaced wildcard"))
            .help("only a whole leading label can be a wildcard, as in \"*.example.com\""));
    }
    for label in body.split('.') {
        if label.is_empty() {
            return bad("it has an empty label".into());
        }
        if label.len() > 63 {
            return bad(format!("label `{label}` is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return bad(format!(
                "`{c}` is not allowed (letters, digits and `-` only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(format!("label `{label}` starts or ends with `-`"));
        }
    }
    if body
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("its last label is all digits".into());
    }
    Ok(name.to_owned())
}

const PORT_HELP: &str = "ports run from 1 to 65535; write one port (443) or a range (8000-8100)";

/// `PORT` or `FIRST-LAST`.
pub(crate) fn parse_ports(text: &str) -> Result<PortRange, Problem> {
    let (first, last) = if let Some((first, last)) = text.split_once('-') {
        (parse_port(first)?, parse_port(last)?)
    } else {
        let port = parse_port(text)?;
        (port, port)
    };
    if first > last {
        return Err(Problem::new(format!("port range `{text}` is reversed"))
            .help(format!("did you mean {last}-{first}?")));
    }
    Ok(PortRange { first, last })
}

/// A port given as a TOML integer.
pub(crate) fn port_number(n: i64) -> Result<PortRange, Problem> {
    match u16::try_from(n) {
        Ok(0) | Err(_) => Err(Problem::new(format!("{n} is not a valid port")).help(PORT_HELP)),
        Ok(port) => Ok(PortRange::single(port)),
    }
}

fn parse_port(text: &str) -> Result<u16, Problem> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        let shown = if text.is_empty() { "(nothing)" } else { text };
        return Err(Problem::new(format!("`{shown}` is not a port number")).help(PORT_HELP));
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(Problem::new(format!("{text} is not a valid port")).help(PORT_HELP)),
        Ok(port) => Ok(port),
    }
}

/// `protocol = "tcp" | "udp" | "any"` in the table form.
pub(crate) fn parse_protocol(text: &str) -> Result<Protocol, Problem> {
    match text {
        "any" => Ok(Protocol::Any),
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(Problem::new(format!("unknown protocol `{text}`"))
            .help("use \"tcp\", \"udp\" or \"any\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Target {
        Target::V4(s.parse().unwrap())
    }
    fn v6(s: &str) -> Target {
        Target::V6(s.parse().unwrap())
    }
    fn entry(target: Target, ports: Option<(u16, u16)>, protocol: Protocol) -> Entry {
        Entry {
            target,
            ports: ports.map(|(first, last)| PortRange { first, last }),
            protocol,
        }
    }

    #[test]
    fn accepts_the_documented_forms() {
        use Protocol::{Any, Tcp, Udp};
        let cases = [
            ("10.0.0.0/8", entry(v4("10.0.0.0/8"), None, Any)),
            (
                "127.0.0.1/32:8787",
                entry(v4("127.0.0.1/32"), Some((8787, 8787)), Any),
            ),
            (
                "192.168.1.10:53/udp",
                entry(v4("192.168.1.10/32"), Some((53, 53)), Udp),
            ),
            ("10.0.0.0/8/tcp", entry(v4("10.0.0.0/8"), None, Tcp)),
            (
                "10.0.0.0/8:8000-8100/TCP",
                entry(v4("10.0.0.0/8"), Some((8000, 8100)), Tcp),
            ),
            ("::1", entry(v6("::1/128"), None, Any)),
            ("[::1]:8787", entry(v6("::1/128"), Some((8787, 8787)), Any)),
            ("2001:db8::/32", entry(v6("2001:db8::/32"), None, Any)),
            (
                "[2001:db8::/32]:443/tcp",
                entry(v6("2001:db8::/32"), Some((443, 443)), Tcp),
            ),
            ("[2001:db8::/32]", entry(v6("2001:db8::/32"), None, Any)),
            ("::ffff:10.0.0.0/104", entry(v4("10.0.0.0/8"), None, Any)),
            ("::ffff:1.2.3.4", entry(v4("1.2.3.4/32"), None, Any)),
            ("::ffff:0:0/96", entry(v4("0.0.0.0/0"), None, Any)),
            (
                "api.anthropic.com:443",
                entry(
                    Target::Host("api.anthropic.com".into()),
                    Some((443, 443)),
                    Any,
                ),
            ),
            (
                "*.GitHub.com:443/tcp",
                entry(Target::Host("*.github.com".into()), Some((443, 443)), Tcp),
            ),
            (
                "localhost.",
                entry(Target::Host("localhost".into()), None, Any),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_entry(text), Ok(want), "{text}");
        }
    }

    fn problem(text: &str) -> Problem {
        parse_entry(text).expect_err(text)
    }

    #[test]
    fn rejects_bad_entries_with_help() {
        let p = problem("10.0.0.1/8");
        assert!(p.message.contains("host bits"), "{p:?}");
        assert!(p.help.unwrap().starts_with("did you mean 10.0.0.0/8?"));
        let p = problem("2001:db8::1/32");
        assert!(p.help.unwrap().starts_with("did you mean 2001:db8::/32?"));
        assert!(problem("10.0.0.0/33").message.contains("too long"));
        assert!(problem("::/129").message.contains("too long"));
        assert!(problem("10.0.0.0/300").message.contains("too long"));
        assert!(
            problem("10.0.0.0/1x")
                .message
                .contains("not a prefix length")
        );
        assert!(
            problem("10.0.0.256")
                .message
                .contains("not a valid IPv4 address")
        );
        assert!(
            problem("10.0.0.0:0")
                .message
                .contains("0 is not a valid port")
        );
        assert!(
            problem("10.0.0.0:65536")
                .message
                .contains("not a valid port")
        );
        assert!(problem("10.0.0.0:").message.contains("not a port number"));
        assert_eq!(
            problem("10.0.0.0:900-100").help.unwrap(),
            "did you mean 100-900?"
        );
        assert!(
            problem("10.0.0.0/8:53/icmp")
                .message
                .contains("unknown protocol `icmp`")
        );
        assert!(
            problem("::ffff:10.0.0.0/80")
                .message
                .contains("shorter than /96")
        );
        assert!(
            problem("bad_host.example")
                .message
                .contains("not a valid hostname")
        );
        assert!(
            problem("a.*.example")
                .message
                .contains("misplaced wildcard")
        );
        assert!(problem("*").message.contains("misplaced wildcard"));
        assert!(
            problem("-a.example")
                .message
                .contains("starts or ends with `-`")
        );
        assert!(problem("a..example").message.contains("empty label"));
        assert!(
            problem(&format!("{}.com", "a".repeat(64)))
                .message
                .contains("63")
        );
        assert!(problem("10.0.0.0 /8").message.contains("spaces"));
        assert!(problem("").message.contains("empty"));
        let p = problem("2001:db8::/32:443");
        assert_eq!(
            p.help.unwrap(),
            "an IPv6 address with a port needs brackets: \"[2001:db8::/32]:443\""
        );
        assert!(problem("[::1]x").message.contains("after `]`"));
        assert!(problem("[::1").message.contains("no closing"));
    }

    #[test]
    fn long_hostnames() {
        let label = "a".repeat(63);
        let ok = [label.as_str(); 3].join(".") + "." + &"b".repeat(61); // 253
        assert!(parse_host(&ok).is_ok());
        let too_long = ok.clone() + "b";
        assert!(
            parse_host(&too_long)
                .unwrap_err()
                .message
                .contains("at most 253")
        );
    }

    #[test]
    fn ports_and_protocols() {
        assert_eq!(parse_ports("443"), Ok(PortRange::single(443)));
        assert_eq!(
            parse_ports("1-65535"),
            Ok(PortRange {
                first: 1,
                last: 65535
            })
        );
        assert!(port_number(0).is_err());
        assert!(port_number(70000).is_err());
        assert!(port_number(-1).is_err());
        assert_eq!(port_number(22), Ok(PortRange::single(22)));
        assert_eq!(parse_protocol("any"), Ok(Protocol::Any));
        assert!(parse_protocol("sctp").is_err());
    }

    #[test]
    fn public_entries_print_as_they_parse() {
        for text in [
            "10.0.0.0/8",
            "[::ffff:10.0.0.0/104]:53/udp",
            "[2001:db8::/32]:443-444/tcp",
            "*.GitHub.com.:443",
        ] {
            let entry = parse_allow_entry(text).unwrap();
            assert_eq!(parse_allow_entry(&entry.to_string()), Ok(entry), "{text}");
        }
        assert_eq!(
            parse_allow_entry("[::ffff:10.0.0.0/104]:53/udp")
                .unwrap()
                .to_string(),
            "10.0.0.0/8:53/udp"
        );
        let error = parse_allow_entry("10.0.0.1/8").unwrap_err();
        assert_eq!(error.to_string(), "`10.0.0.1/8` has host bits set");
        assert!(error.help.unwrap().starts_with("did you mean 10.0.0.0/8?"));
    }
}
