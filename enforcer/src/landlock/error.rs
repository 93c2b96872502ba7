//! What can go wrong building or applying an instance's Landlock ruleset.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::abi::{Feature, Unavailable, linux_release_of};

#[derive(Debug, Error)]
pub enum LandlockError {
    #[error("instance {instance} ({}): {source}", file.display())]
    UntrustedPath {
        instance: String,
        file: PathBuf,
        #[source]
        source: crate::trusted_path::UntrustedPath,
    },

    #[error(
        "instance {instance} ({}): the instance directory {} does not exist: create it, or change `directory`",
        file.display(),
        directory.display()
    )]
    MissingDirectory {
        instance: String,
        file: PathBuf,
        directory: PathBuf,
    },

    #[error(
        "instance {instance} ({}): {reason}; isolate needs Landlock (landlock.minimum_abi is at least 1)",
        file.display()
    )]
    Unavailable {
        instance: String,
        file: PathBuf,
        reason: Unavailable,
    },

    #[error(
        "instance {instance} ({}): this kernel (Linux {release}) offers Landlock ABI {kernel}, below landlock.minimum_abi = {minimum}{}: set landlock.minimum_abi = {kernel} to accept weaker confinement, or use a newer kernel{}",
        file.display(),
        needed_for(.missing),
        newer_kernel(*.minimum)
    )]
    KernelTooOld {
        instance: String,
        file: PathBuf,
        release: String,
        kernel: u8,
        minimum: u8,
        /// The plan's features the kernel lacks and the minimum ABI makes mandatory.
        missing: Vec<Feature>,
    },

    #[error(
        "instance {instance}: cannot open {} for its Landlock rule: {source}",
        path.display()
    )]
    OpenPath {
        instance: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("instance {instance}: cannot build the Landlock ruleset: {source}")]
    Build {
        instance: String,
        #[source]
        source: landlock::RulesetError,
    },

    /// From `restrict_self`, in the child: carries no instance name, so that building it
    /// allocates nothing there.
    #[error("cannot enforce the Landlock ruleset: {0}")]
    Restrict(#[source] landlock::RulesetError),

    /// The kernel accepted the call but the crate reports nothing enforced.
    #[error("the Landlock ruleset was not enforced")]
    NotEnforced,
}

impl LandlockError {
    /// The OS error behind a failure of `restrict_self`, built without allocating, for a
    /// `pre_exec` closure (`EPERM` when there is no OS error).
    pub fn to_io_error(&self) -> io::Error {
        let errno = match self {
            LandlockError::Restrict(landlock::RulesetError::RestrictSelf(
                landlock::RestrictSelfError::SetNoNewPrivsCall { source, .. }
                | landlock::RestrictSelfError::RestrictSelfCall { source, .. },
            ))
            | LandlockError::OpenPath { source, .. } => source.raw_os_error(),
            _ => None,
        };
        io::Error::from_raw_os_error(errno.unwrap_or(libc::EPERM))
    }
}

fn needed_for(missing: &[Feature]) -> String {
    let mut text = String::new();
    for (i, feature) in missing.iter().enumerate() {
        text.push_str(if i == 0 {
            ", which this policy needs for "
        } else {
            ", "
        });
        text.push_str(&feature.to_string());
    }
    text
}

fn newer_kernel(minimum: u8) -> String {
    linux_release_of(minimum).map_or_else(String::new, |release| {
        format!(" (Linux {release} or later)")
    })
}
