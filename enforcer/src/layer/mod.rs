//! The network layers behind one shape. Each layer (eBPF, nftables) puts an instance's rules
//! in force, takes them away, reads its counters and says whether they are in force, through
//! [`NetworkLayer`]; [`LayerSet`] composes the layers an instance has, with rollback, and is
//! the only place that does. `isolate exec` and the daemon both use it, and the daemon's
//! registry is tested against a fake layer.
//!
//! Landlock is not one of these: it restricts a process (the child restricts itself before it
//! executes the command) rather than a UID or a cgroup, and has nothing to remove afterwards.

mod ebpf;
#[cfg(test)]
pub mod fake;
mod nftables;

use std::fmt;
use std::path::PathBuf;

use isolate_policy::Policy;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bpf::{BpfError, RulesError};
use crate::network::EffectiveRules;
use crate::nft::NftError;

pub use nftables::NftLayer;

/// Which network layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// cgroup socket hooks, the egress backstop and the unix-socket LSM programs.
    Ebpf,
    /// A table `inet isolate-<instance>` per instance.
    Nftables,
}

impl LayerKind {
    /// The name the CLI, metrics and status use.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Ebpf => "ebpf",
            LayerKind::Nftables => "nftables",
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of the network layers to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    pub ebpf: bool,
    pub nftables: bool,
}

impl Layers {
    /// The layers that are on, in the order they are applied.
    pub fn kinds(self) -> Vec<LayerKind> {
        [
            (LayerKind::Ebpf, self.ebpf),
            (LayerKind::Nftables, self.nftables),
        ]
        .into_iter()
        .filter_map(|(kind, on)| on.then_some(kind))
        .collect()
    }

    /// The names of the layers that are on, as the CLI spells them.
    pub fn names(self) -> Vec<&'static str> {
        self.kinds().into_iter().map(LayerKind::as_str).collect()
    }
}

impl Default for Layers {
    fn default() -> Self {
        Self {
            ebpf: true,
            nftables: true,
        }
    }
}

/// Who an instance is to the layers: its name (nftables tables) and UID (eBPF maps).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    pub name: String,
    pub uid: u32,
}

/// What a layer enforces for one instance: the validated policy (file, unix sockets, log rate)
/// and its address rules with host names resolved.
#[derive(Debug, Clone, Copy)]
pub struct InstanceRules<'a> {
    pub id: &'a InstanceId,
    pub policy: &'a Policy,
    pub rules: &'a EffectiveRules,
}

/// Blocked attempts one layer counted for an instance, for one family and protocol (and, for
/// the eBPF layer, the hook that refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedCount {
    pub layer: LayerKind,
    /// `ipv4`, `ipv6` or `unix`.
    pub family: String,
    /// `tcp`, `udp`, `other`; `stream`, `dgram` for unix sockets.
    pub protocol: String,
    /// The eBPF hook (`connect`, `sendmsg`, `egress`, `unix`); none for nftables.
    pub hook: Option<String>,
    pub count: u64,
}

