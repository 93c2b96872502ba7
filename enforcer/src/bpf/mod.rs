//! The eBPF egress layer: isolate's cgroup programs, attached to a cgroup and pinned in bpffs
//! so that enforcement outlives the process that applied it, and each confined UID's policy
//! kept in the maps.
//!
//! [`BpfLayer::attach`] loads, attaches and pins (or adopts what is already pinned);
//! [`BpfLayer::apply_instance`] and [`BpfLayer::remove_instance`] change one UID's rules;
//! inspection ([`BpfLayer::blocked_counts`], [`BpfLayer::instances`]) reads the maps;
//! [`BpfLayer::detach`] takes it all away. Block events are read apart, by an
//! [`EventReader`] (one reader at a time, and its ring buffer is not shared between threads).
//! The layer's place among the others (`crate::layer`) is written there.
//!
//! Unix sockets are judged by BPF LSM programs (see `unix`), attached with the others when
//! the kernel has the BPF LSM active; without it the rest of the layer works, and only a
//! policy with `network.unix_sockets` is refused, with what to change.

mod batch;
mod btf;
mod events;
mod grace;
mod hosts;
mod pin;
mod rules;
mod unix;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, IterableMap as _, Map, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, Lsm};
use aya::{Btf, Ebpf, EbpfLoader};
use ipnet::{Ipv4Net, Ipv6Net};
use isolate_ebpf_common::{
    AllowValue, CounterKey, EventBudget, FAMILY_OTHER, FAMILY_UNIX, FAMILY_V4, FAMILY_V6,
    HOOK_SOCKET, HOOK_UNIX, INET_HOOKS, INSTANCE_OBSERVE, InstanceState, KEY_HEADER_BITS,
    PROTO_DGRAM, PROTO_OTHER, PROTO_STREAM, PROTO_TCP, PROTO_UDP, UNIX_CONFIG_GLOBAL, UnixKey,
    V4Key, V6Key, map_names, program_names,
};
use thiserror::Error;

pub use events::{BlockedAttempt, EventReader, UnixPeer, family_name, hook_name, protocol_name};
pub use hosts::{HostMaps, HostPorts, boot_clock};
pub use pin::{PinDir, ensure_bpffs};
pub use rules::{CompiledRules, RulesError, compile_rules};
pub use unix::{LocateError, UnixLocation, UnixSupport, active_lsms, locate};

/// The eBPF object built by `build.rs` from `ebpf/programs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/isolate"));

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;

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
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("{action} {path}: {source}")]
    Pin {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot size per-CPU counters: {0}")]
    Cpus(#[source] io::Error),
    #[error(
        "eBPF object has no {kind} named {name} (the embedded object and this binary disagree)"
    )]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    /// The policy has `network.unix_sockets` and this layer cannot enforce them.
    #[error(
        "unix-socket allowlists (network.unix_sockets) are not supported on this kernel: {reason}"
    )]
    UnixUnsupported { reason: String },
    #[error("network.unix_sockets: {0}")]
    UnixSocket(#[source] LocateError),
    #[error(
        "{}: {why}, so others could plant or remove isolate's pins there; remove it (`rm -r {}`) \
         and let isolate make it again", .path.display(), .path.display()
    )]
    UntrustedPins { path: PathBuf, why: String },
    /// What is pinned was attached by an isolate without inbound confinement.
    #[error(
        "the eBPF layer pinned at {} has no {missing} (it was attached by an older isolate): \
         stop the daemon, run `isolate daemon --cleanup` and start it again", .path.display()
    )]
    Outdated {
        path: PathBuf,
        missing: &'static str,
    },
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map {
        name,
        source: Box::new(source),
    }
}

fn pin_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BpfError {
    let path = path.to_path_buf();
    move |source| BpfError::Pin {
        action,
        path,
        source,
    }
}

/// [`BpfLayer::open_object`]'s result: the object, the kernel's BTF, and whether the
/// unix-socket programs can run here.
type OpenedObject = (Ebpf, Option<Btf>, Result<(), String>);

/// The layer's maps, whether this process loaded them or adopted their pins.
pub struct BpfLayer {
    pins: PinDir,
    instances: HashMap<MapData, u32, InstanceState>,
    allow_v4: LpmTrie<MapData, V4Key, AllowValue>,
    allow_v6: LpmTrie<MapData, V6Key, AllowValue>,
    listen_v4: LpmTrie<MapData, V4Key, AllowValue>,
    listen_v6: LpmTrie<MapData, V6Key, AllowValue>,
    /// Absent from attachments pinned without the unix-socket programs.
    unix_allow: Option<HashMap<MapData, UnixKey, u32>>,
    unix: UnixSupport,
    counters: PerCpuHashMap<MapData, CounterKey, u64>,
    budgets: PerCpuHashMap<MapData, u32, EventBudget>,
    /// The attachment's links, held open by the process that attached (or adopted) it: a pin
    /// is a link's only other reference, so one removed behind this process's back would
    /// otherwise detach its program at once. Empty for layers only opened (status, readers).
    held_links: Vec<PinnedLink>,
}

