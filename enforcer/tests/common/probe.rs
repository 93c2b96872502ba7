//! The confined client: the test binary re-executed as `<binary> probe MODE ADDR…`, so that it
//! can run as another UID inside the sandbox's cgroup. It exits with 0 on success or with the
//! errno of the refused call; `loop` mode reports whether every attempt went as expected.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::sandbox::Sandbox;

/// How the client reaches its destination.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Tcp,
    /// `connect` a UDP socket, then `send`.
    UdpConnect,
    /// `sendto` on an unconnected UDP socket.
    UdpSendto,
    /// An ICMP echo request from an unprivileged ping socket (the port is ignored).
    IcmpSendto,
}

impl Mode {
    fn as_arg(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::UdpConnect => "udp-connect",
            Mode::UdpSendto => "udp-sendto",
            Mode::IcmpSendto => "icmp-sendto",
        }
    }
}

/// The outcome of one probe run.
#[derive(Debug)]
pub struct Outcome {
    /// 0, or the errno of the refused call.
    pub code: i32,
    pub pid: u32,
    pub elapsed: Duration,
}

/// Runs the client as `uid` in `sandbox`.
pub fn run(sandbox: &Sandbox, uid: u32, mode: Mode, target: SocketAddr) -> Outcome {
    run_in(sandbox.cgroup.path(), uid, mode, target)
}

/// Runs the client as `uid` in `cgroup`.
pub fn run_in(cgroup: &std::path::Path, uid: u32, mode: Mode, target: SocketAddr) -> Outcome {
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut child = super::sandbox::command_in(cgroup, uid, &exe)
        .args(["probe", mode.as_arg(), &target.to_string()])
        .spawn()
        .expect("start probe");
    let pid = child.id();
    let status = child.wait().expect("wait for probe");
    Outcome {
        code: status.code().expect("probe exited normally"),
        pid,
        elapsed: started.elapsed(),
    }
}

/// Runs `loop` mode as `uid`: `rounds` times, connect to `allowed` (must succeed) and to
/// `forbidden` (must be refused with EPERM). Returns whether every attempt went so.
pub fn run_loop(
    cgroup: &std::path::Path,
    uid: u32,
    allowed: SocketAddr,
    forbidden: SocketAddr,
    rounds: u32,
) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    super::sandbox::command_in(cgroup, uid, &exe)
        .args([
            "probe",
            "loop",
            &allowed.to_string(),
            &forbidden.to_string(),
            &rounds.to_string(),
        ])
        .spawn()
        .expect("start probe loop")
}

/// Starts `flood` mode as `uid`: connects to `forbidden` as fast as it can for `seconds`, each
/// connect expected to be refused with EPERM; prints how many were (see [`flood_count`]).
pub fn start_flood(
    cgroup: &std::path::Path,
    uid: u32,
    forbidden: SocketAddr,
    seconds: u32,
) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    super::sandbox::command_in(cgroup, uid, &exe)
        .args([
            "probe",
            "flood",
            &forbidden.to_string(),
            &seconds.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start probe flood")
}

/// The refused connects of a flood started by [`start_flood`], once it ends; panics when any
/// connect went otherwise.
pub fn flood_count(flood: std::process::Child) -> u64 {
    let out = flood.wait_with_output().expect("wait for probe flood");
    assert!(
        out.status.success(),
        "the flood's connects were not all refused"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("probe flood prints its count")
}

/// The client side, in the re-executed process. `None` when this process is not a probe.
pub fn main_if_probe() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("probe") {
        return None;
    }
    let addr = |i: usize| -> SocketAddr { args[i].parse().expect("ADDR:PORT") };
    let result = match args.get(1).map(String::as_str) {
        Some("tcp") => TcpStream::connect_timeout(&addr(2), Duration::from_secs(5)).map(drop),
        Some("udp-connect") => udp_socket_for(addr(2)).and_then(|s| {
            s.connect(addr(2))?;
            s.send(b"probe").map(drop)
        }),
        Some("udp-sendto") => {
            udp_socket_for(addr(2)).and_then(|s| s.send_to(b"probe", addr(2)).map(drop))
        }
        Some("icmp-sendto") => icmp_echo(addr(2)),
        Some("loop") => return Some(connect_loop(addr(2), addr(3), args[4].parse().unwrap())),
        Some("flood") => return Some(flood(addr(2), args[3].parse().unwrap())),
        Some("serve") => serve(&args[2], &args[3]),
        Some("udp-source-routed") => {
            return Some(udp_source_routed(
                addr(2),
                args[3].parse().expect("first hop"),
            ));
        }
        _ => panic!(
            "usage: probe tcp|udp-connect|udp-sendto ADDR | probe loop OK BAD N | \
             probe serve tcp|udp|tcp-autobind ADDR"
        ),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe: {} {}: {e}", args[1], args[2]);
            ExitCode::from(
                e.raw_os_error()
                    .map_or(101, |c| u8::try_from(c).unwrap_or(102)),
            )
        }
    })
}

/// What `udp-source-routed` exits with when the kernel refuses the source route itself.
pub const SOURCE_ROUTE_REFUSED: u8 = 200;

