//! The Landlock layer on the running kernel. Landlock needs no root, but a restriction can
//! never be lifted: each case forks a child that enforces a plan and makes one call, so the
//! test process itself stays free. The child exits with the call's errno (0 on success).
//!
//! The children make raw syscalls only, on arguments prepared before the fork: the test
//! process has other threads, so a forked child must not allocate — exactly the situation of
//! the supervisor's `pre_exec`, which [`through_command_pre_exec`] also exercises.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use isolate_enforcer::landlock::{Feature, LandlockError, LandlockPlan, Origin, kernel_abi};
use libc::c_int;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;
use tempfile::TempDir;

/// Exit code of a child whose `restrict_self` failed (no errno is this large).
const RESTRICT_FAILED: i32 = 250;

fn kernel() -> u8 {
    kernel_abi().unwrap_or_else(|why| panic!("these tests need Landlock: {why}"))
}

/// A tree with one directory per kind of rule, and one outside every rule; each holds a
/// file `f` and a copy of `/bin/true`.
struct Tree {
    root: TempDir,
}

impl Tree {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        for dir in ["ro", "rw", "exec", "outside"] {
            let dir = root.path().join(dir);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("f"), "content\n").unwrap();
            fs::copy("/bin/true", dir.join("true")).unwrap();
            fs::set_permissions(dir.join("true"), fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { root }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn c(&self, relative: &str) -> CString {
        CString::new(self.path(relative).as_os_str().as_bytes()).unwrap()
    }

    /// The plan of a policy granting `ro`, `rw` and `exec`, with `network` as its
    /// `[network]` section (DNS off).
    fn plan(&self, network: &str) -> LandlockPlan {
        let text = format!(
            "name = \"landlock-test\"\nuser = \"dynamic\"\n\
             [filesystem]\nread_only = [\"{}\"]\nread_write = [\"{}\"]\nexec = [\"{}\"]\n\
             [network]\ndns = \"none\"\n{network}\n",
            self.path("ro").display(),
            self.path("rw").display(),
            self.path("exec").display(),
        );
        let policy = isolate_policy::parse_str(&text, Path::new("/tests/landlock-test.toml"))
            .expect("test policy");
        LandlockPlan::from_policy(&policy, Path::new("/nonexistent-home")).expect("plan")
    }
}

/// Forks; the child enforces `plan`, runs `call` and exits with what it returns.
fn confined(plan: &LandlockPlan, call: impl FnOnce() -> i32) -> i32 {
    let prepared = plan.prepare().expect("prepare the ruleset");
    // SAFETY: the child makes syscalls only (restrict_self allocates nothing), then _exits.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match prepared.restrict_self() {
                Ok(_) => call(),
                Err(_) => RESTRICT_FAILED,
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(prepared);
            wait_code(child)
        }
    }
}

fn wait_code(child: nix::unistd::Pid) -> i32 {
    match waitpid(child, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child ended with {other:?}"),
    }
}

fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

/// `open(path, flags)`: 0 or the errno.
fn open(path: &CStr, flags: c_int) -> i32 {
    // SAFETY: a NUL-terminated path; the mode is used only with O_CREAT.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return errno();
    }
    // SAFETY: a descriptor this function opened.
    unsafe { libc::close(fd) };
    0
}

/// `unlink(path)`: 0 or the errno.
fn unlink(path: &CStr) -> i32 {
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::unlink(path.as_ptr()) } < 0 {
        errno()
    } else {
        0
    }
}

/// `execv(path)`: the program's exit code, or the errno of a refused exec.
fn exec(path: &CStr) -> i32 {
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: NUL-terminated path and argv; returns only on failure.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    errno()
}

/// Runs `call` in a forked grandchild and returns its exit code.
fn in_grandchild(call: impl FnOnce() -> i32) -> i32 {
    // SAFETY: raw fork in an already forked, single-threaded child; the grandchild _exits.
    match unsafe { libc::fork() } {
        0 => unsafe { libc::_exit(call()) },
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: waits for the process just forked.
            unsafe { libc::waitpid(pid, &raw mut status, 0) };
            libc::WEXITSTATUS(status)
        }
        _ => errno(),
    }
}

/// `connect` a TCP socket to 127.0.0.1:`port`: 0 or the errno.
fn tcp_connect(port: u16) -> i32 {
    inet_call(port, libc::connect)
}

/// `bind` a TCP socket to 127.0.0.1:`port`: 0 or the errno.
fn tcp_bind(port: u16) -> i32 {
    inet_call(port, libc::bind)
}

