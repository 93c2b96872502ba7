//! `isolate exec`: run a command as a confined instance.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use isolate_enforcer::exec::{self, ExecPlan};
use isolate_enforcer::layer::Layers;
use isolate_enforcer::paths;
use isolate_policy::Policy;

use super::DEFAULT_POLICY_DIR;

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The instance, by name: its policy is <policy-dir>/<name>.toml.
    #[arg(long, conflicts_with = "policy", required_unless_present = "policy")]
    instance: Option<String>,
    /// A policy file to use instead of an instance name.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The policy directory.
    #[arg(long, default_value = DEFAULT_POLICY_DIR)]
    policy_dir: PathBuf,
    /// Network layers to apply: ebpf, nftables, or both (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "ebpf,nftables", value_parser = ["ebpf", "nftables"])]
    layers: Vec<String>,
    /// The daemon's control socket: when a daemon answers there and enforces the instance,
    /// it applies the network layers and records block events.
    #[arg(long, default_value = paths::CONTROL_SOCKET)]
    control_socket: PathBuf,
    /// Print what would be applied (user, cgroup, network rules, Landlock rules) and exit.
    #[arg(long)]
    dry_run: bool,
    /// Pass the caller's open descriptor N on to the command (repeatable). Every other
    /// descriptor above 2 is closed, so nothing the caller had open (a socket, a file)
    /// reaches the command by accident.
    #[arg(long = "keep-fd", value_name = "N")]
    keep_fd: Vec<i32>,
    /// Learn mode: run the command observed instead of confined, then write FILE, the policy
    /// plus what the command did beyond it (destinations by host name where it looked them
    /// up, ports it served on, unix sockets, files read, written and run, folded to
    /// directories), each learned line with a comment saying when and by which program it was
    /// seen. NOTHING IS ENFORCED during the run: the network layers let through and report
    /// what the policy would refuse, Landlock is not applied. Review FILE, then run the
    /// command under it with --policy FILE.
    #[arg(long, value_name = "FILE")]
    learn: Option<PathBuf>,
    /// The command to run, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

#[allow(clippy::print_stdout, reason = "CLI output")]
pub fn run(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let policy = load_policy(args)?;
    let layers = Layers {
        ebpf: args.layers.iter().any(|l| l == "ebpf"),
        nftables: args.layers.iter().any(|l| l == "nftables"),
    };
    let mut plan = ExecPlan::new(policy, layers, args.dry_run)?;
    plan.control_socket.clone_from(&args.control_socket);
    plan.keep_fds(&args.keep_fd)?;
    if let Some(file) = &args.learn {
        plan.learn(file)?;
    }
    if args.dry_run {
        println!("{plan}");
        println!("command   {}", exec::shell_words(&args.command));
        return Ok(ExitCode::SUCCESS);
    }
    let code = exec::run(plan, &args.command)?;
    // Exit codes above 255 cannot happen: 128 + signal number stays below.
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
}

fn load_policy(args: &ExecArgs) -> anyhow::Result<Policy> {
    let path = match (&args.policy, &args.instance) {
        // Absolute: refusals name this file as the place of their fix.
        (Some(path), _) => std::path::absolute(path)
            .with_context(|| format!("{}: cannot make the path absolute", path.display()))?,
        (None, Some(name)) => args.policy_dir.join(format!("{name}.toml")),
        (None, None) => {
            bail!("name an instance (--instance NAME) or a policy file (--policy FILE)")
        }
    };
    if let (Some(name), false) = (&args.instance, path.exists()) {
        bail!(
            "no policy for instance `{name}`: expected {} (write one, pass --policy-dir DIR, or run a file with --policy FILE)",
            path.display()
        );
    }
    let policy = isolate_policy::load_file(&path).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    if let Some(name) = &args.instance
        && &policy.name != name
    {
        bail!(
            "{}: name: the file names instance `{}`, not `{name}`",
            path.display(),
            policy.name
        );
    }
    Ok(policy)
}
