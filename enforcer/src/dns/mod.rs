//! isolate's own resolver for one instance. The eBPF layer sends every DNS query of the
//! instance (TCP and UDP port 53, whatever the address) here. A name the policy lists (exactly,
//! or below a `*.` wildcard) is forwarded to the upstream resolvers of `network.dns`, and the
//! addresses of the answer are admitted for the instance — in every layer, with the host
//! rule's ports and protocol — before the answer is released; if that fails, the instance gets
//! SERVFAIL, never an answer it could not use. Any other name is answered REFUSED without being
//! forwarded (the question itself would carry data out), counted and recorded by name.
//!
//! REFUSED rather than NXDOMAIN: the name may well exist, and a cache between the instance and
//! here must not remember it as absent once the policy allows it.
//!
//! Observing (`Service::observe`, for a learn mode), a name the policy does not list is
//! counted and recorded as a refusal all the same, but forwarded and answered: the learner sees
//! what the instance asks for, and [`Resolver::name_of`] names the answer's addresses, so that
//! it can write a host rule rather than an address. Those addresses are admitted in no layer.

pub mod message;
mod names;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isolate_ebpf_common::{
    CounterKey, DnsRedirect, FAMILY_V4, FAMILY_V6, HOOK_DNS, PROTO_TCP, PROTO_UDP,
};
use isolate_policy::HostRule;

use crate::bpf::{BlockedAttempt, HostMaps, HostPorts, boot_clock};
use crate::network::{ResolverEndpoint, never_admitted};
use crate::nft::{self, HostElement};
use message::Query;
pub use names::{matches, matching_rules};

/// An answer's addresses stay admitted for its TTL, at least this long (a TTL of 0 or 1 would
/// expire before the connect that follows the lookup) ...
pub const TTL_FLOOR: Duration = Duration::from_secs(30);
/// ... at most this long (a week-long TTL must not open an address for a week) ...
pub const TTL_CAP: Duration = Duration::from_hours(1);
/// ... plus this grace: runtimes reuse addresses past their TTL (and connections in progress
/// are never cut: only new connects are judged).
pub const GRACE: Duration = Duration::from_mins(5);
/// Addresses admitted from one answer; the rest of a larger answer opens nothing.
pub const MAX_ADDRESSES_PER_ANSWER: usize = 64;
/// Addresses one name holds at once (a name whose answers rotate through many addresses
/// gathers them); an answer beyond that gets SERVFAIL.
pub const MAX_ADDRESSES_PER_NAME: usize = 256;
/// Addresses one instance holds at once; an answer beyond that gets SERVFAIL.
pub const MAX_ADDRESSES_PER_INSTANCE: usize = 4096;
/// How long the resolver waits for one upstream before it asks the next.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP connections of the instance served at once; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// How long an idle TCP connection of the instance is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often the resolver's threads look up from their sockets (to stop, to sweep).
const POLL: Duration = Duration::from_millis(200);
/// How often expired addresses are removed from the maps.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The resolver's sockets, bound before the instance's rules are made (they name its port).
pub struct Listener {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    endpoint: ResolverEndpoint,
}