type AddrCall = unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int;

fn inet_call(port: u16, call: AddrCall) -> i32 {
    // SAFETY: plain socket calls on a sockaddr_in built on the stack.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return errno();
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let ret = call(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let code = if ret < 0 { errno() } else { 0 };
        libc::close(fd);
        code
    }
}

/// `connect` a unix stream socket to the abstract address `name`: 0 or the errno.
fn abstract_connect(name: &[u8]) -> i32 {
    // SAFETY: plain socket calls on a sockaddr_un built on the stack; `name` fits (checked
    // by the caller's bind of the same name).
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return errno();
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        // An abstract address: a NUL, then the name (not NUL-terminated).
        for (i, byte) in name.iter().enumerate() {
            addr.sun_path[i + 1] = libc::c_char::from_ne_bytes([*byte]);
        }
        let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
        let ret = libc::connect(fd, (&raw const addr).cast(), len as libc::socklen_t);
        let code = if ret < 0 { errno() } else { 0 };
        libc::close(fd);
        code
    }
}

#[test]
fn reads_only_where_a_rule_allows() {
    let tree = Tree::new();
    let plan = tree.plan("");
    for dir in ["ro", "rw", "exec"] {
        let file = tree.c(&format!("{dir}/f"));
        assert_eq!(confined(&plan, || open(&file, libc::O_RDONLY)), 0, "{dir}");
    }
    let outside = tree.c("outside/f");
    assert_eq!(
        confined(&plan, || open(&outside, libc::O_RDONLY)),
        libc::EACCES
    );
    let outside_dir = tree.c("outside");
    assert_eq!(
        confined(&plan, || open(
            &outside_dir,
            libc::O_RDONLY | libc::O_DIRECTORY
        )),
        libc::EACCES
    );
    // Control: without Landlock the same read works.
    assert_eq!(open(&outside, libc::O_RDONLY), 0);
}

#[test]
fn writes_creates_and_removes_only_in_read_write() {
    let tree = Tree::new();
    let plan = tree.plan("");
    let (rw_file, rw_new) = (tree.c("rw/f"), tree.c("rw/new"));
    assert_eq!(confined(&plan, || open(&rw_file, libc::O_WRONLY)), 0);
    assert_eq!(
        confined(&plan, || open(&rw_new, libc::O_WRONLY | libc::O_CREAT)),
        0
    );
    assert_eq!(confined(&plan, || unlink(&rw_new)), 0);
    assert!(!tree.path("rw/new").exists());

    for dir in ["ro", "exec", "outside"] {
        let (file, new) = (tree.c(&format!("{dir}/f")), tree.c(&format!("{dir}/new")));
        assert_eq!(
            confined(&plan, || open(&file, libc::O_WRONLY)),
            libc::EACCES,
            "write in {dir}"
        );
        assert_eq!(
            confined(&plan, || open(&new, libc::O_WRONLY | libc::O_CREAT)),
            libc::EACCES,
            "create in {dir}"
        );
        assert!(!tree.path(&format!("{dir}/new")).exists());
        assert_eq!(
            confined(&plan, || unlink(&file)),
            libc::EACCES,
            "remove in {dir}"
        );
    }
}

#[test]
fn executes_only_from_exec_paths() {
    let tree = Tree::new();
    let plan = tree.plan("");
    let allowed = tree.c("exec/true");
    assert_eq!(confined(&plan, || exec(&allowed)), 0);
    for dir in ["ro", "rw", "outside"] {
        let program = tree.c(&format!("{dir}/true"));
        assert_eq!(
            confined(&plan, || exec(&program)),
            libc::EACCES,
            "exec from {dir}"
        );
    }
}

#[test]
fn children_inherit_the_restriction() {
    let tree = Tree::new();
    let plan = tree.plan("");
    let (inside, outside) = (tree.c("ro/f"), tree.c("outside/f"));
    assert_eq!(
        confined(&plan, || in_grandchild(|| open(&inside, libc::O_RDONLY))),
        0
    );
    assert_eq!(
        confined(&plan, || in_grandchild(|| open(&outside, libc::O_RDONLY))),
        libc::EACCES
    );
    let program = tree.c("outside/true");
    assert_eq!(
        confined(&plan, || in_grandchild(|| exec(&program))),
        libc::EACCES
    );
}

