//! What an audit record says: its journal fields and its one-line stderr form.

use std::fmt::Write as _;

use isolate_ebpf_common::EVENTS_PER_CPU_SECOND;
use isolate_policy::Rate;

use super::Fix;
use super::limit::Suppressed;

use crate::bpf::BlockedAttempt;

/// journald's "warning".
const PRIORITY_WARNING: &str = "4";
const SYSLOG_IDENTIFIER: &str = "isolate";

/// One record, ready for either sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Journal fields, `MESSAGE` first.
    pub fields: Vec<(&'static str, String)>,
    /// The same record as one stderr line, without the newline.
    pub line: String,
}

/// The record of one blocked attempt:
/// `isolate-NAME-blocked tcp 203.0.113.7:443 pid=… comm=… fix: add "203.0.113.7:443/tcp" to
/// network.allow in FILE` plus `ISOLATE_*` fields (the fix in `ISOLATE_FIX`). Inbound
/// refusals say so (`tcp inbound from 203.0.113.7 to port 8080`, `tcp bind 0.0.0.0:8080`),
/// and `ISOLATE_DIRECTION` tells them apart from outbound ones.
pub(super) fn blocked(instance: &str, attempt: &BlockedAttempt, fix: &Fix) -> Entry {
    let port = attempt.port;
    // A unix socket is named by its device and inode (the event has no room for its path).
    let address = match attempt.unix {
        Some(peer) => peer.to_string(),
        None => attempt.destination.to_string(),
    };
    let (address_field, address, direction) = match attempt.hook {
        "ingress" => ("ISOLATE_PEER", address, "inbound"),
        "bind" => ("ISOLATE_LOCAL", address, "inbound"),
        // A refused socket family has no address: its number is the record's point.
        "socket" => ("ISOLATE_FAMILY", attempt.port.to_string(), "outbound"),
        // A refused DNS question: the name is the point (ISOLATE_HOST), the address is the
        // resolver's.
        "dns" => (
            "ISOLATE_DNS_TYPE",
            attempt.record_type.clone().unwrap_or_default(),
            "outbound",
        ),
        _ => ("ISOLATE_DEST", address, "outbound"),
    };
    let head = format!(
        "isolate-{instance}-blocked {} {}",
        attempt.protocol,
        attempt.what()
    );
    // Block events come from the eBPF layer (nft's drops are logged by the kernel itself),
    // DNS refusals from isolate's resolver.
    let layer = attempt.layer();
    let comm = one_line(&attempt.comm);
    let (uid, pid) = (attempt.uid, attempt.pid);
    Entry {
        fields: vec![
            (
                "MESSAGE",
                format!("{head} pid={pid} comm={comm} fix: {fix}"),
            ),
            ("PRIORITY", PRIORITY_WARNING.to_owned()),
            ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER.to_owned()),
            ("ISOLATE_INSTANCE", instance.to_owned()),
            ("ISOLATE_LAYER", layer.clone()),
            ("ISOLATE_DIRECTION", direction.to_owned()),
            (address_field, address),
            ("ISOLATE_PORT", port.to_string()),
            ("ISOLATE_PROTO", attempt.protocol.to_owned()),
            ("ISOLATE_PID", pid.to_string()),
            // The raw name: journal fields are binary-safe.
            ("ISOLATE_COMM", attempt.comm.clone()),
            ("ISOLATE_UID", uid.to_string()),
            ("ISOLATE_FIX", fix.to_string()),
        ]
        .into_iter()
        .chain(attempt.host.clone().map(|host| ("ISOLATE_HOST", host)))
        .collect(),
        line: format!("{head} uid={uid} pid={pid} comm={comm} layer={layer} fix: {fix}"),
    }
}

/// The record that follows a gap: `isolate-NAME-blocked: N records suppressed …`.
pub(super) fn suppressed(instance: &str, suppressed: Suppressed, rate: Rate) -> Entry {
    let count = suppressed.total();
    let why = match suppressed.by_kernel {
        0 => format!("audit log rate {rate}"),
        by_kernel => format!(
            "audit log rate {rate}; {by_kernel} beyond the kernel's {EVENTS_PER_CPU_SECOND} events per second and CPU"
        ),
    };
    let message = format!("isolate-{instance}-blocked: {count} records suppressed ({why})");
    Entry {
        fields: vec![
            ("MESSAGE", message.clone()),
            ("PRIORITY", PRIORITY_WARNING.to_owned()),
            ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER.to_owned()),
            ("ISOLATE_INSTANCE", instance.to_owned()),
            ("ISOLATE_SUPPRESSED", count.to_string()),
            (
                "ISOLATE_SUPPRESSED_KERNEL",
                suppressed.by_kernel.to_string(),
            ),
        ],
        line: message,
    }
}

/// The confined process chooses its own `comm` (prctl): escape spaces, control characters and
/// backslashes so that it cannot split a record or forge another one.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || c.is_whitespace() || c == '\\' {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_cannot_forge_a_line() {
        assert_eq!(one_line("curl"), "curl");
        assert_eq!(one_line("a b\nc\\"), "a\\u{20}b\\u{a}c\\u{5c}");
    }
}
