//! The real `opencode serve` for the tests that wrap it (`enforcer/tests/opencode.rs`, the VM
//! scenario `07-opencode.sh`): the npm package `opencode-ai`, at a pinned version, installed into
//! the cache with `npm install`. Its postinstall script picks the build for this CPU (AVX2 or
//! baseline) from the optional dependency `opencode-linux-x64[-baseline]` and hard-links it to
//! `node_modules/opencode-ai/bin/opencode.exe`: a self-contained ELF executable (Bun) that needs
//! only glibc, not node.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util;

/// The version the tests were written against.
pub const VERSION: &str = "1.18.33";

/// Where the npm prefix lives: `<cache>/opencode`.
pub fn dir() -> PathBuf {
    util::cache_dir().join("opencode")
}

/// The opencode executable (the tests find it at the same place, or through `OPENCODE_BIN`).
pub fn binary() -> PathBuf {
    binary_in(&dir())
}

fn binary_in(prefix: &Path) -> PathBuf {
    prefix.join("node_modules/opencode-ai/bin/opencode.exe")
}

/// Installs `opencode-ai@VERSION` unless exactly that is already in place.
pub fn ensure_installed() -> anyhow::Result<()> {
    let prefix = dir();
    if installed_version(&prefix).as_deref() == Some(VERSION) && is_elf(&binary_in(&prefix)) {
        return Ok(());
    }
    if !util::have("npm") {
        bail!(
            "opencode: `npm` is not on PATH; install Node.js and npm (Debian: `apt install npm`), \
             then run `cargo xtask setup` again"
        );
    }
    let partial = prefix.with_file_name("opencode.partial");
    remove_dir(&partial)?;
    fs::create_dir_all(&partial)?;
    // The postinstall script runs `opencode --version`, which creates opencode's XDG
    // directories and $TMPDIR/opencode: keep those inside the scratch directory, not in the
    // home of whoever runs setup or in the shared /tmp.
    let scratch = partial.join("postinstall-home");
    let mut npm = Command::new("npm");
    npm.args([
        "install",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--prefix",
    ])
    .arg(&partial)
    .arg(format!("opencode-ai@{VERSION}"))
    .env("TMPDIR", scratch.join("tmp"));
    for (var, sub) in [
        ("XDG_DATA_HOME", "share"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_CONFIG_HOME", "config"),
    ] {
        npm.env(var, scratch.join(sub));
    }
    fs::create_dir_all(scratch.join("tmp"))?;
    util::run(&mut npm).context("installing opencode with npm")?;
    remove_dir(&scratch)?;
    let installed = binary_in(&partial);
    if !is_elf(&installed) {
        bail!(
            "opencode: npm installed opencode-ai@{VERSION}, but {} is not an executable: its \
             postinstall script did not run (is `ignore-scripts` set in npm's configuration?)",
            installed.display()
        );
    }
    remove_dir(&prefix)?;
    fs::rename(&partial, &prefix)
        .with_context(|| format!("cannot rename {} into place", partial.display()))?;
    eprintln!("setup: opencode {VERSION} at {}", binary().display());
    Ok(())
}

/// Links (or copies) the installed binary to `share/opencode/opencode` for the VM guests, when it
/// is installed; the scenario says what to do when it is not.
pub fn share(share: &Path) -> anyhow::Result<()> {
    util::share_binary(&binary(), &share.join("opencode/opencode"), "07-opencode")
}

fn installed_version(prefix: &Path) -> Option<String> {
    let text = fs::read_to_string(prefix.join("node_modules/opencode-ai/package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_owned)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn remove_dir(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
