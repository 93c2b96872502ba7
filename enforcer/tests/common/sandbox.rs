//! A child cgroup with isolate's eBPF layer attached and pinned under a unique bpffs
//! directory; dropping it removes both. With `ISOLATE_IN_VM=1` (the VM suite, where a test may
//! touch anything) the programs attach at the root cgroup, as in production.

use std::ffi::CString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use isolate_enforcer::bpf::{BpfLayer, PinDir};
use isolate_enforcer::cgroup::{Cgroup, cgroup2_mount};

pub struct Sandbox {
    pub layer: Option<BpfLayer>,
    pub pins: PinDir,
    pub cgroup: Cgroup,
    pub attached_at: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or test run) uses at the same time.
pub fn unique_name(what: &str) -> String {
    format!(
        "isolate-test-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Sandbox {
    pub fn new() -> Self {
        let mount = cgroup2_mount().expect("cgroup2 mount");
        let name = unique_name("bpf");
        let cgroup = Cgroup::create(&mount, &name).expect("child cgroup");
        let attached_at = if std::env::var_os("ISOLATE_IN_VM").is_some() {
            mount
        } else {
            cgroup.path().to_path_buf()
        };
        let pins = PinDir::new(PathBuf::from(isolate_enforcer::paths::BPFFS).join(&name));
        let layer = BpfLayer::attach(&attached_at, pins.clone()).expect("attach eBPF layer");
        Self {
            layer: Some(layer),
            pins,
            cgroup,
            attached_at,
        }
    }

    pub fn layer(&mut self) -> &mut BpfLayer {
        self.layer.as_mut().expect("layer still attached")
    }

    /// A command that runs as `uid` (groups reset) inside the sandbox's cgroup.
    pub fn command_as(&self, uid: u32, program: &std::path::Path) -> Command {
        command_in(self.cgroup.path(), uid, program)
    }
}

/// A command that runs as `uid` (groups reset) inside `cgroup`.
pub fn command_in(cgroup: &std::path::Path, uid: u32, program: &std::path::Path) -> Command {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe libc calls between fork and exec; the path was
    // prepared before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
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
    cmd
}

impl Drop for Sandbox {
    /// Never panics (a panic while a failed test unwinds would abort and leave everything).
    fn drop(&mut self) {
        if let Some(layer) = self.layer.take()
            && let Err(e) = layer.detach()
        {
            eprintln!("sandbox: detach eBPF layer: {e}");
        }
        if let Err(e) = self.pins.remove() {
            eprintln!("sandbox: remove {}: {e}", self.pins.path().display());
        }
    }
}

/// A new network namespace has `lo` down: bring it up (`ip link set lo up`, without iproute2).
pub fn bring_up_loopback() {
    // SAFETY: plain ioctls on a fresh socket with a zeroed, correctly named ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(sock >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = (*src).cast_signed();
        }
        assert_eq!(
            libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req),
            0,
            "SIOCGIFFLAGS"
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req),
            0,
            "SIOCSIFFLAGS"
        );
        libc::close(sock);
    }
}

/// IDs of the programs loaded in the kernel whose name says they are isolate's.
pub fn loaded_isolate_programs() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("isolate_")))
        .map(|p| p.id())
        .collect()
}

/// Waits until none of `ours` is loaded any more (the kernel frees programs after an RCU grace
/// period) and returns how many still are after two seconds.
pub fn still_loaded_after_grace(ours: &std::collections::BTreeSet<u32>) -> usize {
    let mut left = ours.intersection(&loaded_isolate_programs()).count();
    for _ in 0..200 {
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        left = ours.intersection(&loaded_isolate_programs()).count();
    }
    left
}
