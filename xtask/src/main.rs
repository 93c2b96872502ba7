//! `cargo xtask …`: every developer workflow that is more than one cargo command.

mod bench;
mod build;
mod demo;
mod fuzz;
mod idempotence;
mod kubernetes_validate;
mod layering;
mod opencode;
mod package;
mod prometheus;
mod setup;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "isolate's developer workflows", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install every prerequisite (apt packages, nightly rust-src, bpf-linker, cargo-fuzz,
    /// opencode, Prometheus's package, the fleet checkers, VM kernels and images). Idempotent:
    /// a second run takes seconds.
    Setup(setup::SetupArgs),
    /// Build the eBPF object and the `isolate` binary that embeds it.
    Build(build::BuildArgs),
    /// Run every test: setup and its idempotence, fmt, layering, clippy, unit, host
    /// integration, fuzzing, the demo, the Debian package (lintian), then the VM suite.
    Test(test::TestArgs),
    /// Check only the enforcer's module layering (the step `test` runs after fmt): reports each
    /// forbidden use, e.g. `exec` using `daemon`, or a layer (`bpf`, `nft`, `landlock`) using
    /// the modules that compose it. Reads the sources; builds nothing.
    Layering,
    /// Fuzz the policy parser (`parse_str`, the allow-entry parser) with cargo-fuzz on nightly:
    /// no panic, no hang, memory bounded, on inputs up to 1 MiB; a crash fails, naming its input.
    Fuzz(fuzz::FuzzArgs),
    /// Boot real kernels in QEMU and run the VM scenarios.
    Vmtest(vm::VmTestArgs),
    /// The main job: show isolate confining a workload, a one-off command and `opencode serve`.
    Demo,
    /// Measure what enforcement costs: a connect (none, eBPF, nftables, both; 10 to 10,000
    /// CIDRs), a farm of instances, an `isolate exec` start, and a flood's accounting.
    Bench(bench::BenchArgs),
    /// Build the Debian package `target/debian/isolate_VERSION_amd64.deb` and check it with
    /// lintian.
    Package,
    /// Install from source below /usr/local (units in /etc/systemd/system), for systems without
    /// Debian packages.
    Install(package::InstallArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(args) if args.check => idempotence::run(&args),
        Command::Setup(args) => setup::run(&args),
        Command::Build(args) => build::run(&args).map(|_| ()),
        Command::Test(args) => test::run(&args),
        Command::Layering => layering::run(),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Vmtest(args) => vm::run(&args),
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Package => package::run().map(|_| ()),
        Command::Install(args) => package::install(&args),
    }
}