/// The supervisor's way: restrict in `pre_exec`, then exec a real program that relies on the
/// baseline (loader, libc) to start at all.
#[test]
fn through_command_pre_exec() {
    let tree = Tree::new();
    let mut plan = tree.plan("");
    plan.exec.push(isolate_enforcer::landlock::PathRule {
        path: "/usr/bin".into(),
        origin: Origin::Policy,
    });
    let cat = |file: &str| {
        let mut prepared = Some(plan.prepare().expect("prepare"));
        let mut command = Command::new("/usr/bin/cat");
        command.arg(tree.path(file));
        // SAFETY: restrict_self makes no allocation and takes no lock.
        unsafe {
            command.pre_exec(move || match prepared.take() {
                Some(ruleset) => ruleset
                    .restrict_self()
                    .map(drop)
                    .map_err(|e| e.to_io_error()),
                None => Ok(()),
            });
        }
        command.output().expect("run cat")
    };
    let allowed = cat("ro/f");
    assert!(allowed.status.success(), "{allowed:?}");
    assert_eq!(allowed.stdout, b"content\n");
    let denied = cat("outside/f");
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Exec outside the exec paths fails in the parent's spawn, with the child's errno.
    let mut prepared = Some(plan.prepare().expect("prepare"));
    let mut command = Command::new(tree.path("outside/true"));
    // SAFETY: as above.
    unsafe {
        command.pre_exec(move || match prepared.take() {
            Some(ruleset) => ruleset
                .restrict_self()
                .map(drop)
                .map_err(|e| e.to_io_error()),
            None => Ok(()),
        });
    }
    let err = command.spawn().expect_err("exec outside the exec paths");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

#[test]
fn tcp_connect_reaches_only_the_allowed_ports() {
    let abi = kernel();
    if abi < 4 {
        eprintln!("skipped: TCP port rules need Landlock ABI 4, this kernel has {abi}");
        return;
    }
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let forbidden = TcpListener::bind("127.0.0.1:0").unwrap();
    let (allowed_port, forbidden_port) = (
        allowed.local_addr().unwrap().port(),
        forbidden.local_addr().unwrap().port(),
    );
    let tree = Tree::new();
    let plan = tree.plan(&format!("allow = [\"127.0.0.1/32:{allowed_port}/tcp\"]"));
    assert_eq!(
        plan.tcp_connect_ports.as_deref().map(<[_]>::len),
        Some(1),
        "{plan}"
    );
    assert_eq!(confined(&plan, || tcp_connect(allowed_port)), 0);
    assert_eq!(
        confined(&plan, || tcp_connect(forbidden_port)),
        libc::EACCES
    );
    allowed.set_nonblocking(true).unwrap();
    forbidden.set_nonblocking(true).unwrap();
    assert!(
        allowed.accept().is_ok(),
        "the allowed port got its connection"
    );
    assert_eq!(
        forbidden.accept().map(drop).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the forbidden port must receive nothing"
    );

    // A policy rule allowing every TCP port leaves connect to the network layers.
    let open_plan = tree.plan("allow = [\"127.0.0.0/8\"]");
    assert_eq!(open_plan.tcp_connect_ports, None);
    assert_eq!(confined(&open_plan, || tcp_connect(forbidden_port)), 0);
}

#[test]
fn tcp_bind_follows_network_listen_and_the_ephemeral_port_stays_free() {
    let abi = kernel();
    if abi < 4 {
        eprintln!("skipped: TCP port rules need Landlock ABI 4, this kernel has {abi}");
        return;
    }
    let free_port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, other) = (free_port(), free_port());
    let tree = Tree::new();
    let plan = tree.plan(&format!("listen = [\"127.0.0.1:{port}/tcp\"]"));
    assert_eq!(
        plan.tcp_bind_ports,
        Some(vec![
            isolate_policy::PortRange::single(0),
            isolate_policy::PortRange::single(port)
        ])
    );
    assert_eq!(confined(&plan, || tcp_bind(port)), 0);
    assert_eq!(confined(&plan, || tcp_bind(0)), 0, "clients bind port 0");
    assert_eq!(confined(&plan, || tcp_bind(other)), libc::EACCES);
    let mut unrestricted = tree.plan("");
    unrestricted.tcp_bind_ports = None;
    assert_eq!(confined(&unrestricted, || tcp_bind(other)), 0);
}

