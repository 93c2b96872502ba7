//! The instances the daemon enforces, kept in step with the policy directory. It fails closed:
//!
//! - each reload applies only what changed; a policy that fails to load, validate or apply
//!   leaves its instance on its last good enforcement, and says why;
//! - a directory that cannot be listed changes nothing;
//! - an instance is removed only when its file is gone, and a removal that a layer refused
//!   half-way is retried at every reload until it is done;
//! - after a restart, what an earlier daemon left pinned is adopted: without a rewrite when
//!   the policy is unchanged and every layer shows it in force, and kept as it is (its last
//!   good policy, saved in the state record) when the file has broken meanwhile.
//!
//! The registry only decides; the layers it is given do the work, and the daemon saves its
//! [`Registry::record`] after each change. Its logic is tested here against fake layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use isolate_policy::{Policy, UserSpec};
use thiserror::Error;

use crate::control::{DaemonStats, Failure, ReloadReport};
use crate::layer::{ApplyError, InstanceId, InstanceRules, LayerSet};
use crate::network::EffectiveRules;
use crate::user::UserError;

use super::state::{Enforced, InstanceRecord};

/// One enforced instance.
pub struct Instance {
    pub id: InstanceId,
    /// The policy in force: the file's, or its last good one while the file is broken.
    pub policy: Policy,
    pub user: String,
    pub rules: EffectiveRules,
    pub hash: String,
    /// The policy as the state file records it (`Policy::to_toml`), printed once.
    text: String,
    /// Why the instance runs on its last good policy, while it does.
    pub kept: Option<String>,
    /// Whether this daemon saw the layers hold what it records: true once it applied the
    /// instance itself or checked what an earlier daemon left, so an unchanged instance is
    /// not asked of every layer at each reload.
    verified: bool,
}

impl Instance {
    fn rules(&self) -> InstanceRules<'_> {
        InstanceRules {
            id: &self.id,
            policy: &self.policy,
            rules: &self.rules,
        }
    }
}

/// Finds the UID and name of a policy's (named) user.
pub type UserLookup = Box<dyn Fn(&Policy) -> Result<(u32, String), UserError> + Send>;
/// Computes a policy's address rules now (host names resolved, resolvers added).
pub type RulesLookup = Box<dyn Fn(&Policy) -> EffectiveRules + Send>;

/// What the registry asks of the system, so tests can answer instead.
pub struct Lookups {
    pub user: UserLookup,
    pub rules: RulesLookup,
}

/// What follows instances' DNS answers (the daemon's resolver per instance). The registry asks
/// it for the rules of a policy whose names it follows, and tells it what is in force.
pub trait FollowNames: Send {
    /// The rules of `policy` with its names followed, or `None` when they are resolved
    /// instead ([`Lookups::rules`]).
    fn rules(&mut self, policy: &Policy) -> Option<EffectiveRules>;
    /// `policy` is in force for `id`, applied or found unchanged.
    fn in_force(&mut self, id: &InstanceId, policy: &Policy);
    /// `id` is enforced no more.
    fn removed(&mut self, id: &InstanceId);
}

impl Lookups {
    /// The system's user database and resolver.
    pub fn system() -> Self {
        Self {
            user: Box::new(|policy| {
                let user = crate::user::InstanceUser::resolve(policy)?;
                Ok((user.uid, user.name.clone()))
            }),
            rules: Box::new(|policy| {
                let resolv_conf =
                    std::fs::read_to_string(crate::paths::RESOLV_CONF).unwrap_or_default();
                crate::network::effective_rules(
                    &policy.network,
                    &resolv_conf,
                    crate::network::system_resolve,
                )
            }),
        }
    }
}

/// Why one instance could not be (re)applied.
#[derive(Debug, Error)]
pub enum InstanceError {
    #[error(
        "{}: user: the daemon enforces by UID and needs a user that keeps its UID; set a \
         named user (dynamic users are for `isolate exec`)", .file.display()
    )]
    DynamicUser { file: PathBuf },
    #[error(transparent)]
    User(#[from] UserError),
    #[error(
        "{}: user: UID {uid} is already instance {other}'s; each instance needs its own user",
        .file.display()
    )]
    SharedUid {
        file: PathBuf,
        uid: u32,
        other: String,
    },
    #[error("instance {instance}: {source}")]
    Apply {
        instance: String,
        #[source]
        source: ApplyError,
    },
}

