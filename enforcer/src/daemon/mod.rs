//! `isolate daemon`: enforces every instance of the policy directory host-wide (programs at the
//! cgroup2 root, keyed by UID; an nftables table per instance), keeps it in step with the files
//! (SIGHUP, `isolate reload`), pumps block events to the audit trail, and serves Prometheus
//! metrics and the control socket.
//!
//! Enforcement is pinned in the kernel: when the daemon stops, even by SIGKILL, every instance
//! stays enforced, and the next daemon adopts the pins without a gap. Only `--cleanup` (or an
//! instance's removal from the directory) takes enforcement away.
//!
//! Three parts run side by side, so none holds up another:
//! - the registry worker (a thread of its own) owns the registry and does every change:
//!   reloads, `ensure`, the periodic re-resolution; after each it publishes a [`View`];
//! - the event pump (a thread of its own) moves block events to the audit trail;
//! - the async side (signals, control socket, `/metrics`) reads the latest view and the
//!   layers' counters through handles of its own, on the blocking pool.

mod following;
mod pump;
pub mod registry;
mod server;
pub mod state;
pub mod status;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};

use crate::bpf::UnixSupport;
use crate::bpf::{self, BpfLayer, PinDir};
use crate::control::{
    DaemonStats, InstanceStatus, LayerAvailability, ReloadReport, Response, Status,
};
use crate::layer::{InstanceId, LayerError, LayerSet, Layers, NetworkLayer, NftLayer};
use registry::{Lookups, Registry};
use state::Enforced;

/// How often host names are re-resolved.
const REFRESH_PERIOD: Duration = Duration::from_mins(1);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub policy_dir: PathBuf,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub layers: Layers,
    /// The cgroup the programs attach to (the cgroup2 root in production).
    pub cgroup: Option<PathBuf>,
    pub pins: PinDir,
}

impl DaemonConfig {
    pub fn new(policy_dir: PathBuf) -> Self {
        Self {
            policy_dir,
            state_dir: crate::paths::DAEMON_STATE_DIR.into(),
            control_socket: crate::paths::CONTROL_SOCKET.into(),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9477))),
            layers: Layers::default(),
            cgroup: None,
            pins: PinDir::new(crate::paths::daemon_pins()),
        }
    }
}

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("the daemon must run as root (it attaches eBPF programs and edits nftables)")]
    NotRoot,
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("eBPF layer: {0}")]
    Bpf(#[from] bpf::BpfError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(
        "instance {instance} still runs {} (UID {uid}); taking enforcement away now would leave \
         them unconfined: stop them first (e.g. `systemctl stop opencode@{instance}`), or pass \
         --force", crate::procs::list(.processes, 5)
    )]
    StillRunning {
        instance: String,
        uid: u32,
        processes: Vec<crate::procs::Process>,
    },
    #[error("instance {instance}: {source}")]
    Remove {
        instance: String,
        #[source]
        source: crate::layer::RemoveError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// One instance as the daemon enforces it, for status, metrics and the event pump.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub id: InstanceId,
    pub user: String,
    pub hash: String,
    pub entries_v4: usize,
    pub entries_v6: usize,
    pub rate: isolate_policy::Rate,
    /// The instance's policy file, which a refusal's fix names.
    pub policy_file: PathBuf,
    pub kept: Option<String>,
}

/// What the registry enforces, as last published by the worker.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub instances: Vec<InstanceView>,
    pub layers: Vec<String>,
    pub stats: DaemonStats,
}

impl View {
    fn of(registry: &Registry, layers: &[String]) -> Self {
        Self {
            instances: registry
                .instances()
                .map(|i| InstanceView {
                    id: i.id.clone(),
                    user: i.user.clone(),
                    hash: i.hash.clone(),
                    entries_v4: i.rules.v4.len(),
                    entries_v6: i.rules.v6.len(),
                    rate: i.policy.network.log.rate,
                    policy_file: i.policy.source.clone(),
                    kept: i.kept.clone(),
                })
                .collect(),
            layers: layers.to_vec(),
            stats: registry.stats(),
        }
    }
}

/// Refusals a slow `isolate log -f` follower may fall behind by before it misses some.
const REFUSALS_QUEUED: usize = 1024;

/// A refusal as `isolate log` shows it.
#[derive(Debug, Clone)]
struct Refusal {
    instance: String,
    /// The audit record's one-line form.
    record: String,
}

