//! Subcommands of `isolate`, one module each.

mod check;
mod exec;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};

/// Where instance policies live unless a command is told otherwise.
pub const DEFAULT_POLICY_DIR: &str = "/etc/isolate/instances";

#[derive(Parser)]
#[command(
    name = "isolate",
    version,
    about = "Confine a Linux service instance to the network destinations and files its policy allows",
    long_about = "Confine a Linux service instance (an AI coding agent server such as `opencode serve`, \
one instance per project) so that it reaches only the network destinations and files its policy \
allows. Every blocked attempt is refused at once with EPERM, counted, and recorded.\n\n\
Policies are TOML files, one per instance, in /etc/isolate/instances/<name>.toml."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command as a confined instance.
    ///
    /// The child runs as the instance's user, in its own cgroup, with the instance's network
    /// policy (eBPF and nftables), a Landlock file-system ruleset, `no_new_privs` and every
    /// capability dropped. Exits with the child's exit code (128+signal when it was killed).
    Exec(exec::ExecArgs),
    /// Enforce every instance in the policy directory and keep it enforced.
    ///
    /// Applies each instance's layers, re-reads the directory on SIGHUP, serves Prometheus
    /// metrics, and writes block events to journald. Enforcement stays pinned in the kernel
    /// when the daemon stops.
    Daemon(DaemonArgs),
    /// Validate policy files and print them normalised; `--kernel` reports kernel features.
    ///
    /// Exits non-zero when any policy has an error; each error names the file, line, column,
    /// field and what to change.
    Check(check::CheckArgs),
    /// Show what is enforced: instances, UIDs, layers in force and blocked counts.
    Status,
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// The policy directory.
    #[arg(long, default_value = DEFAULT_POLICY_DIR)]
    policy_dir: PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => Ok(check::run(&args)),
        Command::Exec(args) => exec::run(&args),
        Command::Daemon(_) => not_yet("daemon", 8),
        Command::Status => not_yet("status", 8),
    }
}

fn not_yet(command: &str, issue: u32) -> anyhow::Result<ExitCode> {
    bail!("`isolate {command}` is not implemented in this version yet (tracked in issue #{issue})")
}
