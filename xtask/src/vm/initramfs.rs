//! The initramfs, one per kernel: static busybox, the host's `nft`, `ip`, `kmod` and a few
//! other Debian tools with their shared libraries, the kernel modules the guests need (with a
//! `modules.dep` of their own, so that the kernel's module autoloading works), and
//! `vmtests/guest/init` as `/init`.
//!
//! It serves both guests: the initramfs guest runs the scenarios right there, the systemd
//! guest uses it only to mount its root image and `switch_root`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::cache::{self, Key};
use super::kernel::Kernel;
use crate::util;

/// Loaded at boot by the initramfs guest, in this order (`crc32c_generic` before anything
/// that pulls in libcrc32c). A trailing `?`: only where the kernel has it (7.x folded
/// crc32c into lib/crc, and libcrc32c with it).
const MODULES_INITRAMFS: &[&str] = &[
    "crc32c_generic?",
    "nf_tables",
    "nft_log",
    "nf_log_syslog",
    "nfnetlink_log",
    "nft_ct",
    "nft_reject_inet",
    "nft_limit",
    "virtio_mmio",
    "virtio_pci",
    "9pnet_virtio",
    "9p",
];

/// Loaded at boot by the systemd guest's initramfs, before it mounts the root image.
const MODULES_SYSTEMD: &[&str] = &[
    "crc32c_generic?",
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "ext4",
    "9pnet_virtio",
    "9p",
];

/// Shipped (not loaded) so that the kernel can autoload them in the initramfs guest.
const MODULE_DIRS_AVAILABLE: &[&str] = &[
    "kernel/net/netfilter/",
    "kernel/net/ipv4/netfilter/",
    "kernel/net/ipv6/netfilter/",
];
const MODULES_AVAILABLE: &[&str] = &["veth", "dummy", "tun"];

/// Host tools copied in with their libraries; `kmod` also serves as `/sbin/modprobe`.
const TOOLS: &[&str] = &["kmod", "nft", "ip", "ss", "setpriv", "getent"];
/// Copied when the host has them (debugging aids).
const TOOLS_OPTIONAL: &[&str] = &["bpftool", "strace"];
const KMOD_LINKS: &[&str] = &["modprobe", "insmod", "rmmod", "lsmod", "modinfo", "depmod"];

/// Libraries always present, for the binaries shared in at run time (Rust links these).
const BASE_LIBS: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
];
const LIB_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];

const BUSYBOX: &str = "/bin/busybox";

/// A built initramfs.
pub struct Initramfs {
    pub path: PathBuf,
    /// The file names of the libraries it has in `/usr/lib/x86_64-linux-gnu`.
    pub libs: BTreeSet<String>,
}

/// Returns the initramfs for `kernel`, building it when its inputs changed.
pub fn ensure(kernel: &Kernel) -> anyhow::Result<Initramfs> {
    let tools = host_tools()?;
    let init = util::project_root().join("vmtests/guest/init");
    let mut key = Key::new("initramfs v2");
    key.add_str(&kernel.version).add_path(&init)?;
    for path in tools.iter().chain([&PathBuf::from(BUSYBOX)]) {
        add_file_identity(&mut key, path)?;
    }
    for list in [
        MODULES_INITRAMFS,
        MODULES_SYSTEMD,
        MODULES_AVAILABLE,
        MODULE_DIRS_AVAILABLE,
    ] {
        key.add_str(&list.join(" "));
    }
    let dir = cache::root()
        .join("initramfs")
        .join(format!("{}-{}", kernel.series, key.hex()));
    cache::build_once(&dir, |out| build(kernel, &tools, &init, out))?;
    cache::prune_siblings(&dir, &format!("{}-", kernel.series))?;
    let libs = fs::read_to_string(dir.join("libs.txt"))?
        .lines()
        .map(str::to_string)
        .collect();
    Ok(Initramfs {
        path: dir.join("initramfs.cpio"),
        libs,
    })
}

/// A file's path, size and modification time: enough to notice a host package upgrade.
fn add_file_identity(key: &mut Key, path: &Path) -> anyhow::Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    key.add_str(&format!("{} {} {mtime}", path.display(), meta.len()));
    Ok(())
}

fn build(kernel: &Kernel, tools: &[PathBuf], init: &Path, out: &Path) -> anyhow::Result<()> {
    eprintln!("vmtest: building the initramfs for {}", kernel.version);
    let root = out.join("root");
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib64",
        "etc/vmtest",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link))?;
    }
    fs::copy(init, root.join("init"))?;
    install_busybox(&root)?;
    let libs = install_tools(&root, tools)?;
    install_modules(kernel, &root)?;
    write_etc(&root)?;
    let mut list = String::new();
    for lib in &libs {
        list.push_str(lib);
        list.push('\n');
    }
    fs::write(out.join("libs.txt"), list)?;
    let cpio = fs::File::create(out.join("initramfs.cpio"))?;
    util::run(
        Command::new("sh")
            .args([
                "-c",
                "find . -print0 | cpio --null -o -H newc -R 0:0 --quiet",
            ])
            .current_dir(&root)
            .stdout(cpio),
    )?;
    cache::remove(&root)
}