#[derive(Debug, Error)]
pub enum LayerError {
    #[error("eBPF layer: {0}")]
    Bpf(#[from] BpfError),
    #[error("{file}: network.allow: {source}")]
    Rules {
        file: PathBuf,
        #[source]
        source: RulesError,
    },
    #[error("{file}: network.unix_sockets: {source}")]
    UntrustedSocketPath {
        file: PathBuf,
        #[source]
        source: Box<crate::trusted_path::UntrustedPath>,
    },
    #[error("nftables layer: {0}")]
    Nft(#[from] NftError),
    /// Only the test layer fails this way.
    #[cfg(test)]
    #[error("{0} layer: {1}")]
    Fake(LayerKind, String),
}

/// One network layer. Every method is idempotent: applying what is in force, or removing what
/// is not there, succeeds and changes nothing.
pub trait NetworkLayer: Send + Sync {
    fn kind(&self) -> LayerKind;

    /// Puts `instance`'s rules in force, replacing what the layer enforced for it (or for
    /// `replacing`, the same instance under its previous UID) in one step: a connection sees
    /// the old rules or the new ones, never a mix, never none. On error nothing changed.
    fn apply(
        &mut self,
        instance: &InstanceRules<'_>,
        replacing: Option<&InstanceId>,
    ) -> Result<(), LayerError>;

    /// Applies each of `batch` (an instance's rules and the instance they replace) as `apply`
    /// would, returning each result in order. A layer that can put many in force at once
    /// (nftables: one transaction rather than one `nft` run each) does so here, and falls back
    /// to one by one when that fails, so that one refused instance holds up no other.
    fn apply_many(
        &mut self,
        batch: &[(InstanceRules<'_>, Option<&InstanceId>)],
    ) -> Vec<Result<(), LayerError>> {
        batch
            .iter()
            .map(|(new, replacing)| self.apply(new, *replacing))
            .collect()
    }

    /// Takes the instance's rules away; its processes are no longer judged by this layer.
    fn remove(&mut self, instance: &InstanceId) -> Result<(), LayerError>;

    /// Removes each of `instances` as `remove` would, returning each result in order. A layer
    /// that can remove many at once (eBPF: one pass over its maps) does so here.
    fn remove_many(&mut self, instances: &[InstanceId]) -> Vec<Result<(), LayerError>> {
        instances.iter().map(|id| self.remove(id)).collect()
    }

    /// Whether rules for the instance are in force (attached and present, not only recorded).
    fn in_force(&self, instance: &InstanceId) -> Result<bool, LayerError>;

    /// What the layer refused for the instance so far.
    fn counters(&self, instance: &InstanceId) -> Result<Vec<BlockedCount>, LayerError>;

    /// What the layer refused for each of `instances`, in their order. A layer that can read
    /// them all at once (nftables: one `nft` run, not two per instance) does so here.
    fn counters_of(&self, instances: &[InstanceId]) -> Vec<Result<Vec<BlockedCount>, LayerError>> {
        instances.iter().map(|id| self.counters(id)).collect()
    }

    /// Removes what the layer enforces for anyone not in `keep`, where it can tell its own
    /// instances from others' (an eBPF attachment holds only its owner's UIDs; nftables
    /// tables are shared with `isolate exec` runs, so that layer leaves them alone).
    fn sweep(&mut self, keep: &[InstanceId]) -> Result<(), LayerError>;

    /// Another handle on the same enforcement, for reading counters on another thread
    /// while this one changes rules.
    fn reader(&self) -> Result<Box<dyn NetworkLayer>, LayerError>;
}

/// A layer refused an instance's rules; the layers that took them were put back.
#[derive(Debug, Error)]
#[error("{source}{}{}", also_text(.also), rollback_text(.rollback))]
pub struct ApplyError {
    /// The refusal of the first layer (in the set's order) that refused. Boxed: the error
    /// travels in many `Result`s, mostly as their rare case.
    #[source]
    pub source: Box<LayerError>,
    /// The later layers' refusals of the same rules, if any refused too.
    pub also: Vec<LayerError>,
    /// Layers that could not be put back as they were (the instance is then half-applied,
    /// and the next apply or removal retries).
    pub rollback: Vec<LayerError>,
}

fn also_text(also: &[LayerError]) -> String {
    use std::fmt::Write as _;
    also.iter().fold(String::new(), |mut text, e| {
        let _ = write!(text, "; and {e}");
        text
    })
}

fn rollback_text(rollback: &[LayerError]) -> String {
    use std::fmt::Write as _;
    rollback.iter().fold(String::new(), |mut text, e| {
        let _ = write!(text, "; and putting back the previous rules failed: {e}");
        text
    })
}

/// Some layers could not remove an instance; the others did.
#[derive(Debug, Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RemoveError(pub Vec<LayerError>);

/// The network layers an instance is enforced by, applied side by side and removed in
/// reverse order.
#[derive(Default)]
pub struct LayerSet {
    layers: Vec<Box<dyn NetworkLayer>>,
}

impl LayerSet {
    pub fn new(layers: Vec<Box<dyn NetworkLayer>>) -> Self {
        Self { layers }
    }

    pub fn kinds(&self) -> Vec<LayerKind> {
        self.layers.iter().map(|l| l.kind()).collect()
    }

    /// The layers, in order.
    pub fn each(&self) -> impl Iterator<Item = &dyn NetworkLayer> {
        self.layers.iter().map(AsRef::as_ref)
    }

    /// Applies `new` in every layer. When one refuses, the layers that took it get
    /// `previous` back (or lose the instance, when it is new), so the instance stays on its
    /// previous rules everywhere.
    pub fn apply(
        &mut self,
        new: &InstanceRules<'_>,
        previous: Option<&InstanceRules<'_>>,
    ) -> Result<(), ApplyError> {
        self.apply_many(&[(*new, previous.copied())])
            .pop()
            .expect("one result per instance")
    }

    /// Applies each of `batch` (new rules, previous rules) as `apply` would, each layer taking
    /// all of them at once where it can; each result in order. The layers apply side by side,
    /// on a thread each: they are independent, and the slowest (nftables, whose `nft` parses
    /// every table) would otherwise wait for the others. An instance any layer refuses is put
    /// back as it was in the layers that took it.
    pub fn apply_many(
        &mut self,
        batch: &[(InstanceRules<'_>, Option<InstanceRules<'_>>)],
    ) -> Vec<Result<(), ApplyError>> {
        let items: Vec<_> = batch
            .iter()
            .map(|(new, previous)| (*new, previous.map(|p| p.id)))
            .collect();
        let outcomes: Vec<Vec<Result<(), LayerError>>> = std::thread::scope(|scope| {
            let running: Vec<_> = self
                .layers
                .iter_mut()
                .map(|layer| scope.spawn(|| layer.apply_many(&items)))
                .collect();
            running
                .into_iter()
                .map(|layer| {
                    layer
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut outcomes: Vec<_> = outcomes.into_iter().map(Vec::into_iter).collect();
        batch
            .iter()
            .map(|(new, previous)| {
                let mut took = Vec::new();
                let mut refusals = Vec::new();
                for (index, layer) in outcomes.iter_mut().enumerate() {
                    match layer.next().expect("a layer answers for every instance") {
                        Ok(()) => took.push(index),
                        Err(refusal) => refusals.push(refusal),
                    }
                }
                let mut refusals = refusals.into_iter();
                match refusals.next() {
                    None => Ok(()),
                    Some(source) => Err(ApplyError {
                        source: Box::new(source),
                        also: refusals.collect(),
                        rollback: self.roll_back(&took, new.id, previous.as_ref()),
                    }),
                }
            })
            .collect()
    }

    /// Puts the layers at `took` (those that applied `new`) back on `previous`, in reverse
    /// order; without `previous`, they lose the instance.
    fn roll_back(
        &mut self,
        took: &[usize],
        new: &InstanceId,
        previous: Option<&InstanceRules<'_>>,
    ) -> Vec<LayerError> {
        took.iter()
            .rev()
            .filter_map(|&index| {
                let layer = &mut self.layers[index];
                match previous {
                    Some(previous) => layer.apply(previous, Some(new)),
                    None => layer.remove(new),
                }
                .err()
            })
            .collect()
    }

    /// Removes the instance from every layer, in reverse order; a layer that fails does not
    /// stop the others.
    pub fn remove(&mut self, id: &InstanceId) -> Result<(), RemoveError> {
        self.remove_many(std::slice::from_ref(id))
            .pop()
            .expect("one result per instance")
    }

    /// [`remove`](Self::remove) of each of `ids`, every layer asked once for all of them;
    /// each instance's result in order.
    pub fn remove_many(&mut self, ids: &[InstanceId]) -> Vec<Result<(), RemoveError>> {
        let mut errors: Vec<Vec<LayerError>> = ids.iter().map(|_| Vec::new()).collect();
        for layer in self.layers.iter_mut().rev() {
            for (errors, removed) in errors.iter_mut().zip(layer.remove_many(ids)) {
                errors.extend(removed.err());
            }
        }
        errors
            .into_iter()
            .map(|errors| {
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(RemoveError(errors))
                }
            })
            .collect()
    }

    /// Whether every layer has the instance in force.
    pub fn in_force(&self, id: &InstanceId) -> Result<bool, LayerError> {
        for layer in &self.layers {
            if !layer.in_force(id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every layer's counters of the instance; a layer that cannot be read is logged and
    /// left out rather than hiding the others.
    pub fn counters(&self, id: &InstanceId) -> Vec<BlockedCount> {
        self.counters_of(std::slice::from_ref(id))
            .pop()
            .unwrap_or_default()
    }

    /// The counters of each of `ids`, in their order, every layer read once for all of them,
    /// the layers side by side (each waits mostly on the kernel).
    pub fn counters_of(&self, ids: &[InstanceId]) -> Vec<Vec<BlockedCount>> {
        let reads: Vec<Vec<Result<Vec<BlockedCount>, LayerError>>> = std::thread::scope(|scope| {
            let readers: Vec<_> = self
                .layers
                .iter()
                .map(|layer| scope.spawn(|| layer.counters_of(ids)))
                .collect();
            readers
                .into_iter()
                .map(|reader| reader.join().expect("a layer's counter read panicked"))
                .collect()
        });
        let mut counts = vec![Vec::new(); ids.len()];
        for layer_reads in reads {
            for ((id, counts), read) in ids.iter().zip(&mut counts).zip(layer_reads) {
                match read {
                    Ok(more) => counts.extend(more),
                    Err(e) => tracing::warn!(instance = id.name, "reading counters: {e}"),
                }
            }
        }
        counts
    }

    /// Removes, in every layer, what belongs to none of `keep`.
    pub fn sweep(&mut self, keep: &[InstanceId]) -> Result<(), RemoveError> {
        let errors: Vec<LayerError> = self
            .layers
            .iter_mut()
            .filter_map(|layer| layer.sweep(keep).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RemoveError(errors))
        }
    }

    /// Independent handles on the same layers, for reading counters elsewhere.
    pub fn reader(&self) -> Result<LayerSet, LayerError> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|l| l.reader())
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Step, layer_pair};
    use super::*;

    fn policy(name: &str) -> Policy {
        isolate_policy::parse_str(
            "user = \"u\"\n",
            &std::path::Path::new("/etc/isolate/instances").join(format!("{name}.toml")),
        )
        .unwrap()
    }

    fn id(uid: u32) -> InstanceId {
        InstanceId {
            name: "a".into(),
            uid,
        }
    }

    #[test]
    fn a_refusing_layer_puts_the_earlier_ones_back() {
        let (mut set, ebpf_log, nft_log) = layer_pair();
        let policy = policy("a");
        let rules = EffectiveRules::default();
        let (old, new) = (id(1000), id(1001));
        let old_rules = InstanceRules {
            id: &old,
            policy: &policy,
            rules: &rules,
        };
        set.apply(&old_rules, None).unwrap();
        nft_log.fail_next_apply("table refused");
        let new_rules = InstanceRules {
            id: &new,
            ..old_rules
        };
        let error = set.apply(&new_rules, Some(&old_rules)).unwrap_err();
        assert!(error.to_string().contains("table refused"), "{error}");
        assert!(error.rollback.is_empty());
        // eBPF took the new UID, then got the old one back; nftables never changed.
        assert_eq!(ebpf_log.enforced(), vec![old.clone()]);
        assert_eq!(nft_log.enforced(), vec![old.clone()]);
        assert_eq!(
            ebpf_log.steps(),
            [
                Step::Apply(old.clone()),
                Step::Apply(new.clone()),
                Step::Apply(old.clone())
            ]
        );
    }

    /// Two instances, `a` (UID 1000) and `b` (UID 1001).
    fn a_and_b() -> (InstanceId, InstanceId) {
        let b = InstanceId {
            name: "b".into(),
            uid: 1001,
        };
        (id(1000), b)
    }

    #[test]
    fn in_a_batch_a_refused_instance_is_put_back_and_the_others_are_applied() {
        let (mut set, ebpf_log, nft_log) = layer_pair();
        let (policy_a, policy_b) = (policy("a"), policy("b"));
        let rules = EffectiveRules::default();
        let (a, b) = a_and_b();
        let rules_a = InstanceRules {
            id: &a,
            policy: &policy_a,
            rules: &rules,
        };
        let rules_b = InstanceRules {
            id: &b,
            policy: &policy_b,
            rules: &rules,
        };
        // The nftables layer refuses the first instance it is asked for: a.
        nft_log.fail_next_apply("table refused");
        let results = set.apply_many(&[(rules_a, None), (rules_b, None)]);
        assert!(results[0].is_err(), "{results:?}");
        assert!(results[1].is_ok(), "{results:?}");
        assert_eq!(ebpf_log.enforced(), vec![b.clone()]);
        assert_eq!(nft_log.enforced(), vec![b.clone()]);
        // eBPF took both, then lost a again; nftables was asked for both and took b.
        assert_eq!(
            ebpf_log.steps(),
            [
                Step::Apply(a.clone()),
                Step::Apply(b.clone()),
                Step::Remove(a.clone())
            ]
        );
        assert_eq!(nft_log.steps(), [Step::Apply(a), Step::Apply(b)]);
    }

    #[test]
    fn a_refusal_by_the_first_layer_is_put_back_in_the_later_ones() {
        let (mut set, ebpf_log, nft_log) = layer_pair();
        let policy = policy("a");
        let rules = EffectiveRules::default();
        let (old, new) = (id(1000), id(1001));
        let old_rules = InstanceRules {
            id: &old,
            policy: &policy,
            rules: &rules,
        };
        set.apply(&old_rules, None).unwrap();
        // Both refuse: the error tells both reasons, the first layer's first.
        ebpf_log.fail_next_apply("maps full");
        nft_log.fail_next_apply("table refused");
        let new_rules = InstanceRules {
            id: &new,
            ..old_rules
        };
        let error = set.apply(&new_rules, Some(&old_rules)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.find("maps full") < text.find("table refused") && error.also.len() == 1,
            "{text}"
        );
        // Now only eBPF refuses: nftables, which took the new rules, gets the old ones back.
        ebpf_log.fail_next_apply("maps full");
        set.apply(&new_rules, Some(&old_rules)).unwrap_err();
        assert_eq!(ebpf_log.enforced(), vec![old.clone()]);
        assert_eq!(nft_log.enforced(), vec![old.clone()]);
        assert_eq!(
            nft_log.steps(),
            [
                Step::Apply(old.clone()),
                Step::Apply(new.clone()),
                Step::Apply(new),
                Step::Apply(old)
            ]
        );
    }

    #[test]
    fn a_new_instance_that_a_layer_refuses_is_removed_from_the_others() {
        let (mut set, ebpf_log, nft_log) = layer_pair();
        let policy = policy("a");
        let rules = EffectiveRules::default();
        let new = id(1000);
        nft_log.fail_next_apply("no nft");
        let rules = InstanceRules {
            id: &new,
            policy: &policy,
            rules: &rules,
        };
        set.apply(&rules, None).unwrap_err();
        assert!(ebpf_log.enforced().is_empty());
        assert!(nft_log.enforced().is_empty());
        assert!(!set.in_force(&new).unwrap());
    }

    #[test]
    fn removal_goes_on_past_a_failing_layer() {
        let (mut set, ebpf_log, nft_log) = layer_pair();
        let policy = policy("a");
        let rules = EffectiveRules::default();
        let a = id(1000);
        let rules = InstanceRules {
            id: &a,
            policy: &policy,
            rules: &rules,
        };
        set.apply(&rules, None).unwrap();
        nft_log.fail_next_remove("busy");
        let error = set.remove(&a).unwrap_err();
        assert_eq!(error.0.len(), 1, "{error}");
        assert!(ebpf_log.enforced().is_empty(), "eBPF removed all the same");
        assert_eq!(nft_log.enforced(), vec![a.clone()]);
        set.remove(&a).unwrap();
        assert!(nft_log.enforced().is_empty());
    }

    #[test]
    fn removing_many_reports_each_instance_and_goes_on_past_a_failure() {
        let (mut set, ebpf_log, nft_log) = layer_pair();
        let (policy_a, policy_b) = (policy("a"), policy("b"));
        let rules = EffectiveRules::default();
        let (a, b) = a_and_b();
        for (id, policy) in [(&a, &policy_a), (&b, &policy_b)] {
            let rules = InstanceRules {
                id,
                policy,
                rules: &rules,
            };
            set.apply(&rules, None).unwrap();
        }
        // nftables fails the first removal it is asked for: a's.
        nft_log.fail_next_remove("busy");
        let results = set.remove_many(&[a.clone(), b.clone()]);
        assert_eq!(results[0].as_ref().unwrap_err().0.len(), 1, "{results:?}");
        assert!(results[1].is_ok(), "{results:?}");
        assert!(ebpf_log.enforced().is_empty(), "eBPF removed both");
        assert_eq!(nft_log.enforced(), vec![a]);
    }
}
