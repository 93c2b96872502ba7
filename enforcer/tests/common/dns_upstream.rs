//! A test upstream DNS server: answers from a small zone over UDP and TCP and records what it
//! was asked, so a test can check what isolate's resolver forwarded. Over UDP, an answer too big
//! for 512 bytes (or of more than 20 records) comes back truncated, which makes the client retry
//! over TCP.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// How often the threads look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// The classic UDP limit: the server does not read EDNS.
const UDP_LIMIT: usize = 512;
const UDP_MAX_RECORDS: usize = 20;
const MAX_CNAME_HOPS: usize = 16;

/// Records by owner name (lower case, no trailing dot).
#[derive(Clone, Default, Debug)]
pub struct Zone {
    names: HashMap<String, Vec<Entry>>,
}

#[derive(Clone, Debug)]
enum Entry {
    A(Ipv4Addr, u32),
    Aaaa(Ipv6Addr, u32),
    Cname(String, u32),
}

impl Zone {
    pub fn a(mut self, name: &str, addrs: &[Ipv4Addr], ttl: u32) -> Self {
        let entries = self.names.entry(key(name)).or_default();
        entries.extend(addrs.iter().map(|&addr| Entry::A(addr, ttl)));
        self
    }

    pub fn aaaa(mut self, name: &str, addrs: &[Ipv6Addr], ttl: u32) -> Self {
        let entries = self.names.entry(key(name)).or_default();
        entries.extend(addrs.iter().map(|&addr| Entry::Aaaa(addr, ttl)));
        self
    }

    pub fn cname(mut self, name: &str, target: &str, ttl: u32) -> Self {
        self.names
            .entry(key(name))
            .or_default()
            .push(Entry::Cname(key(target), ttl));
        self
    }

    /// The answer to `request`, or `None` if it is not a query with a question.
    fn answer(&self, request: &Message) -> Option<Message> {
        let question = request.queries().first()?;
        let asked = question.query_type();
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .add_query(question.clone());
        // The first owner is the name as asked, in its case.
        let mut owner = question.name().clone();
        let mut current = key(&question.name().to_ascii());
        for _ in 0..MAX_CNAME_HOPS {
            let Some((target, ttl)) = self.names.get(&current).and_then(|entries| {
                entries.iter().find_map(|entry| match entry {
                    Entry::Cname(target, ttl) => Some((target.clone(), *ttl)),
                    _ => None,
                })
            }) else {
                break;
            };
            let target_name = fqdn(&target);
            response.add_answer(Record::from_rdata(
                owner,
                ttl,
                RData::CNAME(CNAME(target_name.clone())),
            ));
            if asked == RecordType::CNAME {
                return Some(response);
            }
            owner = target_name;
            current = target;
        }
        let Some(entries) = self.names.get(&current) else {
            response.set_response_code(ResponseCode::NXDomain);
            return Some(response);
        };
        for entry in entries {
            let record = match (entry, asked) {
                (Entry::A(addr, ttl), RecordType::A) => {
                    Record::from_rdata(owner.clone(), *ttl, RData::A(A(*addr)))
                }
                (Entry::Aaaa(addr, ttl), RecordType::AAAA) => {
                    Record::from_rdata(owner.clone(), *ttl, RData::AAAA(AAAA(*addr)))
                }
                _ => continue,
            };
            response.add_answer(record);
        }
        Some(response)
    }
}

