//! The instances the daemon enforces, kept in step with the policy directory: each reload
//! applies only what changed, and a policy that fails validation or that a layer refuses leaves
//! that instance on its previous, working policy.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use isolate_policy::{Policy, UserSpec};

use crate::audit::AuditSink;
use crate::bpf::{self, BpfLayer};
use crate::exec::{InstanceUser, Layers};
use crate::network::{EffectiveRules, effective_rules, system_resolve};

use super::state::{Enforced, InstanceRecord};

/// How many recent blocked destinations `status` shows per instance.
const RECENT_BLOCKS: usize = 10;

/// One enforced instance.
pub struct Instance {
    pub policy: Policy,
    pub uid: u32,
    pub user: String,
    pub rules: EffectiveRules,
    pub hash: String,
    /// Recently blocked attempts, newest last.
    pub recent: VecDeque<String>,
}

/// The outcome of a reload, for logs, metrics and the control socket.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    /// Instance (or file) and why it kept its previous policy (or was not applied).
    pub failed: Vec<(String, String)>,
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub events_received: u64,
}

pub struct Registry {
    pub policy_dir: PathBuf,
    pub state_dir: PathBuf,
    pub layers: Layers,
    pub bpf: Option<BpfLayer>,
    pub instances: BTreeMap<String, Instance>,
    pub stats: Stats,
    audit: AuditSink,
    /// What an earlier daemon left enforced (pinned): an instance whose policy and addresses
    /// are unchanged is adopted as it is, without writing its entries again.
    adoptable: Enforced,
}

impl Registry {
    pub fn new(
        policy_dir: PathBuf,
        state_dir: PathBuf,
        layers: Layers,
        bpf: Option<BpfLayer>,
    ) -> Self {
        Self {
            policy_dir,
            state_dir,
            layers,
            bpf,
            instances: BTreeMap::new(),
            stats: Stats::default(),
            audit: AuditSink::new(),
            adoptable: Enforced::default(),
        }
    }

    /// Lets the next reload adopt what `previous` (an earlier daemon's record) enforced.
    pub fn adopt(&mut self, previous: Enforced) {
        self.adoptable = previous;
    }