#[test]
fn abstract_unix_sockets_outside_the_sandbox_are_out_of_reach() {
    let abi = kernel();
    if abi < 6 {
        eprintln!("skipped: scoping needs Landlock ABI 6, this kernel has {abi}");
        return;
    }
    let name = format!("isolate-landlock-test-{}", std::process::id()).into_bytes();
    let _listener = UnixListener::bind_addr(&UnixAddr::from_abstract_name(&name).unwrap())
        .expect("abstract listener");
    let tree = Tree::new();
    let mut plan = tree.plan("");
    assert!(plan.scope_abstract_unix_sockets);
    assert_eq!(confined(&plan, || abstract_connect(&name)), libc::EPERM);
    plan.scope_abstract_unix_sockets = false;
    assert_eq!(confined(&plan, || abstract_connect(&name)), 0);
}

#[test]
fn signals_to_processes_outside_the_sandbox_are_refused() {
    let abi = kernel();
    if abi < 6 {
        eprintln!("skipped: scoping needs Landlock ABI 6, this kernel has {abi}");
        return;
    }
    let tree = Tree::new();
    let mut plan = tree.plan("");
    // Signal 0 checks permission without delivering anything, here to the test process.
    // SAFETY: kill with signal 0 sends nothing.
    let signal_parent = || {
        if unsafe { libc::kill(libc::getppid(), 0) } < 0 {
            errno()
        } else {
            0
        }
    };
    assert_eq!(confined(&plan, signal_parent), libc::EPERM);
    // SAFETY: as above, to itself.
    let signal_self = || unsafe { libc::kill(libc::getpid(), 0) };
    assert_eq!(confined(&plan, signal_self), 0);
    plan.scope_signals = false;
    assert_eq!(confined(&plan, signal_parent), 0);
}

#[test]
fn a_minimum_above_the_kernel_is_refused_with_what_to_change() {
    let abi = kernel();
    let tree = Tree::new();
    let mut plan = tree.plan("");
    plan.minimum_abi = abi + 1;
    let err = plan.prepare().expect_err("minimum above the kernel");
    assert!(
        matches!(err, LandlockError::KernelTooOld { kernel, .. } if kernel == abi),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("landlock-test.toml")
            && text.contains(&format!("set landlock.minimum_abi = {abi}")),
        "{text}"
    );
    plan.minimum_abi = abi;
    plan.prepare().expect("the kernel's own ABI is accepted");
}

#[test]
fn the_report_names_the_abi_features_and_skipped_paths() {
    let abi = kernel();
    let tree = Tree::new();
    let mut plan = tree.plan("allow = [\"127.0.0.1/32:443/tcp\"]");
    plan.read_only.push(isolate_enforcer::landlock::PathRule {
        path: tree.path("does-not-exist"),
        origin: Origin::Policy,
    });
    let prepared = plan.prepare().expect("a missing policy path is skipped");
    let report = prepared.report();
    assert_eq!(report.kernel_abi, abi);
    assert!(
        report
            .skipped
            .iter()
            .any(|r| r.path == tree.path("does-not-exist")),
        "{report}"
    );
    for feature in plan.features() {
        let enabled = report.enabled.contains(&feature);
        assert_eq!(enabled, feature.since() <= abi, "{feature}");
        assert_eq!(report.dropped.contains(&feature), !enabled, "{feature}");
    }
    // TCP connect to 443, and TCP bind to port 0 (nothing listed in network.listen).
    assert_eq!(report.port_rules, 2 * usize::from(abi >= 4));
    assert!(report.enabled.contains(&Feature::FileAccess));
    let text = format!("{report:#}");
    assert!(text.contains(&format!("ABI {abi}")), "{text}");
    assert!(text.contains("does-not-exist"), "{text}");
    eprintln!("{plan}\n{text}");
}

#[test]
fn the_instance_directory_must_still_exist_when_prepared() {
    let tree = Tree::new();
    let project = tree.path("project");
    fs::create_dir(&project).unwrap();
    let text = format!(
        "name = \"landlock-test\"\nuser = \"dynamic\"\ndirectory = \"{}\"\n",
        project.display()
    );
    let policy = isolate_policy::parse_str(&text, Path::new("/tests/landlock-test.toml")).unwrap();
    let plan = LandlockPlan::from_policy(&policy, Path::new("/nonexistent-home")).unwrap();
    assert!(
        plan.read_only
            .iter()
            .any(|r| r.path == project && r.origin == Origin::InstanceDirectory)
    );
    fs::remove_dir(&project).unwrap();
    let err = plan.prepare().expect_err("directory gone");
    assert!(
        matches!(err, LandlockError::MissingDirectory { .. }),
        "{err:?}"
    );
}
