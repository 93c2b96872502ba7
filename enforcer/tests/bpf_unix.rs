//! The unix-socket allowlist of the eBPF layer end to end on the running kernel: isolate's
//! programs attached for a child cgroup (never the root cgroup on the host; the BPF LSM
//! programs attach system-wide but judge only the confined UID in that cgroup), real
//! listeners bound by root in a temporary directory (mode 0777, so only the policy decides),
//! and a client re-executed as the confined UID.

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::sandbox::{Sandbox, loaded_isolate_programs, still_loaded_after_grace};
use isolate_ebpf_common::{CounterKey, FAMILY_UNIX, HOOK_UNIX, PROTO_DGRAM, PROTO_STREAM};
use isolate_enforcer::bpf::{BpfError, BpfLayer, CompiledRules, UnixPeer, UnixSupport};

// Neither bpf_egress's nor nft_layer's: their programs may be attached at the same time.
const CONFINED: u32 = 65529;
const OTHER: u32 = 65528;

fn main() -> ExitCode {
    if let Some(code) = unix_probe() {
        return code;
    }
    let tests: &[common::Test] = &[
        (
            "allowed_socket_connects_and_others_are_refused",
            allowed_and_refused,
        ),
        ("symlinks_are_judged_by_the_socket_they_reach", symlinks),
        (
            "relative_paths_are_judged_like_absolute_ones",
            relative_paths,
        ),
        ("datagrams_are_judged", datagrams),
        (
            "a_server_that_recreates_its_socket_stays_allowed",
            recreated_socket,
        ),
        (
            "own_and_unnamed_sockets_pass_abstract_ones_of_others_do_not",
            own_unnamed_abstract,
        ),
        ("other_uids_are_untouched", other_uid),
        ("processes_outside_the_cgroup_are_untouched", outside_cgroup),
        ("counters_and_events_for_each_refusal", counters_and_events),
        ("policy_update_swaps_the_allowed_sockets", policy_update),
        (
            "without_the_bpf_lsm_unix_sockets_are_refused_clearly",
            without_bpf_lsm,
        ),
        (
            "other_socket_families_are_refused_counted_and_recorded",
            socket_families,
        ),
        (
            "detach_removes_the_unix_programs",
            detach_removes_everything,
        ),
    ];
    common::run_tests(tests)
}

// ---- the client, re-executed as another UID ----

/// `<exe> unix-probe stream|dgram|abstract|own TARGET [CHDIR]`: exits 0 on success or with
/// the errno of the refused call.
fn unix_probe() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("unix-probe") {
        return None;
    }
    if let Some(dir) = args.get(3) {
        std::env::set_current_dir(dir).expect("chdir");
    }
    let target = &args[2];
    let result = match args[1].as_str() {
        "stream" => UnixStream::connect(target).map(drop),
        "dgram" => UnixDatagram::unbound().and_then(|s| s.send_to(b"probe", target).map(drop)),
        "abstract" => SocketAddr::from_abstract_name(target.as_bytes())
            .and_then(|addr| UnixStream::connect_addr(&addr))
            .map(drop),
        "own" => own_sockets(Path::new(target)),
        "family" => create_socket(target.parse().expect("a family number")),
        other => panic!("unix-probe: unknown mode {other}"),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unix-probe {} {target}: {e}", args[1]);
            ExitCode::from(
                e.raw_os_error()
                    .map_or(101, |c| u8::try_from(c).unwrap_or(102)),
            )
        }
    })
}

/// `socket(family, SOCK_STREAM, 0)`.
fn create_socket(family: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a plain system call; the descriptor is closed at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
    Ok(())
}

