//! The eBPF layer behind [`NetworkLayer`]: an attachment's maps, keyed by UID.

use isolate_ebpf_common::CounterKey;

use super::{BlockedCount, InstanceId, InstanceRules, LayerError, LayerKind, NetworkLayer};
use crate::bpf::{BpfLayer, CompiledRules, compile_rules, family_name, hook_name, protocol_name};
use crate::trusted_path;

impl NetworkLayer for BpfLayer {
    fn kind(&self) -> LayerKind {
        LayerKind::Ebpf
    }

    fn apply(
        &mut self,
        instance: &InstanceRules<'_>,
        replacing: Option<&InstanceId>,
    ) -> Result<(), LayerError> {
        self.apply_many(&[(*instance, replacing)])
            .pop()
            .expect("one result per instance")
    }

    /// One wait for the running programs for the whole batch (see `BpfLayer::apply_instances`).
    fn apply_many(
        &mut self,
        batch: &[(InstanceRules<'_>, Option<&InstanceId>)],
    ) -> Vec<Result<(), LayerError>> {
        let compiled: Vec<Result<CompiledRules, LayerError>> = batch
            .iter()
            .map(|(instance, _)| compile(instance))
            .collect();
        let ready: Vec<(u32, &CompiledRules)> = batch
            .iter()
            .zip(&compiled)
            .filter_map(|((instance, _), rules)| Some((instance.id.uid, rules.as_ref().ok()?)))
            .collect();
        let mut applied = self.apply_instances(&ready).into_iter();
        batch
            .iter()
            .zip(compiled)
            .map(|((instance, replacing), rules)| {
                rules?;
                applied.next().expect("one result per compiled instance")?;
                if let Some(old) = replacing.filter(|old| old.uid != instance.id.uid) {
                    // The instance changed users: its old UID is no longer confined by it.
                    self.remove_instance(old.uid)?;
                }
                Ok(())
            })
            .collect()
    }

    fn remove(&mut self, instance: &InstanceId) -> Result<(), LayerError> {
        Ok(self.remove_instance(instance.uid)?)
    }

    /// One pass over the maps for all of them; if that fails, each on its own, so that each
    /// failure is its own instance's.
    fn remove_many(&mut self, instances: &[InstanceId]) -> Vec<Result<(), LayerError>> {
        let uids: Vec<u32> = instances.iter().map(|id| id.uid).collect();
        match self.remove_instances(&uids) {
            Ok(()) => instances.iter().map(|_| Ok(())).collect(),
            Err(_) => instances.iter().map(|id| self.remove(id)).collect(),
        }
    }

    fn in_force(&self, instance: &InstanceId) -> Result<bool, LayerError> {
        Ok(self.is_attached() && self.is_confined(instance.uid)?)
    }

    fn counters(&self, instance: &InstanceId) -> Result<Vec<BlockedCount>, LayerError> {
        Ok(blocked(self.blocked_counts(instance.uid)?))
    }

    /// One pass over the counters for all of them (a few batch reads, not one lookup per
    /// counter and CPU: that was most of a status at 1,000 instances).
    fn counters_of(&self, instances: &[InstanceId]) -> Vec<Result<Vec<BlockedCount>, LayerError>> {
        let uids: Vec<u32> = instances.iter().map(|id| id.uid).collect();
        match self.blocked_counts_of(&uids) {
            Ok(mut by_uid) => instances
                .iter()
                .map(|id| Ok(blocked(by_uid.remove(&id.uid).unwrap_or_default())))
                .collect(),
            Err(e) => {
                tracing::debug!("reading all counters at once: {e}; reading each instead");
                instances.iter().map(|id| self.counters(id)).collect()
            }
        }
    }

    fn sweep(&mut self, keep: &[InstanceId]) -> Result<(), LayerError> {
        let gone: Vec<u32> = self
            .instances()
            .into_iter()
            .filter(|uid| !keep.iter().any(|id| id.uid == *uid))
            .collect();
        Ok(self.remove_instances(&gone)?)
    }

    fn reader(&self) -> Result<Box<dyn NetworkLayer>, LayerError> {
        Ok(Box::new(BpfLayer::open(self.pins().clone())?))
    }
}

/// The counters of one UID as the layer reports them.
fn blocked(counts: std::collections::BTreeMap<CounterKey, u64>) -> Vec<BlockedCount> {
    counts
        .into_iter()
        .map(|(key, count)| BlockedCount {
            layer: LayerKind::Ebpf,
            family: family_name(key.family).into(),
            protocol: protocol_name(key.protocol).into(),
            hook: Some(hook_name(key.hook).into()),
            count,
        })
        .collect()
}

/// `instance`'s rules as the programs' maps hold them, its unix socket paths resolved as root.
fn compile(instance: &InstanceRules<'_>) -> Result<CompiledRules, LayerError> {
    let network = &instance.policy.network;
    // Root resolves the socket paths: a link the instance planted must not redirect them.
    let writer = trusted_path::Writer::of_uid(instance.id.uid);
    let sockets = network
        .unix_sockets
        .iter()
        .map(|path| trusted_path::resolve(path, writer))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LayerError::UntrustedSocketPath {
            file: instance.policy.source.clone(),
            source: Box::new(source),
        })?;
    Ok(compile_rules(&instance.rules.v4, &instance.rules.v6)
        .and_then(|rules| rules.with_listen(&network.listen_v4, &network.listen_v6))
        .map_err(|source| LayerError::Rules {
            file: instance.policy.source.clone(),
            source,
        })?
        .with_unix_sockets(sockets)
        .observing(instance.rules.observe))
}
