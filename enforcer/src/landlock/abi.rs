//! What each Landlock ABI version brings, as far as isolate uses it, and which version the
//! running kernel offers.

use std::fmt;

/// A Landlock capability a plan uses. Each one needs a minimum ABI version; below it, the
/// kernel cannot enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// Read, write, execute, create and remove rights on file hierarchies.
    FileAccess,
    /// Renaming and linking files across directories.
    Refer,
    /// Truncating files (`truncate(2)`, `O_TRUNC`).
    Truncate,
    /// TCP `connect` restricted to the allowed ports.
    TcpConnectPorts,
    /// TCP `bind` restricted to the allowed ports.
    TcpBindPorts,
    /// `ioctl(2)` on device files.
    IoctlDev,
    /// Abstract unix sockets created outside the sandbox are out of reach.
    ScopeAbstractUnixSockets,
    /// Signals to processes outside the sandbox are refused.
    ScopeSignals,
    /// Denials are written to the audit log, also after `exec`.
    DenialLogging,
}

impl Feature {
    /// The first Landlock ABI version that has it.
    pub fn since(self) -> u8 {
        match self {
            Feature::FileAccess => 1,
            Feature::Refer => 2,
            Feature::Truncate => 3,
            Feature::TcpConnectPorts | Feature::TcpBindPorts => 4,
            Feature::IoctlDev => 5,
            Feature::ScopeAbstractUnixSockets | Feature::ScopeSignals => 6,
            Feature::DenialLogging => 7,
        }
    }

    /// What it does, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::FileAccess => "file access rules",
            Feature::Refer => "rename/link across directories",
            Feature::Truncate => "truncate rights",
            Feature::TcpConnectPorts => "TCP connect port rules",
            Feature::TcpBindPorts => "TCP bind port rules",
            Feature::IoctlDev => "device ioctl rights",
            Feature::ScopeAbstractUnixSockets => "abstract unix socket scoping",
            Feature::ScopeSignals => "signal scoping",
            Feature::DenialLogging => "denial logging",
        }
    }

    /// What the sandbox loses when the kernel lacks it.
    pub fn when_missing(self) -> &'static str {
        match self {
            Feature::FileAccess => "no file access restriction at all",
            // Without the right, the kernel refuses every such rename (EXDEV): stricter, not
            // looser, but programs that move files between directories break.
            Feature::Refer => "renaming or linking files across directories is always refused",
            Feature::Truncate => "files that can be opened can also be truncated",
            Feature::TcpConnectPorts => "TCP connect is not restricted by Landlock",
            Feature::TcpBindPorts => "TCP bind is not restricted by Landlock",
            Feature::IoctlDev => "ioctl on device files is not restricted",
            Feature::ScopeAbstractUnixSockets => {
                "abstract unix sockets outside the sandbox stay reachable"
            }
            Feature::ScopeSignals => "processes outside the sandbox can be signalled",
            Feature::DenialLogging => "denials are not written to the audit log",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (ABI {})", self.describe(), self.since())
    }
}

/// The Linux release that introduced a Landlock ABI version, for error messages.
pub fn linux_release_of(abi: u8) -> Option<&'static str> {
    Some(match abi {
        1 => "5.13",
        2 => "5.19",
        3 => "6.2",
        4 => "6.7",
        5 => "6.10",
        6 => "6.12",
        7 => "6.15",
        _ => return None,
    })
}

/// Why the kernel offers no Landlock at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// `ENOSYS`: built without `CONFIG_SECURITY_LANDLOCK`, or older than Linux 5.13.
    NotBuiltIn,
    /// `EOPNOTSUPP`: built in but not enabled at boot.
    NotEnabled,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unavailable::NotBuiltIn => {
                "the kernel has no Landlock (older than Linux 5.13, or built without CONFIG_SECURITY_LANDLOCK)"
            }
            Unavailable::NotEnabled => {
                "Landlock is built in but not enabled: add landlock to the lsm= kernel parameter"
            }
        })
    }
}

/// The Landlock ABI version of the running kernel.
pub fn kernel_abi() -> Result<u8, Unavailable> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and the VERSION flag the call only returns a number.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi > 0 {
        return Ok(u8::try_from(abi).unwrap_or(u8::MAX));
    }
    match nix::errno::Errno::last() {
        nix::errno::Errno::EOPNOTSUPP => Err(Unavailable::NotEnabled),
        _ => Err(Unavailable::NotBuiltIn),
    }
}

/// The running kernel's release (`uname -r`), for messages.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map_or_else(
        |_| "unknown".to_owned(),
        |u| u.release().to_string_lossy().into_owned(),
    )
}
