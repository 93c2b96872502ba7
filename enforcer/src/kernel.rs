//! What the running kernel offers that isolate's layers need, for `isolate check --kernel`.

use std::fs;
use std::path::Path;

/// One line of the kernel report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFeature {
    pub name: &'static str,
    pub status: Availability,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    Missing,
    /// Could not be determined from here (e.g. securityfs is not mounted).
    Unknown,
}

impl From<bool> for Availability {
    fn from(available: bool) -> Self {
        if available {
            Availability::Available
        } else {
            Availability::Missing
        }
    }
}

/// Probes the features isolate depends on, without changing anything: isolate's programs are
/// loaded into the kernel and unloaded again (as root), nothing is attached.
pub fn report() -> Vec<KernelFeature> {
    let mut features = configuration();
    let programs = crate::cgroup::cgroup2_mount().ok().map(|root| {
        if nix::unistd::geteuid().is_root() {
            crate::bpf::BpfLayer::probe(&root)
        } else {
            Vec::new()
        }
    });
    match programs {
        Some(probes) if !probes.is_empty() => {
            features.extend(probes.into_iter().map(|(name, result)| {
                KernelFeature {
                    name,
                    status: Availability::from(result.is_ok()),
                    detail: result
                        .err()
                        .unwrap_or_else(|| "the kernel loads them".into()),
                }
            }));
        }
        _ => features.push(KernelFeature {
            name: "eBPF programs",
            status: Availability::Unknown,
            detail: "run as root (with cgroup2 mounted) to try loading isolate's programs".into(),
        }),
    }
    features
}

/// What the kernel's configuration and mounts say.
fn configuration() -> Vec<KernelFeature> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup2 = crate::cgroup::cgroup2_mount();
    let lsm = fs::read_to_string(crate::paths::LSM_LIST).ok();
    let landlock_abi = crate::landlock::kernel_abi().ok();
    vec![
        KernelFeature {
            name: "kernel",
            status: Availability::Available,
            detail: release,
        },
        KernelFeature {
            name: "cgroup2",
            status: Availability::from(cgroup2.is_ok()),
            detail: match &cgroup2 {
                Ok(path) => format!("mounted at {}", path.display()),
                Err(e) => e.to_string(),
            },
        },
        KernelFeature {
            name: "btf",
            status: Availability::from(Path::new(crate::paths::KERNEL_BTF).exists()),
            detail: crate::paths::KERNEL_BTF.into(),
        },
        KernelFeature {
            name: "bpffs",
            status: Availability::from(crate::mounts::is_mounted("bpf", None).unwrap_or(false)),
            detail: "isolate mounts it at /sys/fs/bpf when missing".into(),
        },
        KernelFeature {
            name: "landlock",
            status: Availability::from(landlock_abi.is_some()),
            detail: landlock_abi.map_or_else(
                || "not enabled (add landlock to the lsm= kernel parameter)".into(),
                |abi| format!("ABI {abi}"),
            ),
        },
        KernelFeature {
            name: "lsm list",
            status: if lsm.is_some() {
                Availability::Available
            } else {
                Availability::Unknown
            },
            detail: lsm.map_or_else(
                || "securityfs not mounted: cannot read /sys/kernel/security/lsm".into(),
                |l| l.trim().to_owned(),
            ),
        },
        KernelFeature {
            name: "nf_tables",
            status: Availability::from(
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
