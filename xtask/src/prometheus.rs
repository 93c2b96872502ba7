//! Debian's `prometheus` package, unpacked into the cache rather than installed (so that setup
//! starts no Prometheus server on the machine): its checker for the host tests (`promtool check
//! metrics`, `check rules`, `test rules`), and its server for the VM guests, where
//! 11-systemd-units scrapes the packaged daemon with it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util;

/// Where the package is unpacked: `<cache>/prometheus`.
pub fn dir() -> PathBuf {
    util::cache_dir().join("prometheus")
}

/// The promtool executable (the tests find it at the same place, or through `PROMTOOL`).
pub fn binary() -> PathBuf {
    dir().join("usr/bin/promtool")
}

/// The server, statically linked but for libc (the guests have that).
fn server() -> PathBuf {
    dir().join("usr/bin/prometheus")
}

/// Shares the server as `share/prometheus/prometheus` for the VM guests.
pub fn share(share: &Path) -> anyhow::Result<()> {
    util::share_binary(
        &server(),
        &share.join("prometheus/prometheus"),
        "11-systemd-units",
    )
}

/// Unpacks the package unless it is there and runs.
pub fn ensure_installed() -> anyhow::Result<()> {
    if server().is_file()
        && Command::new(binary())
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    {
        return Ok(());
    }
    let partial = dir().with_file_name("prometheus.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("create {}", partial.display()))?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-qq", "prometheus"])
            .current_dir(&partial)
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine may have no package lists yet.
    if !download() {
        util::run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !download() {
            bail!("promtool: `apt-get download prometheus` failed");
        }
    }
    let package = fs::read_dir(&partial)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .context("promtool: apt-get download left no .deb")?;
    let tree = partial.join("tree");
    util::run(Command::new("dpkg-deb").arg("-x").arg(&package).arg(&tree))?;
    let _ = fs::remove_dir_all(dir());
    fs::rename(&tree, dir()).context("promtool: move the unpacked package into place")?;
    let _ = fs::remove_dir_all(&partial);
    eprintln!("setup: promtool unpacked at {}", binary().display());
    Ok(())
}