    /// Re-reads the policy directory and brings enforcement in line with it.
    pub fn reload(&mut self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let (policies, failed_files) = load_policies(&self.policy_dir);
        report.failed.extend(failed_files.iter().cloned());
        // A file that failed keeps its instance (if any) as it was.
        let kept: BTreeSet<String> = failed_files
            .iter()
            .filter_map(|(file, _)| {
                Path::new(file)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .collect();
        let wanted: BTreeSet<String> = policies.iter().map(|p| p.name.clone()).collect();

        let stale: Vec<String> = self
            .instances
            .keys()
            .filter(|name| !wanted.contains(*name) && !kept.contains(*name))
            .cloned()
            .collect();
        for name in stale {
            match self.remove(&name) {
                Ok(()) => report.removed.push(name),
                Err(e) => report.failed.push((name, e)),
            }
        }
        for policy in policies {
            let name = policy.name.clone();
            match self.apply(policy) {
                Ok(true) => report.applied.push(name),
                Ok(false) => report.unchanged.push(name),
                Err(e) => report.failed.push((name, e)),
            }
        }
        if report.failed.is_empty() {
            self.stats.reloads_ok += 1;
        } else {
            self.stats.reloads_failed += 1;
        }
        self.save_state();
        // Parsing many large policies leaves freed heap behind; hand it back to the system so
        // the daemon's footprint is what it keeps, not what it once parsed.
        // SAFETY: malloc_trim only releases free memory; no pointer is touched.
        unsafe { libc::malloc_trim(0) };
        report
    }

    /// Re-resolves host names and DNS servers, applying instances whose addresses changed.
    pub fn refresh(&mut self) {
        let policies: Vec<Policy> = self.instances.values().map(|i| i.policy.clone()).collect();
        for policy in policies {
            let name = policy.name.clone();
            if let Err(e) = self.apply(policy) {
                tracing::warn!(instance = name, "refresh: {e}");
            }
        }
        self.save_state();
    }

    /// Applies `policy` if it differs from what is enforced. Returns whether anything changed.
    fn apply(&mut self, policy: Policy) -> Result<bool, String> {
        let name = policy.name.clone();
        if matches!(policy.user, UserSpec::Dynamic) {
            return Err(format!(
                "{}: user: the daemon enforces by UID and needs a user that keeps its UID; \
                 set a named user (dynamic users are for `isolate exec`)",
                policy.source.display()
            ));
        }
        let user = InstanceUser::resolve(&policy).map_err(|e| e.to_string())?;
        if let Some((other, _)) = self
            .instances
            .iter()
            .find(|(other, i)| **other != name && i.uid == user.uid)
        {
            return Err(format!(
                "{}: user: UID {} is already instance {other}'s; each instance needs its own user",
                policy.source.display(),
                user.uid
            ));
        }
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let rules = effective_rules(&policy.network, &resolv_conf, system_resolve);
        let hash = policy_hash(&policy, &rules, user.uid);
        if self.instances.get(&name).is_some_and(|i| i.hash == hash) {
            return Ok(false);
        }
        let pinned_as_is = self
            .bpf
            .as_ref()
            .is_some_and(|layer| layer.instances().contains(&user.uid))
            && self
                .adoptable
                .instances
                .remove(&name)
                .is_some_and(|r| r.policy_hash == hash && r.uid == user.uid);
        if pinned_as_is {
            tracing::info!(instance = name, uid = user.uid, "adopted as pinned");
        } else {
            self.apply_layers_or_restore(&policy, user.uid, &rules)?;
            tracing::info!(instance = name, uid = user.uid, "policy applied");
        }
        let recent = self
            .instances
            .remove(&name)
            .map(|i| i.recent)
            .unwrap_or_default();
        self.instances.insert(
            name,
            Instance {
                policy,
                uid: user.uid,
                user: user.name.clone(),
                rules,
                hash,
                recent,
            },
        );
        Ok(!pinned_as_is)
    }

    /// Applies the layers for `policy`; when a layer refuses, puts back what was in force for
    /// the instance (or nothing, for a new one).
    fn apply_layers_or_restore(
        &mut self,
        policy: &Policy,
        uid: u32,
        rules: &EffectiveRules,
    ) -> Result<(), String> {
        let name = &policy.name;
        let previous_uid = self.instances.get(name).map(|p| p.uid);
        if let Err(e) = apply_layers(self.bpf.as_mut(), self.layers, policy, uid, rules) {
            match self.instances.get(name) {
                Some(old) => {
                    let _ = apply_layers(
                        self.bpf.as_mut(),
                        self.layers,
                        &old.policy,
                        old.uid,
                        &old.rules,
                    );
                }
                None => {
                    let _ = remove_layers(self.bpf.as_mut(), self.layers, name, uid);
                }
            }
            return Err(e);
        }
        if let Some(old_uid) = previous_uid.filter(|&u| u != uid)
            && let Some(layer) = self.bpf.as_mut()
        {
            // The instance changed users: the old UID is no longer confined by it.
            let _ = layer.remove_instance(old_uid);
        }
        Ok(())
    }

    /// Takes an instance's enforcement away.
    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        let Some(instance) = self.instances.get(name) else {
            return Ok(());
        };
        remove_layers(self.bpf.as_mut(), self.layers, name, instance.uid)?;
        self.instances.remove(name);
        tracing::info!(instance = name, "enforcement removed");
        Ok(())
    }

    /// Removes what an earlier daemon enforced that this one no longer knows: instances in the
    /// state file and UIDs in the pinned maps without a current instance.
    pub fn forget_stale(&mut self, previous: &Enforced) {
        for (name, record) in &previous.instances {
            if !self.instances.contains_key(name) {
                let _ = remove_layers(self.bpf.as_mut(), self.layers, name, record.uid);
                tracing::info!(
                    instance = name,
                    "removed: no longer in the policy directory"
                );
            }
        }
        let current: BTreeSet<u32> = self.instances.values().map(|i| i.uid).collect();
        if let Some(layer) = self.bpf.as_mut() {
            for uid in layer.instances() {
                if !current.contains(&uid) {
                    let _ = layer.remove_instance(uid);
                }
            }
        }
        self.save_state();
    }

    /// Moves block events from the ring buffer to the audit trail.
    pub fn pump_events(&mut self) {
        let Some(layer) = self.bpf.as_mut() else {
            return;
        };
        let events = match layer.read_events() {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!("reading block events: {e}");
                return;
            }
        };
        for event in events {
            self.stats.events_received += 1;
            let Some((name, instance)) =
                self.instances.iter_mut().find(|(_, i)| i.uid == event.uid)
            else {
                continue;
            };
            self.audit
                .record(name, &instance.policy.network.log.rate, &event);
            if instance.recent.len() == RECENT_BLOCKS {
                instance.recent.pop_front();
            }
            instance.recent.push_back(event.to_string());
        }
    }