/// What the three parts share. Each lock is held only to copy or swap small values, never
/// across work, and a panic elsewhere never makes it unusable.
struct Shared {
    view: RwLock<Arc<View>>,
    /// Latest blocked attempts, by UID, as record lines (the pump's).
    recent: Mutex<BTreeMap<u32, VecDeque<String>>>,
    events_received: AtomicU64,
    /// Refusals whose event the kernel did not send, by UID, since the daemon started (the
    /// pump's).
    unsent: Mutex<BTreeMap<u32, u64>>,
    /// Every refusal the pump takes in, for the followers of `isolate log -f`.
    refusals: tokio::sync::broadcast::Sender<Refusal>,
    /// The layers as the readers see them: handles apart from the worker's.
    readers: LayerSet,
    /// What the layers offer, found when they were opened.
    availability: Vec<LayerAvailability>,
    /// The resolvers of the instances whose names are followed.
    resolvers: following::Reporters,
}

impl Shared {
    fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn publish(&self, view: View) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }

    /// The status with the kernel's counters as they are now. Blocking: reads maps and runs
    /// `nft`.
    fn status(&self) -> Status {
        let view = self.view();
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let unsent = self
            .unsent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let resolvers = self
            .resolvers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let ids: Vec<InstanceId> = view.instances.iter().map(|i| i.id.clone()).collect();
        let counters = self.readers.counters_of(&ids);
        let instances = view
            .instances
            .iter()
            .zip(counters)
            .map(|(i, counters)| {
                let mut status = InstanceStatus {
                    name: i.id.name.clone(),
                    mode: "daemon".into(),
                    uid: i.id.uid,
                    user: i.user.clone(),
                    layers: view.layers.clone(),
                    policy_hash: i.hash.clone(),
                    entries_v4: i.entries_v4,
                    entries_v6: i.entries_v6,
                    recent: recent
                        .get(&i.id.uid)
                        .map(|r| r.iter().cloned().collect())
                        .unwrap_or_default(),
                    kept: i.kept.clone(),
                    events_unsent: unsent.get(&i.id.uid).copied().unwrap_or_default(),
                    dns: resolvers
                        .get(&i.id.name)
                        .map(|resolver| resolver.report().into()),
                    ..InstanceStatus::default()
                };
                status.set_counters(counters);
                status
            })
            .collect();
        Status {
            daemon_running: true,
            instances,
            daemon: Some(DaemonStats {
                events_received: self.events_received.load(Ordering::Relaxed),
                ..view.stats
            }),
            layers: self.availability.clone(),
        }
    }
}

/// Work for the registry worker; each carries where its answer goes.
enum Work {
    Reload(Option<tokio::sync::oneshot::Sender<ReloadReport>>),
    Ensure {
        instance: String,
        answer: tokio::sync::oneshot::Sender<Response>,
    },
}

/// Runs the daemon until SIGTERM or SIGINT; enforcement stays in place after it returns.
pub fn run(config: &DaemonConfig) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let (layers, availability) = open_layers(config)?;
    let readers = layers.reader()?;
    let layer_names: Vec<String> = layers.kinds().iter().map(ToString::to_string).collect();
    let (refusals, refused) = mpsc::channel();
    let resolvers = following::Reporters::default();
    let mut registry = Registry::new(config.policy_dir.clone(), layers, Lookups::system());
    if config.layers.ebpf || config.layers.nftables {
        registry.follow_names(Box::new(following::Following::new(
            config.layers.ebpf.then(|| config.pins.clone()),
            config.layers.nftables,
            refusals,
            Arc::clone(&resolvers),
        )));
    }
    let previous = Enforced::load(&config.state_dir).unwrap_or_else(|e| {
        tracing::error!(
            "cannot read {}: {e}; starting from the policy directory alone",
            Enforced::path(&config.state_dir).display()
        );
        Enforced::default()
    });
    let report = registry.start(previous);
    save_state(&registry, &config.state_dir);
    release_freed_memory();
    tracing::info!(
        applied = report.applied.len(),
        unchanged = report.unchanged.len(),
        failed = report.failed.len(),
        "enforcing {} instance(s) from {}",
        registry.instances().count(),
        config.policy_dir.display()
    );
    let shared = Arc::new(Shared {
        view: RwLock::new(Arc::new(View::of(&registry, &layer_names))),
        recent: Mutex::default(),
        events_received: AtomicU64::new(0),
        unsent: Mutex::default(),
        refusals: tokio::sync::broadcast::channel(REFUSALS_QUEUED).0,
        readers,
        availability,
        resolvers,
    });

    let (work, work_queue) = mpsc::channel();
    let worker = {
        let (shared, state_dir) = (Arc::clone(&shared), config.state_dir.clone());
        std::thread::Builder::new()
            .name("registry".into())
            .spawn(move || run_worker(registry, &work_queue, &shared, &state_dir, &layer_names))
            .map_err(io_error("registry thread"))?
    };
    let (drain, drain_queue) = mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    // The eBPF layer's block events and the resolvers' refusals (either layer follows names).
    let pump = if config.layers.ebpf || config.layers.nftables {
        let (shared, pins) = (
            Arc::clone(&shared),
            config.layers.ebpf.then(|| config.pins.clone()),
        );
        Some(
            std::thread::Builder::new()
                .name("events".into())
                .spawn(move || pump::run(pins.as_ref(), &drain_queue, &refused, &shared))
                .map_err(io_error("event thread"))?,
        )
    } else {
        None
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("tokio runtime"))?;
    let server = server::Server {
        shared: Arc::clone(&shared),
        work: work.clone(),
        drain: pump.is_some().then_some(drain.clone()),
    };
    let result = runtime.block_on(serve(config, server, &work));
    // Closing the queues ends both threads once they finish what they are doing; the
    // runtime's tasks hold senders too, so it goes first.
    drop(runtime);
    drop((work, drain));
    let _ = worker.join();
    if let Some(pump) = pump {
        let _ = pump.join();
    }
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!("stopped; enforcement stays pinned in the kernel");
    result
}

