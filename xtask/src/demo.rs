//! `cargo xtask demo`: the main job. For now it validates the example policies, reports the
//! kernel's features, and runs the eBPF proof: a confined UID refused with EPERM in a private
//! cgroup and network namespace.

use std::process::Command;

use crate::{build, setup, util};

pub fn run() -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs { no_vm: true })?;
    let isolate = build::run(&build::BuildArgs { release: false })?;
    let examples = util::project_root().join("examples");

    eprintln!("\n== isolate check: validate and normalise the example policies");
    util::run(Command::new(&isolate).arg("check").arg(&examples))?;

    eprintln!("\n== isolate check --kernel: what this kernel offers");
    // A missing feature is information here, not a failure of the demo.
    let _ = Command::new(&isolate).args(["check", "--kernel"]).status();

    eprintln!("\n== eBPF proof: a confined UID is refused with EPERM, others pass");
    util::run(util::cargo().args([
        "test",
        "--package",
        "isolate-enforcer",
        "--test",
        "bpf_connect4",
    ]))?;
    Ok(())
}