impl Listener {
    /// Binds UDP and TCP on `127.0.0.1` and `::1`, one port for all four. Where the host has
    /// no IPv6 loopback, IPv4 alone: the instance's IPv6 queries then get no answer.
    pub fn bind() -> io::Result<Self> {
        let mut last = io::Error::other("no port tried");
        // Another program may hold the port on one of the addresses: try a few.
        for _ in 0..16 {
            let udp_v4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let port = udp_v4.local_addr()?.port();
            let tcp_v4 = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let v6 = (|| {
                Ok::<_, io::Error>((
                    UdpSocket::bind((Ipv6Addr::LOCALHOST, port))?,
                    TcpListener::bind((Ipv6Addr::LOCALHOST, port))?,
                ))
            })();
            let (udp, tcp) = match v6 {
                Ok((udp_v6, tcp_v6)) => (vec![udp_v4, udp_v6], vec![tcp_v4, tcp_v6]),
                Err(e) if no_ipv6(&e) => (vec![udp_v4], vec![tcp_v4]),
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            return Ok(Self {
                udp,
                tcp,
                endpoint: ResolverEndpoint {
                    v4: Ipv4Addr::LOCALHOST,
                    v6: Ipv6Addr::LOCALHOST,
                    port,
                },
            });
        }
        Err(last)
    }

    pub fn endpoint(&self) -> ResolverEndpoint {
        self.endpoint
    }

    /// Starts answering with `service`; the resolver stops when the returned handle drops.
    pub fn serve(self, service: Service) -> io::Result<Resolver> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            instance: service.instance,
            uid: service.uid,
            nft: service.layers.nft,
            refusals: service.refusals,
            observe: service.observe,
            names: RwLock::new(Names {
                hosts: service.hosts,
                upstreams: service.upstreams,
            }),
            admitted: Mutex::new(Admitted {
                bpf: service.layers.bpf,
                ..Admitted::default()
            }),
            observed: Mutex::new(HashMap::new()),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
        });
        // Built first: should a thread not start, dropping it stops the others.
        let mut resolver = Resolver {
            endpoint: self.endpoint,
            shared,
            stop,
            threads: Vec::new(),
        };
        for udp in self.udp {
            udp.set_read_timeout(Some(POLL))?;
            let (shared, stop) = (Arc::clone(&resolver.shared), Arc::clone(&resolver.stop));
            resolver
                .threads
                .push(spawn(move || serve_udp(&udp, &shared, &stop))?);
        }
        for tcp in self.tcp {
            tcp.set_nonblocking(true)?;
            let (shared, stop) = (Arc::clone(&resolver.shared), Arc::clone(&resolver.stop));
            resolver
                .threads
                .push(spawn(move || serve_tcp(&tcp, &shared, &stop))?);
        }
        Ok(resolver)
    }
}

/// A running resolver; dropping it stops its threads.
pub struct Resolver {
    endpoint: ResolverEndpoint,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Resolver {
    pub fn endpoint(&self) -> ResolverEndpoint {
        self.endpoint
    }

    /// A handle on what this resolver did and holds, for another thread.
    pub fn reporter(&self) -> Reporter {
        Reporter(Arc::clone(&self.shared))
    }

    /// The name whose answer admitted `addr`, while it is admitted; else, observing, the
    /// unlisted name whose answer held it, for as long as it would have been admitted.
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.shared.name_of(addr)
    }

    /// Serves from now on with the policy's new `hosts` and `upstreams` (a reload), and
    /// admits again what is admitted, under the new rules (see [`Resolver::recommit`]).
    pub fn update(&self, hosts: Vec<HostRule>, upstreams: Vec<IpAddr>) {
        if let Ok(mut names) = self.shared.names.write() {
            *names = Names { hosts, upstreams };
        }
        self.recommit();
    }

    /// Writes every live admission into the layers again, under the host rules in force: after
    /// the nftables table was replaced (its host sets start empty) or the rules changed. An
    /// address whose name no longer matches a rule is let go.
    pub fn recommit(&self) {
        if let Err(e) = self.shared.recommit() {
            tracing::warn!(instance = %self.shared.instance, "resolver: admit again: {e}");
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What a resolver did and holds, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Questions answered from upstream.
    pub answered: u64,
    /// Questions the policy does not allow: answered REFUSED, or (observing) from upstream.
    pub refused: u64,
    /// Questions answered SERVFAIL (no upstream answer, or the commit failed).
    pub failed: u64,
    /// The names answered whose addresses are admitted now: (name, address, time left).
    pub admitted: Vec<(String, IpAddr, Duration)>,
}

/// A handle on a running resolver's [`Report`].
#[derive(Clone)]
pub struct Reporter(Arc<Shared>);

impl Reporter {
    /// As [`Resolver::name_of`].
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.0.name_of(addr)
    }

    pub fn report(&self) -> Report {
        let shared = &self.0;
        let now = boot_clock();
        let mut admitted: Vec<(String, IpAddr, Duration)> = shared
            .admitted
            .lock()
            .map(|admitted| {
                admitted
                    .until
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|((name, addr), until)| (name.clone(), *addr, until.saturating_sub(now)))
                    .collect()
            })
            .unwrap_or_default();
        admitted.sort();
        Report {
            answered: shared.answered.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            admitted,
        }
    }
}

/// The eBPF layer's redirect entry for a resolver listening at `endpoint`.
pub fn redirect_to(endpoint: ResolverEndpoint) -> DnsRedirect {
    DnsRedirect {
        addr_v4: endpoint.v4.octets(),
        addr_v6: endpoint.v6.octets(),
        port: endpoint.port,
        _pad: 0,
    }
}

