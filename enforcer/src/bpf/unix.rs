//! The unix-socket allowlist, user side: whether this kernel can enforce it (the BPF LSM must
//! be active), what the kernel programs need to know (field offsets from the kernel's BTF,
//! the cgroup they judge), and where each allowed socket lives.
//!
//! An allowed socket is identified by where it is bound: the directory that holds it (device
//! and inode, as the kernel sees them) and its name in that directory. The policy's path is
//! resolved when the policy is applied, following symlinks as the kernel does when a client
//! connects, so a symlink or a relative path to another socket never matches, and a server
//! that re-creates its socket in the same place (a database server on every start) stays
//! allowed.
//! Hard links and bind mounts of the socket file itself are other names for it: the kernel
//! sees the place it was bound, so the policy must name that place.
//!
//! The BPF LSM attaches to the whole system, not to a cgroup. The programs judge only
//! processes whose UID has a policy (as the cgroup programs) and that run in the cgroup the
//! layer was attached at or below it, so attaching for one instance's cgroup (embedded
//! `isolate exec`, host tests) leaves every other process alone.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use isolate_ebpf_common::{UNIX_CONFIG_MAGIC, UNIX_NAME_LEN, UnixConfig, UnixKey};
use thiserror::Error;

use super::btf::{Btf, BtfError};
use crate::paths::{LSM_LIST, SECURITYFS};

/// Whether the attached layer enforces unix-socket allowlists, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSupport {
    Enforced,
    /// What the user can do about it, e.g. "add bpf to lsm= …".
    Unavailable(String),
}

/// The active LSMs, comma-separated (mounts securityfs when it is not mounted).
pub fn active_lsms() -> io::Result<String> {
    match fs::read_to_string(LSM_LIST) {
        Ok(list) => return Ok(list.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    crate::mounts::ensure_mounted("securityfs", SECURITYFS, None)?;
    Ok(fs::read_to_string(LSM_LIST)?.trim().to_owned())
}

/// Whether `bpf` is among the active LSMs of `list` (the contents of `/sys/kernel/security/lsm`).
pub fn bpf_lsm_active(list: &str) -> bool {
    list.split(',').any(|lsm| lsm.trim() == "bpf")
}

/// The reason unix-socket allowlists cannot be enforced with the LSM list `list`, if any.
pub fn lsm_unsupported_reason(list: &str) -> Option<String> {
    if bpf_lsm_active(list) {
        return None;
    }
    let suggested = if list.is_empty() {
        "bpf".to_owned()
    } else {
        format!("{list},bpf")
    };
    Some(format!(
        "the BPF LSM is not active: add bpf to lsm= on the kernel command line, e.g. \
         lsm={suggested} (current list: {list})"
    ))
}

/// The current LSM list's verdict on unix-socket support.
pub fn kernel_support() -> UnixSupport {
    match active_lsms() {
        Ok(list) => lsm_unsupported_reason(&list).map_or(UnixSupport::Enforced, |reason| {
            UnixSupport::Unavailable(reason)
        }),
        Err(e) => UnixSupport::Unavailable(format!(
            "cannot read the active LSMs from {LSM_LIST} ({e}); the BPF LSM (bpf in lsm=) is needed"
        )),
    }
}

/// The field offsets the programs read at, from the kernel's BTF (`cgroup_id` left at 0).
pub fn kernel_offsets(btf: &Btf) -> Result<UnixConfig, BtfError> {
    const POINTER: u32 = 8;
    // The programs treat a `struct sock *` of a unix socket as its `struct unix_sock *`.
    let sk = btf.offset_of("unix_sock", &["sk"], btf.struct_size("sock")?)?;
    if sk != 0 {
        return Err(BtfError::NoField {
            ty: "unix_sock".into(),
            field: "sk at offset 0".into(),
        });
    }
    Ok(UnixConfig {
        magic: UNIX_CONFIG_MAGIC,
        _pad: 0,
        cgroup_id: 0,
        unix_sock_addr: btf.offset_of("unix_sock", &["addr"], POINTER)?,
        unix_sock_dentry: btf.offset_of("unix_sock", &["path", "dentry"], POINTER)?,
        dentry_parent: btf.offset_of("dentry", &["d_parent"], POINTER)?,
        dentry_name: btf.offset_of("dentry", &["d_name", "name"], POINTER)?,
        dentry_inode: btf.offset_of("dentry", &["d_inode"], POINTER)?,
        inode_ino: btf.offset_of("inode", &["i_ino"], 8)?,
        inode_sb: btf.offset_of("inode", &["i_sb"], POINTER)?,
        sb_dev: btf.offset_of("super_block", &["s_dev"], 4)?,
        sock_uid: btf.offset_of("sock", &["sk_uid"], 4)?,
        socket_sk: btf.offset_of("socket", &["sk"], POINTER)?,
        sock_cgroup: btf.offset_of("sock", &["sk_cgrp_data", "cgroup"], POINTER)?,
        cgroup_kn: btf.offset_of("cgroup", &["kn"], POINTER)?,
        kernfs_id: btf.offset_of("kernfs_node", &["id"], 8)?,
        // Renamed `__parent` in Linux 6.15.
        kernfs_parent: btf
            .offset_of("kernfs_node", &["parent"], POINTER)
            .or_else(|_| btf.offset_of("kernfs_node", &["__parent"], POINTER))?,
    })
}

/// Everything the programs need, for the layer attached at `cgroup`.
pub fn kernel_config(btf_data: &[u8], cgroup: &Path) -> Result<UnixConfig, String> {
    let btf = Btf::parse(btf_data).map_err(|e| format!("cannot read the kernel's BTF: {e}"))?;
    let mut config = kernel_offsets(&btf).map_err(|e| {
        format!("this kernel's socket structures are not the ones isolate knows: {e}")
    })?;
    config.cgroup_id = cgroup_id(cgroup)
        .map_err(|e| format!("cannot read the cgroup ID of {}: {e}", cgroup.display()))?;
    Ok(config)
}

/// A cgroup2 directory's cgroup ID: its inode number (what `bpf_get_current_cgroup_id`
/// returns on 64-bit kernels).
pub fn cgroup_id(cgroup: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(cgroup)?.ino())
}

#[derive(Debug, Error)]
#[error("unix socket {path}: {reason}")]
pub struct LocateError {
    pub path: PathBuf,
    pub reason: String,
    pub not_found: bool,
}

/// Where a socket lives, as the kernel programs compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixLocation {
    /// The resolved path (symlinks followed).
    pub resolved: PathBuf,
    /// The directory's device, in the kernel's `dev_t` encoding (`major << 20 | minor`).
    pub dir_dev: u32,
    pub dir_ino: u64,
    pub name: Vec<u8>,
}

