//! Block events from the ring buffer, decoded for people and logs.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, PerCpuHashMap, RingBuf};
use isolate_ebpf_common::map_names;

use super::{BpfError, PinDir, map_error, open_map};
use isolate_ebpf_common::{
    BlockEvent, EventBudget, FAMILY_OTHER, FAMILY_UNIX, FAMILY_V4, FAMILY_V6, HOOK_BIND,
    HOOK_CONNECT, HOOK_DNS, HOOK_EGRESS, HOOK_INGRESS, HOOK_SENDMSG, HOOK_SOCKET, HOOK_UNIX,
    PROTO_DGRAM, PROTO_OTHER, PROTO_STREAM, PROTO_TCP, PROTO_UDP, UNIX_PEER_ABSTRACT,
    UNIX_PEER_PATH,
};

use super::unix::split_kernel_dev;

/// Reads an attachment's block events, and the counts of the events its programs did not send
/// (each UID's event budget, see `EVENTS_PER_CPU_SECOND`). Only one reader at a time should
/// exist per attachment (the ring buffer hands each event to one consumer).
pub struct EventReader {
    ring: RingBuf<MapData>,
    budgets: PerCpuHashMap<MapData, u32, EventBudget>,
    /// Per UID, the unsent total already handed over by [`EventReader::unsent_since`].
    reported: HashMap<u32, u64>,
}

impl EventReader {
    /// Opens the attachment's ring buffer. What the programs left unsent before this reader
    /// existed is not its to report (a restarted daemon's predecessor reported it).
    pub fn open(pins: &PinDir) -> Result<Self, BpfError> {
        let mut reader = Self {
            ring: open_map(pins, map_names::EVENTS)?,
            budgets: open_map(pins, map_names::EVENT_BUDGET)?,
            reported: HashMap::new(),
        };
        let uids: Vec<u32> = reader.budgets.keys().filter_map(Result::ok).collect();
        for uid in uids {
            let total = reader.unsent_total(uid)?;
            reader.reported.insert(uid, total);
        }
        Ok(reader)
    }

    /// Events of `uid` the programs did not send since the last call (its event budget was
    /// spent, or the ring buffer was full): with the events read, they account for every
    /// refusal the eBPF layer counted.
    pub fn unsent_since(&mut self, uid: u32) -> Result<u64, BpfError> {
        let total = self.unsent_total(uid)?;
        let before = self.reported.insert(uid, total).unwrap_or(0);
        // Smaller than before: the instance was removed and confined again, counting anew.
        Ok(if total >= before {
            total - before
        } else {
            total
        })
    }

    fn unsent_total(&self, uid: u32) -> Result<u64, BpfError> {
        match self.budgets.get(&uid, 0) {
            Ok(values) => Ok(values.iter().map(|b| b.unsent).sum()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(map_error(map_names::EVENT_BUDGET)(e)),
        }
    }

    /// Takes every event queued so far.
    pub fn read(&mut self) -> Vec<BlockedAttempt> {
        let mut attempts = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<BlockEvent>() {
                // SAFETY: BlockEvent is plain old data; the length was checked and the read
                // is unaligned-safe.
                let event: BlockEvent =
                    unsafe { item.as_ptr().cast::<BlockEvent>().read_unaligned() };
                attempts.push(BlockedAttempt::from(&event));
            }
        }
        attempts
    }
}

/// One blocked attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedAttempt {
    /// Monotonic clock, nanoseconds.
    pub timestamp_ns: u64,
    pub uid: u32,
    pub pid: u32,
    pub comm: String,
    /// The unspecified address (`0.0.0.0`) for unix sockets: see `unix`. For hook `bind`,
    /// the local address asked for; for `ingress`, the sender's address.
    pub destination: IpAddr,
    /// For hooks `bind` and `ingress`, the instance's local port.
    pub port: u16,
    pub protocol: &'static str,
    pub hook: &'static str,
    /// The refused unix socket, for unix-socket attempts (hook `unix`).
    pub unix: Option<UnixPeer>,
    /// The host name: the name asked, for a refused DNS question (hook `dns`); the name whose
    /// answer admitted the address, for a refused connect to it.
    pub host: Option<String>,
    /// The record type of a refused DNS question ("A", "AAAA", ...).
    pub record_type: Option<String>,
}

/// The unix socket a refused attempt was aimed at. The kernel side has no room for its path
/// in an event: a pathname socket is named by its file's device and inode (find it with
/// `find <mount point> -xdev -inum <ino>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixPeer {
    Path {
        major: u32,
        minor: u32,
        ino: u64,
    },
    Abstract,
    /// The programs could not read the peer socket (and refused, as they cannot judge it).
    Unknown,
}

impl fmt::Display for UnixPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixPeer::Path { major, minor, ino } => write!(f, "unix:dev={major}:{minor},ino={ino}"),
            UnixPeer::Abstract => f.write_str("unix:abstract"),
            UnixPeer::Unknown => f.write_str("unix:unknown"),
        }
    }
}