/// What the server shares with its threads.
struct Shared {
    zone: Mutex<Zone>,
    asked: Mutex<Vec<(String, String, &'static str)>>,
    stop: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Records the question and encodes the answer (`None` for what is not a query).
    fn respond(&self, request: &[u8], transport: &'static str) -> Option<Message> {
        let request = Message::from_vec(request).ok()?;
        if request.message_type() != MessageType::Query {
            return None;
        }
        let question = request.queries().first()?;
        lock(&self.asked).push((
            key(&question.name().to_ascii()),
            question.query_type().to_string(),
            transport,
        ));
        let zone = lock(&self.zone).clone();
        zone.answer(&request)
    }
}

/// A test upstream DNS server, stopped when dropped.
pub struct Upstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Upstream {
    /// Serves UDP and TCP on `addr` (e.g. 10.0.0.53:53 inside a test's network namespace, or
    /// 127.0.0.1:0 for a unit test) until dropped.
    pub fn start(addr: SocketAddr, zone: Zone) -> std::io::Result<Upstream> {
        let (udp, tcp) = bind(addr)?;
        let addr = udp.local_addr()?;
        udp.set_read_timeout(Some(POLL))?;
        // Polled, since `accept` has no timeout.
        tcp.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            zone: Mutex::new(zone),
            asked: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let udp_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("dns-upstream-udp".into())
                .spawn(move || serve_udp(&udp, &shared))?
        };
        let tcp_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("dns-upstream-tcp".into())
                .spawn(move || serve_tcp(&tcp, &shared))
        };
        let mut upstream = Upstream {
            shared,
            addr,
            threads: vec![udp_thread],
        };
        // On failure, dropping `upstream` stops the UDP thread.
        upstream.threads.push(tcp_thread?);
        Ok(upstream)
    }

    /// The address served, with the real port when 0 was given.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Names (lower case, no dot) this server was asked, in order, with their type ("A",
    /// "AAAA", ...) and transport ("udp"/"tcp").
    pub fn asked(&self) -> Vec<(String, String, &'static str)> {
        lock(&self.shared.asked).clone()
    }

    /// Fails the test if `name` was asked here: an unlisted name must never leave.
    pub fn assert_never_asked(&self, name: &str) {
        let asked = self.asked();
        assert!(
            !asked.iter().any(|(asked, _, _)| asked == name),
            "{name} reached the upstream: {asked:?}"
        );
    }

    /// Replaces the zone (a changed answer).
    pub fn set_zone(&self, zone: Zone) {
        *lock(&self.shared.zone) = zone;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The accept thread is gone: no connection thread is added any more.
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for thread in connections {
            let _ = thread.join();
        }
    }
}

