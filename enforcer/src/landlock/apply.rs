//! From plan to kernel: [`LandlockPlan::prepare`] builds the ruleset in the supervisor (path
//! descriptors opened, ruleset descriptor created, rules added), and
//! [`PreparedRuleset::restrict_self`] enforces it in the forked child, before `exec`.
//!
//! Compatibility goes through the crate's machinery: the features the policy's `minimum_abi`
//! covers are requested as `HardRequirement`, the newer ones as `BestEffort`, so the crate
//! drops exactly those the kernel lacks — and the report lists them.

use std::io;
use std::os::fd::AsFd;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, PathFdError, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus,
    Scope, make_bitflags,
};

use super::abi::{Feature, kernel_abi, kernel_release};
use super::error::LandlockError;
use super::plan::{LandlockPlan, Origin, PathAccess, PathRule};
use super::ports::port_count;
use super::report::LandlockReport;

const READ: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | ReadDir});

/// A ruleset ready to be enforced: its descriptor is open (close-on-exec), its rules added.
#[derive(Debug)]
pub struct PreparedRuleset {
    ruleset: RulesetCreated,
    report: LandlockReport,
}

/// What [`PreparedRuleset::restrict_self`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestrictStatus {
    /// Every requested feature is enforced (none dropped for lack of kernel support).
    pub fully_enforced: bool,
    /// `no_new_privs` is set (the kernel requires it of unprivileged callers).
    pub no_new_privs: bool,
}

/// The plan's features split by what the running kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSplit {
    pub enabled: Vec<Feature>,
    pub dropped: Vec<Feature>,
}

impl LandlockPlan {
    /// Builds the kernel ruleset. Refuses when the kernel has no Landlock or its ABI is below
    /// `minimum_abi`; above that, uses what the kernel offers and reports what it dropped.
    /// Paths that do not exist are skipped with a warning (reported too); the instance
    /// directory must exist. Enforces nothing: safe for `--dry-run`.
    pub fn prepare(&self) -> Result<PreparedRuleset, LandlockError> {
        let kernel = kernel_abi().map_err(|reason| LandlockError::Unavailable {
            instance: self.instance.clone(),
            file: self.policy_file.clone(),
            reason,
        })?;
        let split = self.check_kernel(kernel)?;
        let build = |source| LandlockError::Build {
            instance: self.instance.clone(),
            source,
        };

        let mut ruleset = Ruleset::default();
        for &feature in &self.features() {
            ruleset = ruleset.set_compatibility(self.level(feature));
            ruleset = match feature {
                Feature::TcpConnectPorts => ruleset.handle_access(AccessNet::ConnectTcp),
                Feature::TcpBindPorts => ruleset.handle_access(AccessNet::BindTcp),
                Feature::ScopeAbstractUnixSockets => ruleset.scope(Scope::AbstractUnixSocket),
                Feature::ScopeSignals => ruleset.scope(Scope::Signal),
                // A flag of landlock_restrict_self, set below.
                Feature::DenialLogging => Ok(ruleset),
                fs => ruleset.handle_access(fs_rights(fs)),
            }
            .map_err(build)?;
        }
        let mut created = ruleset.create().map_err(build)?;
        if self.log_denials {
            // The kernel logs denials of the restricting program itself by default, but not
            // those of the program it then executes — the one we confine.
            created = created
                .set_compatibility(self.level(Feature::DenialLogging))
                .log_new_exec(true)
                .map_err(build)?;
        }
        // Rules may carry rights the kernel lacks: those were dropped (or refused) above.
        created = created.set_compatibility(CompatLevel::BestEffort);

        let mut skipped = Vec::new();
        let mut path_rules = 0;
        for access in [
            PathAccess::ReadOnly,
            PathAccess::ReadWrite,
            PathAccess::Exec,
        ] {
            for rule in self.rules(access) {
                let Some(fd) = self.open(rule, &mut skipped)? else {
                    continue;
                };
                let rights = rights_on(&fd, access);
                created = created
                    .add_rule(PathBeneath::new(fd, rights))
                    .map_err(build)?;
                path_rules += 1;
            }
        }
        let mut port_rules = 0;
        for (feature, ranges, right) in [
            (
                Feature::TcpConnectPorts,
                &self.tcp_connect_ports,
                AccessNet::ConnectTcp,
            ),
            (
                Feature::TcpBindPorts,
                &self.tcp_bind_ports,
                AccessNet::BindTcp,
            ),
        ] {
            // Landlock has no port ranges: one rule per port (capped by the plan).
            let Some(ranges) = ranges.as_ref().filter(|_| split.enabled.contains(&feature)) else {
                continue;
            };
            for range in ranges {
                for port in range.first..=range.last {
                    created = created.add_rule(NetPort::new(port, right)).map_err(build)?;
                }
            }
            port_rules += port_count(ranges);
        }

        let report = LandlockReport {
            instance: self.instance.clone(),
            kernel_abi: kernel,
            kernel_release: kernel_release(),
            minimum_abi: self.minimum_abi,
            enabled: split.enabled,
            dropped: split.dropped,
            skipped,
            path_rules,
            port_rules,
        };
        Ok(PreparedRuleset {
            ruleset: created,
            report,
        })
    }

