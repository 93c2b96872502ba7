//! `isolate status` without a daemon: what is pinned in the kernel and recorded in the state
//! file (enforcement outlives the daemon, and an operator must always be able to see it).

use std::path::Path;

use crate::bpf::{BpfLayer, PinDir};
use crate::control::{InstanceStatus, Status};
use crate::layer::{InstanceId, LayerSet, NetworkLayer, NftLayer};

use super::state::Enforced;

/// The status read from the kernel and the state file.
pub fn from_kernel(state_dir: &Path, daemon_pins: &PinDir, exec_pins: &Path) -> Status {
    let daemon_layers = readers(daemon_pins);
    let records = Enforced::load(state_dir).unwrap_or_default().instances;
    let ids: Vec<InstanceId> = records
        .iter()
        .map(|(name, record)| InstanceId {
            name: name.clone(),
            uid: record.uid,
        })
        .collect();
    let counters = daemon_layers.counters_of(&ids);
    let mut instances = Vec::new();
    for ((name, record), counters) in records.into_iter().zip(counters) {
        let mut status = InstanceStatus {
            name,
            mode: "daemon".into(),
            uid: record.uid,
            user: record.user,
            layers: record.layers,
            policy_hash: record.policy_hash,
            entries_v4: record.entries_v4,
            entries_v6: record.entries_v6,
            ..InstanceStatus::default()
        };
        status.set_counters(counters);
        instances.push(status);
    }
    // `isolate exec` runs pin their layer under exec/<instance>.
    for entry in std::fs::read_dir(exec_pins)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pins = PinDir::new(entry.path());
        let Ok(bpf) = BpfLayer::open(pins.clone()) else {
            continue;
        };
        let layers = readers(&pins);
        for uid in bpf.instances() {
            let id = InstanceId {
                name: name.clone(),
                uid,
            };
            let (entries_v4, entries_v6) = bpf.entry_counts(uid).unwrap_or_default();
            let mut status = InstanceStatus {
                name: name.clone(),
                mode: "exec".into(),
                uid,
                user: nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| uid.to_string(), |u| u.name),
                layers: in_force(&layers, &id),
                entries_v4,
                entries_v6,
                ..InstanceStatus::default()
            };
            status.set_counters(layers.counters(&id));
            instances.push(status);
        }
    }
    Status {
        daemon_running: false,
        instances,
        daemon: None,
        layers: Vec::new(),
    }
}

/// Reading handles on the layers pinned at `pins` (if any) and on nftables.
fn readers(pins: &PinDir) -> LayerSet {
    let mut layers: Vec<Box<dyn NetworkLayer>> = Vec::new();
    if pins.exists()
        && let Ok(bpf) = BpfLayer::open(pins.clone())
    {
        layers.push(Box::new(bpf));
    }
    layers.push(Box::new(NftLayer));
    LayerSet::new(layers)
}

/// The names of the layers that have the instance in force.
fn in_force(layers: &LayerSet, id: &InstanceId) -> Vec<String> {
    layers
        .each()
        .filter(|layer| layer.in_force(id).unwrap_or(false))
        .map(|layer| layer.kind().to_string())
        .collect()
}
