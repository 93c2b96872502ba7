//! Audit records as journald and a reader of stderr meet them: the exact fields on a fake
//! journald socket (a unix datagram socket bound in a temporary directory), the one-line stderr
//! form when journald is absent, and the per-instance rate limit.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isolate_enforcer::audit::AuditSink;
use isolate_enforcer::bpf::BlockedAttempt;
use isolate_policy::{Rate, RateUnit};

/// The policy file the fixes name.
const POLICY: &str = "/etc/isolate/instances/demo.toml";

const TEN_PER_SECOND: Rate = Rate {
    count: 10,
    per: RateUnit::Second,
};

fn attempt(destination: &str, comm: &str) -> BlockedAttempt {
    BlockedAttempt {
        timestamp_ns: 1,
        uid: 65534,
        pid: 4242,
        comm: comm.to_owned(),
        destination: destination.parse::<IpAddr>().unwrap(),
        port: 443,
        protocol: "tcp",
        hook: "connect",
        unix: None,
        host: None,
        record_type: None,
    }
}

/// A writer whose bytes the test can read.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A fake journald: the socket, and a sink that sends to it (fallback captured).
struct FakeJournal {
    _dir: tempfile::TempDir,
    socket: UnixDatagram,
    path: PathBuf,
}

impl FakeJournal {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        Self {
            _dir: dir,
            socket,
            path,
        }
    }

    fn sink(&self) -> (AuditSink, Capture) {
        let capture = Capture::default();
        let sink = AuditSink::with_journal_socket(&self.path).with_fallback(capture.clone());
        (sink, capture)
    }

    /// Every entry received so far, parsed.
    fn entries(&self) -> Vec<Vec<(String, String)>> {
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => entries.push(parse(&buf[..n])),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return entries,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

/// Parses the native protocol: `KEY=value\n`, or `KEY\n<u64 LE length><bytes>\n`.
fn parse(mut data: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'=' || b == b'\n').unwrap();
        let key = String::from_utf8(data[..end].to_vec()).unwrap();
        let value;
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let nl = rest.iter().position(|&b| b == b'\n').unwrap();
            value = &rest[..nl];
            data = &rest[nl + 1..];
        } else {
            let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap());
            let start = end + 9;
            let len = usize::try_from(len).unwrap();
            value = &data[start..start + len];
            assert_eq!(data[start + len], b'\n', "binary field ends with a newline");
            data = &data[start + len + 1..];
        }
        fields.push((key, String::from_utf8(value.to_vec()).unwrap()));
    }
    fields
}

fn as_map(entry: &[(String, String)]) -> BTreeMap<&str, &str> {
    let map: BTreeMap<&str, &str> = entry
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(map.len(), entry.len(), "no field twice: {entry:?}");
    map
}

#[test]
fn a_blocked_attempt_becomes_a_journal_entry_with_every_field() {
    let journal = FakeJournal::new();
    let (mut sink, fallback) = journal.sink();
    sink.record(
        "my-project",
        &TEN_PER_SECOND,
        Path::new(POLICY),
        &attempt("203.0.113.7", "curl"),
    );

    let entries = journal.entries();
    assert_eq!(entries.len(), 1);
    let expected = BTreeMap::from([
        (
            "MESSAGE",
            "isolate-my-project-blocked tcp 203.0.113.7:443 pid=4242 comm=curl fix: add \
             \"203.0.113.7:443/tcp\" to network.allow in /etc/isolate/instances/demo.toml",
        ),
        ("PRIORITY", "4"),
        ("SYSLOG_IDENTIFIER", "isolate"),
        ("ISOLATE_INSTANCE", "my-project"),
        ("ISOLATE_LAYER", "ebpf-connect"),
        ("ISOLATE_DIRECTION", "outbound"),
        ("ISOLATE_DEST", "203.0.113.7"),
        ("ISOLATE_PORT", "443"),
        ("ISOLATE_PROTO", "tcp"),
        ("ISOLATE_PID", "4242"),
        ("ISOLATE_COMM", "curl"),
        ("ISOLATE_UID", "65534"),
        (
            "ISOLATE_FIX",
            "add \"203.0.113.7:443/tcp\" to network.allow in /etc/isolate/instances/demo.toml",
        ),
    ]);
    assert_eq!(as_map(&entries[0]), expected);
    assert_eq!(
        fallback.text(),
        "",
        "nothing on stderr while journald takes it"
    );
}

