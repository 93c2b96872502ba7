//! `cargo xtask demo`: the main job. Builds `isolate`, then runs `demo.sh` in a network
//! namespace of its own: the daemon confines an instance, a workload is allowed one server and
//! refused another, and the audit record, `isolate status` and `/metrics` show it. The host is
//! left as it was (the script removes everything it made).

use std::process::Command;

use crate::{build, setup, util};

const SCRIPT: &str = include_str!("demo.sh");

pub fn run() -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs { no_vm: true })?;
    let isolate = build::run(&build::BuildArgs { release: false })?;
    util::run(
        Command::new("unshare")
            .args(["--net", "--", "bash", "-c", SCRIPT, "demo.sh"])
            .arg(&isolate),
    )
}