impl UnixLocation {
    pub fn key(&self, uid: u32, generation: u32) -> UnixKey {
        let mut key = UnixKey {
            uid,
            generation,
            dir_ino: self.dir_ino,
            dir_dev: self.dir_dev,
            ..UnixKey::default()
        };
        key.name[..self.name.len()].copy_from_slice(&self.name);
        key
    }
}

/// Resolves an allowed socket path (absolute) to the place a client connecting to it
/// reaches: symlinks are followed (in the directories and in the last component, when the
/// socket exists). The socket itself need not exist yet; its directory must.
pub fn locate(path: &Path) -> Result<UnixLocation, LocateError> {
    let error = |reason: String, not_found: bool| LocateError {
        path: path.to_path_buf(),
        reason,
        not_found,
    };
    let resolved = match fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(error("not a socket path".into(), false));
            };
            let parent = fs::canonicalize(parent).map_err(|e| {
                error(
                    format!("directory {}: {e}", parent.display()),
                    e.kind() == io::ErrorKind::NotFound,
                )
            })?;
            parent.join(name)
        }
        Err(e) => return Err(error(e.to_string(), false)),
    };
    let (Some(dir), Some(name)) = (resolved.parent(), resolved.file_name()) else {
        return Err(error("resolves to / (not a socket)".into(), false));
    };
    let name = name.as_bytes().to_vec();
    // sun_path holds at most 107 bytes and a NUL; the key's name field a little more.
    if name.len() >= UNIX_NAME_LEN - 4 {
        return Err(error(
            format!(
                "the file name is {} bytes, longer than a socket path can be",
                name.len()
            ),
            false,
        ));
    }
    let (dir_dev, dir_ino) =
        kernel_identity(dir).map_err(|e| error(format!("{}: {e}", dir.display()), false))?;
    Ok(UnixLocation {
        resolved: resolved.clone(),
        dir_dev,
        dir_ino,
        name,
    })
}

