//! Subcommands of `isolate`, one module each.

mod check;
mod daemon;
mod exec;
mod log;
mod man;
mod presets;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

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
    Daemon(daemon::DaemonArgs),
    /// Validate policy files and print them normalised; `--kernel` reports kernel features.
    ///
    /// Exits non-zero when any policy has an error; each error names the file, line, column,
    /// field and what to change.
    Check(check::CheckArgs),
    /// List the presets a policy can merge (`presets = [...]`), and what each adds.
    ///
    /// Per agent (opencode, claude-code, codex): the files, programs and own port it needs; per
    /// destination group (anthropic, openai, github, npm, ...): the hosts. `isolate presets
    /// NAME` prints one as shipped, with what was verified and what was read from documentation.
    Presets(presets::PresetsArgs),
    /// Show what is enforced: instances, UIDs, layers in force and blocked counts.
    ///
    /// Asks the daemon when it runs; otherwise reads what is pinned in the kernel.
    Status(daemon::StatusArgs),
    /// Ask the running daemon to re-read the policy directory (as SIGHUP does).
    Reload(daemon::ReloadArgs),
    /// Show the daemon's latest refusals, each with the policy entry that would allow it.
    ///
    /// The same records as the audit trail (journald, or stderr without it), read from the
    /// running daemon: the last ten of each instance, and with `--follow` every new one as it
    /// happens, not limited by `network.log.rate` (the kernel still sends at most 100 per
    /// second and CPU of each instance).
    Log(log::LogArgs),
    /// Print the shell completion script for SHELL.
    ///
    /// For example `isolate completions bash > /etc/bash_completion.d/isolate`, or
    /// `isolate completions zsh > "${fpath[1]}/_isolate"`, or
    /// `isolate completions fish > ~/.config/fish/completions/isolate.fish`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (isolate(1), one per subcommand, isolate.toml(5)) into DIR.
    #[command(hide = true)]
    ManPages {
        /// Where the pages go (created if need be).
        dir: std::path::PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => Ok(check::run(&args)),
        Command::Presets(args) => presets::run(&args),
        Command::Exec(args) => exec::run(&args),
        Command::Daemon(args) => daemon::run_daemon(&args),
        Command::Status(args) => daemon::run_status(&args),
        Command::Reload(args) => daemon::run_reload(&args),
        Command::Log(args) => log::run(&args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "isolate",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ManPages { dir } => {
            for page in man::write_all(Cli::command(), &dir)? {
                eprintln!("isolate: wrote {}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
