//! A client running as another UID: the test binary re-executed as
//! `<binary> uid-client tcp|udp|icmp ADDR`, with its groups and IDs switched before exec (no cgroup:
//! the nftables layer matches the socket's UID). It inherits the calling thread's network
//! namespace. Exit code: 0 on success, `TIMED_OUT` when a TCP connect got no answer, else the
//! errno of the failed call.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, ExitCode};
use std::time::Duration;

/// What a connect that nobody answered exits with (`ETIMEDOUT`).
pub const TIMED_OUT: i32 = libc::ETIMEDOUT;

/// Short: a dropped SYN is never answered, and an allowed connect over loopback takes
/// microseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Tcp,
    /// One datagram, `sendto` on an unconnected socket.
    Udp,
    /// One echo request from a ping socket (the port is ignored); needs `ping_group_range`.
    Icmp,
}

/// Runs the client as `uid` against `target`; returns its exit code.
pub fn run(uid: u32, mode: Mode, target: SocketAddr) -> i32 {
    let mode = match mode {
        Mode::Tcp => "tcp",
        Mode::Udp => "udp",
        Mode::Icmp => "icmp",
    };
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["uid-client", mode, &target.to_string()]);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().expect("start the uid client");
    status.code().expect("the uid client exited normally")
}

/// The client side, in the re-executed process; `None` when this process is not the client.
pub fn main_if_client() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("uid-client") {
        return None;
    }
    let target: SocketAddr = args[2].parse().expect("ADDR:PORT");
    let result = match args[1].as_str() {
        "tcp" => TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).map(drop),
        "udp" => {
            let any = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            UdpSocket::bind(any).and_then(|s| s.send_to(b"probe", target).map(drop))
        }
        "icmp" => icmp_echo(target),
        other => panic!("uid-client: unknown mode {other}"),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == ErrorKind::TimedOut => exit(TIMED_OUT),
        Err(e) => exit(e.raw_os_error().unwrap_or(101)),
    })
}

fn icmp_echo(target: SocketAddr) -> std::io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, sendto,
        socket,
    };
    use std::os::fd::AsRawFd;

    // Type, code, checksum (the kernel fills it in for ping sockets), identifier, sequence.
    let (family, protocol, echo_request) = match target {
        SocketAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8),
        SocketAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128),
    };
    let packet = [echo_request, 0, 0, 0, 0, 0, 0, 1];
    let fd = socket(family, SockType::Datagram, SockFlag::empty(), protocol)?;
    let fd = fd.as_raw_fd();
    match target {
        SocketAddr::V4(a) => sendto(fd, &packet, &SockaddrIn::from(a), MsgFlags::empty()),
        SocketAddr::V6(a) => sendto(fd, &packet, &SockaddrIn6::from(a), MsgFlags::empty()),
    }?;
    Ok(())
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(102))
}