/// The daemon's layers: the eBPF attachment (loaded, or adopted from its pins) and nftables,
/// and what they offer (operators see it in status and metrics, not only in a log line).
fn open_layers(config: &DaemonConfig) -> Result<(LayerSet, Vec<LayerAvailability>), DaemonError> {
    let availability = |layer: &str, reason: Option<String>| LayerAvailability {
        layer: layer.into(),
        available: reason.is_none(),
        reason,
    };
    let off = || Some("turned off (--layers)".to_owned());
    let mut layers: Vec<Box<dyn NetworkLayer>> = Vec::new();
    let mut offered = Vec::new();
    if config.layers.ebpf {
        let cgroup = match &config.cgroup {
            Some(cgroup) => cgroup.clone(),
            None => crate::cgroup::cgroup2_mount()?,
        };
        let bpf = BpfLayer::attach(&cgroup, config.pins.clone())?;
        let unix = match bpf.unix_support() {
            UnixSupport::Enforced => None,
            UnixSupport::Unavailable(reason) => Some(reason.clone()),
        };
        offered.push(availability("ebpf", None));
        offered.push(availability("unix", unix));
        layers.push(Box::new(bpf));
    } else {
        offered.push(availability("ebpf", off()));
        offered.push(availability("unix", off()));
    }
    offered.push(availability(
        "nftables",
        (!config.layers.nftables).then(off).flatten(),
    ));
    if config.layers.nftables {
        layers.push(Box::new(NftLayer));
    }
    Ok((LayerSet::new(layers), offered))
}

fn save_state(registry: &Registry, state_dir: &std::path::Path) {
    if let Err(e) = registry.record().save(state_dir) {
        tracing::error!("cannot write {}: {e}", Enforced::path(state_dir).display());
    }
}

/// The registry worker: does each piece of work in turn, re-resolves host names when none
/// came for a while, and publishes the outcome. A panic in one piece of work is logged and
/// the worker goes on (enforcement is in the kernel; the registry may be stale until the
/// next reload, which re-reads everything).
fn run_worker(
    mut registry: Registry,
    queue: &mpsc::Receiver<Work>,
    shared: &Shared,
    state_dir: &std::path::Path,
    layers: &[String],
) {
    let mut next_refresh = Instant::now() + REFRESH_PERIOD;
    loop {
        let wait = next_refresh.saturating_duration_since(Instant::now());
        let work = match queue.recv_timeout(wait) {
            Ok(work) => Some(work),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match work {
            Some(Work::Reload(answer)) => {
                let report = registry.reload();
                tracing::info!(%report, "reloaded");
                if let Some(answer) = answer {
                    let _ = answer.send(report);
                }
            }
            Some(Work::Ensure { instance, answer }) => {
                let report = registry.reload();
                let _ = answer.send(ensured(&registry, &report, &instance, &shared.availability));
            }
            None => {
                registry.refresh();
                next_refresh = Instant::now() + REFRESH_PERIOD;
            }
        }));
        if outcome.is_err() {
            tracing::error!("the registry worker panicked; enforcement in the kernel is unchanged");
        }
        save_state(&registry, state_dir);
        shared.publish(View::of(&registry, layers));
        release_freed_memory();
    }
}