/// Inbound refusals say which way they went: the sender of a refused connection is not a
/// destination the instance tried, and a bind names the local address asked for.
#[test]
fn inbound_refusals_name_the_sender_or_the_local_address() {
    let journal = FakeJournal::new();
    let (mut sink, _) = journal.sink();
    let mut inbound = attempt("198.51.100.9", "");
    inbound.hook = "ingress";
    inbound.port = 8080;
    inbound.pid = 0;
    let mut bind = attempt("0.0.0.0", "server");
    bind.hook = "bind";
    bind.port = 9000;
    sink.record("demo", &TEN_PER_SECOND, Path::new(POLICY), &inbound);
    sink.record("demo", &TEN_PER_SECOND, Path::new(POLICY), &bind);

    let entries = journal.entries();
    let inbound = as_map(&entries[0]);
    assert_eq!(
        inbound["MESSAGE"],
        "isolate-demo-blocked tcp inbound from 198.51.100.9 to port 8080 pid=0 comm= fix: add \
         \"0.0.0.0:8080/tcp\" to network.listen in /etc/isolate/instances/demo.toml"
    );
    assert_eq!(inbound["ISOLATE_DIRECTION"], "inbound");
    assert_eq!(inbound["ISOLATE_PEER"], "198.51.100.9");
    assert_eq!(inbound["ISOLATE_PORT"], "8080");
    assert!(!inbound.contains_key("ISOLATE_DEST"), "{inbound:?}");
    let bind = as_map(&entries[1]);
    assert_eq!(
        bind["MESSAGE"],
        "isolate-demo-blocked tcp bind 0.0.0.0:9000 pid=4242 comm=server fix: add \
         \"0.0.0.0:9000/tcp\" to network.listen in /etc/isolate/instances/demo.toml"
    );
    assert_eq!(bind["ISOLATE_LOCAL"], "0.0.0.0");
    assert_eq!(bind["ISOLATE_LAYER"], "ebpf-bind");
}

#[test]
fn ipv6_is_bracketed_and_a_hostile_comm_cannot_forge_fields() {
    let journal = FakeJournal::new();
    let (mut sink, _) = journal.sink();
    let comm = "x\nMESSAGE=forged";
    sink.record(
        "demo",
        &TEN_PER_SECOND,
        Path::new(POLICY),
        &attempt("2001:db8::7", comm),
    );

    let entries = journal.entries();
    let fields = as_map(&entries[0]);
    assert_eq!(
        fields["MESSAGE"],
        "isolate-demo-blocked tcp [2001:db8::7]:443 pid=4242 comm=x\\u{a}MESSAGE=forged fix: \
         add \"[2001:db8::7]:443/tcp\" to network.allow in /etc/isolate/instances/demo.toml"
    );
    assert_eq!(fields["ISOLATE_DEST"], "2001:db8::7");
    assert_eq!(
        fields["ISOLATE_COMM"], comm,
        "the raw name, in the binary form"
    );
}

#[test]
fn without_journald_the_record_is_one_stderr_line() {
    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::default();
    let mut sink =
        AuditSink::with_journal_socket(dir.path().join("absent")).with_fallback(capture.clone());
    sink.record(
        "demo",
        &TEN_PER_SECOND,
        Path::new(POLICY),
        &attempt("1.2.3.4", "curl"),
    );
    sink.record(
        "demo",
        &TEN_PER_SECOND,
        Path::new(POLICY),
        &attempt("::1", "two words"),
    );
    assert_eq!(
        capture.text(),
        "isolate-demo-blocked tcp 1.2.3.4:443 uid=65534 pid=4242 comm=curl layer=ebpf-connect \
         fix: add \"1.2.3.4:443/tcp\" to network.allow in /etc/isolate/instances/demo.toml\n\
         isolate-demo-blocked tcp [::1]:443 uid=65534 pid=4242 comm=two\\u{20}words layer=ebpf-connect \
         fix: add \"[::1]:443/tcp\" to network.allow in /etc/isolate/instances/demo.toml\n"
    );
}