/// A policy checked and ready to be put in force, but not yet applied.
struct Pending {
    id: InstanceId,
    policy: Policy,
    user: String,
    rules: EffectiveRules,
    hash: String,
    text: String,
}

pub struct Registry {
    policy_dir: PathBuf,
    layers: LayerSet,
    lookups: Lookups,
    instances: BTreeMap<String, Instance>,
    /// Removals a layer refused, retried at every reload.
    removing: BTreeMap<String, InstanceId>,
    /// What an earlier daemon left enforced and this one has not taken over yet.
    adoptable: BTreeMap<String, InstanceRecord>,
    stats: DaemonStats,
    follow: Option<Box<dyn FollowNames>>,
}

impl Registry {
    pub fn new(policy_dir: PathBuf, layers: LayerSet, lookups: Lookups) -> Self {
        Self {
            policy_dir,
            layers,
            lookups,
            instances: BTreeMap::new(),
            removing: BTreeMap::new(),
            adoptable: BTreeMap::new(),
            stats: DaemonStats::default(),
            follow: None,
        }
    }

    /// Has `follow` follow the DNS answers of the instances whose names it takes.
    pub fn follow_names(&mut self, follow: Box<dyn FollowNames>) {
        self.follow = Some(follow);
    }

    /// The rules of `policy`: its names followed where they are, resolved otherwise.
    fn rules_of(&mut self, policy: &Policy) -> EffectiveRules {
        self.follow
            .as_mut()
            .and_then(|follow| follow.rules(policy))
            .unwrap_or_else(|| (self.lookups.rules)(policy))
    }

    pub fn policy_dir(&self) -> &Path {
        &self.policy_dir
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.get(name)
    }

    pub fn stats(&self) -> DaemonStats {
        self.stats
    }

    /// The first load after a start: takes over what `previous` (an earlier daemon's record)
    /// left enforced, then removes what that daemon enforced and no file asks for any more.
    pub fn start(&mut self, previous: Enforced) -> ReloadReport {
        self.adoptable = previous.instances;
        self.removing = previous
            .removing
            .into_iter()
            .map(|(name, uid)| (name.clone(), InstanceId { name, uid }))
            .collect();
        let mut report = self.reload();
        // Left over: instances whose file was removed while no daemon ran.
        for (name, record) in std::mem::take(&mut self.adoptable) {
            let id = InstanceId {
                name: name.clone(),
                uid: record.uid,
            };
            self.remove_id(id, &mut report);
        }
        // What the layers hold for no known instance (a daemon killed before it saved).
        let keep: Vec<InstanceId> = self
            .instances
            .values()
            .map(|i| i.id.clone())
            .chain(self.removing.values().cloned())
            .collect();
        if let Err(e) = self.layers.sweep(&keep) {
            report.failed.push(Failure {
                instance: None,
                file: None,
                reason: format!("removing what no instance owns: {e}"),
            });
        }
        report
    }

    /// Re-reads the policy directory and brings enforcement in line with it.
    pub fn reload(&mut self) -> ReloadReport {
        let mut report = ReloadReport::default();
        self.retry_removals(&mut report);
        match isolate_policy::load_dir_partly(&self.policy_dir) {
            Err(errors) => {
                // Nothing is known of the directory: everything stays as it is.
                let reason =
                    format!("the policy directory cannot be read, so nothing changed: {errors}");
                tracing::error!("{reason}");
                for name in self.adoptable.keys().cloned().collect::<Vec<_>>() {
                    self.adopt(&name);
                }
                for instance in self.instances.values_mut() {
                    instance.kept = Some(reason.clone());
                }
                report.failed.push(Failure {
                    instance: None,
                    file: Some(self.policy_dir.clone()),
                    reason,
                });
            }
            Ok(loaded) => {
                let mut broken = BTreeSet::new();
                for (file, errors) in loaded.failed {
                    let name = file_instance(&file);
                    let reason = errors.to_string();
                    tracing::error!("{reason}");
                    self.keep(&name, &reason);
                    broken.insert(name.clone());
                    report.failed.push(Failure {
                        instance: Some(name),
                        file: Some(file),
                        reason,
                    });
                }
                let wanted: BTreeSet<&str> =
                    loaded.policies.iter().map(|p| p.name.as_str()).collect();
                let gone: Vec<String> = self
                    .instances
                    .keys()
                    .filter(|name| !wanted.contains(name.as_str()) && !broken.contains(*name))
                    .cloned()
                    .collect();
                for name in gone {
                    let id = self.instances.remove(&name).expect("listed").id;
                    self.remove_id(id, &mut report);
                }
                self.apply_all(loaded.policies, &mut report);
            }
        }
        if report.failed.is_empty() {
            self.stats.reloads_ok += 1;
        } else {
            self.stats.reloads_failed += 1;
        }
        report
    }