/// What the resolver serves one instance with.
pub struct Service {
    pub instance: String,
    pub uid: u32,
    /// The policy's host rules (each has an nftables set of its own).
    pub hosts: Vec<HostRule>,
    /// Where allowed names are asked (`network.dns`).
    pub upstreams: Vec<IpAddr>,
    /// The layers the answers are committed to.
    pub layers: Layers,
    /// Refused questions go here, to be recorded with the instance's other refusals.
    pub refusals: Sender<BlockedAttempt>,
    /// Whether to forward and answer the names the policy does not list (still counted and
    /// recorded as refused, their addresses admitted nowhere) and remember which name answered
    /// which address: a learn mode, whose layers let everything through, learns names that way.
    /// Never for an enforcing instance: it would hand unlisted names to the upstream.
    pub observe: bool,
}

/// The layers an answer's addresses go into before it is released.
pub struct Layers {
    /// The eBPF layer's host maps (also where refusals are counted).
    pub bpf: Option<HostMaps>,
    /// Whether the instance has an nftables table (its host sets get the addresses too).
    pub nft: bool,
}

struct Shared {
    instance: String,
    uid: u32,
    nft: bool,
    refusals: Sender<BlockedAttempt>,
    /// See [`Service::observe`].
    observe: bool,
    /// Questions answered from upstream, refused, and failed (SERVFAIL).
    answered: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// TCP connections being served.
    connections: AtomicUsize,
    names: RwLock<Names>,
    /// Held while an answer is committed: two lookups of one name both wait for the commit.
    admitted: Mutex<Admitted>,
    /// Observing: the addresses answered for names the policy does not list, until when (boot
    /// clock), by (name, address). Only for [`Resolver::name_of`]: nothing is admitted.
    observed: Mutex<HashMap<(String, IpAddr), Duration>>,
}

/// A reply, by what it says.
enum Reply {
    Answered(Vec<u8>),
    Refused(Vec<u8>),
    /// The upstream's answer to a question the policy does not allow (observing).
    Observed(Vec<u8>),
    Failed(Vec<u8>),
}

/// What the policy lets the resolver answer, and where it asks.
struct Names {
    /// The policy's host rules (each has an nftables set of its own).
    hosts: Vec<HostRule>,
    upstreams: Vec<IpAddr>,
}

/// What the resolver admitted, and until when (boot clock), by (name answered, address).
#[derive(Default)]
struct Admitted {
    /// The eBPF layer's maps (taken from `Service::layers`): one writer at a time.
    bpf: Option<HostMaps>,
    until: HashMap<(String, IpAddr), Duration>,
    last_sweep: Option<Instant>,
}

/// A resolver thread. It blocks every signal: they are the supervisor's (or the daemon's) to
/// take, and one delivered here would be lost to them.
fn spawn(work: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("isolate-dns".into())
        .spawn(move || {
            let _ = nix::sys::signal::SigSet::all().thread_block();
            work();
        })
}

