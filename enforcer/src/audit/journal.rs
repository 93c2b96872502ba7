//! journald's native protocol, written here rather than taken from a crate: it is a datagram of
//! `KEY=value\n` fields (about 30 lines), while the crates that speak it either log through the
//! `log`/`tracing` facades (no per-record fields of our choosing, or fields renamed) or pull in
//! much more than this needs. See systemd's "Native Journal Protocol" documentation.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Encodes one journal entry. A value holding a newline uses the binary form:
/// `KEY\n`, its length as a little-endian u64, the bytes, `\n`. Keys must be upper-case
/// letters, digits and `_`, not starting with `_` (the callers' keys are constants).
pub(super) fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A client of journald's socket. Entries are small (well under journald's datagram limit), so
/// the memfd path of the protocol for large entries is not needed.
#[derive(Debug)]
pub(super) struct Journal {
    path: PathBuf,
    socket: Option<UnixDatagram>,
}

impl Journal {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, socket: None }
    }

    /// Sends one encoded entry. Fails when journald is absent (no socket) or does not take it
    /// at once; every send tries again, so records reach journald once it is there.
    pub(super) fn send(&mut self, entry: &[u8]) -> io::Result<()> {
        if self.socket.is_none() {
            // Non-blocking: a busy journald (full queue) must not stall the event pump; the
            // caller falls back to stderr instead.
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            self.socket = Some(socket);
        }
        let socket = self.socket.as_ref().expect("created above");
        socket.send_to(entry, &self.path).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_binary_fields() {
        let entry = encode(&[("MESSAGE", "hello"), ("ISOLATE_COMM", "a\nb")]);
        let mut expected = b"MESSAGE=hello\nISOLATE_COMM\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"a\nb\n");
        assert_eq!(entry, expected);
    }
}
