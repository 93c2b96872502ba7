//! The validated, normalised policy of one instance.
//!
//! Everything here has already been checked: a value of these types is always
//! something the enforcer can apply. Printing (`Serialize`, `Display`) uses the
//! same spelling as the policy file, so what `isolate check` shows can be pasted
//! back into a file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};

/// One instance's policy, as read from `<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Instance name: `[a-z0-9][a-z0-9_-]{0,31}`. It names the nftables table
    /// (`isolate-<name>`) and the bpffs pins, hence the strict alphabet.
    pub name: String,
    /// The user the instance runs as.
    pub user: UserSpec,
    /// Working directory of the service (absolute, or `~`-relative).
    pub directory: Option<PathBuf>,
    /// Variables set for the service, over what it inherits.
    pub environment: std::collections::BTreeMap<String, String>,
    /// A file of `KEY=VALUE` lines (secrets such as API keys) that root reads at start and
    /// the service cannot read itself.
    pub environment_file: Option<PathBuf>,
    /// Egress allow-list and logging.
    pub network: Network,
    /// Landlock path rules.
    pub filesystem: Filesystem,
    /// Landlock requirements.
    pub landlock: LandlockSettings,
    /// Limits of the instance's cgroup.
    pub resources: Resources,
    /// The presets merged into the lists above (`presets = [...]`), in the file's order.
    pub presets: Vec<String>,
    /// The file this policy was read from (not part of the file's content).
    pub source: PathBuf,
}

/// Who the instance runs as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserSpec {
    /// An existing user, looked up by the enforcer (`[a-z_][a-z0-9_-]{0,31}$?`).
    Named(String),
    /// `"dynamic"`: the enforcer allocates a UID from its reserved range.
    Dynamic,
}

/// Egress rules. IPv4 and IPv6 are kept apart because every layer of the
/// enforcer (LPM tries, nftables sets) is per family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Network {
    /// IPv4 networks, normalised (merged per protocol/ports group, sorted).
    /// IPv4-mapped IPv6 entries of the file end up here.
    pub allow_v4: Vec<NetRule<Ipv4Net>>,
    /// IPv6 networks, normalised like `allow_v4`.
    pub allow_v6: Vec<NetRule<Ipv6Net>>,
    /// Hostnames, re-resolved by the enforcer; deduplicated, in file order.
    pub hosts: Vec<HostRule>,
    /// Resolvers that must stay reachable.
    pub dns: DnsSetting,
    /// Rate limit for block logging.
    pub log: LogSettings,
    /// Pathname unix sockets the instance may connect to (absolute paths).
    pub unix_sockets: Vec<PathBuf>,
    /// Local IPv4 addresses and ports the instance may bind and accept connections or
    /// datagrams on, normalised like `allow_v4`. `0.0.0.0` in the file (every address)
    /// becomes `0.0.0.0/0`. Empty: nothing inbound.
    pub listen_v4: Vec<NetRule<Ipv4Net>>,
    /// Local IPv6 addresses and ports, as `listen_v4` (`::` becomes `::/0`).
    pub listen_v6: Vec<NetRule<Ipv6Net>>,
}

/// One allowed network with optional ports and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(bound(serialize = "N: fmt::Display"))]
pub struct NetRule<N> {
    /// The network; never has host bits set.
    #[serde(serialize_with = "as_display")]
    pub net: N,
    /// Destination ports; `None` means every port.
    pub ports: Option<PortRange>,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// An inclusive destination port range, `1 <= first <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (equal to `first` for a single port).
    pub last: u16,
}

/// Transport protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP and UDP.
    #[default]
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
}

/// An allowed hostname, resolved (and re-resolved) by the enforcer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HostRule {
    /// Lower-case DNS name, or `*.` followed by one (any name below it).
    pub pattern: String,
    /// Destination ports; `None` means every port.
    pub ports: Option<PortRange>,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// Which DNS resolvers stay reachable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DnsSetting {
    /// The host's resolvers (from the host configuration, found by the enforcer).
    #[default]
    System,
    /// No resolver: name resolution is blocked like any other traffic.
    None,
    /// Exactly these resolvers (port 53), deduplicated, in file order.
    Servers(Vec<IpAddr>),
}