fn serve_udp(socket: &UdpSocket, shared: &Shared, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if is_timeout(&e) => {
                shared.sweep();
                continue;
            }
            Err(e) => {
                tracing::warn!(instance = %shared.instance, "resolver: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if let Some(reply) = shared.answer(&buf[..len], peer, PROTO_UDP) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Each connection has a thread: an instance that opens many waits for its own.
                if shared.connections.fetch_add(1, Ordering::Relaxed) >= MAX_TCP_CONNECTIONS {
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let (shared, stop) = (Arc::clone(shared), Arc::clone(stop));
                let started = spawn(move || {
                    serve_connection(stream, peer, &shared, &stop);
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                });
                if let Err(e) = started {
                    tracing::warn!("resolver: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL / 4),
            Err(e) => {
                tracing::warn!(instance = %shared.instance, "resolver: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// One TCP connection: length-prefixed questions, answered in turn.
fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TCP_IDLE));
    while !stop.load(Ordering::Relaxed) {
        let Ok(message) = read_framed(&mut stream) else {
            return;
        };
        if let Some(reply) = shared.answer(&message, peer, PROTO_TCP)
            && write_framed(&mut stream, &reply).is_err()
        {
            return;
        }
    }
}

impl Shared {
    fn name_of(&self, addr: IpAddr) -> Option<String> {
        // A v4-mapped address reaches an IPv4 host: it is admitted and judged as one.
        let addr = addr.to_canonical();
        let held_for = |held: &HashMap<(String, IpAddr), Duration>| {
            held.keys()
                .find(|(_, held)| *held == addr)
                .map(|(name, _)| name.clone())
        };
        let admitted = self.admitted.lock().ok().and_then(|a| held_for(&a.until));
        admitted.or_else(|| self.observed.lock().ok().and_then(|o| held_for(&o)))
    }

    /// The reply to one message of the instance, if it deserves one.
    fn answer(&self, bytes: &[u8], peer: SocketAddr, protocol: u8) -> Option<Vec<u8>> {
        let Ok(query) = message::parse_query(bytes) else {
            return message::format_error(bytes);
        };
        let reply = self.reply(&query, peer, protocol);
        let counter = match reply {
            Reply::Answered(_) => &self.answered,
            Reply::Refused(_) | Reply::Observed(_) => &self.refused,
            Reply::Failed(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(match reply {
            Reply::Answered(bytes)
            | Reply::Refused(bytes)
            | Reply::Observed(bytes)
            | Reply::Failed(bytes) => bytes,
        })
    }

    /// The reply to one question.
    fn reply(&self, query: &Query, peer: SocketAddr, protocol: u8) -> Reply {
        let rules = match self.names.read() {
            Ok(names) => matching_rules(&names.hosts, &query.name),
            Err(_) => return Reply::Failed(message::servfail(query)),
        };
        if rules.is_empty() {
            self.record_refusal(query, peer, protocol);
            if !self.observe {
                return Reply::Refused(message::refused(query));
            }
        }
        let Some((answer, parsed)) = self.ask_upstream(query, protocol) else {
            return Reply::Failed(message::servfail(query));
        };
        if rules.is_empty() {
            self.remember(&query.name, &parsed.addresses);
            return Reply::Observed(message::with_id(&answer, query.id));
        }
        if let Err(e) = self.commit(&query.name, &rules, &parsed.addresses) {
            tracing::warn!(
                instance = %self.instance,
                name = %query.name,
                "resolver: the answer's addresses could not be admitted ({e}); the instance gets SERVFAIL"
            );
            return Reply::Failed(message::servfail(query));
        }
        Reply::Answered(message::with_id(&answer, query.id))
    }

    /// Counts and records a question the policy does not allow.
    fn record_refusal(&self, query: &Query, peer: SocketAddr, protocol: u8) {
        let family = if peer.is_ipv6() { FAMILY_V6 } else { FAMILY_V4 };
        tracing::debug!(instance = %self.instance, name = %query.name, "resolver: refused");
        if let Ok(mut admitted) = self.admitted.lock()
            && let Some(bpf) = admitted.bpf.as_mut()
        {
            let key = CounterKey {
                uid: self.uid,
                family,
                protocol,
                hook: HOOK_DNS,
                _pad: 0,
            };
            if let Err(e) = bpf.count(key) {
                tracing::warn!(instance = %self.instance, "resolver: count a refusal: {e}");
            }
        }
        let attempt = BlockedAttempt {
            timestamp_ns: u64::try_from(boot_clock().as_nanos()).unwrap_or(0),
            uid: self.uid,
            pid: 0,
            comm: String::new(),
            destination: peer.ip(),
            port: 53,
            protocol: crate::bpf::protocol_name(protocol),
            hook: "dns",
            unix: None,
            host: Some(query.name.clone()),
            record_type: Some(query.record_type.clone()),
        };
        let _ = self.refusals.send(attempt);
    }

    /// The upstream's answer to `query`, as sent and as read.
    fn ask_upstream(&self, query: &Query, protocol: u8) -> Option<(Vec<u8>, message::Answer)> {
        let answer = self.forward(query, protocol)?;
        match message::parse_answer(query, &answer) {
            Ok(parsed) => Some((answer, parsed)),
            Err(e) => {
                tracing::warn!(instance = %self.instance, name = %query.name, "resolver: upstream answer: {e}");
                None
            }
        }
    }

    /// Observing: remembers that `addresses` were answered for `name` (which the policy does
    /// not list), as long as they would be admitted. Addresses a name never opens are left to
    /// be named by their address; past `MAX_ADDRESSES_PER_INSTANCE`, new ones go unnamed.
    fn remember(&self, name: &str, addresses: &[(IpAddr, u32)]) {
        let Ok(mut observed) = self.observed.lock() else {
            return;
        };
        let now = boot_clock();
        for &(addr, ttl) in addresses.iter().take(MAX_ADDRESSES_PER_ANSWER) {
            let addr = addr.to_canonical();
            let key = (name.to_owned(), addr);
            if never_admitted(addr).is_some()
                || (observed.len() >= MAX_ADDRESSES_PER_INSTANCE && !observed.contains_key(&key))
            {
                continue;
            }
            let until = now + lifetime(ttl);
            let held = observed.entry(key).or_default();
            *held = (*held).max(until);
        }
    }

    /// Asks the upstreams in turn; the first answer wins.
    fn forward(&self, query: &Query, protocol: u8) -> Option<Vec<u8>> {
        let upstreams = match self.names.read() {
            Ok(names) => names.upstreams.clone(),
            Err(_) => return None,
        };
        for upstream in &upstreams {
            let asked = if protocol == PROTO_TCP {
                ask_tcp(query, *upstream)
            } else {
                ask_udp(query, *upstream)
            };
            match asked {
                Ok(answer) => return Some(answer),
                Err(e) => tracing::warn!(
                    instance = %self.instance,
                    name = %query.name,
                    %upstream,
                    "resolver: upstream: {e}"
                ),
            }
        }
        None
    }

    /// Admits `addresses` (answered for `name`) under each of `rules`, in every layer.
    fn commit(
        &self,
        name: &str,
        rules: &[usize],
        addresses: &[(IpAddr, u32)],
    ) -> Result<(), String> {
        let hosts = self.hosts()?;
        let mut admitted = self.admitted.lock().map_err(|_| POISONED.to_owned())?;
        let now = boot_clock();
        let mut admissions = Vec::new();
        for &(addr, ttl) in addresses.iter().take(MAX_ADDRESSES_PER_ANSWER) {
            let addr = addr.to_canonical();
            if let Some(why) = never_admitted(addr) {
                tracing::warn!(instance = %self.instance, name, %addr, "resolver: not admitted: a name never opens a {why} address");
                continue;
            }
            let key = (name.to_owned(), addr);
            let until = admitted
                .until
                .get(&key)
                .copied()
                .unwrap_or_default()
                .max(now + lifetime(ttl));
            admissions.push((key, until));
        }
        let live = |of_name: bool| {
            admitted
                .until
                .iter()
                .filter(|((held_for, _), until)| **until > now && (!of_name || held_for == name))
                .count()
        };
        let new = admissions
            .iter()
            .filter(|(key, _)| !admitted.until.contains_key(key))
            .count();
        for (held, limit, whose) in [
            (live(true), MAX_ADDRESSES_PER_NAME, "the name"),
            (live(false), MAX_ADDRESSES_PER_INSTANCE, "the instance"),
        ] {
            if held + new > limit {
                return Err(format!(
                    "{whose} holds {held} admitted addresses, at most {limit}"
                ));
            }
        }
        let mut elements = Vec::new();
        for ((_, addr), until) in &admissions {
            for &rule in rules {
                elements.push((rule, *addr, *until));
            }
        }
        self.write(&mut admitted, &hosts, &elements, now)?;
        admitted.until.extend(admissions);
        Ok(())
    }

    /// The host rules in force.
    fn hosts(&self) -> Result<Vec<HostRule>, String> {
        Ok(self
            .names
            .read()
            .map_err(|_| POISONED.to_owned())?
            .hosts
            .clone())
    }

    /// See [`Resolver::recommit`].
    fn recommit(&self) -> Result<(), String> {
        let hosts = self.hosts()?;
        let mut admitted = self.admitted.lock().map_err(|_| POISONED.to_owned())?;
        let now = boot_clock();
        admitted
            .until
            .retain(|(name, _), until| *until > now && !matching_rules(&hosts, name).is_empty());
        let mut elements = Vec::new();
        for ((name, addr), until) in &admitted.until {
            for rule in matching_rules(&hosts, name) {
                elements.push((rule, *addr, *until));
            }
        }
        if self.nft {
            nft::admit(&self.instance, &host_elements(&hosts, &elements, now))
                .map_err(|e| e.to_string())?;
        }
        // The host maps get fresh values: rules of old host indices must not linger.
        if let Some(bpf) = admitted.bpf.as_mut() {
            let admissions: Vec<(IpAddr, HostPorts, Duration)> = elements
                .iter()
                .map(|&(rule, addr, until)| (addr, HostPorts::of(&hosts[rule]), until))
                .collect();
            bpf.replace(self.uid, &admissions)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Writes (host rule, address, until) admissions into every layer: nftables first (one
    /// transaction), then the eBPF host maps.
    fn write(
        &self,
        admitted: &mut Admitted,
        hosts: &[HostRule],
        elements: &[(usize, IpAddr, Duration)],
        now: Duration,
    ) -> Result<(), String> {
        if self.nft {
            nft::admit(&self.instance, &host_elements(hosts, elements, now))
                .map_err(|e| e.to_string())?;
        }
        if let Some(bpf) = admitted.bpf.as_mut() {
            for &(rule, addr, until) in elements {
                bpf.admit(self.uid, addr, HostPorts::of(&hosts[rule]), until)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Forgets what has expired, every `SWEEP_EVERY`.
    fn sweep(&self) {
        let Ok(mut admitted) = self.admitted.lock() else {
            return;
        };
        if admitted
            .last_sweep
            .is_some_and(|at| at.elapsed() < SWEEP_EVERY)
        {
            return;
        }
        admitted.last_sweep = Some(Instant::now());
        let now = boot_clock();
        admitted.until.retain(|_, until| *until > now);
        if let Ok(mut observed) = self.observed.lock() {
            observed.retain(|_, until| *until > now);
        }
        if let Some(bpf) = admitted.bpf.as_mut()
            && let Err(e) = bpf.remove_expired(self.uid, now)
        {
            tracing::warn!(instance = %self.instance, "resolver: sweep: {e}");
        }
    }
}

const POISONED: &str = "a resolver thread panicked";

/// How long an answer with `ttl` (seconds) keeps its addresses admitted.
fn lifetime(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl)).clamp(TTL_FLOOR, TTL_CAP) + GRACE
}

/// (host rule, address, until) admissions as nftables set elements with their timeouts.
fn host_elements(
    hosts: &[HostRule],
    elements: &[(usize, IpAddr, Duration)],
    now: Duration,
) -> Vec<HostElement> {
    elements
        .iter()
        .map(|&(rule, addr, until)| HostElement {
            set: nft::host_set_name(addr.is_ipv6(), &hosts[rule]),
            addr,
            timeout_secs: u32::try_from(until.saturating_sub(now).as_secs()).unwrap_or(u32::MAX),
        })
        .collect()
}

/// Whether `e` says the host has no IPv6 loopback (IPv6 disabled, or no `::1`).
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A fresh query id for the upstream: answers with another id are not ours.
fn fresh_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: the buffer is valid for its length.
    let filled = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if filled != 2 {
        // Unpredictable enough where getrandom is missing: the clock's nanoseconds.
        return u16::try_from(boot_clock().subsec_nanos() & 0xffff).unwrap_or(0);
    }
    u16::from_ne_bytes(id)
}

fn ask_udp(query: &Query, upstream: IpAddr) -> io::Result<Vec<u8>> {
    let id = fresh_id();
    let bind: SocketAddr = match upstream {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect((upstream, 53))?;
    socket.send(&message::upstream_query(query, id))?;
    let deadline = Instant::now() + UPSTREAM_TIMEOUT;
    let mut buf = vec![0u8; 65535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        socket.set_read_timeout(Some(left))?;
        let len = socket.recv(&mut buf)?;
        // A connected socket only hears its peer; the id tells our answer from a stray one.
        if message::answer_id(&buf[..len]) == Some(id) {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

fn ask_tcp(query: &Query, upstream: IpAddr) -> io::Result<Vec<u8>> {
    let id = fresh_id();
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(upstream, 53), UPSTREAM_TIMEOUT)?;
    stream.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    write_framed(&mut stream, &message::upstream_query(query, id))?;
    let answer = read_framed(&mut stream)?;
    if message::answer_id(&answer) == Some(id) {
        Ok(answer)
    } else {
        Err(io::Error::other("an answer to another question"))
    }
}

fn read_framed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message)?;
    Ok(message)
}

fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{self, Message, MessageType, OpCode};
    use hickory_proto::rr::{Name, RecordType};
    use isolate_policy::Protocol;

    /// A resolver that admits into no layer and has no upstream, and where its refusals go.
    fn resolver(hosts: &[&str]) -> (Resolver, std::sync::mpsc::Receiver<BlockedAttempt>) {
        let (refusals, refused) = std::sync::mpsc::channel();
        let service = Service {
            instance: "test".into(),
            uid: 4242,
            hosts: hosts
                .iter()
                .map(|pattern| HostRule {
                    pattern: (*pattern).into(),
                    ports: None,
                    protocol: Protocol::Any,
                })
                .collect(),
            upstreams: Vec::new(),
            layers: Layers {
                bpf: None,
                nft: false,
            },
            refusals,
            observe: false,
        };
        (Listener::bind().unwrap().serve(service).unwrap(), refused)
    }

    fn ask(resolver: &Resolver, name: &str) -> u8 {
        let mut message = Message::new();
        message
            .set_id(7)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(op::Query::query(
                Name::from_ascii(name).unwrap(),
                RecordType::A,
            ));
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
            .send_to(
                &message.to_vec().unwrap(),
                (Ipv4Addr::LOCALHOST, resolver.endpoint().port),
            )
            .unwrap();
        let mut reply = [0u8; 512];
        let len = socket.recv(&mut reply).unwrap();
        assert!(len >= 12 && reply[..2] == [0, 7], "a reply to our question");
        // The response code: the low four bits of the fourth header byte.
        reply[3] & 0x0f
    }

    #[test]
    fn an_unlisted_name_is_refused_and_reported_a_listed_one_without_upstream_fails() {
        let (resolver, refused) = resolver(&["api.example.test", "*.wild.test"]);
        assert_eq!(ask(&resolver, "evil.test."), 5, "REFUSED");
        let attempt = refused.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(attempt.what(), "dns evil.test A");
        assert_eq!((attempt.uid, attempt.hook), (4242, "dns"));
        assert_eq!(ask(&resolver, "x.wild.test."), 2, "SERVFAIL: no upstream");
        assert!(refused.try_recv().is_err(), "a listed name is no refusal");
        let report = resolver.reporter().report();
        assert_eq!((report.answered, report.refused, report.failed), (0, 1, 1));
    }

    #[test]
    fn a_name_holds_at_most_its_share_of_addresses() {
        let (resolver, _refused) = resolver(&["rotating.test"]);
        let answer = |round: u8| -> Vec<(IpAddr, u32)> {
            (0..64)
                .map(|i| (IpAddr::V4(Ipv4Addr::new(198, 51, round, i)), 60))
                .collect()
        };
        let commit = |round| {
            resolver
                .shared
                .commit("rotating.test", &[0], &answer(round))
        };
        for round in 0..4 {
            commit(round).unwrap();
        }
        // The same answer again refreshes what the name holds; a fifth new one is too many.
        commit(3).unwrap();
        let refused = commit(4).unwrap_err();
        assert!(refused.contains("the name holds 256"), "{refused}");
        assert_eq!(resolver.reporter().report().admitted.len(), 256);
    }

    #[test]
    fn an_observed_name_names_its_addresses_after_an_admitted_one_and_never_a_loopback() {
        let (resolver, _refused) = resolver(&["listed.test"]);
        let shared = &resolver.shared;
        let (both, observed_only, loopback) = (
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        );
        shared.commit("listed.test", &[0], &[(both, 60)]).unwrap();
        shared.remember(
            "unlisted.test",
            &[(both, 60), (observed_only, 60), (loopback, 60)],
        );
        assert_eq!(resolver.name_of(both).as_deref(), Some("listed.test"));
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 2).to_ipv6_mapped());
        assert_eq!(resolver.name_of(mapped).as_deref(), Some("unlisted.test"));
        assert_eq!(
            resolver.name_of(loopback),
            None,
            "a name never opens loopback"
        );
        let admitted = resolver.reporter().report().admitted;
        assert_eq!(admitted.len(), 1, "observed is not admitted: {admitted:?}");
    }

    #[test]
    fn tcp_connections_beyond_the_cap_are_closed() {
        let (resolver, _refused) = resolver(&[]);
        let addr = (Ipv4Addr::LOCALHOST, resolver.endpoint().port);
        let held: Vec<TcpStream> = (0..MAX_TCP_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        // The resolver takes them in (it polls its listener).
        let started = Instant::now();
        while resolver.shared.connections.load(Ordering::Relaxed) < MAX_TCP_CONNECTIONS {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "connections served"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(extra.read(&mut buf).unwrap(), 0, "closed at once");
        drop(held);
    }
}
