//! The policy file as written, before validation.
//!
//! serde checks the shape (unknown keys, types, the required `user`); every
//! value we validate ourselves is kept as a [`Spanned`] string or number so an
//! error can point at it. Values that may have more than one shape (an allow
//! entry, `ports`, `dns`) get small hand-written visitors: serde's `untagged`
//! enums would buffer the value and lose the spans inside it.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The top level of a policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub name: Option<Spanned<String>>,
    pub user: Spanned<String>,
    pub directory: Option<Spanned<String>>,
    pub environment: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub environment_file: Option<Spanned<String>>,
    /// Shipped fragments to merge (`crate::presets`).
    #[serde(default)]
    pub presets: Vec<Spanned<String>>,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub filesystem: RawFilesystem,
    #[serde(default)]
    pub landlock: RawLandlock,
    #[serde(default)]
    pub resources: RawResources,
}

/// `[network]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    #[serde(default)]
    pub allow: Vec<Spanned<RawAllow>>,
    pub dns: Option<Spanned<RawDns>>,
    pub log: Option<RawLog>,
    #[serde(default)]
    pub unix_sockets: Vec<Spanned<String>>,
    /// `"ADDR[:PORTS][/PROTO]"` items: what the instance may serve on.
    #[serde(default)]
    pub listen: Vec<Spanned<String>>,
}

/// One item of `network.allow`.
#[derive(Debug)]
pub(crate) enum RawAllow {
    /// `"NET_OR_HOST[:PORTS][/PROTO]"`.
    Text(String),
    /// `{ cidr = .., host = .., ports = .., protocol = .. }`.
    Table(RawAllowTable),
}

/// The table form of an allow entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllowTable {
    pub cidr: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub ports: Option<Spanned<RawPorts>>,
    pub protocol: Option<Spanned<String>>,
}

/// `ports = 443` or `ports = "8000-8100"`.
#[derive(Debug)]
pub(crate) enum RawPorts {
    Number(i64),
    Text(String),
}

/// `dns = "system" | "none"` or `dns = ["10.0.0.53", ...]`.
#[derive(Debug)]
pub(crate) enum RawDns {
    Word(String),
    Servers(Vec<Spanned<String>>),
}

/// `network.log`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub rate: Option<Spanned<String>>,
}

/// `[filesystem]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilesystem {
    #[serde(default)]
    pub read_only: Vec<Spanned<String>>,
    #[serde(default)]
    pub read_write: Vec<Spanned<String>>,
    #[serde(default)]
    pub exec: Vec<Spanned<String>>,
}

/// `[resources]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResources {
    pub pids_max: Option<Spanned<RawLimit>>,
    pub memory_max: Option<Spanned<RawLimit>>,
}

/// A cgroup limit: `4096`, `"512M"` or `"max"`.
#[derive(Debug)]
pub(crate) enum RawLimit {
    Number(i64),
    Text(String),
}

/// `[landlock]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLandlock {
    /// Wider than `u8` so that an out-of-range value gets our own message.
    pub minimum_abi: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for RawAllow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AllowVisitor;
        impl<'de> Visitor<'de> for AllowVisitor {
            type Value = RawAllow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an allow entry: a string such as \"10.0.0.0/8:443/tcp\" \
                     or a table such as { cidr = \"10.0.0.0/8\", ports = 443 }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAllow, E> {
                Ok(RawAllow::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAllow, A::Error> {
                // Hand the map on as it is, so spans inside the table survive.
                RawAllowTable::deserialize(MapAccessDeserializer::new(map)).map(RawAllow::Table)
            }
        }
        deserializer.deserialize_any(AllowVisitor)
    }
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortsVisitor;
        impl Visitor<'_> for PortsVisitor {
            type Value = RawPorts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number such as 443 or a range such as \"8000-8100\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPorts, E> {
                Ok(RawPorts::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPorts, E> {
                Ok(RawPorts::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPorts, E> {
                Ok(RawPorts::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(PortsVisitor)
    }
}

impl<'de> Deserialize<'de> for RawLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitVisitor;
        impl Visitor<'_> for LimitVisitor {
            type Value = RawLimit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number such as 4096, a size such as \"4G\", or \"max\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawLimit, E> {
                Ok(RawLimit::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawLimit, E> {
                Ok(RawLimit::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLimit, E> {
                Ok(RawLimit::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(LimitVisitor)
    }
}

impl<'de> Deserialize<'de> for RawDns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DnsVisitor;
        impl<'de> Visitor<'de> for DnsVisitor {
            type Value = RawDns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"system\", \"none\" or a list of resolver addresses")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDns, E> {
                Ok(RawDns::Word(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawDns, A::Error> {
                let mut servers = Vec::new();
                while let Some(server) = seq.next_element()? {
                    servers.push(server);
                }
                Ok(RawDns::Servers(servers))
            }
        }
        deserializer.deserialize_any(DnsVisitor)
    }
}
