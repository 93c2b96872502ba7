//! Reading nftables tables and named counters straight from the kernel over netlink.
//!
//! `nft list counters` fetches the whole ruleset first, every set element of every table
//! included, whatever it then prints: with a hundred instances of a thousand CIDRs each one
//! run took seconds, and status ran two per instance. The kernel filters an object dump by
//! type and table itself, so these dumps cost what they return. Only reading is done here;
//! changes stay with `nft`, in one JSON transaction each.
//!
//! Messages: `include/uapi/linux/netlink.h`, `netfilter/nfnetlink.h`, `netfilter/nf_tables.h`.

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// The nested flag and the byte-order flag of an attribute's type.
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETOBJ: u16 = 19;
const NFPROTO_INET: u8 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// How long a dump may take before it counts as failed (the kernel answers in microseconds).
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A named counter of an inet table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub table: String,
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The names of the inet tables.
pub fn inet_tables() -> io::Result<Vec<String>> {
    let messages = dump(NFT_MSG_GETTABLE, &[])?;
    Ok(messages
        .iter()
        .filter_map(|payload| {
            string(
                attributes(payload)
                    .find(|(kind, _)| *kind == NFTA_TABLE_NAME)?
                    .1,
            )
        })
        .collect())
}

/// Whether the inet table `name` exists: one table asked for, not the list of all (a daemon
/// adopting 1,000 instances asks this of each).
pub fn inet_table_exists(name: &str) -> io::Result<bool> {
    let mut request = Vec::new();
    push_attribute(&mut request, NFTA_TABLE_NAME, &nul_terminated(name));
    match exchange(NFT_MSG_GETTABLE, NLM_F_REQUEST, &request) {
        Ok(answer) => Ok(!answer.is_empty()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The named counters of the inet tables, of `table` only when given.
pub fn inet_counters(table: Option<&str>) -> io::Result<Vec<Counter>> {
    let mut request = Vec::new();
    if let Some(table) = table {
        push_attribute(&mut request, NFTA_OBJ_TABLE, &nul_terminated(table));
    }
    push_attribute(
        &mut request,
        NFTA_OBJ_TYPE,
        &NFT_OBJECT_COUNTER.to_be_bytes(),
    );
    Ok(dump(NFT_MSG_GETOBJ, &request)?
        .iter()
        .filter_map(|payload| counter(payload))
        .collect())
}

fn counter(payload: &[u8]) -> Option<Counter> {
    let (mut table, mut name, mut data) = (None, None, None);
    for (kind, value) in attributes(payload) {
        match kind {
            NFTA_OBJ_TABLE => table = string(value),
            NFTA_OBJ_NAME => name = string(value),
            NFTA_OBJ_TYPE if value != NFT_OBJECT_COUNTER.to_be_bytes() => return None,
            NFTA_OBJ_DATA => data = Some(value),
            _ => {}
        }
    }
    let (mut packets, mut bytes) = (None, None);
    for (kind, value) in attributes(data?) {
        match kind {
            NFTA_COUNTER_PACKETS => packets = Some(u64::from_be_bytes(value.try_into().ok()?)),
            NFTA_COUNTER_BYTES => bytes = Some(u64::from_be_bytes(value.try_into().ok()?)),
            _ => {}
        }
    }
    Some(Counter {
        table: table?,
        name: name?,
        packets: packets?,
        bytes: bytes?,
    })
}

/// Sends one dump request of `nf_tables` message `kind` for the inet family, with its attributes,
/// and returns the payload (after `nfgenmsg`) of each message of the answer.
fn dump(kind: u16, request_attributes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    exchange(kind, NLM_F_REQUEST | NLM_F_DUMP, request_attributes)
}

/// Sends one request (`flags`: a dump or a single object) and returns the payload of each
/// message of the answer: a dump's until it is done, a single request's one message.
fn exchange(kind: u16, flags: u16, request_attributes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let fd = open()?;
    let length = NLMSG_HDRLEN + NFGENMSG_LEN + request_attributes.len();
    let sequence: u32 = 1;
    let mut request = Vec::with_capacity(length);
    request.extend(
        u32::try_from(length)
            .expect("a short request")
            .to_ne_bytes(),
    );
    request.extend(((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
    request.extend(flags.to_ne_bytes());
    request.extend(sequence.to_ne_bytes());
    request.extend(0_u32.to_ne_bytes());
    request.extend([NFPROTO_INET, 0, 0, 0]);
    request.extend(request_attributes);
    socket::sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;

    let mut payloads = Vec::new();
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let received = socket::recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty())?;
        let mut rest = &buffer[..received];
        while rest.len() >= NLMSG_HDRLEN {
            let length = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let message_type = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if length < NLMSG_HDRLEN || length > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a truncated netlink message",
                ));
            }
            let body = &rest[NLMSG_HDRLEN..length];
            match message_type {
                NLMSG_DONE => return Ok(payloads),
                NLMSG_ERROR => {
                    let code = body
                        .get(0..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    // An acknowledgement, which ends a single request's answer.
                    if !is_dump {
                        return Ok(payloads);
                    }
                }
                _ => {
                    payloads.push(body.get(NFGENMSG_LEN..).unwrap_or_default().to_vec());
                    if !is_dump {
                        return Ok(payloads);
                    }
                }
            }
            rest = &rest[align(length).min(rest.len())..];
        }
    }
}

fn open() -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    let timeout = nix::sys::time::TimeVal::new(
        i64::try_from(RECEIVE_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
        0,
    );
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(fd)
}

fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn align(length: usize) -> usize {
    length.div_ceil(4) * 4
}

fn push_attribute(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let length = u16::try_from(NLA_HDRLEN + value.len()).expect("a short attribute");
    buffer.extend(length.to_ne_bytes());
    buffer.extend(kind.to_ne_bytes());
    buffer.extend(value);
    buffer.resize(align(buffer.len()), 0);
}

/// The (type, value) attributes of a message payload or a nested attribute.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLA_HDRLEN {
            return None;
        }
        let length = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if length < NLA_HDRLEN || length > data.len() {
            return None;
        }
        let value = &data[NLA_HDRLEN..length];
        data = &data[align(length).min(data.len())..];
        Some((kind, value))
    })
}