/// UDP first, then TCP on its port; with port 0, a few tries in case TCP's port is taken.
fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let tries = if addr.port() == 0 { 10 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| ErrorKind::AddrInUse.into()))
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buffer = vec![0_u8; 65_535];
    while !shared.stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(error) if is_timeout(&error) || error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => panic!("dns upstream: UDP receive: {error}"),
        };
        let Some(response) = shared.respond(&buffer[..len], "udp") else {
            continue;
        };
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        if bytes.len() > UDP_LIMIT || response.answers().len() > UDP_MAX_RECORDS {
            let Ok(truncated) = response.truncate().to_vec() else {
                continue;
            };
            bytes = truncated;
        }
        // A client that went away is its own problem.
        let _ = socket.send_to(&bytes, peer);
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let connection = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("dns-upstream-conn".into())
                    .spawn(move || serve_connection(stream, &connection));
                match spawned {
                    Ok(thread) => lock(&shared.connections).push(thread),
                    Err(error) => panic!("dns upstream: spawn: {error}"),
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // E.g. the client reset the connection before it was accepted.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Length-prefixed messages, as many as the client sends, each answered in full.
fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    loop {
        let mut prefix = [0_u8; 2];
        if !read_full(&mut stream, &mut prefix, shared) {
            return;
        }
        let mut request = vec![0_u8; usize::from(u16::from_be_bytes(prefix))];
        if !read_full(&mut stream, &mut request, shared) {
            return;
        }
        let Some(response) = shared.respond(&request, "tcp") else {
            continue;
        };
        let Ok(bytes) = response.to_vec() else {
            continue;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            continue;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

/// Fills `buffer`, waiting through read timeouts; false at the end of the stream, on an error
/// or when the server stops.
fn read_full(stream: &mut TcpStream, buffer: &mut [u8], shared: &Shared) -> bool {
    let mut filled = 0;
    while filled < buffer.len() {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => return false,
            Ok(read) => filled += read,
            Err(error) if is_timeout(&error) || error.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Lower case, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name).expect("a zone name is a valid DNS name");
    name.set_fqdn(true);
    name
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A confined client for the DNS-following tests, run as `python3 -c LOOKUP_SCRIPT PORT STEP…`:
/// each step looks a name up through whatever resolver /etc/resolv.conf names (`look LABEL
/// NAME`, `look6 LABEL NAME` for IPv6) and connects to every address found on PORT, or
/// connects to one address (`connect LABEL ADDR [PORT]`), or waits (`sleep SECONDS`). Each
/// step prints one line: `LABEL COUNT FIRST,SECOND VERDICTS fast|slow` for a lookup (`ok`,
/// `errno N`), `LABEL VERDICT` for a connect.
pub const LOOKUP_SCRIPT: &str = r"
import socket, sys, time
port = int(sys.argv[1])
def look(name, family):
    started = time.monotonic()
    try:
        found = sorted({a[4][0] for a in socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)})
    except socket.gaierror:
        found = []
    return found, time.monotonic() - started
def connect(addr, to):
    s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect((addr, to))
        return 'ok'
    except OSError as e:
        return 'errno %d' % e.errno
    finally:
        s.close()
for step in sys.argv[2:]:
    kind, *args = step.split()
    if kind == 'sleep':
        time.sleep(float(args[0]))
    elif kind == 'connect':
        to = int(args[2]) if len(args) > 2 else port
        print(args[0], connect(args[1], to), flush=True)
    else:
        family = socket.AF_INET6 if kind == 'look6' else socket.AF_INET
        found, took = look(args[1], family)
        verdicts = sorted({connect(a, port) for a in found})
        print(args[0], len(found), ','.join(found[:2]), '+'.join(verdicts), 'slow' if took > 2 else 'fast', flush=True)
";

/// Inside the test's own network namespace: every address of `192.0.2.0/24`, and
/// `2001:db8::10`, is local (the answers of [`test_zone`] reach the test's listeners).
pub fn make_answers_local() {
    for args in [
        &["route", "add", "local", "192.0.2.0/24", "dev", "lo"][..],
        &[
            "-6",
            "addr",
            "add",
            "2001:db8::10/128",
            "dev",
            "lo",
            "nodad",
        ][..],
    ] {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(status.success(), "ip {args:?}");
    }
}

/// Inside the test's own network namespace: the resolvers of /etc/resolv.conf are local, so
/// that the instance's queries to them leave its sockets (the namespace has no other route)
/// and the nftables layer can translate them. Nothing answers there.
pub fn make_system_resolvers_local() {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers =
        isolate_enforcer::network::dns_servers(&isolate_policy::DnsSetting::System, &conf);
    for server in servers.into_iter().filter(|s| !s.is_loopback()) {
        let (family, prefix) = if server.is_ipv4() {
            ("-4", 32)
        } else {
            ("-6", 128)
        };
        let route = format!("{server}/{prefix}");
        let status = std::process::Command::new("ip")
            .args([family, "route", "add", "local", &route, "dev", "lo"])
            .status()
            .expect("ip (iproute2)");
        assert!(status.success(), "ip route add local {route} dev lo");
    }
}

/// The zone of the DNS-following tests; `changing.example.test` answers 192.0.2.`changing`.
pub fn test_zone(changing: u8) -> Zone {
    let many: Vec<Ipv4Addr> = (100..130).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
    Zone::default()
        .a("api.example.test", &[Ipv4Addr::new(192, 0, 2, 10)], 60)
        .a("x.wild.test", &[Ipv4Addr::new(192, 0, 2, 11)], 60)
        .cname("alias.example.test", "edge.cdn.test", 60)
        .cname("edge.cdn.test", "cdn-1.provider.test", 60)
        .a("cdn-1.provider.test", &[Ipv4Addr::new(192, 0, 2, 13)], 5)
        .a("many.example.test", &many, 60)
        .aaaa(
            "api6.example.test",
            &["2001:db8::10".parse::<Ipv6Addr>().unwrap()],
            60,
        )
        .a(
            "changing.example.test",
            &[Ipv4Addr::new(192, 0, 2, changing)],
            60,
        )
        .a("evil.test", &[Ipv4Addr::new(192, 0, 2, 66)], 60)
}

/// Fails unless each of `wanted` is a whole line of the lookup client's output `text`
/// (`context`, e.g. isolate's stderr, goes into the message).
pub fn assert_lines<S: AsRef<str>>(text: &str, wanted: &[S], context: &str) {
    for wanted in wanted {
        let wanted = wanted.as_ref();
        assert!(
            text.lines().any(|line| line == wanted),
            "wanted {wanted:?} in:\n{text}\n{context}"
        );
    }
}
