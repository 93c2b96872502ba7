//! Block events from the ring buffer, decoded for people and logs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use isolate_ebpf_common::{
    BlockEvent, FAMILY_V4, LAYER_CONNECT, LAYER_EGRESS, LAYER_SENDMSG, PROTO_OTHER, PROTO_TCP,
    PROTO_UDP,
};

/// One blocked attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedAttempt {
    /// Monotonic clock, nanoseconds.
    pub timestamp_ns: u64,
    pub uid: u32,
    pub pid: u32,
    pub comm: String,
    pub destination: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub layer: &'static str,
}

impl From<&BlockEvent> for BlockedAttempt {
    fn from(event: &BlockEvent) -> Self {
        let destination = if event.family == FAMILY_V4 {
            let [a, b, c, d, ..] = event.addr;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        } else {
            IpAddr::V6(Ipv6Addr::from(event.addr))
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
            layer: layer_name(event.layer),
        }
    }
}

impl fmt::Display for BlockedAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = match self.destination {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        };
        write!(
            f,
            "{} {dest} uid={} pid={} comm={} layer=ebpf-{}",
            self.protocol, self.uid, self.pid, self.comm, self.layer
        )
    }
}

pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_OTHER => "other",
        _ => "unknown",
    }
}

pub fn layer_name(layer: u8) -> &'static str {
    match layer {
        LAYER_CONNECT => "connect",
        LAYER_SENDMSG => "sendmsg",
        LAYER_EGRESS => "egress",
        _ => "unknown",
    }
}
