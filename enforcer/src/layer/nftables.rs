//! The nftables layer behind [`NetworkLayer`]: one table per instance, by name.

use super::{BlockedCount, InstanceId, InstanceRules, LayerError, LayerKind, NetworkLayer};
use crate::nft::{self, NftPolicy};

/// Instances below which a batch is not split into several transactions: each `nft` run
/// costs a few milliseconds of its own.
const LEAST_PER_TRANSACTION: usize = 16;

/// Applies `batch` in one transaction; one by one when nft refuses it, to find who it
/// refuses.
fn apply_in_one_transaction(
    batch: &[(InstanceRules<'_>, Option<&InstanceId>)],
) -> Vec<Result<(), LayerError>> {
    if batch.len() > 1 {
        let policies: Vec<NftPolicy> = batch.iter().map(|(new, _)| nft_policy(new)).collect();
        match nft::apply_many(&policies) {
            Ok(()) => return batch.iter().map(|_| Ok(())).collect(),
            Err(e) => tracing::info!(
                "applying {} instances in one nftables transaction failed ({e}); applying them \
                 one by one",
                batch.len()
            ),
        }
    }
    batch
        .iter()
        .map(|(new, replacing)| NftLayer.apply(new, *replacing))
        .collect()
}

/// The nftables layer. It keeps no state of its own: the kernel's tables are the state.
#[derive(Debug, Clone, Copy, Default)]
pub struct NftLayer;

impl NetworkLayer for NftLayer {
    fn kind(&self) -> LayerKind {
        LayerKind::Nftables
    }

    /// The table is named after the instance, so replacing it also replaces the rules of a
    /// previous UID: `replacing` needs nothing more.
    fn apply(
        &mut self,
        instance: &InstanceRules<'_>,
        _replacing: Option<&InstanceId>,
    ) -> Result<(), LayerError> {
        nft::apply(&nft_policy(instance))?;
        Ok(())
    }

    /// One transaction for many; one by one when nft refuses it, to find who it refuses. `nft`
    /// parses a transaction on one CPU (two thirds of a second for 100 tables of 1,000
    /// elements), so a large batch goes as one transaction per CPU, side by side.
    fn apply_many(
        &mut self,
        batch: &[(InstanceRules<'_>, Option<&InstanceId>)],
    ) -> Vec<Result<(), LayerError>> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let transactions = (batch.len() / LEAST_PER_TRANSACTION).clamp(1, cpus);
        let size = batch.len().div_ceil(transactions).max(1);
        std::thread::scope(|scope| {
            let running: Vec<_> = batch
                .chunks(size)
                .map(|part| scope.spawn(|| apply_in_one_transaction(part)))
                .collect();
            running
                .into_iter()
                .flat_map(|part| {
                    part.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }

    fn remove(&mut self, instance: &InstanceId) -> Result<(), LayerError> {
        Ok(nft::remove(&instance.name)?)
    }

    /// One transaction for all (one `nft` run each made a cleanup of 1,000 instances take
    /// minutes); one by one when nft refuses it, to find who it refuses.
    fn remove_many(&mut self, instances: &[InstanceId]) -> Vec<Result<(), LayerError>> {
        if instances.len() > 1 {
            let names: Vec<&str> = instances.iter().map(|id| id.name.as_str()).collect();
            match nft::remove_many(&names) {
                Ok(()) => return instances.iter().map(|_| Ok(())).collect(),
                Err(e) => tracing::info!(
                    "removing {} instances in one nftables transaction failed ({e}); removing \
                     them one by one",
                    instances.len()
                ),
            }
        }
        instances.iter().map(|id| self.remove(id)).collect()
    }

    fn in_force(&self, instance: &InstanceId) -> Result<bool, LayerError> {
        Ok(nft::is_applied(&instance.name)?)
    }

    fn counters(&self, instance: &InstanceId) -> Result<Vec<BlockedCount>, LayerError> {
        match nft::counters(&instance.name) {
            Ok(counters) => Ok(blocked_counts(&counters)),
            // No table, nothing counted.
            Err(nft::NftError::NotApplied { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// One `nft` run for every instance; if it fails, each instance is read on its own and
    /// reports its own error.
    fn counters_of(&self, instances: &[InstanceId]) -> Vec<Result<Vec<BlockedCount>, LayerError>> {
        match nft::all_counters() {
            Ok(tables) => instances
                .iter()
                .map(|id| Ok(tables.get(&id.name).map(blocked_counts).unwrap_or_default()))
                .collect(),
            Err(e) => {
                tracing::debug!("reading every table's counters at once: {e}");
                instances.iter().map(|id| self.counters(id)).collect()
            }
        }
    }

    fn sweep(&mut self, _keep: &[InstanceId]) -> Result<(), LayerError> {
        Ok(())
    }

    fn reader(&self) -> Result<Box<dyn NetworkLayer>, LayerError> {
        Ok(Box::new(*self))
    }
}

fn nft_policy<'a>(instance: &InstanceRules<'a>) -> NftPolicy<'a> {
    NftPolicy {
        instance: &instance.id.name,
        uid: instance.id.uid,
        v4: &instance.rules.v4,
        v6: &instance.rules.v6,
        hosts: &instance.policy.network.hosts,
        dns_redirect: instance.rules.dns_translated_to,
        log: &instance.policy.network.log,
        observe: instance.rules.observe,
    }
}

/// The layer's counts from a table's named counters (`blocked_v4_tcp`, …).
fn blocked_counts(counters: &std::collections::BTreeMap<String, u64>) -> Vec<BlockedCount> {
    nft::COUNTERS
        .iter()
        .filter_map(|&(name, family, protocol)| {
            Some(BlockedCount {
                layer: LayerKind::Nftables,
                family: family.into(),
                protocol: protocol.into(),
                hook: None,
                count: *counters.get(name)?,
            })
        })
        .collect()
}
