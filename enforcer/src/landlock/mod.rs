//! The Landlock layer of an instance: read-only, read-write and exec paths, TCP
//! connect ports, abstract unix socket and signal scoping, denial logging.
//!
//! Shape, as every layer: build from a validated policy ([`LandlockPlan::from_policy`]; its
//! `Display` lists every rule), apply ([`LandlockPlan::prepare`] in the supervisor, then
//! [`PreparedRuleset::restrict_self`] in the forked child before `exec`), inspect
//! ([`PreparedRuleset::report`]). There is nothing to remove: a Landlock domain ends with the
//! last process in it.
//!
//! Decisions:
//! - The policy's `minimum_abi` is a floor: below it, [`LandlockPlan::prepare`] refuses and
//!   names the missing features; above it, the kernel's newer features are used when it has
//!   them, and the report lists those it lacks. No Landlock at all is always an error.
//! - TCP connect is restricted to the union of the policy's TCP ports (ABI 4) unless a TCP rule
//!   allows every port, or the union exceeds [`MAX_PORT_RULES`]; TCP bind likewise, to the TCP
//!   ports of `network.listen` and the ephemeral port 0. `isolate exec` leaves both to the eBPF
//!   layer when it runs (it counts and records each refusal, and judges addresses too).
//! - A small [`baseline`] of system paths (loader, libraries, `/proc`, `/dev/null`, name
//!   service files) is added to every plan, tagged as such; missing paths are skipped with a
//!   warning, except the instance directory, which must exist.
//! - UDP port rules and pathname unix-socket rules (newer ABIs) are not used: the eBPF layer
//!   judges UDP and unix-socket connects.
//! - Denials are logged through the kernel audit subsystem (ABI 7); they appear only where
//!   audit is enabled (auditd, or journald's audit socket).

mod abi;
mod apply;
pub mod baseline;
mod error;
mod plan;
mod ports;
mod report;

pub use abi::{Feature, Unavailable, kernel_abi, linux_release_of};
pub use apply::{FeatureSplit, PreparedRuleset, RestrictStatus};
pub use error::LandlockError;
pub use plan::{LandlockPlan, Origin, PathAccess, PathRule};
pub use ports::{MAX_PORT_RULES, Unrestricted};
pub use report::LandlockReport;
