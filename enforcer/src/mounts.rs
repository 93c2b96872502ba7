//! Kernel pseudo-file systems isolate needs (bpffs, securityfs): whether they are mounted, and
//! mounting them where they are missing.

use std::fs;
use std::io;

/// Whether a file system of type `fstype` is mounted, at `target` if one is given.
pub fn is_mounted(fstype: &str, target: Option<&str>) -> io::Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (point, kind) = (fields.next(), fields.next());
        kind == Some(fstype) && target.is_none_or(|t| point == Some(t))
    }))
}

/// Mounts `fstype` at `target` unless one is already mounted there.
pub fn ensure_mounted(fstype: &str, target: &str) -> io::Result<()> {
    if is_mounted(fstype, Some(target))? {
        return Ok(());
    }
    fs::create_dir_all(target)?;
    nix::mount::mount(
        Some(fstype),
        target,
        Some(fstype),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(io::Error::from)
}
