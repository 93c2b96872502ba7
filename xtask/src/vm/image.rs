//! The systemd guest's root image: a Debian minbase system built by mmdebstrap from the host's
//! mirror (same release as the host, so binaries built here run there), plus one kernel's
//! modules and the test units of `vmtests/guest/systemd/`, as an ext4 image the guest mounts
//! with `snapshot=on` (its writes never reach the file).
//!
//! Two cached layers, each named by a hash of its inputs:
//! - `vm/rootfs/<release>-<key>/`: the mmdebstrap tree (about a minute to build);
//! - `vm/images/<series>-<key>.ext4`: that tree hard-linked, customised and packed with
//!   `mkfs.ext4 -d` (seconds).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use super::apt::{self, Mirrors};
use super::cache::{self, Key};
use super::kernel::Kernel;
use crate::util;

/// The Debian packages of the systemd guest. Add what later scenarios need here (e.g.
/// `postgresql`, `nodejs`); the image is rebuilt when this list changes.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "iproute2",
    "nftables",
    "curl",
    "python3",
    "kmod",
    "procps",
    // 13-postgres: a real server behind the unix-socket allowlist.
    "postgresql",
];

/// Units that only slow the guest down or wait for things it does not have.
const MASKED_UNITS: &[&str] = &[
    "getty.target",
    "serial-getty@ttyS0.service",
    "systemd-firstboot.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    // Started by 13-postgres itself: every other boot would wait for it.
    "postgresql.service",
];

/// Module directories for hardware a QEMU guest never has (about half of all modules).
const MODULES_LEFT_OUT: &[&str] = &[
    "kernel/drivers/bluetooth",
    "kernel/drivers/gpu",
    "kernel/drivers/iio",
    "kernel/drivers/infiniband",
    "kernel/drivers/media",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/net/wireless",
    "kernel/drivers/staging",
    "kernel/net/bluetooth",
    "kernel/net/mac80211",
    "kernel/net/wireless",
    "kernel/sound",
];

/// Bump when `customise` changes what it writes.
const CUSTOMISATION_VERSION: &str = "3";

/// Returns the root image for `kernel`, building what is missing or out of date.
pub fn ensure(
    kernel: &Kernel,
    mirrors: &dyn Fn() -> anyhow::Result<Mirrors>,
) -> anyhow::Result<PathBuf> {
    let rootfs = ensure_rootfs(mirrors)?;
    let units = util::project_root().join("vmtests/guest/systemd");
    let mut key = Key::new("image");
    key.add_str(CUSTOMISATION_VERSION)
        .add_str(&rootfs.to_string_lossy())
        .add_str(&kernel.version)
        .add_path(&units)?;
    let image = cache::root()
        .join("images")
        .join(format!("{}-{}.ext4", kernel.series, key.hex()));
    cache::build_once(&image, |out| build_image(&rootfs, kernel, &units, out))?;
    cache::prune_siblings(&image, &format!("{}-", kernel.series))?;
    Ok(image)
}

fn ensure_rootfs(mirrors: &dyn Fn() -> anyhow::Result<Mirrors>) -> anyhow::Result<PathBuf> {
    let release = apt::host_codename()?;
    let mut key = Key::new("rootfs");
    key.add_str(&release).add_str(&PACKAGES.join(","));
    let dir = cache::root()
        .join("rootfs")
        .join(format!("{release}-{}", key.hex()));
    cache::build_once(&dir, |out| {
        eprintln!(
            "vmtest: building the Debian {release} guest system with mmdebstrap (about a minute)"
        );
        let mirrors = mirrors()?;
        let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
        util::run(
            Command::new("mmdebstrap")
                .args([
                    "--variant=minbase",
                    "--mode=root",
                    "--format=directory",
                    "--quiet",
                ])
                .arg(format!("--include={}", PACKAGES.join(",")))
                .args([
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                ])
                .arg(&release)
                .arg(out)
                .args(mirrors.deb_lines(&release, keyring)),
        )
    })?;
    cache::prune_siblings(&dir, &format!("{release}-"))?;
    Ok(dir)
}

