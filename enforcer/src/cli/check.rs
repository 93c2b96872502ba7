//! `isolate check`: validate policies and print them normalised; report kernel features.

use std::path::PathBuf;
use std::process::ExitCode;

use isolate_enforcer::kernel::{self, Availability};

use super::DEFAULT_POLICY_DIR;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Policy files or directories of them (default: the policy directory).
    paths: Vec<PathBuf>,
    /// Report what the running kernel offers (cgroup2, BTF, bpffs, Landlock ABI, LSMs, `nf_tables`)
    /// instead of checking policies.
    #[arg(long)]
    kernel: bool,
    /// Print nothing on success; only errors.
    #[arg(long, short)]
    quiet: bool,
}

#[allow(clippy::print_stdout, reason = "CLI output")]
pub fn run(args: &CheckArgs) -> ExitCode {
    if args.kernel {
        let report = kernel::report();
        for feature in &report {
            let mark = match feature.status {
                Availability::Available => "ok     ",
                Availability::Missing => "MISSING",
                Availability::Unknown => "unknown",
            };
            println!("{mark} {:<10} {}", feature.name, feature.detail);
        }
        let all = report.iter().all(|f| f.status != Availability::Missing);
        return if all {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let paths = if args.paths.is_empty() {
        if !std::path::Path::new(DEFAULT_POLICY_DIR).is_dir() {
            eprintln!(
                "isolate: no policy directory {DEFAULT_POLICY_DIR}: create it with one <instance>.toml per instance, or name files to check"
            );
            return ExitCode::FAILURE;
        }
        vec![PathBuf::from(DEFAULT_POLICY_DIR)]
    } else {
        args.paths.clone()
    };
    match isolate_policy::load_paths(&paths) {
        Ok(policies) => {
            if !args.quiet {
                for policy in &policies {
                    println!("# {}", policy.source.display());
                    println!("{}", policy.to_toml_with_origins());
                }
            }
            let count = policies.len();
            eprintln!(
                "isolate: {count} {} OK",
                if count == 1 { "policy" } else { "policies" }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}