impl BpfLayer {
    /// Loads the programs, attaches them to the cgroup at `cgroup`, and pins links and maps
    /// in `pins`; when `pins` already holds an attachment, adopts it instead (no second load,
    /// no gap in enforcement). Processes in the cgroup and its descendants are then judged;
    /// those whose UID has no policy pass untouched.
    ///
    /// The unix-socket programs are BPF LSM programs: they attach to the whole system, and
    /// judge only confined UIDs' processes in this cgroup's subtree. Where the kernel cannot
    /// run them (the BPF LSM is not active), the rest is attached all the same, and
    /// [`BpfLayer::unix_support`] says why; only a policy with unix sockets is refused then.
    pub fn attach(cgroup: &Path, pins: PinDir) -> Result<Self, BpfError> {
        ensure_bpffs().map_err(pin_error("mount bpffs at", Path::new(crate::paths::BPFFS)))?;
        if let Some((path, why)) = pins.untrusted() {
            return Err(BpfError::UntrustedPins { path, why });
        }
        if pins.exists() {
            return Self::open(pins)?.holding_links();
        }
        pins.create().map_err(pin_error("create", pins.path()))?;
        match Self::load_and_pin(cgroup, &pins) {
            Ok(support) => {
                let mut layer = Self::open(pins)?;
                if let UnixSupport::Unavailable(_) = support {
                    // The precise reason, rather than open()'s guess from the pins.
                    layer.unix = support;
                }
                layer.holding_links()
            }
            Err(e) => {
                // Leave nothing half-applied.
                let _ = pins.remove();
                Err(e)
            }
        }
    }

    /// Opens an attachment pinned in `pins` (for status, updates and event reading).
    pub fn open(pins: PinDir) -> Result<Self, BpfError> {
        for (missing, pinned) in [
            ("listen maps", pins.map(map_names::LISTEN_V4)),
            ("bind hooks", pins.link(program_names::BIND4)),
            ("ingress program", pins.link(program_names::INGRESS)),
            ("DNS redirect", pins.link(program_names::RECVMSG4)),
            ("host-name maps", pins.map(map_names::HOSTS_V4)),
            ("event budgets", pins.map(map_names::EVENT_BUDGET)),
        ] {
            if !pinned.exists() {
                return Err(BpfError::Outdated {
                    path: pins.path().to_path_buf(),
                    missing,
                });
            }
        }
        let unix_allow = if pins.map(map_names::UNIX_ALLOW).exists() {
            Some(open_map(&pins, map_names::UNIX_ALLOW)?)
        } else {
            None
        };
        let programs_pinned = program_names::LSM
            .iter()
            .all(|(name, _)| pins.link(name).exists());
        let unix = if unix_allow.is_some() && programs_pinned {
            UnixSupport::Enforced
        } else {
            match unix::kernel_support() {
                UnixSupport::Unavailable(reason) => UnixSupport::Unavailable(reason),
                UnixSupport::Enforced => UnixSupport::Unavailable(format!(
                    "the eBPF layer pinned at {} has no unix-socket programs (it was attached \
                     by an older isolate, or they could not be loaded then): detach it and \
                     attach again",
                    pins.path().display()
                )),
            }
        };
        Ok(Self {
            instances: open_map(&pins, map_names::INSTANCES)?,
            allow_v4: open_map(&pins, map_names::ALLOW_V4)?,
            allow_v6: open_map(&pins, map_names::ALLOW_V6)?,
            listen_v4: open_map(&pins, map_names::LISTEN_V4)?,
            listen_v6: open_map(&pins, map_names::LISTEN_V6)?,
            unix_allow,
            unix,
            counters: open_map(&pins, map_names::BLOCKED)?,
            budgets: open_map(&pins, map_names::EVENT_BUDGET)?,
            held_links: Vec::new(),
            pins,
        })
    }

    /// This layer, holding every link of its attachment open (see `held_links`).
    fn holding_links(mut self) -> Result<Self, BpfError> {
        for name in self.program_names() {
            let path = self.pins.link(name);
            let link = PinnedLink::from_pin(&path).map_err(|source| BpfError::Link {
                name,
                source: Box::new(source),
            })?;
            self.held_links.push(link);
        }
        Ok(self)
    }

