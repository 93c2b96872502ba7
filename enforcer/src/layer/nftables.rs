//! The nftables layer behind [`NetworkLayer`]: one table per instance, by name.

use super::{BlockedCount, InstanceId, InstanceRules, LayerError, LayerKind, NetworkLayer};
use crate::nft::{self, NftPolicy};

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
        nft::apply(&NftPolicy {
            instance: &instance.id.name,
            uid: instance.id.uid,
            v4: &instance.rules.v4,
            v6: &instance.rules.v6,
            hosts: &instance.policy.network.hosts,
            dns_redirect: instance.rules.dns_translated_to,
            log: &instance.policy.network.log,
        })?;
        Ok(())
    }

    fn remove(&mut self, instance: &InstanceId) -> Result<(), LayerError> {
        Ok(nft::remove(&instance.name)?)
    }

    fn in_force(&self, instance: &InstanceId) -> Result<bool, LayerError> {
        Ok(nft::is_applied(&instance.name)?)
    }

    fn counters(&self, instance: &InstanceId) -> Result<Vec<BlockedCount>, LayerError> {
        let counters = match nft::counters(&instance.name) {
            Ok(counters) => counters,
            // No table, nothing counted.
            Err(nft::NftError::NotApplied { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(nft::COUNTERS
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
            .collect())
    }

    fn sweep(&mut self, _keep: &[InstanceId]) -> Result<(), LayerError> {
        Ok(())
    }

    fn reader(&self) -> Result<Box<dyn NetworkLayer>, LayerError> {
        Ok(Box::new(*self))
    }
}
