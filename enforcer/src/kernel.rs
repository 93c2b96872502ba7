//! What the running kernel offers that isolate's layers need, for `isolate check --kernel`.

use std::fs;
use std::path::Path;

/// One line of the kernel report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Available,
    Missing,
    /// Could not be determined from here (e.g. securityfs is not mounted).
    Unknown,
}

impl From<bool> for Status {
    fn from(available: bool) -> Self {
        if available {
            Status::Available
        } else {
            Status::Missing
        }
    }
}

/// Probes the features isolate depends on, without changing anything.
pub fn report() -> Vec<Feature> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup2 = crate::cgroup::cgroup2_mount();
    let lsm = fs::read_to_string("/sys/kernel/security/lsm").ok();
    let landlock_abi = crate::landlock::kernel_abi().ok();
    vec![
        Feature {
            name: "kernel",
            status: Status::Available,
            detail: release,
        },
        Feature {
            name: "cgroup2",
            status: Status::from(cgroup2.is_ok()),
            detail: match &cgroup2 {
                Ok(path) => format!("mounted at {}", path.display()),
                Err(e) => e.to_string(),
            },
        },
        Feature {
            name: "btf",
            status: Status::from(Path::new("/sys/kernel/btf/vmlinux").exists()),
            detail: "/sys/kernel/btf/vmlinux".into(),
        },
        Feature {
            name: "bpffs",
            status: Status::from(crate::mounts::is_mounted("bpf", None).unwrap_or(false)),
            detail: "isolate mounts it at /sys/fs/bpf when missing".into(),
        },
        Feature {
            name: "landlock",
            status: Status::from(landlock_abi.is_some()),
            detail: landlock_abi.map_or_else(
                || "not enabled (add landlock to the lsm= kernel parameter)".into(),
                |abi| format!("ABI {abi}"),
            ),
        },
        Feature {
            name: "lsm list",
            status: if lsm.is_some() {
                Status::Available
            } else {
                Status::Unknown
            },
            detail: lsm.map_or_else(
                || "securityfs not mounted: cannot read /sys/kernel/security/lsm".into(),
                |l| l.trim().to_owned(),
            ),
        },
        Feature {
            name: "nf_tables",
            status: Status::from(
                Path::new("/proc/net/netfilter").exists() || is_module_loaded("nf_tables"),
            ),
            detail: "needed by the nftables layer (the `nft` binary must be installed)".into(),
        },
    ]
}

fn is_module_loaded(module: &str) -> bool {
    fs::read_to_string("/proc/modules").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().next() == Some(module))
    })
}
