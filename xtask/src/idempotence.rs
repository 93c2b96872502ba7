//! `cargo xtask setup --check` (the first step of `cargo xtask test`): a check of setup itself: run again, it changes nothing and
//! takes seconds; with one prerequisite removed, it restores exactly that.
//!
//! "Changes nothing" is judged from outside, not from what setup says of itself: a fingerprint
//! of what setup manages (the Debian packages' versions and states, nightly's components, the
//! files under the cache and `~/.cargo/bin` with their sizes and modification times) is taken
//! before and after, and any difference is a failure that names the files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};

use crate::{prometheus, setup, util};

/// What a file is, for the comparison: its size and when it was last written.
type FileState = (u64, Option<SystemTime>);

struct Fingerprint {
    packages: String,
    components: String,
    files: BTreeMap<PathBuf, FileState>,
}

/// `cargo xtask setup --check`: setup, then the check.
pub fn run(setup_args: &setup::SetupArgs) -> anyhow::Result<()> {
    setup::run(setup_args)?;
    let before = Fingerprint::take()?;
    let started = Instant::now();
    setup::run(setup_args)?;
    let again = started.elapsed();
    before.assert_unchanged(&Fingerprint::take()?, "a second `cargo xtask setup`")?;
    eprintln!(
        "setup: run again in {:.1} s, it changed nothing",
        again.as_secs_f64()
    );

    // The prerequisite removed is the cheapest to restore (one download, no build), and one
    // the host tests need: Prometheus's package, unpacked.
    let removed = prometheus::dir();
    fs::remove_dir_all(&removed).with_context(|| format!("remove {}", removed.display()))?;
    setup::run(setup_args)?;
    if !prometheus::binary().is_file() {
        bail!(
            "setup did not restore {} after it was removed",
            prometheus::binary().display()
        );
    }
    // dpkg-deb keeps the package's modification times, so the restored tree fingerprints as
    // the original did.
    before.assert_unchanged(
        &Fingerprint::take()?,
        &format!("`cargo xtask setup` after removing {}", removed.display()),
    )?;
    eprintln!(
        "setup: {} removed, the next run restored it as it was",
        removed.display()
    );
    Ok(())
}

impl Fingerprint {
    fn take() -> anyhow::Result<Self> {
        let packages = util::output(
            Command::new("dpkg-query").args(["-W", "-f=${Package} ${Version} ${Status}\n"]),
        )?;
        let components = util::output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            "nightly",
            "--installed",
        ]))?;
        let mut files = BTreeMap::new();
        let cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
            .context("neither CARGO_HOME nor HOME is set")?
            .join("bin");
        for root in [util::cache_dir(), cargo_bin] {
            walk(&root, &mut files)?;
        }
        Ok(Self {
            packages,
            components,
            files,
        })
    }

    fn assert_unchanged(&self, after: &Self, what: &str) -> anyhow::Result<()> {
        let mut changes = Vec::new();
        if self.packages != after.packages {
            changes.push("the installed Debian packages".to_owned());
        }
        if self.components != after.components {
            changes.push("nightly's installed components".to_owned());
        }
        for (path, state) in &self.files {
            match after.files.get(path) {
                None => changes.push(format!("removed {}", path.display())),
                Some(now) if now != state => changes.push(format!("rewrote {}", path.display())),
                Some(_) => {}
            }
        }
        for path in after.files.keys() {
            if !self.files.contains_key(path) {
                changes.push(format!("added {}", path.display()));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let shown = changes.len().min(20);
        bail!(
            "{what} changed {} thing(s) it should have left alone:\n  {}{}",
            changes.len(),
            changes[..shown].join("\n  "),
            if changes.len() > shown { "\n  ..." } else { "" }
        )
    }
}

/// Regular files and symbolic links below `dir` (directories' own times change whenever an
/// entry is renamed into them, which is how setup installs things atomically).
fn walk(dir: &Path, files: &mut BTreeMap<PathBuf, FileState>) -> anyhow::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(&entry.path(), files)?;
        } else {
            files.insert(entry.path(), (meta.len(), meta.modified().ok()));
        }
    }
    Ok(())
}