/// Busybox and a link for each of its applets (host tools installed later take precedence:
/// they go to /usr/sbin, which comes first on PATH, or replace the link).
fn install_busybox(root: &Path) -> anyhow::Result<()> {
    fs::copy(BUSYBOX, root.join("usr/bin/busybox"))
        .with_context(|| format!("cannot copy {BUSYBOX} (apt-get install busybox-static)"))?;
    let applets = util::output(Command::new(BUSYBOX).arg("--list"))?;
    for applet in applets.lines().filter(|a| *a != "busybox") {
        symlink("busybox", root.join("usr/bin").join(applet))?;
    }
    Ok(())
}

/// Copies the tools to /usr/sbin and their libraries (plus `BASE_LIBS`) to the library
/// directory; returns the library file names.
fn install_tools(root: &Path, tools: &[PathBuf]) -> anyhow::Result<BTreeSet<String>> {
    let mut libs = BTreeSet::new();
    for name in BASE_LIBS {
        if let Some(path) = LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
        {
            libs.insert(path);
        }
    }
    for tool in tools {
        let name = tool.file_name().context("tool without a name")?;
        fs::copy(tool, root.join("usr/sbin").join(name))
            .with_context(|| format!("cannot copy {}", tool.display()))?;
        libs.extend(shared_libraries(tool)?);
    }
    for link in KMOD_LINKS {
        let path = root.join("usr/sbin").join(link);
        let _ = fs::remove_file(&path);
        symlink("kmod", path)?;
    }
    let mut names = BTreeSet::new();
    for lib in libs {
        let name = lib.file_name().context("library without a name")?;
        // The dynamic loader must be where binaries ask for it; everything else goes to the
        // multiarch directory, which Debian's loader searches without an ld.so.cache.
        let dest = if lib.starts_with("/lib64") {
            root.join("usr/lib64").join(name)
        } else {
            names.insert(name.to_string_lossy().into_owned());
            root.join("usr/lib/x86_64-linux-gnu").join(name)
        };
        fs::copy(&lib, &dest).with_context(|| format!("cannot copy {}", lib.display()))?;
    }
    Ok(names)
}

/// The shared libraries `binary` loads, as `ldd` resolves them on the host (empty for a
/// static binary).
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("cannot run ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), text.trim());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!(
                "{} needs a library the host lacks: {line}",
                binary.display()
            );
        }
        let path = match line.split_once("=> ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The kernel modules the guests load or may autoload, with a depmod of their own, and the
/// lists `/init` loads.
fn install_modules(kernel: &Kernel, root: &Path) -> anyhow::Result<()> {
    let mut wanted = kernel.modules_under(MODULE_DIRS_AVAILABLE)?;
    let names = MODULES_INITRAMFS
        .iter()
        .chain(MODULES_SYSTEMD)
        .chain(MODULES_AVAILABLE)
        .copied();
    wanted.extend(kernel.module_files(names)?);
    let all = kernel.with_dependencies(wanted)?;
    let source = kernel.modules_dir();
    let dest = root.join("usr/lib/modules").join(&kernel.version);
    for module in &all {
        let target = dest.join(module);
        fs::create_dir_all(target.parent().context("module path")?)?;
        fs::copy(source.join(module), &target)
            .with_context(|| format!("cannot copy module {module}"))?;
    }
    for file in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if source.join(file).exists() {
            fs::copy(source.join(file), dest.join(file))?;
        }
    }
    util::run(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.version),
    )?;
    for (guest, list) in [
        ("initramfs", MODULES_INITRAMFS),
        ("systemd", MODULES_SYSTEMD),
    ] {
        // An optional module this kernel lacks is left out: modprobe would fail on it.
        let mut names = Vec::new();
        for &entry in list {
            match entry.strip_suffix('?') {
                Some(_) if kernel.module_files([entry])?.is_empty() => {}
                Some(name) => names.push(name),
                None => names.push(entry),
            }
        }
        fs::write(
            root.join("etc/vmtest").join(format!("modules-{guest}")),
            names.join("\n") + "\n",
        )?;
    }
    Ok(())
}

fn write_etc(root: &Path) -> anyhow::Result<()> {
    for (name, text) in [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n"),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n",
        ),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ("hostname", "vmtest\n"),
    ] {
        fs::write(root.join("etc").join(name), text)?;
    }
    Ok(())
}

/// The host tools to copy in: all of `TOOLS` (an error when missing) and the `TOOLS_OPTIONAL`
/// the host has.
fn host_tools() -> anyhow::Result<Vec<PathBuf>> {
    let find = |name: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.is_file())
    };
    let mut tools = Vec::new();
    for name in TOOLS {
        tools.push(find(name).with_context(|| {
            format!("the VM suite needs `{name}` on the host (see vmtests/README.md)")
        })?);
    }
    tools.extend(TOOLS_OPTIONAL.iter().filter_map(|name| find(name)));
    Ok(tools)
}
