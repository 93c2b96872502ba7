//! `cargo xtask demo`: the main job. Builds `isolate`, then runs `demo.sh` in a network
//! namespace of its own: the daemon confines an instance, a workload is allowed one server and
//! refused another, and the audit record, `isolate status` and `/metrics` show it; then
//! `isolate exec` confines a one-off command and the real `opencode serve` (installed by
//! setup) with the shipped example policy. The host is left as it was (the script removes
//! everything it made).

use std::process::Command;

use crate::{build, opencode, setup, util};

pub fn run() -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs {
        no_vm: true,
        check: false,
    })?;
    let isolate = build::run(&build::BuildArgs { release: false })?;
    let root = util::project_root();
    util::run(
        Command::new("unshare")
            .args(["--net", "--", "bash"])
            .arg(root.join("xtask/src/demo.sh"))
            .arg(&isolate)
            .arg(opencode::binary())
            .arg(root.join("examples/opencode.toml")),
    )
}