/// How blocked attempts are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LogSettings {
    /// At most this many log records per instance.
    pub rate: Rate,
}

/// A rate such as `10/second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Events per unit; at least 1.
    pub count: u32,
    /// The time unit.
    pub per: RateUnit,
}

/// Time unit of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

/// Landlock path rules. Paths are absolute, or start with `~/` (or are `~`):
/// those stay unexpanded here, since only the enforcer knows the instance
/// user's home; see [`expand_home`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Filesystem {
    /// Readable trees.
    pub read_only: Vec<PathBuf>,
    /// Readable and writable trees.
    pub read_write: Vec<PathBuf>,
    /// Trees whose files may be executed (and read).
    pub exec: Vec<PathBuf>,
}

/// Limits of the instance's cgroup (`pids.max`, `memory.max`); `None` is no limit (`"max"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// Tasks (processes and threads) the instance may have at once: a fork bomb stops there.
    pub pids_max: Option<u64>,
    /// Memory the instance may use, in bytes.
    pub memory_max: Option<u64>,
}

impl Resources {
    /// `pids_max` unless the policy says otherwise: generous for an agent and the tools it runs,
    /// finite so that one instance cannot exhaust the host's PIDs.
    pub const DEFAULT_PIDS_MAX: u64 = 4096;
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            pids_max: Some(Self::DEFAULT_PIDS_MAX),
            memory_max: None,
        }
    }
}

/// Landlock requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LandlockSettings {
    /// Refuse to run on a kernel whose Landlock ABI is below this (1..=7).
    pub minimum_abi: u8,
}

impl Default for LandlockSettings {
    fn default() -> Self {
        Self { minimum_abi: 1 }
    }
}

impl Default for Rate {
    fn default() -> Self {
        Self {
            count: 10,
            per: RateUnit::Second,
        }
    }
}

/// Replace a leading `~` component of a policy path by `home`; other paths are
/// returned unchanged.
pub fn expand_home(path: &Path, home: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) if rest.as_os_str().is_empty() => home.to_path_buf(),
        Ok(rest) => home.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

impl PortRange {
    /// A single port.
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl RateUnit {
    /// The unit's name in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
        }
    }
}

impl Protocol {
    /// `"any"`, `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSpec::Named(name) => f.write_str(name),
            UserSpec::Dynamic => f.write_str("dynamic"),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.as_str())
    }
}

/// The allow-entry spelling: `NET[:PORTS][/PROTO]`, with `[NET]` for IPv6
/// when a port follows (its colons would be ambiguous otherwise).
impl<N: fmt::Display> fmt::Display for NetRule<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = self.net.to_string();
        match self.ports {
            Some(ports) if net.contains(':') => write!(f, "[{net}]:{ports}")?,
            Some(ports) => write!(f, "{net}:{ports}")?,
            None => f.write_str(&net)?,
        }
        write_protocol_suffix(f, self.protocol)
    }
}

/// The allow-entry spelling: `HOST[:PORTS][/PROTO]`.
impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)?;
        if let Some(ports) = self.ports {
            write!(f, ":{ports}")?;
        }
        write_protocol_suffix(f, self.protocol)
    }
}

fn write_protocol_suffix(f: &mut fmt::Formatter<'_>, protocol: Protocol) -> fmt::Result {
    match protocol {
        Protocol::Any => Ok(()),
        other => write!(f, "/{other}"),
    }
}

fn as_display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

impl Serialize for UserSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `"system"`, `"none"` or a list of addresses, as in the file.
impl Serialize for DnsSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DnsSetting::System => s.serialize_str("system"),
            DnsSetting::None => s.serialize_str("none"),
            DnsSetting::Servers(servers) => s.collect_seq(servers),
        }
    }
}
