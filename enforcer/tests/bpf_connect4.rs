//! The eBPF chain end to end: the embedded `connect4` program, attached to a fresh child cgroup
//! (never the root cgroup on the host), refuses a destination outside the confined UID's policy
//! with EPERM at once, lets an allowed one through, leaves other UIDs alone, and counts.
//!
//! Runs inside a private network namespace so no packet can leave the machine. With
//! `ISOLATE_IN_VM=1` (the VM suite) it attaches at the root cgroup instead, as production does.
//!
//! This binary is also its own client: `bpf_connect4 probe tcp ADDR:PORT` connects and exits
//! with 0 or the errno, so the client can be started as another UID inside the cgroup.

use std::ffi::CString;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use isolate_ebpf_common::{CounterKey, FAMILY_V4, LAYER_CONNECT, PROTO_TCP};
use isolate_enforcer::bpf::{BpfLayer, compile};
use isolate_enforcer::cgroup::{Cgroup, cgroup2_mount};
use isolate_policy::{NetRule, PortRange, Protocol};

const CONFINED_UID: u32 = 65534;
const OTHER_UID: u32 = 65533;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        return probe(&args[2..]);
    }
    if args.iter().any(|a| a == "--list") {
        // cargo test --list: one test.
        println!("connect4_refuses_forbidden_destinations: test");
        return ExitCode::SUCCESS;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "bpf_connect4 needs root (it loads eBPF programs); run it through `cargo xtask test`"
    );
    // Namespaces belong to the thread: the whole test runs in one that has its own network.
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        bring_up_loopback();
        connect4_refuses_forbidden_destinations();
    })
    .join()
    .expect("test thread panicked");
    println!("test result: ok. 1 passed; 0 failed");
    ExitCode::SUCCESS
}

fn connect4_refuses_forbidden_destinations() {
    let in_vm = std::env::var_os("ISOLATE_IN_VM").is_some();
    let mount = cgroup2_mount().expect("cgroup2 mount");
    let cgroup = Cgroup::create(&mount, &format!("isolate-test-{}", std::process::id()))
        .expect("child cgroup");

    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let wrong_port = TcpListener::bind("127.0.0.1:0").unwrap();
    let wrong_addr = TcpListener::bind("127.0.0.2:0").unwrap();
    for l in [&allowed, &wrong_port, &wrong_addr] {
        l.set_nonblocking(true).unwrap();
    }
    let allowed_port = allowed.local_addr().unwrap().port();

    let mut layer = BpfLayer::load().expect("load eBPF object");
    if in_vm {
        let root = std::fs::File::open(&mount).unwrap();
        layer.attach(&root).expect("attach at the root cgroup");
    } else {
        layer.attach(cgroup.open().unwrap()).expect("attach to child cgroup");
    }
    let rules = compile(&[NetRule {
        net: "127.0.0.1/32".parse().unwrap(),
        ports: Some(PortRange {
            first: allowed_port,
            last: allowed_port,
        }),
        protocol: Protocol::Tcp,
    }])
    .unwrap();
    layer.apply_instance(CONFINED_UID, &rules).expect("apply policy");

    let target = |l: &TcpListener| l.local_addr().unwrap();
    assert_eq!(run_probe(&cgroup, CONFINED_UID, target(&allowed)).0, 0, "allowed connect");
    accept_one(&allowed).expect("the allowed listener got the connection");

    for listener in [&wrong_port, &wrong_addr] {
        let (code, elapsed) = run_probe(&cgroup, CONFINED_UID, target(listener));
        assert_eq!(code, libc::EPERM, "{} must be refused with EPERM", target(listener));
        assert!(
            elapsed < Duration::from_secs(2),
            "refusal must be immediate, took {elapsed:?}"
        );
        assert!(
            accept_one(listener).is_none(),
            "blocked listener {} received a connection",
            target(listener)
        );
    }

    let (code, _) = run_probe(&cgroup, OTHER_UID, target(&wrong_port));
    assert_eq!(code, 0, "a UID without policy is not touched");
    accept_one(&wrong_port).expect("unconfined UID reached its destination");

    let counts = layer.blocked_counts(CONFINED_UID).unwrap();
    let key = CounterKey {
        uid: CONFINED_UID,
        family: FAMILY_V4,
        protocol: PROTO_TCP,
        layer: LAYER_CONNECT,
        _pad: 0,
    };
    assert_eq!(counts.get(&key), Some(&2), "exactly the two blocked attempts are counted: {counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 2, "nothing else counted: {counts:?}");

    layer.remove_instance(CONFINED_UID).unwrap();
    assert_eq!(run_probe(&cgroup, CONFINED_UID, target(&wrong_port)).0, 0, "removal lifts the policy");
    drop(layer);
    cgroup.remove().expect("remove test cgroup");
}

/// Runs this binary in `probe` mode as `uid`, inside `cgroup`, and returns its exit code
/// (0 or the errno of the failed connect) and how long it took.
fn run_probe(cgroup: &Cgroup, uid: u32, target: SocketAddr) -> (i32, Duration) {
    let procs = CString::new(cgroup.path().join("cgroup.procs").into_os_string().into_encoded_bytes())
        .unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["probe", "tcp", &target.to_string()]);
    // SAFETY: only async-signal-safe libc calls between fork and exec; the path was prepared
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let status = cmd.status().expect("run probe");
    (status.code().expect("probe exited"), started.elapsed())
}

fn probe(args: &[String]) -> ExitCode {
    let [proto, target] = args else {
        eprintln!("usage: probe tcp ADDR:PORT");
        return ExitCode::from(100);
    };
    assert_eq!(proto, "tcp", "only tcp probes so far");
    let target: SocketAddr = target.parse().expect("ADDR:PORT");
    match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe: connect {target}: {e}");
            ExitCode::from(e.raw_os_error().map_or(101, |c| c as u8))
        }
    }
}

/// Accepts a pending connection, if any arrived.
fn accept_one(listener: &TcpListener) -> Option<TcpStream> {
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

/// A new network namespace has `lo` down; `ip link set lo up` without needing iproute2.
fn bring_up_loopback() {
    // SAFETY: plain ioctls on a fresh socket with a zeroed, correctly named ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(sock >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req), 0, "SIOCGIFFLAGS");
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(sock, libc::SIOCSIFFLAGS, &req), 0, "SIOCSIFFLAGS");
        libc::close(sock);
    }
}
