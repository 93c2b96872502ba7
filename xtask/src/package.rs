//! `cargo xtask package`: `target/debian/isolate_<version>_amd64.deb`, laid out as Debian
//! expects and built with `dpkg-deb` (what cargo-deb wraps; Debian's own tool needs nothing
//! installed from crates.io), then checked with `lintian`. `cargo xtask install` puts the
//! same files under `/usr/local` for those who do not use Debian packages.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util;

const MAINTAINER: &str = "isolate developers <isolate@example.org>";

#[derive(Args)]
pub struct InstallArgs {
    /// Install below this directory instead of `/` (for staging, or to look first).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

/// Where a file goes, relative to the root of an installation.
struct Layout {
    bin: &'static str,
    units: &'static str,
    share: &'static str,
    man: &'static str,
    bash: &'static str,
    zsh: &'static str,
    fish: &'static str,
}

/// The Debian package's paths.
const PACKAGE: Layout = Layout {
    bin: "usr/bin",
    units: "usr/lib/systemd/system",
    share: "usr/share/isolate",
    man: "usr/share/man",
    bash: "usr/share/bash-completion/completions",
    zsh: "usr/share/zsh/vendor-completions",
    fish: "usr/share/fish/vendor_completions.d",
};

/// An installation from source: everything below /usr/local, units in /etc/systemd/system.
const LOCAL: Layout = Layout {
    bin: "usr/local/bin",
    units: "etc/systemd/system",
    share: "usr/local/share/isolate",
    man: "usr/local/share/man",
    bash: "usr/local/share/bash-completion/completions",
    zsh: "usr/local/share/zsh/site-functions",
    fish: "usr/local/share/fish/vendor_completions.d",
};

/// Builds the package and checks it with lintian; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    let binary = crate::build::run(&crate::build::BuildArgs { release: true })?;
    let deb = build_deb(&binary)?;
    lint(&deb)?;
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// Lays out and builds the package around `binary` (a release build); returns its path.
pub fn build_deb(binary: &Path) -> anyhow::Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let out = util::project_root().join("target/debian");
    let stage = out.join(format!("isolate_{version}_amd64"));
    let _ = fs::remove_dir_all(&stage);
    lay_out(binary, &stage, &PACKAGE, true)?;
    write_debian_control(&stage, version)?;
    let deb = out.join(format!("isolate_{version}_amd64.deb"));
    util::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The package built last, if any (`cargo xtask vmtest --no-build`).
pub fn existing_deb() -> Option<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    Some(
        util::project_root()
            .join("target/debian")
            .join(format!("isolate_{version}_amd64.deb")),
    )
    .filter(|p| p.is_file())
}

/// `cargo xtask install`: the binary, units, pages, completions, presets and examples.
pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let binary = crate::build::run(&crate::build::BuildArgs { release: true })?;
    lay_out(&binary, &args.root, &LOCAL, false)?;
    eprintln!(
        "install: done below {}; start the daemon with `systemctl daemon-reload && systemctl \
         enable --now isolate`",
        args.root.display()
    );
    Ok(())
}

/// Puts every file of an installation below `root`. `compress_pages`: Debian wants manual
/// pages gzipped.
fn lay_out(
    binary: &Path,
    root: &Path,
    layout: &Layout,
    compress_pages: bool,
) -> anyhow::Result<()> {
    let project = util::project_root();
    let bin = root.join(layout.bin).join("isolate");
    copy(binary, &bin, 0o755)?;
    util::run(Command::new("strip").arg("--strip-unneeded").arg(&bin))?;
    let installed_binary = Path::new("/").join(layout.bin).join("isolate");
    for unit in ["isolate.service", "opencode@.service"] {
        let text = fs::read_to_string(project.join("dist/systemd").join(unit))?.replace(
            "/usr/local/bin/isolate",
            &installed_binary.to_string_lossy(),
        );
        write(&root.join(layout.units).join(unit), text.as_bytes(), 0o644)?;
    }
    let pages = tempfile::tempdir()?;
    util::run(Command::new(&bin).arg("man-pages").arg(pages.path()))?;
    for entry in fs::read_dir(pages.path())? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let section = name.rsplit('.').next().unwrap_or("1");
        let dir = root.join(layout.man).join(format!("man{section}"));
        if compress_pages {
            write(
                &dir.join(format!("{name}.gz")),
                &gzip(&fs::read(&path)?)?,
                0o644,
            )?;
        } else {
            copy(&path, &dir.join(&name), 0o644)?;
        }
    }
    for (shell, dir, name) in [
        ("bash", layout.bash, "isolate"),
        ("zsh", layout.zsh, "_isolate"),
        ("fish", layout.fish, "isolate.fish"),
    ] {
        let script = util::output(Command::new(&bin).args(["completions", shell]))?;
        write(&root.join(dir).join(name), script.as_bytes(), 0o644)?;
    }
    let share = root.join(layout.share);
    for (from, to) in [
        ("presets", "presets"),
        ("examples", "examples"),
        ("dist/prometheus", "prometheus"),
        ("dist/grafana", "grafana"),
    ] {
        for entry in fs::read_dir(project.join(from))? {
            let path = entry?.path();
            let name = path.file_name().unwrap();
            copy(&path, &share.join(to).join(name), 0o644)?;
        }
    }
    // Policies name users and secrets files: root's alone.
    let policies = root.join("etc/isolate/instances");
    fs::create_dir_all(&policies)?;
    set_mode(&policies, 0o700)?;
    Ok(())
}

