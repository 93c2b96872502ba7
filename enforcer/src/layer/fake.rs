//! A network layer that only records, for testing what composes layers (the layer set, the
//! daemon's registry) without root or a kernel. Its state is shared with a [`FakeLog`] the
//! test keeps, so a test can look inside and make the next call fail.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{BlockedCount, InstanceId, InstanceRules, LayerError, LayerKind, NetworkLayer};

/// One call the layer received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Apply(InstanceId),
    Remove(InstanceId),
}

#[derive(Default)]
struct State {
    /// What is in force: instance → the number of v4 rules applied (enough to tell policies
    /// apart in tests).
    enforced: BTreeMap<InstanceId, usize>,
    steps: Vec<Step>,
    fail_apply: Option<String>,
    fail_remove: Option<String>,
    blocked: BTreeMap<InstanceId, u64>,
}

pub struct FakeLayer {
    kind: LayerKind,
    state: Arc<Mutex<State>>,
}

/// The test's view of a [`FakeLayer`].
#[derive(Clone)]
pub struct FakeLog(Arc<Mutex<State>>);

/// An eBPF and an nftables fake composed as the real layers are, with the test's view of
/// each.
pub fn layer_pair() -> (super::LayerSet, FakeLog, FakeLog) {
    let (ebpf, ebpf_log) = FakeLayer::new(LayerKind::Ebpf);
    let (nft, nft_log) = FakeLayer::new(LayerKind::Nftables);
    (
        super::LayerSet::new(vec![Box::new(ebpf), Box::new(nft)]),
        ebpf_log,
        nft_log,
    )
}

impl FakeLayer {
    pub fn new(kind: LayerKind) -> (Self, FakeLog) {
        let state = Arc::new(Mutex::new(State::default()));
        (
            Self {
                kind,
                state: Arc::clone(&state),
            },
            FakeLog(state),
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FakeLog {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn fail_next_apply(&self, why: &str) {
        self.state().fail_apply = Some(why.into());
    }

    pub fn fail_next_remove(&self, why: &str) {
        self.state().fail_remove = Some(why.into());
    }

    /// The instances in force.
    pub fn enforced(&self) -> Vec<InstanceId> {
        self.state().enforced.keys().cloned().collect()
    }

    /// The number of IPv4 rules in force for the instance named `name`.
    pub fn v4_rules(&self, name: &str) -> Option<usize> {
        let state = self.state();
        state
            .enforced
            .iter()
            .find(|(id, _)| id.name == name)
            .map(|(_, n)| *n)
    }

    pub fn steps(&self) -> Vec<Step> {
        self.state().steps.clone()
    }

    /// Puts something in force behind the composer's back (as an earlier daemon left it).
    pub fn preload(&self, id: InstanceId, v4_rules: usize) {
        self.state().enforced.insert(id, v4_rules);
    }

    /// Takes something out of force behind the composer's back (deleted by hand).
    pub fn forget(&self, id: &InstanceId) {
        self.state().enforced.remove(id);
    }
}

impl NetworkLayer for FakeLayer {
    fn kind(&self) -> LayerKind {
        self.kind
    }

    fn apply(
        &mut self,
        instance: &InstanceRules<'_>,
        replacing: Option<&InstanceId>,
    ) -> Result<(), LayerError> {
        let mut state = self.state();
        state.steps.push(Step::Apply(instance.id.clone()));
        if let Some(why) = state.fail_apply.take() {
            return Err(LayerError::Fake(self.kind, why));
        }
        if let Some(old) = replacing {
            state.enforced.remove(old);
        }
        state
            .enforced
            .insert(instance.id.clone(), instance.rules.v4.len());
        Ok(())
    }

    fn remove(&mut self, instance: &InstanceId) -> Result<(), LayerError> {
        let mut state = self.state();
        state.steps.push(Step::Remove(instance.clone()));
        if let Some(why) = state.fail_remove.take() {
            return Err(LayerError::Fake(self.kind, why));
        }
        state.enforced.remove(instance);
        Ok(())
    }

    fn in_force(&self, instance: &InstanceId) -> Result<bool, LayerError> {
        Ok(self.state().enforced.contains_key(instance))
    }

    fn counters(&self, instance: &InstanceId) -> Result<Vec<BlockedCount>, LayerError> {
        let count = self.state().blocked.get(instance).copied().unwrap_or(0);
        Ok(vec![BlockedCount {
            layer: self.kind,
            family: "ipv4".into(),
            protocol: "tcp".into(),
            hook: None,
            count,
        }])
    }

    fn sweep(&mut self, keep: &[InstanceId]) -> Result<(), LayerError> {
        self.state().enforced.retain(|id, _| keep.contains(id));
        Ok(())
    }

    fn reader(&self) -> Result<Box<dyn NetworkLayer>, LayerError> {
        Ok(Box::new(Self {
            kind: self.kind,
            state: Arc::clone(&self.state),
        }))
    }
}