    /// Puts every policy in force that is not yet, all of them at once in each layer (one
    /// nftables transaction for a daemon starting many instances); each one a layer refuses
    /// stays on its last good enforcement.
    fn apply_all(&mut self, policies: Vec<Policy>, report: &mut ReloadReport) {
        let mut pending: Vec<Pending> = Vec::new();
        for policy in policies {
            let name = policy.name.clone();
            let file = policy.source.clone();
            let prepared = self.prepare(policy).and_then(|prepared| match prepared {
                Some(p) => match pending.iter().find(|q| q.id.uid == p.id.uid) {
                    Some(other) => Err(InstanceError::SharedUid {
                        file: p.policy.source.clone(),
                        uid: p.id.uid,
                        other: other.id.name.clone(),
                    }),
                    None => Ok(Some(p)),
                },
                None => Ok(None),
            });
            match prepared {
                Ok(None) => {
                    self.settled(&name);
                    report.unchanged.push(name);
                }
                Ok(Some(p)) => pending.push(p),
                Err(e) => self.failed(name, file, &e, report),
            }
        }
        for (outcome, (name, file)) in self.apply_pending(pending) {
            match outcome {
                Ok(()) => {
                    self.settled(&name);
                    report.applied.push(name);
                }
                Err(e) => self.failed(name, file, &e, report),
            }
        }
    }

    /// The instance runs on its file's policy (no longer on a last good one).
    fn settled(&mut self, name: &str) {
        if let Some(instance) = self.instances.get_mut(name) {
            instance.kept = None;
        }
    }

    fn failed(
        &mut self,
        name: String,
        file: PathBuf,
        e: &InstanceError,
        report: &mut ReloadReport,
    ) {
        let reason = e.to_string();
        tracing::error!("{reason}");
        self.keep(&name, &reason);
        report.failed.push(Failure {
            instance: Some(name),
            file: Some(file),
            reason,
        });
    }

    /// Re-resolves every instance's host names and resolvers, applying those whose addresses
    /// changed (together, as a reload does). An instance on its last good policy stays on it.
    pub fn refresh(&mut self) {
        let policies: Vec<Policy> = self.instances.values().map(|i| i.policy.clone()).collect();
        let mut pending = Vec::new();
        for policy in policies {
            let name = policy.name.clone();
            match self.prepare(policy) {
                Ok(Some(p)) => pending.push(p),
                Ok(None) => {}
                Err(e) => tracing::warn!(instance = name, "refresh: {e}"),
            }
        }
        for (outcome, (name, _)) in self.apply_pending(pending) {
            if let Err(e) = outcome {
                tracing::warn!(instance = name, "refresh: {e}");
            }
        }
    }

