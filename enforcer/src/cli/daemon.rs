//! `isolate daemon`, `isolate status` and `isolate reload`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use isolate_enforcer::bpf::PinDir;
use isolate_enforcer::control::{self, Request, Response};
use isolate_enforcer::daemon::{self, DaemonConfig, status};
use isolate_enforcer::layer::Layers;
use isolate_enforcer::paths;

use super::DEFAULT_POLICY_DIR;

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// The policy directory: one `<instance>.toml` per instance.
    #[arg(long, default_value = DEFAULT_POLICY_DIR)]
    policy_dir: PathBuf,
    /// Where Prometheus metrics are served (`/metrics`), or `off`.
    #[arg(long, default_value = "127.0.0.1:9477")]
    metrics: String,
    /// The control socket (`isolate status`, `isolate reload`, `isolate exec` use it).
    #[arg(long, default_value = paths::CONTROL_SOCKET)]
    control_socket: PathBuf,
    /// Where the daemon records what it enforces.
    #[arg(long, default_value = paths::DAEMON_STATE_DIR)]
    state_dir: PathBuf,
    /// Network layers to enforce: ebpf, nftables, or both (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "ebpf,nftables", value_parser = ["ebpf", "nftables"])]
    layers: Vec<String>,
    /// Remove everything the daemon enforces (every instance, programs, pins) and exit.
    #[arg(long)]
    cleanup: bool,
    /// With --cleanup: also while instances' processes still run (they are left unconfined).
    #[arg(long, requires = "cleanup")]
    force: bool,
    /// Attach to this cgroup instead of the cgroup2 root (tests).
    #[arg(long, hide = true)]
    cgroup: Option<PathBuf>,
    /// Pin the eBPF layer here instead of /sys/fs/bpf/isolate/daemon (tests).
    #[arg(long, hide = true)]
    pin_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The daemon's control socket.
    #[arg(long, default_value = paths::CONTROL_SOCKET)]
    control_socket: PathBuf,
    /// The daemon's state directory (read when no daemon answers).
    #[arg(long, default_value = paths::DAEMON_STATE_DIR)]
    state_dir: PathBuf,
    /// The daemon's pins (read when no daemon answers).
    #[arg(long, hide = true)]
    pin_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ReloadArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = paths::CONTROL_SOCKET)]
    control_socket: PathBuf,
}

fn config(args: &DaemonArgs) -> anyhow::Result<DaemonConfig> {
    let mut config = DaemonConfig::new(args.policy_dir.clone());
    config.state_dir.clone_from(&args.state_dir);
    config.control_socket.clone_from(&args.control_socket);
    config.metrics = match args.metrics.as_str() {
        "off" => None,
        addr => Some(addr.parse::<SocketAddr>().with_context(|| {
            format!("--metrics {addr}: not an address like 127.0.0.1:9477 (or `off`)")
        })?),
    };
    config.layers = Layers {
        ebpf: args.layers.iter().any(|l| l == "ebpf"),
        nftables: args.layers.iter().any(|l| l == "nftables"),
    };
    config.cgroup.clone_from(&args.cgroup);
    if let Some(dir) = &args.pin_dir {
        config.pins = PinDir::new(dir);
    }
    Ok(config)
}

pub fn run_daemon(args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let config = config(args)?;
    if args.cleanup {
        let removed = daemon::cleanup(&config, args.force)?;
        eprintln!(
            "isolate: removed the daemon's enforcement ({} instance(s))",
            removed.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    daemon::run(&config)?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout, reason = "CLI output")]
pub fn run_status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let status = match control::request(&args.control_socket, &Request::Status)? {
        Some(Response::Status(status)) => status,
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => {
            let pins = PinDir::new(args.pin_dir.clone().unwrap_or_else(paths::daemon_pins));
            status::from_kernel(&args.state_dir, &pins, &paths::exec_pins_root())
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_reload(args: &ReloadArgs) -> anyhow::Result<ExitCode> {
    match control::request(&args.control_socket, &Request::Reload)? {
        Some(Response::Reloaded { report }) => {
            eprintln!("isolate: reloaded: {report}");
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some(Response::Error { message }) => bail!("the daemon refused: {message}"),
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => bail!(
            "no daemon listens on {} (start it with `isolate daemon` or `systemctl start isolate`)",
            args.control_socket.display()
        ),
    }
}
