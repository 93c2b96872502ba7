//! `isolate daemon`: enforces every instance of the policy directory host-wide (programs at the
//! cgroup2 root, keyed by UID; an nftables table per instance), keeps it in step with the files
//! (SIGHUP, `isolate reload`), pumps block events to the audit trail, and serves Prometheus
//! metrics and the control socket.
//!
//! Enforcement is pinned in the kernel: when the daemon stops, even by SIGKILL, every instance
//! stays enforced, and the next daemon adopts the pins without a gap. Only `--cleanup` (or an
//! instance's removal from the directory) takes enforcement away.

pub mod control;
pub mod registry;
pub mod state;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};

use crate::bpf::{self, BpfLayer, PinDir};
use crate::exec::Layers;
use registry::Registry;
use state::Enforced;

/// Where the daemon records what it enforces.
pub const DEFAULT_STATE_DIR: &str = "/run/isolate/daemon";
/// Where the daemon pins its eBPF layer, below bpffs.
pub const PIN_SUBDIR: &str = "isolate/daemon";
/// Where `isolate exec` runs pin theirs.
pub const EXEC_PIN_SUBDIR: &str = "isolate/exec";
/// How often events move from the ring buffer to the audit trail.
const EVENT_PERIOD: Duration = Duration::from_millis(200);
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
            state_dir: DEFAULT_STATE_DIR.into(),
            control_socket: control::DEFAULT_SOCKET.into(),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9477))),
            layers: Layers::default(),
            cgroup: None,
            pins: default_pins(),
        }
    }
}

pub fn default_pins() -> PinDir {
    PinDir::new(Path::new(bpf::BPFFS).join(PIN_SUBDIR))
}

pub fn exec_pins() -> PathBuf {
    Path::new(bpf::BPFFS).join(EXEC_PIN_SUBDIR)
}

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("the daemon must run as root (it attaches eBPF programs and edits nftables)")]
    NotRoot,
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("eBPF layer: {0}")]
    Bpf(#[from] bpf::BpfError),
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

/// Runs the daemon until SIGTERM or SIGINT; enforcement stays in place after it returns.
pub fn run(config: &DaemonConfig) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let registry = Arc::new(Mutex::new(open_registry(config)?));
    {
        let mut registry = registry.lock().expect("registry lock");
        let previous = Enforced::load(&config.state_dir).unwrap_or_default();
        registry.adopt(previous.clone());
        let report = registry.reload();
        registry.forget_stale(&previous);
        tracing::info!(
            applied = report.applied.len(),
            failed = report.failed.len(),
            "enforcing {} instance(s) from {}",
            registry.instances.len(),
            config.policy_dir.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("tokio runtime"))?;
    runtime.block_on(serve(config, registry))
}

/// Loads (or adopts) the eBPF layer and makes an empty registry.
fn open_registry(config: &DaemonConfig) -> Result<Registry, DaemonError> {
    let bpf = if config.layers.ebpf {
        let cgroup = match &config.cgroup {
            Some(cgroup) => cgroup.clone(),
            None => crate::cgroup::cgroup2_mount()?,
        };
        Some(BpfLayer::attach(&cgroup, config.pins.clone())?)
    } else {
        None
    };
    Ok(Registry::new(
        config.policy_dir.clone(),
        config.state_dir.clone(),
        config.layers,
        bpf,
    ))
}

async fn serve(config: &DaemonConfig, registry: Arc<Mutex<Registry>>) -> Result<(), DaemonError> {
    let control = {
        let (path, registry) = (config.control_socket.clone(), Arc::clone(&registry));
        tokio::spawn(async move {
            if let Err(e) = control::serve(&path, registry).await {
                tracing::error!("control socket {}: {e}", path.display());
            }
        })
    };
    if let Some(addr) = config.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io_error(format!("metrics address {addr}")))?;
        tracing::info!("metrics on http://{addr}/metrics");
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let registry = Arc::clone(&registry);
                    async move { crate::metrics::render(&registry.lock().expect("registry lock")) }
                }),
            );
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics server: {e}");
            }
        });
    }

    let mut hangup = signal(SignalKind::hangup()).map_err(io_error("SIGHUP handler"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io_error("SIGTERM handler"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_error("SIGINT handler"))?;
    let mut events = tokio::time::interval(EVENT_PERIOD);
    let mut refresh = tokio::time::interval(REFRESH_PERIOD);
    refresh.reset();
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let report = registry.lock().expect("registry lock").reload();
                tracing::info!(?report, "reloaded");
            }
            _ = events.tick() => registry.lock().expect("registry lock").pump_events(),
            _ = refresh.tick() => registry.lock().expect("registry lock").refresh(),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    registry.lock().expect("registry lock").pump_events();
    control.abort();
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!("stopping; enforcement stays pinned in the kernel");
    Ok(())
}

/// Takes away everything the daemon enforces: every instance, the programs, the pins, the state.
pub fn cleanup(config: &DaemonConfig) -> Result<Vec<String>, DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let previous = Enforced::load(&config.state_dir).map_err(io_error("state file"))?;
    let mut removed = Vec::new();
    if config.layers.nftables {
        for name in previous.instances.keys() {
            crate::nft::remove(name).map_err(|e| DaemonError::Io {
                what: format!("instance {name}: nftables layer"),
                source: std::io::Error::other(e.to_string()),
            })?;
            removed.push(name.clone());
        }
    }
    if config.pins.exists() {
        BpfLayer::open(config.pins.clone())?.detach()?;
    }
    Enforced::remove(&config.state_dir).map_err(io_error("state file"))?;
    Ok(removed)
}
