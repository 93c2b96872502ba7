//! The eBPF egress layer: loads isolate's programs, attaches them to a cgroup, and keeps each
//! confined UID's policy in the maps.

mod rules;

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use isolate_ebpf_common::{
    AllowValue, CounterKey, FAMILY_V4, FAMILY_V6, InstanceState, KEY_HEADER_BITS, LAYER_CONNECT,
    LAYER_SENDMSG, PROTO_TCP, PROTO_UDP, V4Key, map_names, program_names,
};
use thiserror::Error;

pub use rules::{CompiledRules, RulesError, compile};

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;

/// The eBPF object built by `build.rs` from `ebpf/programs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/isolate"));

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("cannot load isolate's eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot size per-CPU counters: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("eBPF object has no {kind} named {name} (the embedded object and this binary disagree)")]
    Missing { kind: &'static str, name: &'static str },
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map {
        name,
        source: Box::new(source),
    }
}

/// The loaded programs and maps. Dropping it detaches the programs (links are owned by it).
pub struct BpfLayer {
    ebpf: Ebpf,
}

impl BpfLayer {
    /// Loads the embedded object and its programs into the kernel (nothing is attached yet).
    pub fn load() -> Result<Self, BpfError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| BpfError::Load(Box::new(e)))?;
        for name in [program_names::CONNECT4] {
            sock_addr_program(&mut ebpf, name)?
                .load()
                .map_err(|e| BpfError::Program {
                    name,
                    source: Box::new(e),
                })?;
        }
        Ok(Self { ebpf })
    }

    /// Attaches every program to the cgroup open as `cgroup`. Processes in it and its
    /// descendants are then judged; those whose UID has no policy pass untouched.
    pub fn attach(&mut self, cgroup: impl AsFd) -> Result<(), BpfError> {
        let cgroup = cgroup.as_fd();
        for name in [program_names::CONNECT4] {
            sock_addr_program(&mut self.ebpf, name)?
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(|e| BpfError::Program {
                    name,
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// Puts `rules` in force for `uid`, atomically: the new entries are written under a fresh
    /// generation, then the UID's generation flips in one map update, then the old entries go.
    pub fn apply_instance(&mut self, uid: u32, rules: &CompiledRules) -> Result<(), BpfError> {
        let old = self.instance_state(uid)?;
        let generation = old.map_or(1, |s| s.generation.wrapping_add(1));
        self.insert_v4(uid, generation, rules)?;
        self.create_counters(uid)?;
        let mut instances = self.instances()?;
        instances
            .insert(uid, InstanceState { generation, flags: 0 }, 0)
            .map_err(map_error(map_names::INSTANCES))?;
        if let Some(old) = old {
            self.remove_v4(uid, old.generation)?;
        }
        Ok(())
    }

    /// Stops confining `uid`: its processes pass untouched again, and its entries are gone.
    pub fn remove_instance(&mut self, uid: u32) -> Result<(), BpfError> {
        let Some(state) = self.instance_state(uid)? else {
            return Ok(());
        };
        self.instances()?
            .remove(&uid)
            .map_err(map_error(map_names::INSTANCES))?;
        self.remove_v4(uid, state.generation)?;
        let mut counters = self.counters()?;
        for key in counter_keys(uid) {
            let _ = counters.remove(&key);
        }
        Ok(())
    }

    /// Blocked attempts of `uid`, summed over CPUs, by (family, protocol, layer).
    pub fn blocked_counts(&mut self, uid: u32) -> Result<BTreeMap<CounterKey, u64>, BpfError> {
        let counters = self.counters()?;
        let mut totals = BTreeMap::new();
        for key in counter_keys(uid) {
            match counters.get(&key, 0) {
                Ok(values) => {
                    totals.insert(key, values.iter().sum());
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(map_names::BLOCKED)(e)),
            }
        }
        Ok(totals)
    }

    fn instance_state(&mut self, uid: u32) -> Result<Option<InstanceState>, BpfError> {
        match self.instances()?.get(&uid, 0) {
            Ok(state) => Ok(Some(state)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(map_names::INSTANCES)(e)),
        }
    }

    fn insert_v4(&mut self, uid: u32, generation: u32, rules: &CompiledRules) -> Result<(), BpfError> {
        let mut trie = self.allow_v4()?;
        for (net, value) in &rules.v4 {
            let key = v4_key(uid, generation, *net);
            trie.insert(&key, value, 0)
                .map_err(map_error(map_names::ALLOW_V4))?;
        }
        Ok(())
    }

    fn remove_v4(&mut self, uid: u32, generation: u32) -> Result<(), BpfError> {
        let mut trie = self.allow_v4()?;
        let stale: Vec<Key<V4Key>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                let data = key.data();
                data.uid == uid && data.generation == generation
            })
            .collect();
        for key in stale {
            trie.remove(&key).map_err(map_error(map_names::ALLOW_V4))?;
        }
        Ok(())
    }

    /// Creates every counter of `uid` at zero, so the programs only ever increment.
    fn create_counters(&mut self, uid: u32) -> Result<(), BpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| BpfError::Cpus(e))?;
        let mut counters = self.counters()?;
        for key in counter_keys(uid) {
            if counters.get(&key, 0).is_err() {
                let zeros =
                    PerCpuValues::try_from(vec![0u64; cpus]).map_err(BpfError::Cpus)?;
                counters
                    .insert(key, zeros, BPF_NOEXIST)
                    .or_else(|e| match e {
                        // Created by a racing program invocation: already counting.
                        aya::maps::MapError::SyscallError(ref s)
                            if s.io_error.raw_os_error() == Some(libc::EEXIST) =>
                        {
                            Ok(())
                        }
                        e => Err(e),
                    })
                    .map_err(map_error(map_names::BLOCKED))?;
            }
        }
        Ok(())
    }

    fn instances(&mut self) -> Result<HashMap<&mut MapData, u32, InstanceState>, BpfError> {
        let map = self.map(map_names::INSTANCES)?;
        HashMap::try_from(map).map_err(map_error(map_names::INSTANCES))
    }

    fn allow_v4(&mut self) -> Result<LpmTrie<&mut MapData, V4Key, AllowValue>, BpfError> {
        let map = self.map(map_names::ALLOW_V4)?;
        LpmTrie::try_from(map).map_err(map_error(map_names::ALLOW_V4))
    }

    fn counters(&mut self) -> Result<PerCpuHashMap<&mut MapData, CounterKey, u64>, BpfError> {
        let map = self.map(map_names::BLOCKED)?;
        PerCpuHashMap::try_from(map).map_err(map_error(map_names::BLOCKED))
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, BpfError> {
        self.ebpf
            .map_mut(name)
            .ok_or(BpfError::Missing { kind: "map", name })
    }
}

fn sock_addr_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e| BpfError::Program {
            name,
            source: Box::new(e),
        })
}

fn v4_key(uid: u32, generation: u32, net: ipnet::Ipv4Net) -> Key<V4Key> {
    Key::new(
        KEY_HEADER_BITS + u32::from(net.prefix_len()),
        V4Key {
            uid,
            generation,
            addr: net.network().octets(),
        },
    )
}

/// Every counter an instance has: one per family, protocol and layer.
fn counter_keys(uid: u32) -> impl Iterator<Item = CounterKey> {
    [FAMILY_V4, FAMILY_V6].into_iter().flat_map(move |family| {
        [PROTO_TCP, PROTO_UDP, 0].into_iter().flat_map(move |protocol| {
            [LAYER_CONNECT, LAYER_SENDMSG]
                .into_iter()
                .map(move |layer| CounterKey {
                    uid,
                    family,
                    protocol,
                    layer,
                    _pad: 0,
                })
        })
    })
}