/// One datagram to `target` on a socket whose IPv4 options carry a loose source route through
/// `first_hop` (`IP_OPTIONS`, LSRR): the kernel sends it to the first hop, not to `target`.
/// Exits 0 when sent, the errno of `sendto` when refused, or [`SOURCE_ROUTE_REFUSED`].
fn udp_source_routed(target: SocketAddr, first_hop: std::net::Ipv4Addr) -> ExitCode {
    use std::os::fd::AsRawFd as _;
    let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    // NOP, then LSRR: type 0x83, length 7, pointer 4, one address.
    let mut options = [1u8, 0x83, 7, 4, 0, 0, 0, 0];
    options[4..].copy_from_slice(&first_hop.octets());
    // SAFETY: a plain setsockopt with a buffer of the stated length.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            options.as_ptr().cast(),
            options.len() as libc::socklen_t,
        )
    };
    if set != 0 {
        eprintln!("probe: IP_OPTIONS: {}", std::io::Error::last_os_error());
        return ExitCode::from(SOURCE_ROUTE_REFUSED);
    }
    match socket.send_to(b"probe", target) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(
            e.raw_os_error()
                .map_or(101, |c| u8::try_from(c).unwrap_or(102)),
        ),
    }
}

/// How a confined server waits for what the test sends it.
const SERVE_WAIT: Duration = Duration::from_secs(2);

/// The confined server: binds `addr` (`tcp`, `udp`) or listens without binding
/// (`tcp-autobind`: the kernel picks an ephemeral port and no bind hook runs; `addr` gives
/// only the family), prints its local address on stdout, then waits [`SERVE_WAIT`] for one
/// connection or datagram. `ETIMEDOUT` when none arrived; the bind's errno when refused.
fn serve(kind: &str, addr: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let addr: SocketAddr = addr.parse().expect("ADDR:PORT");
    let announce = |local: SocketAddr| {
        println!("{local}");
        std::io::stdout().flush()
    };
    let timed_out = || std::io::Error::from_raw_os_error(libc::ETIMEDOUT);
    match kind {
        "tcp" | "tcp-autobind" => {
            let listener = if kind == "tcp" {
                TcpListener::bind(addr)?
            } else {
                listen_unbound(addr.is_ipv4())?
            };
            announce(listener.local_addr()?)?;
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + SERVE_WAIT;
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(timed_out())
        }
        "udp" => {
            let socket = UdpSocket::bind(addr)?;
            announce(socket.local_addr()?)?;
            socket.set_read_timeout(Some(SERVE_WAIT))?;
            let mut buf = [0u8; 64];
            match socket.recv_from(&mut buf) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Err(timed_out()),
                Err(e) => Err(e),
            }
        }
        other => panic!("probe serve: unknown kind {other}"),
    }
}

/// `listen()` on a TCP socket that was never bound.
fn listen_unbound(ipv4: bool) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd as _;
    let family = if ipv4 { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls; the descriptor is owned by the listener (or closed) below.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::listen(fd, 16) != 0 {
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(error);
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

/// A confined server started by [`start_server`]: where it listens, and its outcome.
pub struct Server {
    pub child: std::process::Child,
    pub local: SocketAddr,
}

impl Server {
    /// The server's exit code: 0 when it got a connection or datagram.
    pub fn outcome(mut self) -> i32 {
        self.child
            .wait()
            .unwrap()
            .code()
            .expect("server exited normally")
    }
}

/// Starts `probe serve KIND ADDR` as `uid` in `cgroup`; `Err(errno)` when it could not bind.
pub fn start_server(
    cgroup: &std::path::Path,
    uid: u32,
    kind: &str,
    addr: &str,
) -> Result<Server, i32> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().unwrap();
    let mut child = super::sandbox::command_in(cgroup, uid, &exe)
        .args(["probe", "serve", kind, addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start probe server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim().is_empty() {
        let status = child.wait().unwrap();
        return Err(status.code().expect("server exited normally"));
    }
    Ok(Server {
        child,
        local: line.trim().parse().expect("the server's address"),
    })
}

/// Sends one echo request from a ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`).
fn icmp_echo(target: SocketAddr) -> std::io::Result<()> {
    let SocketAddr::V4(target) = target else {
        return Err(std::io::Error::other("icmp probes are IPv4 only"));
    };
    // SAFETY: a plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // type 8 (echo request), code 0, checksum (the kernel fills it for ping sockets), id, seq.
    let packet = [8u8, 0, 0, 0, 0, 0, 0, 1];
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid buffer and address of the stated lengths.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let result = if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    result
}

fn udp_socket_for(target: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
}

fn connect_loop(allowed: SocketAddr, forbidden: SocketAddr, rounds: u32) -> ExitCode {
    let mut wrong = 0;
    for round in 0..rounds {
        if let Err(e) = TcpStream::connect_timeout(&allowed, Duration::from_secs(5)) {
            eprintln!("round {round}: allowed {allowed} failed: {e}");
            wrong += 1;
        }
        match TcpStream::connect_timeout(&forbidden, Duration::from_secs(5)) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => {
                eprintln!("round {round}: forbidden {forbidden} was not refused: {other:?}");
                wrong += 1;
            }
        }
    }
    if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn flood(forbidden: SocketAddr, seconds: u64) -> ExitCode {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut refused: u64 = 0;
    while Instant::now() < until {
        match TcpStream::connect_timeout(&forbidden, Duration::from_secs(5)) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => refused += 1,
            other => {
                eprintln!("flood: {forbidden} was not refused: {other:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{refused}");
    ExitCode::SUCCESS
}

/// Accepts a pending TCP connection on a non-blocking listener, if one arrived.
pub fn accept_one(listener: &TcpListener) -> Option<TcpStream> {
    listener.set_nonblocking(true).unwrap();
    for _ in 0..20 {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

/// Whether a datagram has arrived on `socket`.
pub fn received(socket: &UdpSocket) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16];
    socket.recv_from(&mut buf).is_ok()
}
