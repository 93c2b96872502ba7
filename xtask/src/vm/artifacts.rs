//! What the guests get from the host at run time, through the read-only 9p share:
//!
//! ```text
//! share/bin/isolate          the freshly built release binary
//! share/isolate.deb          the Debian package around it (11-systemd-units.sh installs it)
//! share/testbin/<target>     the test executables named in vmtests/testbins.txt
//! share/lib/                 libraries those binaries need and the initramfs lacks
//! share/vmtests/             a copy of vmtests/ (scenarios, policies, guest scripts)
//! share/dist/                a copy of dist/ (the shipped systemd units)
//! share/examples/            a copy of examples/ (the policies users start from)
//! share/opencode/opencode    the opencode binary `cargo xtask setup` installed (07-opencode.sh)
//! share/prometheus/prometheus  the server of Debian's prometheus package (11-systemd-units.sh)
//! share/run-<guest>-<boot>.list  the scenarios each boot of a guest runs (see runner.sh);
//!                            run-<guest>.list: all of them, for an interactive boot
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::cache;
use super::initramfs;
use super::scenario::{self, Guest, Scenario};
use crate::{build, util};

/// The binaries to share in.
pub struct Binaries {
    pub isolate: Option<PathBuf>,
    pub deb: Option<PathBuf>,
    /// (target name, executable)
    pub testbins: Vec<(String, PathBuf)>,
}

/// Builds the release `isolate` binary and the test executables the scenarios use
/// (`cargo test --release -p isolate-enforcer --no-run`), or, with `no_build`, takes whatever
/// the last build left in `target/release`.
pub fn build(no_build: bool) -> anyhow::Result<Binaries> {
    let wanted = testbin_names()?;
    if no_build {
        return Ok(existing_binaries(&wanted));
    }
    let isolate = build::run(&build::BuildArgs { release: true })?;
    let deb = crate::package::build_deb(&isolate)?;
    let json = util::output(util::cargo().args([
        "test",
        "--release",
        "--package",
        "isolate-enforcer",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut testbins = Vec::new();
    for line in json.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        let executable = message["executable"].as_str();
        if message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == true
            && wanted.contains(name)
            && let Some(executable) = executable
        {
            testbins.push((name.to_string(), PathBuf::from(executable)));
        }
    }
    for name in &wanted {
        if !testbins.iter().any(|(built, _)| built == name) {
            bail!(
                "vmtests/testbins.txt names the test target `{name}`, but `cargo test --release \
                 -p isolate-enforcer --no-run` built no such test executable"
            );
        }
    }
    Ok(Binaries {
        isolate: Some(isolate),
        deb: Some(deb),
        testbins,
    })
}

/// The test targets listed in `vmtests/testbins.txt` (one per line, `#` comments).
fn testbin_names() -> anyhow::Result<BTreeSet<String>> {
    let path = util::project_root().join("vmtests/testbins.txt");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect())
}

/// `target/release/isolate` and the newest `target/release/deps/<name>-<hash>` executables.
fn existing_binaries(wanted: &BTreeSet<String>) -> Binaries {
    let release = util::project_root().join("target/release");
    let isolate = Some(release.join("isolate")).filter(|p| p.is_file());
    if isolate.is_none() {
        eprintln!("vmtest: warning: --no-build and no target/release/isolate");
    }
    let mut testbins = Vec::new();
    for name in wanted {
        let newest = fs::read_dir(release.join("deps"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                file.strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| !hash.contains('.'))
            })
            .max_by_key(|path| fs::metadata(path).and_then(|m| m.modified()).ok());
        match newest {
            Some(path) => testbins.push((name.clone(), path)),
            None => eprintln!("vmtest: warning: --no-build and no built test executable {name}"),
        }
    }
    Binaries {
        isolate,
        deb: crate::package::existing_deb(),
        testbins,
    }
}

/// Fills `share` afresh for this run.
pub fn stage(
    share: &Path,
    binaries: &Binaries,
    scenarios: &[&Scenario],
    initramfs_libs: &BTreeSet<String>,
) -> anyhow::Result<()> {
    cache::remove(share)?;
    for dir in ["bin", "testbin", "lib"] {
        fs::create_dir_all(share.join(dir))?;
    }
    for dir in ["vmtests", "dist", "examples"] {
        copy_tree(&util::project_root().join(dir), &share.join(dir))?;
    }
    let mut shared = Vec::new();
    if let Some(isolate) = &binaries.isolate {
        shared.push((share.join("bin/isolate"), isolate.clone()));
    }
    for (name, path) in &binaries.testbins {
        shared.push((share.join("testbin").join(name), path.clone()));
    }
    for (dest, source) in &shared {
        fs::copy(source, dest).with_context(|| format!("cannot copy {}", source.display()))?;
        for lib in initramfs::shared_libraries(source)? {
            let name = lib.file_name().context("library without a name")?;
            let missing = !initramfs_libs.contains(&*name.to_string_lossy());
            if missing && !lib.starts_with("/lib64") {
                fs::copy(&lib, share.join("lib").join(name))?;
            }
        }
    }
    if let Some(deb) = &binaries.deb {
        fs::copy(deb, share.join("isolate.deb"))
            .with_context(|| format!("cannot copy {}", deb.display()))?;
    }
    crate::opencode::share(share)?;
    crate::prometheus::share(share)?;
    for guest in Guest::ALL {
        for boot in std::iter::once(None).chain(scenario::BOOTS.map(Some)) {
            fs::write(
                share.join(scenario::list_name(guest, boot)),
                scenario::run_list(&scenario::of_boot(scenarios, guest, boot)),
            )?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let path = entry?.path();
        let dest = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &dest)?;
        } else {
            fs::copy(&path, &dest).with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}
