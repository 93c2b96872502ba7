//! The fix in every refusal: the policy entry that would allow a blocked attempt, written as
//! it would be typed into the instance's policy file.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use crate::bpf::{BlockedAttempt, UnixPeer};

/// What to change so that an attempt like this one is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Add `entry` to the list `field` (`network.allow`, `network.listen`) of the file.
    Add {
        entry: String,
        field: &'static str,
        file: String,
    },
    /// A unix socket the kernel names by inode: its path goes to `network.unix_sockets`.
    UnixSocket { ino: u64, file: String },
    /// Nothing in a policy allows it (abstract unix sockets, other socket families).
    None { why: &'static str },
}

impl Fix {
    /// The fix for `attempt` of the instance whose policy is `policy_file`.
    pub fn of(attempt: &BlockedAttempt, policy_file: &Path) -> Self {
        let file = policy_file.display().to_string();
        let add = |entry: String, field| Fix::Add {
            entry,
            field,
            file: file.clone(),
        };
        match (attempt.unix, attempt.hook) {
            (Some(UnixPeer::Path { ino, .. }), _) => Fix::UnixSocket { ino, file },
            (Some(_), _) => Fix::None {
                why: "a policy allows unix sockets by path only; this one has none",
            },
            (None, "socket") => Fix::None {
                why: "no policy allows sockets of this family",
            },
            (None, "dns") => add(attempt.host.clone().unwrap_or_default(), "network.allow"),
            (None, "bind") => add(
                with_port(
                    &address(attempt.destination),
                    attempt.port,
                    attempt.protocol,
                ),
                "network.listen",
            ),
            (None, "ingress") => {
                let every_address = match attempt.destination {
                    IpAddr::V4(_) => "0.0.0.0",
                    IpAddr::V6(_) => "[::]",
                };
                add(
                    with_port(every_address, attempt.port, attempt.protocol),
                    "network.listen",
                )
            }
            (None, _) => {
                let target = attempt
                    .host
                    .clone()
                    .unwrap_or_else(|| address(attempt.destination));
                add(
                    with_port(&target, attempt.port, attempt.protocol),
                    "network.allow",
                )
            }
        }
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fix::Add { entry, field, file } => write!(f, "add \"{entry}\" to {field} in {file}"),
            Fix::UnixSocket { ino, file } => write!(
                f,
                "add the socket's path to network.unix_sockets in {file} \
                 (find it: find / -xdev -inum {ino})"
            ),
            Fix::None { why } => write!(f, "none: {why}"),
        }
    }
}

/// An address as an allow entry writes it (IPv6 in brackets, so a port can follow).
fn address(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// `target:port/protocol` for TCP and UDP; other protocols have no ports, and only an entry
/// without port or protocol allows them.
fn with_port(target: &str, port: u16, protocol: &str) -> String {
    match protocol {
        "tcp" | "udp" => format!("{target}:{port}/{protocol}"),
        _ => target.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::Path;

    use super::*;

    const FILE: &str = "/etc/isolate/instances/demo.toml";

    fn attempt(
        destination: IpAddr,
        port: u16,
        protocol: &'static str,
        hook: &'static str,
    ) -> BlockedAttempt {
        BlockedAttempt {
            timestamp_ns: 0,
            uid: 1000,
            pid: 1,
            comm: "curl".into(),
            destination,
            port,
            protocol,
            hook,
            unix: None,
            host: None,
            record_type: None,
        }
    }

    fn fix(attempt: &BlockedAttempt) -> String {
        Fix::of(attempt, Path::new(FILE)).to_string()
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    #[test]
    fn an_outbound_refusal_names_the_allow_entry_by_host_when_known() {
        assert_eq!(
            fix(&attempt(V4, 443, "tcp", "connect")),
            format!("add \"203.0.113.7:443/tcp\" to network.allow in {FILE}")
        );
        let mut named = attempt(V4, 443, "tcp", "connect");
        named.host = Some("api.example.com".into());
        assert_eq!(
            fix(&named),
            format!("add \"api.example.com:443/tcp\" to network.allow in {FILE}")
        );
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        assert_eq!(
            fix(&attempt(v6, 53, "udp", "sendmsg")),
            format!("add \"[2001:db8::7]:53/udp\" to network.allow in {FILE}")
        );
        // A portless protocol is allowed only by an entry without port or protocol.
        assert_eq!(
            fix(&attempt(V4, 0, "other", "egress")),
            format!("add \"203.0.113.7\" to network.allow in {FILE}")
        );
    }

    #[test]
    fn inbound_refusals_name_the_listen_entry() {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(
            fix(&attempt(local, 8080, "tcp", "bind")),
            format!("add \"127.0.0.1:8080/tcp\" to network.listen in {FILE}")
        );
        assert_eq!(
            fix(&attempt(V4, 8080, "tcp", "ingress")),
            format!("add \"0.0.0.0:8080/tcp\" to network.listen in {FILE}")
        );
    }

    #[test]
    fn dns_unix_and_family_refusals() {
        let mut dns = attempt(V4, 53, "udp", "dns");
        dns.host = Some("evil.example".into());
        assert_eq!(
            fix(&dns),
            format!("add \"evil.example\" to network.allow in {FILE}")
        );
        let mut unix = attempt(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, "stream", "unix");
        unix.unix = Some(UnixPeer::Path {
            major: 0,
            minor: 25,
            ino: 4242,
        });
        assert!(fix(&unix).contains("network.unix_sockets in /etc/isolate/instances/demo.toml"));
        assert!(fix(&unix).contains("-inum 4242"));
        let family = attempt(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 17, "other", "socket");
        assert!(fix(&family).starts_with("none: "));
    }
}
