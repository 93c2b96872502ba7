//! `cargo xtask test`: every test, in the order that fails fastest — setup (which installs what
//! the rest needs) and that running it again changes nothing, format, module layering, lints,
//! unit and host integration tests, a short fuzzing run of the policy parser, the demo, the
//! Debian package (lintian), then the VM suite.

use clap::{Args, FromArgMatches as _};

use crate::{fuzz, idempotence, layering, setup, util, vm};

/// Seconds each fuzz target runs in `test`: long enough to replay the corpus and try a few
/// hundred thousand new inputs, short enough for CI (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS: u64 = 20;

#[derive(Args)]
pub struct TestArgs {
    /// Skip the VM suite (host checks only).
    #[arg(long)]
    pub no_vm: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    idempotence::run(&setup::SetupArgs {
        no_vm: args.no_vm,
        check: true,
    })?;
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    layering::run()?;
    util::run(util::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    util::run(util::cargo().args(["test"]))?;
    fuzz::run(&fuzz::FuzzArgs {
        seconds: FUZZ_SECONDS,
        target: None,
    })?;
    // The README's first command, as a user runs it: it fails if any step of it fails.
    crate::demo::run()?;
    crate::package::run()?;
    if !args.no_vm {
        vm::run(&default_vm_args())?;
    }
    Ok(())
}

/// `cargo xtask vmtest` with no options, as clap fills in the defaults.
fn default_vm_args() -> vm::VmTestArgs {
    let command = <vm::VmTestArgs as Args>::augment_args(clap::Command::new("vmtest"));
    vm::VmTestArgs::from_arg_matches(&command.get_matches_from(["vmtest"]))
        .expect("the vmtest defaults parse")
}
