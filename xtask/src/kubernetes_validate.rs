//! The Kubernetes manifests' checker for the tests (`kubernetes-validate`, in
//! `tests/dist_fleet.rs`): installed from the Python package index with the `python3` on PATH,
//! whose YAML module (`PyYAML`, a dependency) the tests also use to read the manifests. Pinned,
//! so the Kubernetes schema version it validates against (its default, the newest it ships)
//! changes only with this number.

use std::process::Command;

use crate::util;

/// kubernetes-validate's version; it validates against Kubernetes 1.37 by default.
pub const VERSION: &str = "1.37.0";

/// Installs kubernetes-validate unless this version already runs.
pub fn ensure_installed() -> anyhow::Result<()> {
    let installed = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == VERSION);
    if installed {
        return Ok(());
    }
    util::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("kubernetes-validate=={VERSION}")),
    )?;
    eprintln!("setup: kubernetes-validate {VERSION} installed");
    Ok(())
}
