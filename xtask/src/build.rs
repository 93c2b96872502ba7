//! `cargo xtask build`: the eBPF object (through enforcer/build.rs and aya-build) and the
//! `isolate` binary that embeds it.

use std::path::PathBuf;

use clap::Args;

use crate::util;

#[derive(Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Builds `isolate` and returns the path of the binary.
pub fn run(args: &BuildArgs) -> anyhow::Result<PathBuf> {
    crate::setup::ensure_build_tools()?;
    let mut cmd = util::cargo();
    cmd.args(["build", "--package", "isolate-enforcer", "--bin", "isolate"]);
    if args.release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let profile = if args.release { "release" } else { "debug" };
    Ok(util::project_root()
        .join("target")
        .join(profile)
        .join("isolate"))
}