/// The instance's own sockets: a listener it binds (pathname and abstract), datagrams to a
/// socket it bound, and a socketpair.
fn own_sockets(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!("own-{}.sock", std::process::id()));
    let listener = UnixListener::bind(&path)?;
    UnixStream::connect(&path)?;
    listener.accept()?;
    let abstract_name =
        SocketAddr::from_abstract_name(format!("isolate-own-{}", std::process::id()))?;
    let abstract_listener = UnixListener::bind_addr(&abstract_name)?;
    UnixStream::connect_addr(&abstract_name)?;
    abstract_listener.accept()?;
    let dgram_path = dir.join(format!("own-{}.dgram", std::process::id()));
    let receiver = UnixDatagram::bind(&dgram_path)?;
    UnixDatagram::unbound()?.send_to(b"own", &dgram_path)?;
    receiver.recv(&mut [0; 8])?;
    let (a, b) = UnixDatagram::pair()?;
    a.send(b"pair")?;
    b.recv(&mut [0; 8])?;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&dgram_path);
    Ok(())
}

// ---- helpers of the tests ----

#[derive(Clone, Copy, Debug)]
enum Kind {
    Stream,
    Dgram,
    Abstract,
    Own,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Dgram => "dgram",
            Kind::Abstract => "abstract",
            Kind::Own => "own",
        }
    }
}

struct Outcome {
    code: i32,
    pid: u32,
    elapsed: Duration,
}

fn finish(mut command: Command) -> Outcome {
    let started = Instant::now();
    let mut child = command.spawn().expect("start unix probe");
    let pid = child.id();
    let status = child.wait().expect("wait for unix probe");
    Outcome {
        code: status.code().expect("probe exited normally"),
        pid,
        elapsed: started.elapsed(),
    }
}

fn probe(sandbox: &Sandbox, uid: u32, kind: Kind, target: &Path, cwd: Option<&Path>) -> Outcome {
    let mut command = sandbox.command_as(uid, &std::env::current_exe().unwrap());
    command.args(["unix-probe", kind.arg()]).arg(target);
    if let Some(cwd) = cwd {
        command.arg(cwd);
    }
    finish(command)
}

fn assert_allowed(sandbox: &Sandbox, uid: u32, kind: Kind, target: &Path) {
    let outcome = probe(sandbox, uid, kind, target, None);
    assert_eq!(
        outcome.code,
        0,
        "{kind:?} to {} as uid {uid} must be allowed",
        target.display()
    );
}

fn assert_refused(sandbox: &Sandbox, kind: Kind, target: &Path) -> Outcome {
    let outcome = probe(sandbox, CONFINED, kind, target, None);
    assert_eq!(
        outcome.code,
        libc::EPERM,
        "{kind:?} to {} must be refused with EPERM",
        target.display()
    );
    assert!(
        outcome.elapsed < Duration::from_secs(2),
        "the refusal must be immediate, took {:?}",
        outcome.elapsed
    );
    outcome
}

/// A directory every UID can enter and write (so the confined client can bind its own
/// sockets there too).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("isolate-unix-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn world_writable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

fn listen(path: &Path) -> UnixListener {
    let listener = UnixListener::bind(path).unwrap();
    world_writable(path);
    listener.set_nonblocking(true).unwrap();
    listener
}

fn receiver(path: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).unwrap();
    world_writable(path);
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    socket
}

