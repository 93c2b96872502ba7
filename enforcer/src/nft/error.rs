//! Errors of the nftables layer; each names the instance and what to do.

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NftError {
    #[error(
        "instance {instance}: the `nft` program was not found; install the `nftables` package \
         (isolate's nftables layer runs `nft`), or run `cargo xtask setup`"
    )]
    NftMissing { instance: String },

    #[error("instance {instance}: cannot run `nft` to {action}: {source}")]
    Run {
        instance: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "instance {instance}: nft refused its ruleset{}, so nothing was changed: {stderr}",
        culprit.as_ref().map(|c| format!(" (in {c})")).unwrap_or_default()
    )]
    Rejected {
        instance: String,
        /// The part of the policy that made nft refuse, when it could be narrowed down.
        culprit: Option<String>,
        stderr: String,
    },

    #[error("instance {instance}: `nft` failed to {action}: {stderr}")]
    Failed {
        instance: String,
        action: &'static str,
        stderr: String,
    },

    #[error("instance {instance}: cannot read the JSON that `nft` printed to {action}: {source}")]
    Output {
        instance: String,
        action: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("instance {instance}: cannot ask the kernel's nftables to {action}: {source}")]
    Netlink {
        instance: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot ask the kernel's nftables to {action}: {reason}")]
    ListAll {
        action: &'static str,
        reason: String,
    },

    #[error(
        "instance name {instance:?} cannot name an nftables table: use 1 to 32 characters of \
         a-z, 0-9, `_` and `-`, starting with a letter or digit"
    )]
    InvalidInstance { instance: String },

    #[error(
        "instance {instance}: its nftables table `inet isolate-{instance}` is not in place; \
         apply the instance's policy first"
    )]
    NotApplied { instance: String },
}
