//! The daemon's resolvers: one per instance whose names it follows (a network layer is on and
//! the instance has upstream resolvers). Each keeps its loopback port for as long as the
//! daemon runs, so a reload changes what it answers, never where the instance's queries go.
//! A restarted daemon binds new ports; until it has put each instance in force again, the
//! redirect in the pinned maps points at the old port and the instance gets no answer (never
//! an unfiltered one), while the addresses admitted before stay in force until they expire.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};

use isolate_policy::Policy;

use super::registry::FollowNames;
use crate::bpf::{BlockedAttempt, HostMaps, PinDir};
use crate::dns::{self, Listener, Reporter, Resolver};
use crate::layer::InstanceId;
use crate::network::{EffectiveRules, dns_servers, followed_rules};

/// An instance's resolver: bound (its port is in the rules being applied), then serving.
enum Follower {
    Bound(Listener),
    Serving(Resolver),
}

impl Follower {
    fn endpoint(&self) -> crate::network::ResolverEndpoint {
        match self {
            Follower::Bound(listener) => listener.endpoint(),
            Follower::Serving(resolver) => resolver.endpoint(),
        }
    }
}

pub struct Following {
    /// The eBPF attachment, where that layer is on.
    pins: Option<PinDir>,
    nft: bool,
    refusals: Sender<BlockedAttempt>,
    followers: BTreeMap<String, Follower>,
    reporters: Reporters,
}

/// The running resolvers' reports by instance name, for status (read on another thread).
pub type Reporters = Arc<Mutex<BTreeMap<String, Reporter>>>;

impl Following {
    /// Resolvers that admit into the eBPF attachment at `pins` (where that layer is on) and,
    /// with `nft`, into each instance's table, and send their refusals to `refusals`.
    pub fn new(
        pins: Option<PinDir>,
        nft: bool,
        refusals: Sender<BlockedAttempt>,
        reporters: Reporters,
    ) -> Self {
        Self {
            pins,
            nft,
            refusals,
            followers: BTreeMap::new(),
            reporters,
        }
    }

    fn forget(&mut self, name: &str) {
        self.followers.remove(name);
        self.reporters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    fn upstreams(policy: &Policy) -> Vec<std::net::IpAddr> {
        let resolv_conf = std::fs::read_to_string(crate::paths::RESOLV_CONF).unwrap_or_default();
        dns_servers(&policy.network.dns, &resolv_conf)
    }

    fn start(&self, id: &InstanceId, policy: &Policy, listener: Listener) -> Option<Resolver> {
        let bpf = match self.pins.as_ref().map(HostMaps::open).transpose() {
            Ok(maps) => maps,
            Err(e) => {
                tracing::error!(instance = id.name, "resolver: {e}");
                return None;
            }
        };
        let service = dns::Service {
            instance: id.name.clone(),
            uid: id.uid,
            hosts: policy.network.hosts.clone(),
            upstreams: Self::upstreams(policy),
            layers: dns::Layers { bpf, nft: self.nft },
            refusals: self.refusals.clone(),
            observe: false,
        };
        match listener.serve(service) {
            Ok(resolver) => Some(resolver),
            Err(e) => {
                tracing::error!(instance = id.name, "resolver: {e}");
                None
            }
        }
    }
}

impl FollowNames for Following {
    fn rules(&mut self, policy: &Policy) -> Option<EffectiveRules> {
        if Self::upstreams(policy).is_empty() {
            self.forget(&policy.name);
            return None;
        }
        let endpoint = match self.followers.get(&policy.name) {
            Some(follower) => follower.endpoint(),
            None => match Listener::bind() {
                Ok(listener) => {
                    let endpoint = listener.endpoint();
                    self.followers
                        .insert(policy.name.clone(), Follower::Bound(listener));
                    endpoint
                }
                Err(e) => {
                    // The instance's names are then resolved by the daemon, as without the
                    // eBPF layer.
                    tracing::error!(
                        instance = policy.name,
                        "cannot start a resolver on loopback ({e}): its host names are resolved by the daemon instead"
                    );
                    return None;
                }
            },
        };
        let rules = followed_rules(&policy.network, Some(endpoint));
        // Without the eBPF layer, the nftables layer sends the queries to the resolver.
        Some(match self.pins {
            Some(_) => rules,
            None => rules.translating_dns(endpoint),
        })
    }

    fn in_force(&mut self, id: &InstanceId, policy: &Policy) {
        let Some(follower) = self.followers.remove(&id.name) else {
            return;
        };
        let endpoint = follower.endpoint();
        let resolver = match follower {
            Follower::Serving(resolver) => {
                // The nftables table may have been replaced (its host sets start empty), the
                // host rules may have changed: admit again what is admitted.
                resolver.update(policy.network.hosts.clone(), Self::upstreams(policy));
                resolver
            }
            Follower::Bound(listener) => match self.start(id, policy, listener) {
                Some(resolver) => {
                    self.reporters
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.name.clone(), resolver.reporter());
                    resolver
                }
                None => return,
            },
        };
        self.followers
            .insert(id.name.clone(), Follower::Serving(resolver));
        // The nftables layer's translation is in the instance's table already.
        let Some(pins) = &self.pins else { return };
        let redirected = HostMaps::open(pins)
            .and_then(|mut maps| maps.redirect(id.uid, dns::redirect_to(endpoint)));
        if let Err(e) = redirected {
            tracing::error!(
                instance = id.name,
                "its DNS queries cannot be sent to its resolver ({e}): they stay refused"
            );
        }
    }

    fn removed(&mut self, id: &InstanceId) {
        self.forget(&id.name);
    }
}