/// A NUL-terminated string attribute.
fn string(value: &[u8]) -> Option<String> {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8(value[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_object_is_decoded() {
        let mut data = Vec::new();
        push_attribute(&mut data, NFTA_COUNTER_BYTES, &7_u64.to_be_bytes());
        push_attribute(
            &mut data,
            NFTA_COUNTER_PACKETS,
            &5_000_000_000_u64.to_be_bytes(),
        );
        let mut payload = Vec::new();
        push_attribute(&mut payload, NFTA_OBJ_TABLE, b"isolate-a\0");
        push_attribute(&mut payload, NFTA_OBJ_NAME, b"blocked_v4_tcp\0");
        push_attribute(
            &mut payload,
            NFTA_OBJ_TYPE,
            &NFT_OBJECT_COUNTER.to_be_bytes(),
        );
        push_attribute(&mut payload, NFTA_OBJ_DATA | 0x8000, &data);
        assert_eq!(
            counter(&payload),
            Some(Counter {
                table: "isolate-a".into(),
                name: "blocked_v4_tcp".into(),
                packets: 5_000_000_000,
                bytes: 7,
            })
        );
        // Another kind of object (a quota, say) is not a counter.
        let mut quota = Vec::new();
        push_attribute(&mut quota, NFTA_OBJ_TABLE, b"isolate-a\0");
        push_attribute(&mut quota, NFTA_OBJ_NAME, b"q\0");
        push_attribute(&mut quota, NFTA_OBJ_TYPE, &2_u32.to_be_bytes());
        push_attribute(&mut quota, NFTA_OBJ_DATA | 0x8000, &data);
        assert_eq!(counter(&quota), None);
    }

    #[test]
    fn attributes_stop_at_a_truncated_one() {
        let mut payload = Vec::new();
        push_attribute(&mut payload, NFTA_TABLE_NAME, b"t\0");
        payload.extend([200, 0, 1, 0]);
        let read: Vec<_> = attributes(&payload).collect();
        assert_eq!(read, vec![(NFTA_TABLE_NAME, &b"t\0"[..])]);
    }
}