/// Whether a connection is waiting on a non-blocking listener.
fn accepted(listener: &UnixListener) -> bool {
    for _ in 0..20 {
        match listener.accept() {
            Ok(_) => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    false
}

fn received(socket: &UnixDatagram) -> bool {
    socket.recv(&mut [0u8; 16]).is_ok()
}

fn apply(sandbox: &mut Sandbox, sockets: &[&Path]) {
    let rules = CompiledRules::default().with_unix_sockets(sockets.iter().map(|p| p.to_path_buf()));
    sandbox
        .layer()
        .apply_instance(CONFINED, &rules)
        .expect("apply policy");
}

/// The sandbox, and whether this kernel can run the unix-socket programs at all (the tests
/// of enforcement are skipped, loudly, where it cannot; `without_bpf_lsm` checks the error).
fn sandbox() -> Option<Sandbox> {
    let sandbox = Sandbox::new();
    match sandbox.layer.as_ref().unwrap().unix_support() {
        UnixSupport::Enforced => Some(sandbox),
        // The VM suite's kernels (Debian's 6.1 and 6.12) run them: a skip there is a failure.
        UnixSupport::Unavailable(reason) if std::env::var_os("ISOLATE_IN_VM").is_some() => {
            panic!("unix sockets are not enforced in the VM: {reason}")
        }
        UnixSupport::Unavailable(reason) => {
            eprintln!("skipped: unix sockets are not enforced here: {reason}");
            None
        }
    }
}

// ---- the tests ----

fn allowed_and_refused() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (allowed, blocked) = (listen(&a), listen(&b));
    apply(&mut sandbox, &[&a]);

    assert_allowed(&sandbox, CONFINED, Kind::Stream, &a);
    assert!(
        accepted(&allowed),
        "the allowed listener got the connection"
    );
    assert_refused(&sandbox, Kind::Stream, &b);
    assert!(!accepted(&blocked), "the refused listener got a connection");
}

fn symlinks() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    world_writable(&real);
    let (a, b) = (real.join("a.sock"), real.join("b.sock"));
    let (allowed, blocked) = (listen(&a), listen(&b));
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    world_writable(&links);
    std::os::unix::fs::symlink(&a, links.join("to-a")).unwrap();
    std::os::unix::fs::symlink(&b, links.join("to-b")).unwrap();
    // A symlinked directory in the policy's path resolves to the real one.
    let linked_dir = dir.path().join("linked-dir");
    std::os::unix::fs::symlink(&real, &linked_dir).unwrap();
    apply(&mut sandbox, &[&linked_dir.join("a.sock")]);

    assert_allowed(&sandbox, CONFINED, Kind::Stream, &links.join("to-a"));
    assert!(accepted(&allowed));
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &a);
    assert!(accepted(&allowed));
    assert_refused(&sandbox, Kind::Stream, &links.join("to-b"));
    assert_refused(&sandbox, Kind::Stream, &linked_dir.join("b.sock"));
    assert!(!accepted(&blocked));

    // A policy naming a symlink allows the socket it points at, not the link's place.
    apply(&mut sandbox, &[&links.join("to-b")]);
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &b);
    assert!(accepted(&blocked));
    assert_refused(&sandbox, Kind::Stream, &a);
}

fn relative_paths() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (allowed, _blocked) = (listen(&a), listen(&b));
    apply(&mut sandbox, &[&a]);

    let relative = |name: &str, code: i32| {
        let outcome = probe(
            &sandbox,
            CONFINED,
            Kind::Stream,
            Path::new(name),
            Some(dir.path()),
        );
        assert_eq!(
            outcome.code,
            code,
            "connect to {name} from {}",
            dir.path().display()
        );
    };
    relative("./a.sock", 0);
    assert!(accepted(&allowed));
    relative("./b.sock", libc::EPERM);
    relative("../x/../b.sock", libc::ENOENT);
    let dir_name = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
    relative(&format!("../{dir_name}/b.sock"), libc::EPERM);
    relative(&format!("../{dir_name}/a.sock"), 0);
}

fn datagrams() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let (a, b) = (dir.path().join("a.dgram"), dir.path().join("b.dgram"));
    let (allowed, blocked) = (receiver(&a), receiver(&b));
    apply(&mut sandbox, &[&a]);

    assert_allowed(&sandbox, CONFINED, Kind::Dgram, &a);
    assert!(received(&allowed), "the allowed datagram arrived");
    assert_refused(&sandbox, Kind::Dgram, &b);
    assert!(!received(&blocked), "a refused datagram arrived");
}

fn recreated_socket() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let a = dir.path().join("a.sock");
    let first = listen(&a);
    let first_ino = std::fs::metadata(&a).unwrap().ino();
    apply(&mut sandbox, &[&a]);
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &a);
    assert!(accepted(&first));

    // The server restarts: a new socket (a new inode: the old one is kept busy under another
    // name) in the same place, and no new apply.
    std::fs::rename(&a, dir.path().join("a.sock.old")).unwrap();
    let second = listen(&a);
    assert_ne!(std::fs::metadata(&a).unwrap().ino(), first_ino);
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &a);
    assert!(accepted(&second));
    assert!(!accepted(&first));
    // The old socket, renamed, is no longer at an allowed place.
    assert_refused(&sandbox, Kind::Stream, &dir.path().join("a.sock.old"));
}