    /// The programs of this attachment (the unix-socket ones where they run).
    fn program_names(&self) -> Vec<&'static str> {
        let unix = matches!(self.unix, UnixSupport::Enforced)
            .then_some(program_names::LSM.iter().map(|(name, _)| *name))
            .into_iter()
            .flatten();
        program_names::SOCK_ADDR
            .iter()
            .copied()
            .chain(program_names::SKB)
            .chain(unix)
            .collect()
    }

    /// Whether this attachment enforces unix-socket allowlists, and if not, why.
    pub fn unix_support(&self) -> &UnixSupport {
        &self.unix
    }

    /// Detaches the programs and removes every pin: nothing stays in bpffs or attached.
    ///
    /// The UIDs are released first: the kernel may detach a program some time after its
    /// last link is gone (BPF LSM links on 6.12 are released from a work queue), and until
    /// then it must let everyone pass rather than go on judging from maps nobody can reach.
    pub fn detach(mut self) -> Result<(), BpfError> {
        for uid in self.instances() {
            self.instances
                .remove(&uid)
                .map_err(map_error(map_names::INSTANCES))?;
        }
        let pins = self.pins.clone();
        drop(self);
        pins.remove().map_err(pin_error("remove", pins.path()))
    }

    /// The embedded object, set up for this kernel and for judging below `cgroup`: its maps
    /// are created, no program is loaded yet. Also the kernel's BTF, and whether the
    /// unix-socket programs can run here (or why not).
    fn open_object(cgroup: &Path) -> Result<OpenedObject, BpfError> {
        // The kernel's BTF is read three times, about 15 ms each: aya's loader parses it
        // whatever it is given later, the LSM programs need aya's parse of their own, and
        // their field offsets come from isolate's reading. Side by side they cost about one:
        // `isolate exec` pays this at every run.
        let (btf, unix_config, mut loader) = std::thread::scope(|scope| {
            let btf = scope.spawn(|| Btf::from_sys_fs().ok());
            let unix_config = scope.spawn(|| match unix::kernel_support() {
                UnixSupport::Enforced => std::fs::read(crate::paths::KERNEL_BTF)
                    .map_err(|e| format!("cannot read the kernel's BTF: {e}"))
                    .and_then(|data| unix::kernel_config(&data, cgroup)),
                UnixSupport::Unavailable(reason) => Err(reason),
            });
            // Reads the BTF itself (aya 0.14 always does), for its relocations.
            let loader = EbpfLoader::new();
            (
                btf.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                unix_config
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                loader,
            )
        });
        if let Ok(config) = &unix_config {
            loader.override_global(UNIX_CONFIG_GLOBAL, config, true);
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| BpfError::Load(Box::new(e)))?;
        Ok((ebpf, btf, unix_config.map(drop)))
    }

    /// Loads each kind of isolate's programs into the kernel and unloads it again, attaching
    /// nothing: what enforcement this kernel really offers, as opposed to what its
    /// configuration suggests. Each entry is (what, `Ok` or why not).
    pub fn probe(cgroup: &Path) -> Vec<(&'static str, Result<(), String>)> {
        const SOCKET: &str = "eBPF socket hooks (connect4/6, sendmsg4/6, bind4/6)";
        const EGRESS: &str = "eBPF packet hooks (cgroup_skb egress backstop, ingress)";
        const UNIX: &str = "BPF LSM programs (unix sockets, socket families)";
        let reason = |e: BpfError| refusal_text(&e);
        let (mut ebpf, btf, unix_config) = match Self::open_object(cgroup) {
            Ok(opened) => opened,
            Err(e) => {
                let why = reason(e);
                return [SOCKET, EGRESS, UNIX]
                    .into_iter()
                    .map(|what| (what, Err(why.clone())))
                    .collect();
            }
        };
        let unix_btf = lsm_btf(unix_config, btf.as_ref());
        let mut loaded = load_programs(&mut ebpf, unix_btf.as_ref().ok().copied());
        let socket = loaded.take_error(&program_names::SOCK_ADDR);
        let egress = loaded.take_error(&program_names::SKB);
        let unix = unix_btf.and_then(|_| {
            loaded
                .take_error(&program_names::LSM.map(|(name, _)| name))
                .map_err(reason)
        });
        vec![
            (SOCKET, socket.map_err(reason)),
            (EGRESS, egress.map_err(reason)),
            (UNIX, unix),
        ]
    }

    fn load_and_pin(cgroup: &Path, pins: &PinDir) -> Result<UnixSupport, BpfError> {
        let (mut ebpf, btf, unix_config) = Self::open_object(cgroup)?;
        let cgroup_file = std::fs::File::open(cgroup).map_err(pin_error("open cgroup", cgroup))?;
        let unix_btf = lsm_btf(unix_config, btf.as_ref());
        let mut loaded = load_programs(&mut ebpf, unix_btf.as_ref().ok().copied());
        loaded.take_error(&program_names::SOCK_ADDR)?;
        loaded.take_error(&program_names::SKB)?;
        // With BPF links (kernel 5.7+) the kernel always attaches in multi mode, so other
        // tools' programs on the same cgroup keep working; `Single` only means "no flags",
        // which link_create requires.
        let mode = CgroupAttachMode::Single;
        for name in program_names::SOCK_ADDR {
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            let program_error = program_error(name);
            let link_id = program.attach(&cgroup_file, mode).map_err(program_error)?;
            let link = program.take_link(link_id).map_err(program_error)?;
            pin_link(pins, name, FdLink::try_from(link))?;
        }
        for (name, direction) in [
            (program_names::EGRESS, CgroupSkbAttachType::Egress),
            (program_names::INGRESS, CgroupSkbAttachType::Ingress),
        ] {
            let program: &mut CgroupSkb = program(&mut ebpf, name)?;
            let program_error = program_error(name);
            let link_id = program
                .attach(&cgroup_file, direction, mode)
                .map_err(program_error)?;
            let link = program.take_link(link_id).map_err(program_error)?;
            pin_link(pins, name, FdLink::try_from(link))?;
        }

        let lsm_loaded = unix_btf.and_then(|_| {
            loaded
                .take_error(&program_names::LSM.map(|(name, _)| name))
                .map_err(|e| {
                    format!(
                        "the kernel refused isolate's BPF LSM programs: {}",
                        refusal_text(&e)
                    )
                })
        });
        let support = match lsm_loaded {
            Ok(()) => match Self::attach_unix_programs(&mut ebpf, pins) {
                Ok(()) => UnixSupport::Enforced,
                Err(e) => {
                    for (name, _) in program_names::LSM {
                        let _ = std::fs::remove_file(pins.link(name));
                    }
                    UnixSupport::Unavailable(format!(
                        "the kernel refused to attach isolate's BPF LSM programs: {e}"
                    ))
                }
            },
            Err(reason) => UnixSupport::Unavailable(reason),
        };
        if let UnixSupport::Unavailable(reason) = &support {
            tracing::warn!(
                "unix-socket allowlists and socket-family refusals are not enforced by this \
                 attachment ({reason}); policies with network.unix_sockets will be refused, and \
                 only `isolate exec`'s seccomp filter refuses other socket families"
            );
        }

        for name in [
            map_names::INSTANCES,
            map_names::ALLOW_V4,
            map_names::ALLOW_V6,
            map_names::LISTEN_V4,
            map_names::LISTEN_V6,
            map_names::UNIX_ALLOW,
            map_names::BLOCKED,
            map_names::EVENTS,
            map_names::EVENT_BUDGET,
            map_names::DNS_REDIRECT,
            map_names::DNS_ORIGINS,
            map_names::HOSTS_V4,
            map_names::HOSTS_V6,
        ] {
            let path = pins.map(name);
            ebpf.map(name)
                .ok_or(BpfError::Missing { kind: "map", name })?
                .pin(&path)
                .map_err(|e| pin_error("pin", &path)(io::Error::other(e)))?;
        }
        Ok(support)
    }

    /// Attaches the loaded BPF LSM programs (to the whole system) and pins their links.
    fn attach_unix_programs(ebpf: &mut Ebpf, pins: &PinDir) -> Result<(), BpfError> {
        for (name, _) in program_names::LSM {
            let program: &mut Lsm = program(ebpf, name)?;
            let program_error = program_error(name);
            let link_id = program.attach().map_err(program_error)?;
            let link = program.take_link(link_id).map_err(program_error)?;
            pin_link(pins, name, Ok(FdLink::from(link)))?;
        }
        Ok(())
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Puts `rules` in force for `uid`, atomically: the new entries are written under a fresh
    /// generation, then the UID's generation flips in one map update, then, once no program
    /// still runs with the old generation (see `grace`), the old entries go. A connect sees
    /// the whole old policy or the whole new one, never a mix or nothing.
    ///
    /// `rules.unix_sockets` are resolved here (see [`locate`]): a socket whose directory
    /// does not exist yet is skipped with a warning (it stays refused until the policy is
    /// applied again). Where unix sockets cannot be enforced, a policy that has some is
    /// refused and nothing changes.
    pub fn apply_instance(&mut self, uid: u32, rules: &CompiledRules) -> Result<(), BpfError> {
        self.apply_instances(&[(uid, rules)])
            .pop()
            .expect("one result per instance")
    }

    /// Applies each of `batch` as [`apply_instance`](Self::apply_instance) would, returning
    /// each result in order, with one wait for the running programs for the whole batch
    /// rather than one per instance.
    pub fn apply_instances(
        &mut self,
        batch: &[(u32, &CompiledRules)],
    ) -> Vec<Result<(), BpfError>> {
        let mut results = Vec::with_capacity(batch.len());
        let mut retired = Vec::new();
        for (index, (uid, rules)) in batch.iter().enumerate() {
            let flipped = self.flip(*uid, rules);
            if let Ok(Some(old)) = flipped {
                retired.push((index, *uid, old));
            }
            results.push(flipped.map(|_| ()));
        }
        if retired.is_empty() {
            return results;
        }
        grace::wait_for_running_programs();
        // One pass over each map for the whole batch: one per instance made a reload of
        // 1,000 instances read every map 1,000 times.
        let owners: Vec<(u32, u32)> = retired.iter().map(|(_, uid, old)| (*uid, *old)).collect();
        if self.remove_generations(&owners).is_err() {
            // Each on its own, so that each failure is its own instance's.
            for (index, uid, old) in retired {
                if let Err(e) = self.remove_generation(uid, old) {
                    results[index] = Err(e);
                }
            }
        }
        results
    }

    /// Writes `rules` under a fresh generation of `uid` and makes it current. Returns the
    /// generation it replaced, whose entries are still there: no program may still be
    /// reading them until one grace period has passed.
    fn flip(&mut self, uid: u32, rules: &CompiledRules) -> Result<Option<u32>, BpfError> {
        let unix = self.locate_unix_sockets(&rules.unix_sockets)?;
        let old = self.instance_state(uid)?;
        let generation = old.map_or(1, |s| s.generation.wrapping_add(1));
        let inserted = self.insert_rules(uid, generation, rules, &unix);
        if let Err(e) = inserted {
            // The old policy stays in force; drop what was written aside.
            let _ = self.remove_generation(uid, generation);
            return Err(e);
        }
        self.create_counters(uid, !rules.observe)?;
        let flags = if rules.observe { INSTANCE_OBSERVE } else { 0 };
        self.instances
            .insert(uid, InstanceState { generation, flags }, 0)
            .map_err(map_error(map_names::INSTANCES))?;
        Ok(old.map(|old| old.generation))
    }

    /// Stops confining `uid`: its processes pass untouched again, and its entries are gone.
    pub fn remove_instance(&mut self, uid: u32) -> Result<(), BpfError> {
        self.remove_instances(&[uid])
    }

    /// [`remove_instance`](Self::remove_instance) of each of `uids`, reading each map once
    /// for all of them.
    pub fn remove_instances(&mut self, uids: &[u32]) -> Result<(), BpfError> {
        let mut owners = Vec::new();
        for &uid in uids {
            if let Some(state) = self.instance_state(uid)? {
                self.instances
                    .remove(&uid)
                    .map_err(map_error(map_names::INSTANCES))?;
                owners.push((uid, state.generation));
            }
        }
        if owners.is_empty() {
            return Ok(());
        }
        self.remove_generations(&owners)?;
        let mut hosts = self.host_maps()?;
        for (uid, _) in owners {
            hosts.forget(uid)?;
            for key in counter_keys(uid) {
                let _ = self.counters.remove(&key);
            }
            let _ = self.budgets.remove(&uid);
        }
        Ok(())
    }

    /// Whether `uid` is confined: one lookup, where [`instances`](Self::instances) lists them
    /// all (a daemon adopting 1,000 instances asks this of each).
    pub fn is_confined(&self, uid: u32) -> Result<bool, BpfError> {
        Ok(self.instance_state(uid)?.is_some())
    }

    /// The confined UIDs.
    pub fn instances(&self) -> Vec<u32> {
        self.instances.keys().filter_map(Result::ok).collect()
    }

    /// Blocked attempts of `uid`, summed over CPUs, by (family, protocol, layer).
    pub fn blocked_counts(&self, uid: u32) -> Result<BTreeMap<CounterKey, u64>, BpfError> {
        let mut totals = BTreeMap::new();
        for key in counter_keys(uid) {
            match self.counters.get(&key, 0) {
                Ok(values) => {
                    totals.insert(key, values.iter().sum());
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(map_names::BLOCKED)(e)),
            }
        }
        Ok(totals)
    }

    /// [`blocked_counts`](Self::blocked_counts) of each of `uids`, read in one pass over all
    /// counters (a few batch reads, not one lookup per counter); a UID with no counters has
    /// an empty map.
    pub fn blocked_counts_of(
        &self,
        uids: &[u32],
    ) -> Result<BTreeMap<u32, BTreeMap<CounterKey, u64>>, BpfError> {
        let mut totals: BTreeMap<u32, BTreeMap<CounterKey, u64>> =
            uids.iter().map(|uid| (*uid, BTreeMap::new())).collect();
        for (key, count) in self.all_counters()? {
            if let Some(counts) = totals.get_mut(&key.uid) {
                counts.insert(key, count);
            }
        }
        Ok(totals)
    }

    /// Every counter of every UID, summed over CPUs.
    fn all_counters(&self) -> Result<Vec<(CounterKey, u64)>, BpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| BpfError::Cpus(e))?;
        let map = self.counters.map();
        // SAFETY: BLOCKED is a per-CPU hash of CounterKey (plain integers) to u64.
        unsafe { batch::sum_per_cpu::<CounterKey>(map.fd().as_fd(), cpus) }.map_err(|e| {
            pin_error(
                "batch-read the counters of",
                &self.pins.map(map_names::BLOCKED),
            )(e)
        })
    }

    /// The (IPv4, IPv6) allow-trie entries of every UID and generation: once a swap is done,
    /// only the current generations' are left.
    pub fn all_entries(&self) -> (usize, usize) {
        (self.allow_v4.keys().count(), self.allow_v6.keys().count())
    }

    /// The (IPv4, IPv6) allow-trie entries in force for `uid`.
    pub fn entry_counts(&self, uid: u32) -> Result<(usize, usize), BpfError> {
        Ok(match self.instance_state(uid)? {
            Some(state) => {
                let keys = self.generation_keys(&HashSet::from([(uid, state.generation)]));
                (keys.allow_v4.len(), keys.allow_v6.len())
            }
            None => (0, 0),
        })
    }

    /// Whether every program of the attachment is still pinned, hence attached: a pin is
    /// what keeps a link, and so its program, attached after the loader exits.
    pub fn is_attached(&self) -> bool {
        self.program_names()
            .into_iter()
            .all(|name| self.pins.link(name).exists())
    }

    /// The host-name maps of this attachment (for isolate's resolver).
    pub fn host_maps(&self) -> Result<HostMaps, BpfError> {
        HostMaps::open(&self.pins)
    }

    /// A reader of this attachment's block events.
    pub fn events(&self) -> Result<EventReader, BpfError> {
        EventReader::open(&self.pins)
    }

    fn instance_state(&self, uid: u32) -> Result<Option<InstanceState>, BpfError> {
        match self.instances.get(&uid, 0) {
            Ok(state) => Ok(Some(state)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(map_names::INSTANCES)(e)),
        }
    }

    /// Where each allowed socket lives, or why the policy cannot be put in force.
    fn locate_unix_sockets(&self, paths: &[PathBuf]) -> Result<Vec<UnixLocation>, BpfError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        if let UnixSupport::Unavailable(reason) = &self.unix {
            return Err(BpfError::UnixUnsupported {
                reason: reason.clone(),
            });
        }
        let mut located = Vec::with_capacity(paths.len());
        for path in paths {
            match locate(path) {
                Ok(location) => located.push(location),
                Err(e) if e.not_found => {
                    tracing::warn!("{e}: not allowed until the policy is applied again");
                }
                Err(e) => return Err(BpfError::UnixSocket(e)),
            }
        }
        Ok(located)
    }

    /// The unix-socket allowlist entries in force for `uid`.
    pub fn unix_entries(&self, uid: u32) -> Result<Vec<UnixKey>, BpfError> {
        Ok(match self.instance_state(uid)? {
            Some(state) => self.unix_keys_of(&HashSet::from([(uid, state.generation)])),
            None => Vec::new(),
        })
    }

    /// The unix-socket allowlist entries of each (uid, generation) of `owners`.
    fn unix_keys_of(&self, owners: &HashSet<(u32, u32)>) -> Vec<UnixKey> {
        self.unix_allow.as_ref().map_or_else(Vec::new, |map| {
            map.keys()
                .filter_map(Result::ok)
                .filter(|key| owners.contains(&(key.uid, key.generation)))
                .collect()
        })
    }

    fn insert_rules(
        &mut self,
        uid: u32,
        generation: u32,
        rules: &CompiledRules,
        unix: &[UnixLocation],
    ) -> Result<(), BpfError> {
        for (net, value) in &rules.v4 {
            self.allow_v4
                .insert(&v4_key(uid, generation, *net), value, 0)
                .map_err(map_error(map_names::ALLOW_V4))?;
        }
        for (net, value) in &rules.v6 {
            self.allow_v6
                .insert(&v6_key(uid, generation, *net), value, 0)
                .map_err(map_error(map_names::ALLOW_V6))?;
        }
        for (net, value) in &rules.listen_v4 {
            self.listen_v4
                .insert(&v4_key(uid, generation, *net), value, 0)
                .map_err(map_error(map_names::LISTEN_V4))?;
        }
        for (net, value) in &rules.listen_v6 {
            self.listen_v6
                .insert(&v6_key(uid, generation, *net), value, 0)
                .map_err(map_error(map_names::LISTEN_V6))?;
        }
        if let Some(map) = &mut self.unix_allow {
            for location in unix {
                map.insert(location.key(uid, generation), 1, 0)
                    .map_err(map_error(map_names::UNIX_ALLOW))?;
            }
        }
        Ok(())
    }

    /// Every trie key of each (uid, generation) of `owners`, allow and listen, IPv4 and IPv6.
    fn generation_keys(&self, owners: &HashSet<(u32, u32)>) -> GenerationKeys {
        GenerationKeys {
            allow_v4: keys_of(&self.allow_v4, owners),
            allow_v6: keys_of(&self.allow_v6, owners),
            listen_v4: keys_of(&self.listen_v4, owners),
            listen_v6: keys_of(&self.listen_v6, owners),
        }
    }

    /// Removes every entry of (`uid`, `generation`).
    fn remove_generation(&mut self, uid: u32, generation: u32) -> Result<(), BpfError> {
        self.remove_generations(&[(uid, generation)])
    }

    /// Removes every entry of each (uid, generation) of `owners`, reading each map once.
    fn remove_generations(&mut self, owners: &[(u32, u32)]) -> Result<(), BpfError> {
        let owners: HashSet<(u32, u32)> = owners.iter().copied().collect();
        let keys = self.generation_keys(&owners);
        for (trie, keys, name) in [
            (&mut self.allow_v4, keys.allow_v4, map_names::ALLOW_V4),
            (&mut self.listen_v4, keys.listen_v4, map_names::LISTEN_V4),
        ] {
            for key in keys {
                trie.remove(&key).map_err(map_error(name))?;
            }
        }
        for (trie, keys, name) in [
            (&mut self.allow_v6, keys.allow_v6, map_names::ALLOW_V6),
            (&mut self.listen_v6, keys.listen_v6, map_names::LISTEN_V6),
        ] {
            for key in keys {
                trie.remove(&key).map_err(map_error(name))?;
            }
        }
        let unix = self.unix_keys_of(&owners);
        if let Some(map) = &mut self.unix_allow {
            for key in unix {
                map.remove(&key).map_err(map_error(map_names::UNIX_ALLOW))?;
            }
        }
        Ok(())
    }

    /// Creates every counter of `uid` at zero, so the programs only ever increment, and with
    /// `budget` its event budget: an observing (learning) UID has none, so that every attempt
    /// it makes is sent.
    fn create_counters(&mut self, uid: u32, budget: bool) -> Result<(), BpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| BpfError::Cpus(e))?;
        for key in counter_keys(uid) {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(BpfError::Cpus)?;
            keep_existing(self.counters.insert(key, zeros, BPF_NOEXIST))
                .map_err(map_error(map_names::BLOCKED))?;
        }
        if !budget {
            return Ok(());
        }
        let fresh =
            PerCpuValues::try_from(vec![EventBudget::default(); cpus]).map_err(BpfError::Cpus)?;
        keep_existing(self.budgets.insert(uid, fresh, BPF_NOEXIST))
            .map_err(map_error(map_names::EVENT_BUDGET))
    }
}

