//! What is enforced, for `isolate status`: from the daemon when it runs, else from what is
//! pinned in the kernel and recorded in the state file (enforcement outlives the daemon, and an
//! operator must always be able to see it).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bpf::{BpfLayer, PinDir};

use super::registry::Registry;
use super::state::Enforced;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Whether a running daemon answered.
    pub daemon_running: bool,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    /// `daemon` (enforced host-wide by UID) or `exec` (an `isolate exec` run).
    pub mode: String,
    pub uid: u32,
    pub user: String,
    pub layers: Vec<String>,
    pub policy_hash: String,
    pub entries_v4: usize,
    pub entries_v6: usize,
    pub blocked_ebpf: u64,
    pub blocked_nftables: u64,
    /// The latest blocked attempts (only known to a running daemon).
    pub recent: Vec<String>,
}

/// The status as a running daemon sees it.
pub fn from_registry(registry: &Registry) -> Status {
    let instances = registry
        .instances
        .iter()
        .map(|(name, i)| InstanceStatus {
            name: name.clone(),
            mode: "daemon".into(),
            uid: i.uid,
            user: i.user.clone(),
            layers: registry
                .layers
                .names()
                .iter()
                .map(ToString::to_string)
                .collect(),
            policy_hash: i.hash.clone(),
            entries_v4: i.rules.v4.len(),
            entries_v6: i.rules.v6.len(),
            blocked_ebpf: ebpf_blocked(registry.bpf.as_ref(), i.uid),
            blocked_nftables: nft_blocked(name, registry.layers.nftables),
            recent: i.recent.iter().cloned().collect(),
        })
        .collect();
    Status {
        daemon_running: true,
        instances,
    }
}

/// The status read from the kernel and the state file, without a daemon.
pub fn from_kernel(state_dir: &Path, daemon_pins: &PinDir, exec_pins: &Path) -> Status {
    let mut instances = Vec::new();
    let daemon_layer = daemon_pins
        .exists()
        .then(|| BpfLayer::open(daemon_pins.clone()).ok())
        .flatten();
    for (name, record) in Enforced::load(state_dir).unwrap_or_default().instances {
        instances.push(InstanceStatus {
            blocked_ebpf: ebpf_blocked(daemon_layer.as_ref(), record.uid),
            blocked_nftables: nft_blocked(&name, record.layers.iter().any(|l| l == "nftables")),
            name,
            mode: "daemon".into(),
            uid: record.uid,
            user: record.user,
            layers: record.layers,
            policy_hash: record.policy_hash,
            entries_v4: record.entries_v4,
            entries_v6: record.entries_v6,
            recent: Vec::new(),
        });
    }
    // `isolate exec` runs pin their layer under exec/<instance>.
    for entry in std::fs::read_dir(exec_pins)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(layer) = BpfLayer::open(PinDir::new(entry.path())) else {
            continue;
        };
        for uid in layer.instances() {
            let (entries_v4, entries_v6) = layer.entry_counts(uid).unwrap_or_default();
            let nft = crate::nft::is_applied(&name).unwrap_or(false);
            let mut layers = vec!["ebpf".to_owned()];
            if nft {
                layers.push("nftables".into());
            }
            instances.push(InstanceStatus {
                name: name.clone(),
                mode: "exec".into(),
                uid,
                user: nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| uid.to_string(), |u| u.name),
                layers,
                policy_hash: String::new(),
                entries_v4,
                entries_v6,
                blocked_ebpf: ebpf_blocked(Some(&layer), uid),
                blocked_nftables: nft_blocked(&name, nft),
                recent: Vec::new(),
            });
        }
    }
    Status {
        daemon_running: false,
        instances,
    }
}

fn ebpf_blocked(layer: Option<&BpfLayer>, uid: u32) -> u64 {
    layer
        .and_then(|l| l.blocked_counts(uid).ok())
        .map_or(0, |counts| counts.values().sum())
}

fn nft_blocked(name: &str, applied: bool) -> u64 {
    if !applied {
        return 0;
    }
    crate::nft::counters(name).map_or(0, |c| c.values().sum())
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = if self.daemon_running {
            "from the running daemon"
        } else {
            "from the kernel (no daemon answered)"
        };
        writeln!(
            f,
            "isolate status, {source}: {} instance(s)",
            self.instances.len()
        )?;
        if self.instances.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "{:<20} {:<6} {:>7} {:<20} {:<16} {:>8} {:>10} {:>13}  policy",
            "INSTANCE", "MODE", "UID", "USER", "LAYERS", "ENTRIES", "BLOCKED", "BLOCKED(nft)"
        )?;
        for i in &self.instances {
            writeln!(
                f,
                "{:<20} {:<6} {:>7} {:<20} {:<16} {:>8} {:>10} {:>13}  {}",
                i.name,
                i.mode,
                i.uid,
                i.user,
                i.layers.join(","),
                i.entries_v4 + i.entries_v6,
                i.blocked_ebpf,
                i.blocked_nftables,
                i.policy_hash
            )?;
            for recent in &i.recent {
                writeln!(f, "    last blocked: {recent}")?;
            }
        }
        Ok(())
    }
}