fn build_image(rootfs: &Path, kernel: &Kernel, units: &Path, out: &Path) -> anyhow::Result<()> {
    eprintln!(
        "vmtest: building the systemd guest image for {}",
        kernel.version
    );
    // Hard links make the copy instant; `customise` only ever replaces files, never writes
    // into them, so the cached tree stays pristine.
    let staging = out.with_extension("staging");
    cache::remove(&staging)?;
    util::run(Command::new("cp").arg("-al").arg(rootfs).arg(&staging))?;
    let modules = staging.join("usr/lib/modules");
    fs::create_dir_all(&modules)?;
    util::run(
        Command::new("cp")
            .arg("-al")
            .arg(kernel.modules_dir())
            .arg(modules.join(&kernel.version)),
    )?;
    prune_modules(&staging.join("usr/lib/modules").join(&kernel.version))?;
    util::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&staging)
            .arg(&kernel.version),
    )?;
    customise(&staging, units)?;

    let used_mb: u64 = util::output(Command::new("du").args(["-s", "-m"]).arg(&staging))?
        .split_whitespace()
        .next()
        .and_then(|mb| mb.parse().ok())
        .context("cannot read du's output")?;
    // Room for what scenarios write (the file is sparse: free space costs nothing).
    let size_mb = used_mb + used_mb / 3 + 2048;
    fs::File::create(out)?.set_len(size_mb << 20)?;
    util::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "vmroot", "-d"])
            .arg(&staging)
            .arg(out),
    )?;
    cache::remove(&staging)
}

/// Turns the minbase tree into a test guest: test units, no gettys or timers, no KVM modules
/// (TCG's `-cpu max` advertises VMX), a fixed machine id (no first-boot setup), volatile
/// journal, mount points for the 9p shares.
fn customise(root: &Path, units: &Path) -> anyhow::Result<()> {
    let system = root.join("etc/systemd/system");
    let wants = system.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    for entry in fs::read_dir(units)? {
        let path = entry?.path();
        let name = path.file_name().context("unit without a name")?;
        replace(&system.join(name), &fs::read(&path)?)?;
    }
    replace_link(
        Path::new("../vmtest.service"),
        &wants.join("vmtest.service"),
    )?;
    for unit in MASKED_UNITS {
        replace_link(Path::new("/dev/null"), &system.join(unit))?;
    }
    replace(
        &root.join("etc/modprobe.d/vmtest.conf"),
        b"blacklist kvm\nblacklist kvm_intel\nblacklist kvm_amd\n",
    )?;
    replace(
        &root.join("etc/systemd/journald.conf.d/vmtest.conf"),
        b"[Journal]\nStorage=volatile\nForwardToConsole=no\n",
    )?;
    replace(
        &root.join("etc/machine-id"),
        b"5e6f1d0c2a7b4c3d9e8f7a6b5c4d3e2f\n",
    )?;
    replace(&root.join("etc/hostname"), b"vmtest\n")?;
    replace(
        &root.join("etc/fstab"),
        b"# the vmtest initramfs mounts / read-write\n",
    )?;
    for dir in ["share", "results"] {
        fs::create_dir_all(root.join(dir))?;
    }
    Ok(())
}

/// Leaves out `MODULES_LEFT_OUT` (depmod runs afterwards; it replaces the hard-linked index
/// files rather than writing into them).
fn prune_modules(modules: &Path) -> anyhow::Result<()> {
    for dir in MODULES_LEFT_OUT {
        cache::remove(&modules.join(dir))?;
    }
    Ok(())
}

/// Writes `path` as a new file (unlinking first: it may be a hard link into the cache).
fn replace(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    fs::create_dir_all(path.parent().context("path without parent")?)?;
    cache::remove(path)?;
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn replace_link(target: &Path, link: &Path) -> anyhow::Result<()> {
    cache::remove(link)?;
    symlink(target, link).with_context(|| format!("cannot create {}", link.display()))
}