/// Gives the memory a start or reload freed back to the system. Applying many instances
/// builds their rules and transactions on several threads at once, and glibc keeps what each
/// thread's arena freed: after a start of 100 instances of 1,000 CIDRs the daemon held 57 MiB
/// it no longer used.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The answer to `ensure`: the instance's UID, or why the daemon does not enforce it.
fn ensured(
    registry: &Registry,
    report: &ReloadReport,
    instance: &str,
    availability: &[LayerAvailability],
) -> Response {
    match registry.instance(instance) {
        Some(i) => Response::Ensured {
            instance: instance.to_owned(),
            uid: i.id.uid,
            source: i.policy.source.clone(),
            network: crate::control::network_digest(&i.policy.network),
            not_enforced: availability
                .iter()
                .filter(|layer| !layer.available)
                .cloned()
                .collect(),
        },
        None => Response::Error {
            message: report.failure_of(instance).map_or_else(
                || {
                    format!(
                        "the daemon has no instance `{instance}` in {}",
                        registry.policy_dir().display()
                    )
                },
                |f| f.reason.clone(),
            ),
        },
    }
}

async fn serve(
    config: &DaemonConfig,
    server: server::Server,
    work: &mpsc::Sender<Work>,
) -> Result<(), DaemonError> {
    let server = Arc::new(server);
    let control = {
        let (path, server) = (config.control_socket.clone(), Arc::clone(&server));
        let listener =
            server::bind(&path).map_err(io_error(format!("control socket {}", path.display())))?;
        tokio::spawn(async move { server.serve_control(listener).await })
    };
    if let Some(addr) = config.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io_error(format!("metrics address {addr}")))?;
        tracing::info!("metrics on http://{addr}/metrics");
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.serve_metrics(listener).await });
    }

    let mut hangup = signal(SignalKind::hangup()).map_err(io_error("SIGHUP handler"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io_error("SIGTERM handler"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_error("SIGINT handler"))?;
    loop {
        tokio::select! {
            _ = hangup.recv() => { let _ = work.send(Work::Reload(None)); }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    control.abort();
    Ok(())
}

/// Takes away everything the daemon enforces: every instance, the programs, the pins, the state.
/// Refuses, changing nothing, while processes of an instance run in its cgroup (`isolate exec
/// --instance`), unless `force`.
pub fn cleanup(config: &DaemonConfig, force: bool) -> Result<Vec<String>, DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let previous = Enforced::load(&config.state_dir).map_err(io_error("state file"))?;
    if !force {
        for (name, record) in &previous.instances {
            let processes: Vec<_> = crate::procs::of_uid(record.uid)
                .into_iter()
                .filter(|p| p.in_instance(name))
                .collect();
            if !processes.is_empty() {
                return Err(DaemonError::StillRunning {
                    instance: name.clone(),
                    uid: record.uid,
                    processes,
                });
            }
        }
    }
    let mut layers: Vec<Box<dyn NetworkLayer>> = Vec::new();
    let mut outdated = false;
    if config.layers.ebpf && config.pins.exists() {
        match BpfLayer::open(config.pins.clone()) {
            Ok(bpf) => layers.push(Box::new(bpf)),
            // Attached by an older isolate: its pins go whole below (that detaches it).
            Err(bpf::BpfError::Outdated { .. }) => outdated = true,
            Err(e) => return Err(e.into()),
        }
    }
    if config.layers.nftables {
        layers.push(Box::new(NftLayer));
    }
    let mut layers = LayerSet::new(layers);
    let ids: Vec<InstanceId> = previous
        .instances
        .iter()
        .map(|(name, record)| (name.clone(), record.uid))
        .chain(previous.removing.clone())
        .map(|(name, uid)| InstanceId { name, uid })
        .collect();
    let results = layers.remove_many(&ids);
    let mut removed = Vec::new();
    for (id, result) in ids.into_iter().zip(results) {
        result.map_err(|source| DaemonError::Remove {
            instance: id.name.clone(),
            source,
        })?;
        removed.push(id.name);
    }
    drop(layers);
    if outdated {
        config
            .pins
            .remove()
            .map_err(io_error("remove the outdated eBPF pins"))?;
    } else if config.pins.exists() {
        BpfLayer::open(config.pins.clone())?.detach()?;
    }
    Enforced::remove(&config.state_dir).map_err(io_error("state file"))?;
    Ok(removed)
}
