//! `cargo xtask setup`: installs every prerequisite on a fresh Debian bookworm machine, as root.
//! Each step first checks whether its result is already there, so a second run takes seconds.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util;

/// Debian packages the build, the tests and the VM suite need.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22 (bookworm-security ships it).
    "llvm-22-dev",
    "libpolly-22-dev",
    // Runtime dependency of the nftables layer, and test tooling.
    "nftables",
    "iproute2",
    "util-linux",
    "passwd",
    // Checks the manual pages (`mandoc -T lint`) and the Debian package (`lintian`).
    "mandoc",
    "lintian",
    // Parses the NixOS module in dist/nixos (`nix-instantiate --parse`, tests/dist_fleet.rs);
    // no Nix daemon or store is set up: the tests use a scratch directory.
    "nix-bin",
    // VM suite.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "zstd",
    "xz-utils",
    "kmod",
    "e2fsprogs",
    "mmdebstrap",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Args)]
pub struct SetupArgs {
    /// Skip the VM kernels and guest images.
    #[arg(long)]
    pub no_vm: bool,
    /// Then check setup itself: run again, it must change nothing; with Prometheus's unpacked
    /// package removed, it must restore exactly that.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    install_apt_packages()?;
    ensure_build_tools()?;
    crate::opencode::ensure_installed()?;
    crate::prometheus::ensure_installed()?;
    crate::kubernetes_validate::ensure_installed()?;
    crate::fuzz::ensure_cargo_fuzz()?;
    if !args.no_vm {
        crate::vm::setup_assets()?;
    }
    eprintln!("setup: everything is in place");
    Ok(())
}

/// What building the eBPF object needs: nightly's rust-src and bpf-linker.
pub fn ensure_build_tools() -> anyhow::Result<()> {
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()
}

fn install_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !apt_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are missing and only root can install them: {}",
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").arg("update").arg("-qq"))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn apt_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn ensure_nightly_rust_src() -> anyhow::Result<()> {
    let installed = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        install_apt_packages()?;
    }
    // Without LLVM_PREFIX, llvm-sys finds /usr/bin/llvm-config, which is bookworm's LLVM 14.
    util::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .current_dir(std::env::temp_dir()),
    )
    .context("building bpf-linker against LLVM 22")
}