    /// Splits the plan's features by what a kernel with Landlock ABI `kernel_abi` offers;
    /// an error naming what is missing when that is below `minimum_abi`.
    pub fn check_kernel(&self, kernel_abi: u8) -> Result<FeatureSplit, LandlockError> {
        let (enabled, dropped): (Vec<Feature>, Vec<Feature>) = self
            .features()
            .into_iter()
            .partition(|f| f.since() <= kernel_abi);
        if kernel_abi < self.minimum_abi {
            return Err(LandlockError::KernelTooOld {
                instance: self.instance.clone(),
                file: self.policy_file.clone(),
                release: kernel_release(),
                kernel: kernel_abi,
                minimum: self.minimum_abi,
                missing: dropped
                    .into_iter()
                    .filter(|f| f.since() <= self.minimum_abi)
                    .collect(),
            });
        }
        Ok(FeatureSplit { enabled, dropped })
    }

    /// Features up to `minimum_abi` are required; newer ones are used when available.
    fn level(&self, feature: Feature) -> CompatLevel {
        if feature.since() <= self.minimum_abi {
            CompatLevel::HardRequirement
        } else {
            CompatLevel::BestEffort
        }
    }

    /// Opens the path of `rule` (`O_PATH`), or records it as skipped when it does not exist.
    /// With a `writer`, a link it could have planted on the way is an error.
    fn open(
        &self,
        rule: &PathRule,
        skipped: &mut Vec<PathRule>,
    ) -> Result<Option<PathFd>, LandlockError> {
        let path = match self.writer {
            Some(writer) => crate::trusted_path::resolve(&rule.path, writer).map_err(|source| {
                LandlockError::UntrustedPath {
                    instance: self.instance.clone(),
                    file: self.policy_file.clone(),
                    source,
                }
            })?,
            None => rule.path.clone(),
        };
        let error = match PathFd::new(&path) {
            Ok(fd) => return Ok(Some(fd)),
            Err(PathFdError::OpenCall { source, .. }) => source,
            Err(other) => io::Error::other(other),
        };
        let missing =
            error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ENOTDIR);
        match rule.origin {
            Origin::Policy if missing => {
                tracing::warn!(
                    instance = self.instance,
                    path = %rule.path.display(),
                    "Landlock: skipping a path that does not exist"
                );
            }
            Origin::Baseline if missing => {
                tracing::debug!(path = %rule.path.display(), "Landlock: no such baseline path");
            }
            Origin::InstanceDirectory if missing => {
                return Err(LandlockError::MissingDirectory {
                    instance: self.instance.clone(),
                    file: self.policy_file.clone(),
                    directory: rule.path.clone(),
                });
            }
            _ => {
                return Err(LandlockError::OpenPath {
                    instance: self.instance.clone(),
                    path: rule.path.clone(),
                    source: error,
                });
            }
        }
        skipped.push(rule.clone());
        Ok(None)
    }
}

