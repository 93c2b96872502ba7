//! The mount table: one parser of `/proc/self/mountinfo` for everything that asks what is
//! mounted where (the cgroup2 root, bpffs, securityfs, a directory's superblock device), and
//! mounting the kernel's pseudo-file systems where they are missing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::paths::MOUNTINFO;

/// One line of mountinfo:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    /// The superblock's device (`s_dev`), as major and minor.
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse(&fs::read_to_string(MOUNTINFO)?))
}

/// Parses mountinfo text; lines that do not have its shape are skipped.
pub fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split_whitespace();
    let id = fields.next()?.parse().ok()?;
    let (major, minor) = fields.nth(1)?.split_once(':')?;
    let mount_point = fields.nth(1)?;
    Some(Mount {
        id,
        dev: (major.parse().ok()?, minor.parse().ok()?),
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fstype: after.split_whitespace().next()?.to_owned(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(byte) = code {
            out.push(char::from(byte));
            rest = &rest[pos + 4..];
        } else {
            out.push('\\');
            rest = &rest[pos + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether a file system of type `fstype` is mounted, at `target` if one is given.
pub fn is_mounted(fstype: &str, target: Option<&Path>) -> io::Result<bool> {
    Ok(mounts()?
        .iter()
        .any(|m| m.fstype == fstype && target.is_none_or(|t| m.mount_point == t)))
}

/// Mounts `fstype` at `target` with mount options `options` unless one is already mounted
/// there.
pub fn ensure_mounted(fstype: &str, target: &str, options: Option<&str>) -> io::Result<()> {
    if is_mounted(fstype, Some(Path::new(target)))? {
        return Ok(());
    }
    fs::create_dir_all(target)?;
    nix::mount::mount(
        Some(fstype),
        target,
        Some(fstype),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        options,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
97 29 0:45 /@home /home rw,relatime - btrfs /dev/sda2 rw
40 1 0:30 / /mnt/my\\040cgroup rw - cgroup2 none rw
not a mount line
";

    #[test]
    fn parses_ids_devices_points_and_types() {
        let mounts = parse(HYBRID);
        assert_eq!(mounts.len(), 5, "{mounts:?}");
        assert_eq!(
            mounts[2],
            Mount {
                id: 32,
                dev: (0, 27),
                mount_point: "/sys/fs/cgroup/unified".into(),
                fstype: "cgroup2".into(),
            }
        );
        // Optional fields (shared:N) do not shift the type; the root field is not the point.
        assert_eq!(mounts[1].fstype, "tmpfs");
        assert_eq!(mounts[3].mount_point, Path::new("/home"));
        assert_eq!(mounts[3].dev, (0, 45));
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        assert_eq!(parse(HYBRID)[4].mount_point, Path::new("/mnt/my cgroup"));
        assert_eq!(unescape_octal("a\\134b\\"), "a\\b\\");
    }
}