    /// Removes every instance's enforcement (for `isolate daemon --cleanup`).
    pub fn remove_all(&mut self) -> Vec<(String, String)> {
        let names: Vec<String> = self.instances.keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|name| self.remove(&name).err().map(|e| (name, e)))
            .collect()
    }

    pub fn record(&self) -> Enforced {
        Enforced {
            instances: self
                .instances
                .iter()
                .map(|(name, i)| {
                    (
                        name.clone(),
                        InstanceRecord {
                            uid: i.uid,
                            user: i.user.clone(),
                            source: i.policy.source.clone(),
                            policy_hash: i.hash.clone(),
                            layers: self
                                .layers
                                .names()
                                .iter()
                                .map(ToString::to_string)
                                .collect(),
                            entries_v4: i.rules.v4.len(),
                            entries_v6: i.rules.v6.len(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn save_state(&self) {
        if let Err(e) = self.record().save(&self.state_dir) {
            tracing::warn!(
                "cannot write {}: {e}",
                Enforced::path(&self.state_dir).display()
            );
        }
    }
}

fn apply_layers(
    bpf: Option<&mut BpfLayer>,
    layers: Layers,
    policy: &Policy,
    uid: u32,
    rules: &EffectiveRules,
) -> Result<(), String> {
    if let Some(layer) = bpf {
        let compiled = bpf::compile_rules(&rules.v4, &rules.v6)
            .map_err(|e| format!("{}: network.allow: {e}", policy.source.display()))?
            .with_unix_sockets(policy.network.unix_sockets.iter().cloned());
        layer
            .apply_instance(uid, &compiled)
            .map_err(|e| format!("eBPF layer: {e}"))?;
    }
    if layers.nftables {
        crate::nft::apply(&crate::nft::NftPolicy {
            instance: &policy.name,
            uid,
            v4: &rules.v4,
            v6: &rules.v6,
            log: &policy.network.log,
        })
        .map_err(|e| format!("nftables layer: {e}"))?;
    }
    Ok(())
}

fn remove_layers(
    bpf: Option<&mut BpfLayer>,
    layers: Layers,
    name: &str,
    uid: u32,
) -> Result<(), String> {
    if let Some(layer) = bpf {
        layer
            .remove_instance(uid)
            .map_err(|e| format!("eBPF layer: {e}"))?;
    }
    if layers.nftables {
        crate::nft::remove(name).map_err(|e| format!("nftables layer: {e}"))?;
    }
    Ok(())
}

/// Loads every policy of `dir`; files with errors are reported (file, errors) and skipped, so the
/// others still load.
fn load_policies(dir: &Path) -> (Vec<Policy>, Vec<(String, String)>) {
    match isolate_policy::load_dir(dir) {
        Ok(policies) => (policies, Vec::new()),
        Err(errors) => {
            let bad: BTreeSet<PathBuf> = errors.iter().map(|e| e.path.clone()).collect();
            let failed: Vec<(String, String)> = bad
                .iter()
                .map(|path| {
                    let text: Vec<String> = errors
                        .iter()
                        .filter(|e| &e.path == path)
                        .map(ToString::to_string)
                        .collect();
                    (path.display().to_string(), text.join("\n"))
                })
                .collect();
            for (_, text) in &failed {
                tracing::error!("{text}");
            }
            let good = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml") && !bad.contains(p))
                .filter_map(|p| isolate_policy::load_file(&p).ok())
                .collect();
            (good, failed)
        }
    }
}

/// A stable hash of what an instance's enforcement depends on.
fn policy_hash(policy: &Policy, rules: &EffectiveRules, uid: u32) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    policy.to_toml().hash(&mut hasher);
    rules.v4.hash(&mut hasher);
    rules.v6.hash(&mut hasher);
    uid.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