impl PreparedRuleset {
    /// Enforces the ruleset on the calling thread and its future children.
    ///
    /// Meant for the forked child, between fork and exec (`Command::pre_exec`): it makes no
    /// allocation and takes no lock. What runs is the crate's `RulesetCreated::restrict_self`:
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)` (the kernel requires it of callers without
    /// `CAP_SYS_ADMIN`), `landlock_restrict_self(fd, flags)` (flags: denial logging after exec
    /// where ABI 7 has it), then `close(fd)`. The path descriptors were closed in `prepare`
    /// once their rules were in the kernel. On error, [`LandlockError::to_io_error`] gives an
    /// `io::Error` without allocating.
    pub fn restrict_self(self) -> Result<RestrictStatus, LandlockError> {
        let Self { ruleset, report } = self;
        // The child is about to exec (or exit), which frees it; freeing it here would call into
        // the allocator after fork.
        std::mem::forget(report);
        let status = ruleset.restrict_self().map_err(LandlockError::Restrict)?;
        let fully_enforced = match status.ruleset {
            RulesetStatus::FullyEnforced => true,
            RulesetStatus::PartiallyEnforced => false,
            RulesetStatus::NotEnforced => return Err(LandlockError::NotEnforced),
        };
        Ok(RestrictStatus {
            fully_enforced,
            no_new_privs: status.no_new_privs,
        })
    }

    /// The ABI in use, the features enabled and dropped, the paths skipped.
    pub fn report(&self) -> &LandlockReport {
        &self.report
    }
}

/// The file-system rights `feature` makes the ruleset handle.
fn fs_rights(feature: Feature) -> BitFlags<AccessFs> {
    match feature {
        Feature::FileAccess => AccessFs::from_all(ABI::V1),
        Feature::Refer => AccessFs::Refer.into(),
        Feature::Truncate => AccessFs::Truncate.into(),
        Feature::IoctlDev => AccessFs::IoctlDev.into(),
        _ => BitFlags::EMPTY,
    }
}

/// What a rule of `access` grants on `fd`; directory-only rights are left out for a file (the
/// kernel would refuse them, and the crate would call the ruleset partially enforced).
fn rights_on(fd: &PathFd, access: PathAccess) -> BitFlags<AccessFs> {
    let rights = match access {
        PathAccess::ReadOnly => READ,
        PathAccess::ReadWrite => {
            [
                Feature::FileAccess,
                Feature::Refer,
                Feature::Truncate,
                Feature::IoctlDev,
            ]
            .into_iter()
            .map(fs_rights)
            .fold(BitFlags::EMPTY, |a, b| a | b)
                & !AccessFs::Execute
        }
        PathAccess::Exec => READ | AccessFs::Execute,
    };
    let is_dir = nix::sys::stat::fstat(fd.as_fd())
        .map_or(true, |st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
    if is_dir {
        rights
    } else {
        rights & AccessFs::from_file(ABI::V5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan(minimum_abi: u8, tcp: bool) -> LandlockPlan {
        let allow = if tcp { "[\"10.0.0.0/8:443\"]" } else { "[]" };
        let text = format!(
            "user = \"dynamic\"\n[network]\nallow = {allow}\n[landlock]\nminimum_abi = {minimum_abi}\n"
        );
        let policy =
            isolate_policy::parse_str(&text, Path::new("/etc/isolate/instances/demo.toml"))
                .unwrap();
        LandlockPlan::from_policy(&policy, Path::new("/h")).unwrap()
    }

    #[test]
    fn on_abi_2_the_newer_features_are_dropped() {
        let split = plan(1, true).check_kernel(2).unwrap();
        assert_eq!(split.enabled, [Feature::FileAccess, Feature::Refer]);
        assert_eq!(
            split.dropped,
            [
                Feature::Truncate,
                Feature::TcpConnectPorts,
                Feature::TcpBindPorts,
                Feature::IoctlDev,
                Feature::ScopeAbstractUnixSockets,
                Feature::ScopeSignals,
                Feature::DenialLogging,
            ]
        );
        let split = plan(6, true).check_kernel(6).unwrap();
        assert_eq!(split.dropped, [Feature::DenialLogging]);
    }

    #[test]
    fn below_the_minimum_the_error_says_what_is_missing_and_what_to_change() {
        let err = plan(4, true).check_kernel(2).unwrap_err();
        let LandlockError::KernelTooOld { ref missing, .. } = err else {
            panic!("{err:?}");
        };
        assert_eq!(
            missing,
            &[
                Feature::Truncate,
                Feature::TcpConnectPorts,
                Feature::TcpBindPorts
            ]
        );
        let text = err.to_string();
        for part in [
            "instance demo (/etc/isolate/instances/demo.toml)",
            "offers Landlock ABI 2, below landlock.minimum_abi = 4",
            "TCP connect port rules (ABI 4)",
            "set landlock.minimum_abi = 2 to accept weaker confinement",
            "or use a newer kernel (Linux 6.7 or later)",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
    }

    #[test]
    fn rights_leave_directory_only_ones_out_for_files() {
        let file = PathFd::new("/dev/null").unwrap();
        let rw = rights_on(&file, PathAccess::ReadWrite);
        assert!(rw.contains(AccessFs::WriteFile | AccessFs::Truncate));
        assert!(!rw.contains(AccessFs::MakeReg) && !rw.contains(AccessFs::Execute));
        let dir = PathFd::new("/").unwrap();
        let rw = rights_on(&dir, PathAccess::ReadWrite);
        assert!(rw.contains(AccessFs::MakeReg | AccessFs::RemoveDir | AccessFs::Refer));
        assert!(!rw.contains(AccessFs::Execute));
        assert_eq!(rights_on(&dir, PathAccess::ReadOnly), READ);
    }
}