#[test]
fn a_flood_is_cut_to_the_rate_and_the_gap_is_reported() {
    let journal = FakeJournal::new();
    let (mut sink, fallback) = journal.sink();
    let blocked = attempt("203.0.113.7", "curl");
    for _ in 0..100 {
        sink.record("demo", &TEN_PER_SECOND, Path::new(POLICY), &blocked);
    }
    // The bucket holds 10; the loop takes well under the 100 ms that refills one more.
    let delivered = journal.entries().len();
    assert!((10..=11).contains(&delivered), "{delivered} delivered");

    // Another instance has a bucket of its own.
    sink.record("other", &TEN_PER_SECOND, Path::new(POLICY), &blocked);
    assert_eq!(journal.entries().len(), 1);

    // Logging resumes: first the count of what was left out, then the record.
    std::thread::sleep(Duration::from_millis(150));
    sink.record("demo", &TEN_PER_SECOND, Path::new(POLICY), &blocked);
    let entries = journal.entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let notice = as_map(&entries[0]);
    let suppressed = 100 - delivered;
    assert_eq!(
        notice["MESSAGE"],
        format!("isolate-demo-blocked: {suppressed} records suppressed (audit log rate 10/second)")
    );
    assert_eq!(notice["ISOLATE_SUPPRESSED"], suppressed.to_string());
    assert_eq!(notice["ISOLATE_INSTANCE"], "demo");
    assert!(as_map(&entries[1])["MESSAGE"].starts_with("isolate-demo-blocked tcp"));
    assert_eq!(fallback.text(), "");
}

/// Events the kernel did not send (the instance's event budget there) are counted with what
/// the rate suppressed, said apart, and survive a reload that changes the rate.
#[test]
fn refusals_the_kernel_did_not_send_are_reported_as_suppressed() {
    let journal = FakeJournal::new();
    let (mut sink, _) = journal.sink();
    sink.unsent("demo", &TEN_PER_SECOND, 40);
    // Just offered: not quiet yet, so nothing is reported.
    sink.flush_quiet();
    assert!(journal.entries().is_empty());
    let per_minute = Rate {
        count: 10,
        per: RateUnit::Minute,
    };
    sink.unsent("demo", &per_minute, 2);
    sink.flush_suppressed();
    let entries = journal.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let notice = as_map(&entries[0]);
    assert_eq!(notice["ISOLATE_SUPPRESSED"], "42");
    assert_eq!(notice["ISOLATE_SUPPRESSED_KERNEL"], "42");
    assert_eq!(
        notice["MESSAGE"],
        "isolate-demo-blocked: 42 records suppressed (audit log rate 10/minute; 42 beyond the \
         kernel's 100 events per second and CPU)"
    );
    // Once quiet for a second, what is left out is reported without a final flush.
    sink.unsent("demo", &per_minute, 3);
    std::thread::sleep(Duration::from_millis(1100));
    sink.flush_quiet();
    assert_eq!(as_map(&journal.entries()[0])["ISOLATE_SUPPRESSED"], "3");
}

#[test]
fn flushing_reports_what_is_still_suppressed() {
    let journal = FakeJournal::new();
    let (mut sink, _) = journal.sink();
    let per_hour = Rate {
        count: 1,
        per: RateUnit::Hour,
    };
    for _ in 0..5 {
        sink.record(
            "demo",
            &per_hour,
            Path::new(POLICY),
            &attempt("203.0.113.7", "curl"),
        );
    }
    assert_eq!(journal.entries().len(), 1);
    sink.flush_suppressed();
    let entries = journal.entries();
    assert_eq!(as_map(&entries[0])["ISOLATE_SUPPRESSED"], "4");
    sink.flush_suppressed();
    assert!(journal.entries().is_empty(), "reported once");
}