/// A directory's (device, inode) as the kernel has them in `i_sb->s_dev` and `i_ino`.
///
/// `stat`'s device is not always the superblock's (btrfs reports a device per subvolume),
/// so the device comes from the directory's mount in `/proc/self/mountinfo`, which shows
/// `s_dev` itself; `stat`'s device is the fallback.
fn kernel_identity(dir: &Path) -> io::Result<(u32, u64)> {
    let c_path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statx is given a valid C string and a zeroed buffer of the right type.
    let stx = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        if libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            0,
            libc::STATX_INO | libc::STATX_MNT_ID,
            &raw mut stx,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        stx
    };
    let from_stat = kernel_dev(stx.stx_dev_major, stx.stx_dev_minor);
    let dev = if stx.stx_mask & libc::STATX_MNT_ID != 0 {
        crate::mounts::mounts()
            .ok()
            .and_then(|mounts| mounts.into_iter().find(|m| m.id == stx.stx_mnt_id))
            .map_or(from_stat, |m| kernel_dev(m.dev.0, m.dev.1))
    } else {
        from_stat
    };
    Ok((dev, stx.stx_ino))
}

/// The kernel's internal `dev_t`: `MKDEV(major, minor)` = `major << 20 | minor`.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0x000f_ffff)
}

/// A socket file's device and inode from an event (see `UNIX_PEER_PATH`), as `major:minor`
/// and inode number.
pub fn split_kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0x000f_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lsm_list_decides() {
        assert!(bpf_lsm_active("lockdown,capability,landlock,bpf"));
        assert!(!bpf_lsm_active("lockdown,capability,landlock,bpfx"));
        assert_eq!(lsm_unsupported_reason("capability,bpf,landlock"), None);
        assert_eq!(
            lsm_unsupported_reason("lockdown,capability,landlock").unwrap(),
            "the BPF LSM is not active: add bpf to lsm= on the kernel command line, e.g. \
             lsm=lockdown,capability,landlock,bpf (current list: lockdown,capability,landlock)"
        );
    }

    #[test]
    fn kernel_devices_pack_major_and_minor() {
        assert_eq!(kernel_dev(8, 1), 8 << 20 | 1);
        assert_eq!(split_kernel_dev(kernel_dev(259, 3)), (259, 3));
    }

    #[test]
    fn locate_follows_symlinks_and_accepts_missing_sockets() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::write(real.join("s.sock"), b"").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();

        let through_link = locate(&dir.path().join("link/s.sock")).unwrap();
        let direct = locate(&real.join("s.sock")).unwrap();
        assert_eq!(through_link, direct);
        assert_eq!(direct.name, b"s.sock");
        assert_eq!(direct.dir_ino, fs::metadata(&real).unwrap().ino());

        // Not there yet: located by its directory and name all the same.
        let later = locate(&dir.path().join("link/later.sock")).unwrap();
        assert_eq!(
            (later.dir_dev, later.dir_ino),
            (direct.dir_dev, direct.dir_ino)
        );
        assert_eq!(later.name, b"later.sock");

        let missing = locate(&dir.path().join("nowhere/x.sock")).unwrap_err();
        assert!(missing.not_found, "{missing}");
    }

    #[test]
    fn keys_carry_the_name_nul_padded() {
        let location = UnixLocation {
            resolved: PathBuf::from("/run/a.sock"),
            dir_dev: 7,
            dir_ino: 9,
            name: b"a.sock".to_vec(),
        };
        let key = location.key(1000, 3);
        assert_eq!(
            (key.uid, key.generation, key.dir_dev, key.dir_ino),
            (1000, 3, 7, 9)
        );
        assert_eq!(&key.name[..7], b"a.sock\0");
        assert!(key.name[6..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_running_kernel_has_every_field() {
        let Ok(data) = fs::read(crate::paths::KERNEL_BTF) else {
            return; // no BTF here: nothing to check
        };
        let btf = Btf::parse(&data).unwrap();
        let config = kernel_offsets(&btf).unwrap();
        // Offsets differ between kernels (the VM suite runs the programs on fixed ones); what
        // holds on every kernel is the layout the programs rely on: `struct path` is
        // (mnt, dentry), right after `addr` in `struct unix_sock`.
        assert_eq!(config.unix_sock_dentry, config.unix_sock_addr + 16);
        assert_ne!(config.dentry_inode, config.dentry_parent);
    }
}