fn own_unnamed_abstract() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    apply(&mut sandbox, &[]);
    // Bound by the confined UID itself, abstract and pathname, and a socketpair.
    assert_allowed(&sandbox, CONFINED, Kind::Own, dir.path());

    // An abstract socket of another UID (root) is out of reach; another UID reaches it.
    let name = format!("isolate-test-{}", std::process::id());
    let abstract_listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    abstract_listener.set_nonblocking(true).unwrap();
    assert_refused(&sandbox, Kind::Abstract, Path::new(&name));
    assert!(!accepted(&abstract_listener));
    assert_allowed(&sandbox, OTHER, Kind::Abstract, Path::new(&name));
    assert!(accepted(&abstract_listener));
}

fn other_uid() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let b = dir.path().join("b.sock");
    let listener = listen(&b);
    let d = dir.path().join("d.dgram");
    let datagrams = receiver(&d);
    apply(&mut sandbox, &[]);
    assert_refused(&sandbox, Kind::Stream, &b);
    assert_allowed(&sandbox, OTHER, Kind::Stream, &b);
    assert!(accepted(&listener), "the unconfined UID reached its socket");
    assert_allowed(&sandbox, OTHER, Kind::Dgram, &d);
    assert!(received(&datagrams));
    assert!(
        sandbox.layer().blocked_counts(OTHER).unwrap().is_empty(),
        "an unconfined UID has no counters"
    );
}

fn outside_cgroup() {
    let Some(mut sandbox) = sandbox() else { return };
    if sandbox.attached_at != sandbox.cgroup.path() {
        // Attached at the root cgroup (the VM suite): there is no outside.
        eprintln!("skipped: attached at {}", sandbox.attached_at.display());
        return;
    }
    let dir = shared_dir();
    let b = dir.path().join("b.sock");
    let listener = listen(&b);
    apply(&mut sandbox, &[]);
    assert_refused(&sandbox, Kind::Stream, &b);

    // The same UID in this process's cgroup: the LSM programs run for it, and let it be.
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["unix-probe", "stream"]).arg(&b);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(CONFINED) != 0
                || libc::setuid(CONFINED) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert_eq!(
        finish(command).code,
        0,
        "outside the cgroup the UID is not confined"
    );
    assert!(accepted(&listener));
}

/// A socket family no other hook judges (`AF_VSOCK` reaches a VM's host) cannot be created by
/// a confined UID, in daemon mode too, where no seccomp filter is installed: refused with
/// EPERM by the BPF LSM, counted and recorded with the family's number.
fn socket_families() {
    let Some(mut sandbox) = sandbox() else { return };
    apply(&mut sandbox, &[]);
    let exe = std::env::current_exe().unwrap();
    let create = |uid: u32, family: libc::c_int| {
        sandbox
            .command_as(uid, &exe)
            .args(["unix-probe", "family", &family.to_string()])
            .status()
            .unwrap()
            .code()
            .unwrap()
    };
    assert_eq!(create(CONFINED, libc::AF_VSOCK), libc::EPERM, "AF_VSOCK");
    assert_eq!(create(CONFINED, libc::AF_INET), 0, "AF_INET");
    assert_eq!(create(CONFINED, libc::AF_UNIX), 0, "AF_UNIX");
    assert_ne!(
        create(OTHER, libc::AF_VSOCK),
        libc::EPERM,
        "another UID is untouched"
    );
    let counts = sandbox.layer().blocked_counts(CONFINED).unwrap();
    let key = CounterKey {
        uid: CONFINED,
        family: isolate_ebpf_common::FAMILY_OTHER,
        protocol: isolate_ebpf_common::PROTO_OTHER,
        hook: isolate_ebpf_common::HOOK_SOCKET,
        _pad: 0,
    };
    assert_eq!(counts[&key], 1, "{counts:?}");
    let events = sandbox.layer().events().unwrap().read();
    let event = events
        .iter()
        .find(|e| e.hook == "socket")
        .unwrap_or_else(|| panic!("no socket event: {events:?}"));
    assert_eq!(event.port, 40, "the family's number");
    assert!(
        event.to_string().contains("socket family 40 (AF_VSOCK)"),
        "{event}"
    );
}