    /// Checks `policy` (its user, its UID not another instance's); what to apply, or `None`
    /// when the layers already hold it.
    fn prepare(&mut self, policy: Policy) -> Result<Option<Pending>, InstanceError> {
        let name = policy.name.clone();
        if matches!(policy.user, UserSpec::Dynamic) {
            return Err(InstanceError::DynamicUser {
                file: policy.source.clone(),
            });
        }
        let (uid, user) = (self.lookups.user)(&policy)?;
        if let Some(other) = self
            .instances
            .values()
            .find(|i| i.id.name != name && i.id.uid == uid)
        {
            return Err(InstanceError::SharedUid {
                file: policy.source.clone(),
                uid,
                other: other.id.name.clone(),
            });
        }
        let rules = self.rules_of(&policy);
        let text = policy.to_toml();
        let hash = hash_of(&text, &rules, uid);
        let id = InstanceId { name, uid };
        if self.adopts_as_it_is(&id, &hash) {
            // The earlier daemon left this very policy in force: taken over with the file's
            // policy as it is parsed already, not the record's parsed again.
            let record = self.adoptable.remove(&id.name).expect("just checked");
            tracing::info!(instance = id.name, uid, "adopted from the earlier daemon");
            if let Some(follow) = self.follow.as_mut() {
                follow.in_force(&id, &policy);
            }
            self.instances.insert(
                id.name.clone(),
                Instance {
                    id,
                    policy,
                    user: record.user,
                    rules,
                    hash,
                    text,
                    kept: None,
                    verified: true,
                },
            );
            return Ok(None);
        }
        let name = id.name.clone();
        self.adopt(&name);
        if let Some(current) = self.instances.get_mut(&name)
            && current.hash == hash
            && current.id.uid == uid
            && (current.verified || self.layers.in_force(&current.id).unwrap_or(false))
        {
            current.verified = true;
            let id = current.id.clone();
            if let Some(follow) = self.follow.as_mut() {
                follow.in_force(&id, &policy);
            }
            return Ok(None);
        }
        Ok(Some(Pending {
            id,
            policy,
            user,
            rules,
            hash,
            text,
        }))
    }

    /// Whether an earlier daemon left `id` in force with the enforcement `hash` names, and
    /// no instance of this daemon is called so yet.
    fn adopts_as_it_is(&self, id: &InstanceId, hash: &str) -> bool {
        !self.instances.contains_key(&id.name)
            && self
                .adoptable
                .get(&id.name)
                .is_some_and(|record| record.policy_hash == hash && record.uid == id.uid)
            && self.layers.in_force(id).unwrap_or(false)
    }

    /// Applies `pending` in every layer at once and records each instance that is now in
    /// force; returns each outcome with the instance's name and file, in order.
    fn apply_pending(
        &mut self,
        pending: Vec<Pending>,
    ) -> Vec<(Result<(), InstanceError>, (String, PathBuf))> {
        let batch: Vec<_> = pending
            .iter()
            .map(|p| {
                let new = InstanceRules {
                    id: &p.id,
                    policy: &p.policy,
                    rules: &p.rules,
                };
                (new, self.instances.get(&p.id.name).map(Instance::rules))
            })
            .collect();
        let results = self.layers.apply_many(&batch);
        drop(batch);
        let mut outcomes = Vec::with_capacity(pending.len());
        for (p, result) in pending.into_iter().zip(results) {
            let (name, file) = (p.id.name.clone(), p.policy.source.clone());
            let outcome =
                result
                    .map(|()| self.record_applied(p))
                    .map_err(|source| InstanceError::Apply {
                        instance: name.clone(),
                        source,
                    });
            outcomes.push((outcome, (name, file)));
        }
        outcomes
    }

    /// Records an instance the layers now hold.
    fn record_applied(&mut self, p: Pending) {
        let Pending {
            id,
            policy,
            user,
            rules,
            hash,
            text,
        } = p;
        tracing::info!(instance = id.name, uid = id.uid, "policy applied");
        if let Some(follow) = self.follow.as_mut() {
            follow.in_force(&id, &policy);
        }
        let kept = self.instances.get(&id.name).and_then(|i| i.kept.clone());
        self.instances.insert(
            id.name.clone(),
            Instance {
                id,
                policy,
                user,
                rules,
                hash,
                text,
                kept,
                verified: true,
            },
        );
    }