/// A `BPF_NOEXIST` insert whose key was already there (an earlier apply, or a program
/// invocation) is no failure: the value keeps counting.
fn keep_existing(inserted: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match inserted {
        Err(aya::maps::MapError::SyscallError(ref s))
            if s.io_error.raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(())
        }
        other => other,
    }
}

pub(crate) fn open_map<T>(pins: &PinDir, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(pins.map(name)).map_err(map_error(name))?;
    let map = Map::from_map_data(data).map_err(map_error(name))?;
    T::try_from(map).map_err(map_error(name))
}

/// The kernel's BTF for loading the BPF LSM programs, where they can run here (`unix_config`),
/// or why not.
fn lsm_btf(unix_config: Result<(), String>, btf: Option<&Btf>) -> Result<&Btf, String> {
    unix_config.and_then(|()| {
        btf.ok_or(format!(
            "the kernel has no BTF ({})",
            crate::paths::KERNEL_BTF
        ))
    })
}

/// A load error as a reason: aya ends the message with the verifier's log, often empty.
fn refusal_text(e: &BpfError) -> String {
    e.to_string()
        .trim_end_matches(" Verifier output: ")
        .to_owned()
}

/// What [`load_programs`] made of each program: loaded, or why not.
struct Loaded(Vec<(&'static str, Result<(), BpfError>)>);

impl Loaded {
    /// Takes the first refusal among `names` (a program the object lacks counts as one).
    fn take_error(&mut self, names: &[&'static str]) -> Result<(), BpfError> {
        for &name in names {
            match self.0.iter_mut().find(|(loaded, _)| *loaded == name) {
                Some((_, result)) => std::mem::replace(result, Ok(()))?,
                None => {
                    return Err(BpfError::Missing {
                        kind: "program",
                        name,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Loads every program of the object into the kernel, one thread each, and the BPF LSM ones
/// only with the kernel's BTF (`lsm_btf`). The kernel verifies a program in the thread that
/// loads it, and verifying is most of the cost of attaching: side by side, the cores share it.
fn load_programs(ebpf: &mut Ebpf, lsm_btf: Option<&Btf>) -> Loaded {
    let lsm_hook = |name: &str| {
        program_names::LSM
            .iter()
            .find(|(lsm, _)| *lsm == name)
            .copied()
    };
    let known = |name: &str| {
        program_names::SOCK_ADDR
            .iter()
            .chain(&program_names::SKB)
            .copied()
            .find(|known| *known == name)
            .or_else(|| lsm_hook(name).map(|(name, _)| name))
    };
    std::thread::scope(|scope| {
        let loads: Vec<_> = ebpf
            .programs_mut()
            .filter_map(|(name, program)| Some((known(name)?, program)))
            .filter(|(name, _)| lsm_hook(name).is_none() || lsm_btf.is_some())
            .map(|(name, program)| {
                let load = move || {
                    let loaded = match (program, lsm_hook(name), lsm_btf) {
                        (aya::programs::Program::CgroupSockAddr(p), None, _) => p.load(),
                        (aya::programs::Program::CgroupSkb(p), None, _) => p.load(),
                        (aya::programs::Program::Lsm(p), Some((_, hook)), Some(btf)) => {
                            p.load(hook, btf)
                        }
                        // Not the kind isolate's object defines under this name.
                        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
                    };
                    loaded.map_err(program_error(name))
                };
                (name, scope.spawn(load))
            })
            .collect();
        Loaded(
            loads
                .into_iter()
                .map(|(name, load)| (name, load.join().expect("a program load panicked")))
                .collect(),
        )
    })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program_error(name))
}

fn program_error(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> BpfError + Copy {
    move |e| BpfError::Program {
        name,
        source: Box::new(e),
    }
}

/// Pins a program's link so the attachment outlives this process.
fn pin_link(
    pins: &PinDir,
    name: &'static str,
    link: Result<FdLink, aya::programs::links::LinkError>,
) -> Result<(), BpfError> {
    let link = link.map_err(|e| BpfError::Link {
        name,
        source: Box::new(e),
    })?;
    let path = pins.link(name);
    link.pin(&path)
        .map_err(|e| pin_error("pin", &path)(io::Error::other(e)))?;
    Ok(())
}

/// The keys of one (uid, generation) in each trie.
struct GenerationKeys {
    allow_v4: Vec<Key<V4Key>>,
    allow_v6: Vec<Key<V6Key>>,
    listen_v4: Vec<Key<V4Key>>,
    listen_v6: Vec<Key<V6Key>>,
}

/// A trie key's owner: (uid, generation).
trait Owner: aya::Pod {
    fn owner(&self) -> (u32, u32);
}

impl Owner for V4Key {
    fn owner(&self) -> (u32, u32) {
        (self.uid, self.generation)
    }
}

impl Owner for V6Key {
    fn owner(&self) -> (u32, u32) {
        (self.uid, self.generation)
    }
}

fn keys_of<K: Owner>(
    trie: &LpmTrie<MapData, K, AllowValue>,
    owners: &HashSet<(u32, u32)>,
) -> Vec<Key<K>> {
    trie.keys()
        .filter_map(Result::ok)
        .filter(|key| owners.contains(&key.data().owner()))
        .collect()
}

fn v4_key(uid: u32, generation: u32, net: Ipv4Net) -> Key<V4Key> {
    Key::new(
        KEY_HEADER_BITS + u32::from(net.prefix_len()),
        V4Key {
            uid,
            generation,
            addr: net.network().octets(),
        },
    )
}

fn v6_key(uid: u32, generation: u32, net: Ipv6Net) -> Key<V6Key> {
    Key::new(
        KEY_HEADER_BITS + u32::from(net.prefix_len()),
        V6Key {
            uid,
            generation,
            addr: net.network().octets(),
        },
    )
}

/// Every counter an instance has: one per family, protocol and hook.
fn counter_keys(uid: u32) -> impl Iterator<Item = CounterKey> {
    let inet = [FAMILY_V4, FAMILY_V6].into_iter().flat_map(move |family| {
        [PROTO_TCP, PROTO_UDP, PROTO_OTHER]
            .into_iter()
            .flat_map(move |protocol| {
                INET_HOOKS.into_iter().map(move |hook| CounterKey {
                    uid,
                    family,
                    protocol,
                    hook,
                    _pad: 0,
                })
            })
    });
    let unix = [PROTO_STREAM, PROTO_DGRAM]
        .into_iter()
        .map(move |protocol| CounterKey {
            uid,
            family: FAMILY_UNIX,
            protocol,
            hook: HOOK_UNIX,
            _pad: 0,
        });
    let families = std::iter::once(CounterKey {
        uid,
        family: FAMILY_OTHER,
        protocol: PROTO_OTHER,
        hook: HOOK_SOCKET,
        _pad: 0,
    });
    inet.chain(unix).chain(families)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The counter map holds every counter of every instance the maps can confine (it once
    /// held 16 per instance while each creates 20, so the last fifth of a full host went
    /// uncounted).
    #[test]
    fn the_counter_map_is_sized_for_every_instance() {
        let keys: BTreeSet<CounterKey> = counter_keys(1000).collect();
        assert_eq!(
            u32::try_from(keys.len()).unwrap(),
            isolate_ebpf_common::COUNTERS_PER_INSTANCE
        );
        assert!(counter_keys(1000).all(|k| k.uid == 1000));
    }
}