fn counters_and_events() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (_allowed, _blocked) = (listen(&a), listen(&b));
    let d = dir.path().join("d.dgram");
    let _datagrams = receiver(&d);
    let name = format!("isolate-counted-{}", std::process::id());
    let _abstract =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    apply(&mut sandbox, &[&a]);
    assert!(sandbox.layer().events().unwrap().read().is_empty());

    let mut refused = Vec::new();
    for _ in 0..3 {
        refused.push((assert_refused(&sandbox, Kind::Stream, &b), "stream"));
    }
    for _ in 0..2 {
        refused.push((assert_refused(&sandbox, Kind::Dgram, &d), "dgram"));
    }
    let abstract_outcome = assert_refused(&sandbox, Kind::Abstract, Path::new(&name));
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &a);
    assert_allowed(&sandbox, OTHER, Kind::Stream, &b);

    let counts = sandbox.layer().blocked_counts(CONFINED).unwrap();
    let key = |protocol| CounterKey {
        uid: CONFINED,
        family: FAMILY_UNIX,
        protocol,
        hook: HOOK_UNIX,
        _pad: 0,
    };
    assert_eq!(counts[&key(PROTO_STREAM)], 4, "{counts:?}");
    assert_eq!(counts[&key(PROTO_DGRAM)], 2, "{counts:?}");
    assert_eq!(
        counts.values().sum::<u64>(),
        6,
        "nothing else counted: {counts:?}"
    );

    let events = sandbox.layer().events().unwrap().read();
    assert_eq!(events.len(), 6, "{events:?}");
    let exe = std::env::current_exe().unwrap();
    let comm: String = exe
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .take(15)
        .collect();
    let peer = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap();
        UnixPeer::Path {
            major: libc::major(meta.dev()),
            minor: libc::minor(meta.dev()),
            ino: meta.ino(),
        }
    };
    for (event, (outcome, protocol)) in events.iter().zip(&refused) {
        assert_eq!(event.uid, CONFINED);
        assert_eq!(event.pid, outcome.pid, "the event names the probe's pid");
        assert_eq!(event.comm, comm);
        assert_eq!((event.hook, event.protocol), ("unix", *protocol));
        let socket = if *protocol == "stream" { &b } else { &d };
        assert_eq!(event.unix, Some(peer(socket)), "{event}");
    }
    let last = &events[5];
    assert_eq!(last.pid, abstract_outcome.pid);
    assert_eq!(
        (last.protocol, last.unix),
        ("stream", Some(UnixPeer::Abstract))
    );
    let UnixPeer::Path { major, minor, ino } = peer(&b) else {
        unreachable!()
    };
    assert_eq!(
        events[0].to_string(),
        format!(
            "stream unix:dev={major}:{minor},ino={ino} uid={CONFINED} pid={} comm={comm} layer=ebpf-unix",
            refused[0].0.pid
        )
    );
}

fn policy_update() {
    let Some(mut sandbox) = sandbox() else { return };
    let dir = shared_dir();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (_allowed, _blocked) = (listen(&a), listen(&b));
    let missing = dir.path().join("not-yet/c.sock");
    apply(&mut sandbox, &[&a, &missing]);
    assert_eq!(
        sandbox.layer().unix_entries(CONFINED).unwrap().len(),
        1,
        "a socket whose directory is missing is skipped"
    );
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &a);
    assert_refused(&sandbox, Kind::Stream, &b);

    apply(&mut sandbox, &[&b]);
    assert_refused(&sandbox, Kind::Stream, &a);
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &b);
    let entries = sandbox.layer().unix_entries(CONFINED).unwrap();
    assert_eq!(entries.len(), 1, "the old generation's entries are gone");
    assert_eq!(&entries[0].name[..7], b"b.sock\0");

    sandbox.layer().remove_instance(CONFINED).unwrap();
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &a);
    assert!(sandbox.layer().unix_entries(CONFINED).unwrap().is_empty());
}