    /// Takes over an earlier daemon's instance `name` as it was left, if there is one.
    fn adopt(&mut self, name: &str) {
        let Some(record) = self.adoptable.remove(name) else {
            return;
        };
        // The last good policy; a record without one (written by an older isolate) gets a
        // policy that allows nothing, so that putting it back can only close, never open.
        let (policy, text) = if let Ok(policy) =
            isolate_policy::parse_str(&record.policy, &record.source)
        {
            (policy, record.policy)
        } else {
            let policy =
                isolate_policy::parse_str(&format!("user = {:?}\n", record.user), &record.source)
                    .expect("a policy of only a user parses");
            let text = policy.to_toml();
            (policy, text)
        };
        let rules = self.rules_of(&policy);
        tracing::info!(
            instance = name,
            uid = record.uid,
            "adopted from the earlier daemon"
        );
        self.instances.insert(
            name.to_owned(),
            Instance {
                id: InstanceId {
                    name: name.to_owned(),
                    uid: record.uid,
                },
                policy,
                user: record.user,
                rules,
                hash: record.policy_hash,
                text,
                kept: None,
                verified: false,
            },
        );
    }

    /// Leaves instance `name` on its last good enforcement, for `reason`.
    fn keep(&mut self, name: &str, reason: &str) {
        self.adopt(name);
        if let Some(instance) = self.instances.get_mut(name) {
            instance.kept = Some(reason.to_owned());
        }
    }

    fn remove_id(&mut self, id: InstanceId, report: &mut ReloadReport) {
        let name = id.name.clone();
        match self.layers.remove(&id) {
            Ok(()) => {
                if let Some(follow) = self.follow.as_mut() {
                    follow.removed(&id);
                }
                tracing::info!(instance = name, "enforcement removed: its file is gone");
                self.removing.remove(&name);
                report.removed.push(name);
            }
            Err(e) => {
                let reason = format!(
                    "instance {name}: removal not finished, retried at the next reload: {e}"
                );
                tracing::error!("{reason}");
                self.removing.insert(name.clone(), id);
                report.failed.push(Failure {
                    instance: Some(name),
                    file: None,
                    reason,
                });
            }
        }
    }

    fn retry_removals(&mut self, report: &mut ReloadReport) {
        let pending: Vec<InstanceId> = self.removing.values().cloned().collect();
        for id in pending {
            // An instance that came back under the same name is re-applied, not removed.
            if self.instances.contains_key(&id.name) {
                self.removing.remove(&id.name);
            } else {
                self.remove_id(id, report);
            }
        }
    }

    /// What is enforced, for the state file.
    pub fn record(&self) -> Enforced {
        let layers: Vec<String> = self
            .layers
            .kinds()
            .iter()
            .map(ToString::to_string)
            .collect();
        Enforced {
            instances: self
                .instances
                .iter()
                .map(|(name, i)| {
                    let record = InstanceRecord {
                        uid: i.id.uid,
                        user: i.user.clone(),
                        source: i.policy.source.clone(),
                        policy_hash: i.hash.clone(),
                        policy: i.text.clone(),
                        layers: layers.clone(),
                        entries_v4: i.rules.v4.len(),
                        entries_v6: i.rules.v6.len(),
                    };
                    (name.clone(), record)
                })
                .collect(),
            removing: self
                .removing
                .iter()
                .map(|(name, id)| (name.clone(), id.uid))
                .collect(),
        }
    }
}

/// The instance a policy file in the directory defines: its file stem.
fn file_instance(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A stable hash of what an instance's enforcement depends on: SHA-256 over the normalised
/// policy text, each address rule in force (as `isolate check` prints them) and the UID, each
/// on a line of its own. Stable across builds and toolchains, so an unchanged instance is
/// adopted after any upgrade of isolate that does not change how policies print.
pub fn enforcement_hash(policy: &Policy, rules: &EffectiveRules, uid: u32) -> String {
    hash_of(&policy.to_toml(), rules, uid)
}

/// [`enforcement_hash`] of a policy printed already (`text`, its `to_toml`).
fn hash_of(text: &str, rules: &EffectiveRules, uid: u32) -> String {
    let rules = (rules.v4.iter().map(ToString::to_string))
        .chain(rules.v6.iter().map(ToString::to_string))
        .map(|rule| format!("\n{rule}"));
    crate::digest::sha256(
        std::iter::once(text.to_owned())
            .chain(rules)
            .chain([format!("\nuid {uid}\n")]),
    )
}

#[cfg(test)]
mod tests;