fn write_debian_control(stage: &Path, version: &str) -> anyhow::Result<()> {
    let doc = stage.join("usr/share/doc/isolate");
    let copyright = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: isolate\n\n\
         Files: *\nCopyright: 2026 {MAINTAINER}\nLicense: MIT or Apache-2.0\n \
         isolate may be used under the terms of the MIT license or of the Apache License,\n \
         version 2.0, at your option.\n .\n \
         On Debian systems, the Apache License 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n"
    );
    write(&doc.join("copyright"), copyright.as_bytes(), 0o644)?;
    let changelog = format!(
        "isolate ({version}) unstable; urgency=medium\n\n  * Release {version}.\n\n -- {MAINTAINER}  \
         Tue, 01 Dec 2026 00:00:00 +0000\n"
    );
    write(
        &doc.join("changelog.gz"),
        &gzip(changelog.as_bytes())?,
        0o644,
    )?;

    let installed_kib = disk_usage_kib(stage)?;
    let control = format!(
        "Package: isolate\nVersion: {version}\nArchitecture: amd64\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\nDepends: libc6 (>= 2.34), libgcc-s1, nftables\n\
         Section: admin\nPriority: optional\nHomepage: https://example.org/isolate\n\
         Description: confine service instances to what their policy allows\n \
         isolate confines one service instance (such as an AI coding agent\n \
         server, one per project) so that it reaches only the destinations and\n \
         files its policy allows and accepts only the connections it should:\n \
         eBPF and nftables for the network, Landlock for files. Every refusal\n \
         is counted for Prometheus and recorded in the journal with the policy\n \
         entry that would allow it.\n"
    );
    write(&stage.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(&stage.join("DEBIAN/postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&stage.join("DEBIAN/prerm"), PRERM.as_bytes(), 0o755)?;
    let sums = util::output(
        Command::new("sh")
            .arg("-c")
            .arg("find usr etc -type f -print0 | sort -z | xargs -0 md5sum")
            .current_dir(stage),
    )?;
    write(&stage.join("DEBIAN/md5sums"), sums.as_bytes(), 0o644)
}

/// After installing: systemd learns the units; nothing is enabled or started (the admin writes
/// policies first, then `systemctl enable --now isolate`).
const POSTINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n    systemctl daemon-reload || true\nfi\n";

/// Before removing (not upgrading: the new daemon adopts what is pinned): stop the daemon and
/// take away the enforcement it left pinned, so that a removed isolate confines nothing.
/// `isolate daemon --cleanup` refuses while a confined instance still runs, and so does the
/// removal: stop the instances first.
const PRERM: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = remove ]; then\n    if [ -d /run/systemd/system ]; then\n        deb-systemd-invoke stop isolate.service || true\n    fi\n    isolate daemon --cleanup\nfi\n";

/// `lintian` finds no error (warnings are printed, not fatal).
fn lint(deb: &Path) -> anyhow::Result<()> {
    if !util::have("lintian") {
        bail!("`lintian` is missing (package lintian): run `cargo xtask setup`");
    }
    util::run(
        Command::new("lintian")
            .args(["--fail-on", "error", "--tag-display-limit", "0"])
            .arg(deb),
    )
}

fn disk_usage_kib(dir: &Path) -> anyhow::Result<u64> {
    let out = util::output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(dir),
    )?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du -sk printed no size")
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run gzip")?;
    child.stdin.take().unwrap().write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    write(
        to,
        &fs::read(from).with_context(|| format!("read {}", from.display()))?,
        mode,
    )
}

fn write(to: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    fs::write(to, data).with_context(|| format!("write {}", to.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