impl UnixPeer {
    fn from_addr(addr: &[u8; 16]) -> Self {
        let ino = u64::from_le_bytes(addr[..8].try_into().expect("8 bytes"));
        let dev = u32::from_le_bytes(addr[8..12].try_into().expect("4 bytes"));
        match addr[12] {
            UNIX_PEER_PATH => {
                let (major, minor) = split_kernel_dev(dev);
                UnixPeer::Path { major, minor, ino }
            }
            UNIX_PEER_ABSTRACT => UnixPeer::Abstract,
            _ => UnixPeer::Unknown,
        }
    }
}

impl From<&BlockEvent> for BlockedAttempt {
    fn from(event: &BlockEvent) -> Self {
        let (destination, unix) = match event.family {
            FAMILY_V4 => {
                let [a, b, c, d, ..] = event.addr;
                (IpAddr::V4(Ipv4Addr::new(a, b, c, d)), None)
            }
            FAMILY_UNIX => (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(UnixPeer::from_addr(&event.addr)),
            ),
            FAMILY_OTHER => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), None),
            _ => (IpAddr::V6(Ipv6Addr::from(event.addr)), None),
        };
        let comm_len = event
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(event.comm.len());
        Self {
            timestamp_ns: event.timestamp_ns,
            uid: event.uid,
            pid: event.pid,
            comm: String::from_utf8_lossy(&event.comm[..comm_len]).into_owned(),
            destination,
            port: event.port,
            protocol: protocol_name(event.protocol),
            hook: hook_name(event.hook),
            unix,
            host: None,
            record_type: None,
        }
    }
}

impl BlockedAttempt {
    /// What was refused, as records spell it: `203.0.113.7:443` (outbound, with the host name
    /// that answered it when there is one: `203.0.113.7:443 (api.example.com)`), `bind
    /// 0.0.0.0:8080`, `inbound from 203.0.113.7 to port 8080`, `dns evil.example A`, or the
    /// unix peer.
    pub fn what(&self) -> String {
        let address = match self.destination {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        match (self.unix, self.hook) {
            (Some(peer), _) => peer.to_string(),
            (None, "socket") => format!(
                "socket family {} ({})",
                self.port,
                socket_family_name(self.port)
            ),
            (None, "bind") => format!("bind {address}:{}", self.port),
            (None, "ingress") => format!("inbound from {address} to port {}", self.port),
            (None, "dns") => format!(
                "dns {} {}",
                self.host.as_deref().unwrap_or("?"),
                self.record_type.as_deref().unwrap_or("?")
            ),
            (None, _) => match &self.host {
                Some(host) => format!("{address}:{} ({host})", self.port),
                None => format!("{address}:{}", self.port),
            },
        }
    }
}

impl BlockedAttempt {
    /// What refused, as records name it: `ebpf-<hook>`, or `resolver` for a DNS question
    /// isolate's resolver refused.
    pub fn layer(&self) -> String {
        match self.hook {
            "dns" => "resolver".to_owned(),
            hook => format!("ebpf-{hook}"),
        }
    }
}

impl fmt::Display for BlockedAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} uid={} pid={} comm={} layer={}",
            self.protocol,
            self.what(),
            self.uid,
            self.pid,
            self.comm,
            self.layer()
        )
    }
}

pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_OTHER => "other",
        PROTO_STREAM => "stream",
        PROTO_DGRAM => "dgram",
        _ => "unknown",
    }
}

/// The `family` of a counter or event, as metrics label it.
pub fn family_name(family: u8) -> &'static str {
    match family {
        FAMILY_V4 => "ipv4",
        FAMILY_V6 => "ipv6",
        FAMILY_UNIX => "unix",
        FAMILY_OTHER => "other",
        _ => "unknown",
    }
}

pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_CONNECT => "connect",
        HOOK_SENDMSG => "sendmsg",
        HOOK_EGRESS => "egress",
        HOOK_UNIX => "unix",
        HOOK_BIND => "bind",
        HOOK_INGRESS => "ingress",
        HOOK_SOCKET => "socket",
        HOOK_DNS => "dns",
        _ => "unknown",
    }
}

/// The name of a socket family (`AF_*`) a confined process may not create.
pub fn socket_family_name(family: u16) -> &'static str {
    match family {
        3 => "AF_AX25",
        4 => "AF_IPX",
        5 => "AF_APPLETALK",
        9 => "AF_X25",
        17 => "AF_PACKET",
        21 => "AF_RDS",
        29 => "AF_CAN",
        30 => "AF_TIPC",
        31 => "AF_BLUETOOTH",
        38 => "AF_ALG",
        40 => "AF_VSOCK",
        43 => "AF_SMC",
        44 => "AF_XDP",
        _ => "another family",
    }
}
