//! `cargo xtask bench`: the project's performance record, as Markdown tables.
//!
//! - `enforcer/benches/connect.rs`: what enforcement costs a connect — no enforcement vs the
//!   eBPF layer vs the nftables layer vs both, at 10 / 1,000 / 10,000 CIDRs, with the
//!   per-UID rule shape of hand-written nftables modules (a rule per CIDR) as the peer;
//! - `enforcer/benches/farm.rs`: the daemon's start, status, scrape, restart and memory at 10 /
//!   100 / 1,000 instances, `isolate exec`'s start against a bare user switch, and the flood
//!   accounting (one instance refusing at full speed, another refused once).
//!
//! Each measures in one run and reports figures, ratios and spreads. Needs root; runs in a
//! private network namespace and child cgroups, and leaves nothing behind. Not part of
//! `cargo xtask test`: it reports, it does not judge.

use clap::Args;

use crate::{setup, util};

#[derive(Args)]
pub struct BenchArgs {
    /// Fewer connects and repetitions (a few seconds; noisier figures).
    #[arg(long)]
    pub quick: bool,
    /// Only the daemon farm of this size, as `INSTANCESxCIDRS` (e.g. 1000x100; repeatable),
    /// with the exec and flood figures; the connect bench is left out.
    #[arg(long, value_name = "INSTANCESxCIDRS")]
    pub size: Vec<String>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    setup::ensure_build_tools()?;
    if !util::have("nft") {
        anyhow::bail!("`nft` is missing (package nftables): run `cargo xtask setup`");
    }
    let benches: &[&str] = if args.size.is_empty() {
        &["connect", "farm"]
    } else {
        &["farm"]
    };
    for bench in benches {
        let mut cmd = util::cargo();
        cmd.args([
            "bench",
            "--package",
            "isolate-enforcer",
            "--bench",
            bench,
            "--",
        ]);
        if args.quick {
            cmd.arg("--quick");
        }
        for size in &args.size {
            cmd.args(["--size", size]);
        }
        util::run(&mut cmd)?;
    }
    Ok(())
}