/// Where the kernel cannot run the unix-socket programs, the layer works without them and a
/// policy with unix sockets is refused with what to change. On a kernel that runs them, an
/// attachment without them is simulated by unpinning them.
fn without_bpf_lsm() {
    let mut sandbox = Sandbox::new();
    let dir = shared_dir();
    let a = dir.path().join("a.sock");
    let _listener = listen(&a);
    let with_unix = CompiledRules::default().with_unix_sockets([a.clone()]);
    let lsms = isolate_enforcer::bpf::active_lsms().expect("read the LSM list");
    let bpf_active = lsms.split(',').any(|l| l == "bpf");
    let enforced = *sandbox.layer().unix_support() == UnixSupport::Enforced;
    assert!(
        !enforced || bpf_active,
        "enforced without the BPF LSM ({lsms})"
    );
    if enforced {
        drop(sandbox.layer.take());
        for name in ["isolate_unix_stream_connect", "isolate_unix_may_send"] {
            std::fs::remove_file(sandbox.pins.link(name)).unwrap();
        }
        sandbox.layer = Some(BpfLayer::open(sandbox.pins.clone()).unwrap());
    }
    let UnixSupport::Unavailable(reason) = sandbox.layer().unix_support().clone() else {
        panic!("no unix-socket programs, yet enforced");
    };
    let error = sandbox
        .layer()
        .apply_instance(CONFINED, &with_unix)
        .unwrap_err();
    assert!(matches!(error, BpfError::UnixUnsupported { .. }), "{error}");
    let message = error.to_string();
    eprintln!("{message}");
    assert!(message.contains(&reason));
    assert!(
        message.starts_with(
            "unix-socket allowlists (network.unix_sockets) are not supported on this kernel: "
        ),
        "{message}"
    );
    if !bpf_active {
        assert!(
            message.contains("add bpf to lsm=")
                && message.contains(&format!("(current list: {lsms})")),
            "{message}"
        );
    } else if enforced {
        assert!(message.contains("detach it and attach again"), "{message}");
    } else {
        // bpf is active, yet the kernel refused the programs (the 6.18 host of the
        // development VMs refuses every trampoline-based program, fentry too).
        assert!(message.contains("the kernel refused"), "{message}");
    }
    assert!(
        sandbox.layer().instances().is_empty(),
        "a refused policy changes nothing"
    );
    // Without unix sockets the rest of the layer works.
    sandbox
        .layer()
        .apply_instance(CONFINED, &CompiledRules::default())
        .expect("a policy without unix sockets applies");
    assert_eq!(sandbox.layer().instances(), vec![CONFINED]);
}

fn detach_removes_everything() {
    let before = loaded_isolate_programs();
    let Some(mut sandbox) = sandbox() else { return };
    let ours: BTreeSet<u32> = loaded_isolate_programs()
        .difference(&before)
        .copied()
        .collect();
    assert_eq!(
        ours.len(),
        13,
        "eight sock_addr programs, the egress and ingress programs and three LSM programs loaded"
    );
    let dir = shared_dir();
    let b = dir.path().join("b.sock");
    let _listener = listen(&b);
    apply(&mut sandbox, &[]);
    assert_refused(&sandbox, Kind::Stream, &b);
    sandbox.layer.take().unwrap().detach().unwrap();
    assert!(!sandbox.pins.path().exists(), "nothing stays in bpffs");
    assert_allowed(&sandbox, CONFINED, Kind::Stream, &b);
    assert_eq!(
        still_loaded_after_grace(&ours),
        0,
        "every program was unloaded"
    );
}
