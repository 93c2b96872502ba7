//! The policy of an `isolate` instance: what it may reach on the network and
//! in the file system.
//!
//! This crate reads policy files (TOML, one per instance), checks them, and
//! normalises them; it makes no OS calls beyond reading the files. Errors
//! point at the offending value as `file:line:col` and say how to fix it
//! ([`PolicyError`]); all problems of a file are reported at once ([`Errors`]).
//!
//! ```
//! # use std::path::Path;
//! let policy = isolate_policy::parse_str(
//!     r#"user = "dynamic"
//!        [network]
//!        allow = ["10.0.0.0/9", "10.128.0.0/9", "api.example.com:443/tcp"]"#,
//!     Path::new("/etc/isolate/instances/demo.toml"),
//! )?;
//! assert_eq!(policy.name, "demo");
//! assert_eq!(policy.network.allow_v4[0].to_string(), "10.0.0.0/8");
//! # Ok::<(), isolate_policy::Errors>(())
//! ```

#![warn(missing_docs)]

mod allow;
mod error;
mod load;
mod locate;
mod model;
mod normalise;
mod presets;
mod print;
mod raw;
mod validate;

use std::path::Path;

pub use allow::{AllowEntry, AllowEntryError, parse_allow_entry};
pub use error::{Errors, PolicyError};
pub use load::{DirLoad, load_dir, load_dir_partly, load_file, load_paths};
pub use model::{
    DnsSetting, Filesystem, HostRule, LandlockSettings, LogSettings, NetRule, Network, Policy,
    PortRange, Protocol, Rate, RateUnit, Resources, UserSpec, expand_home,
};
pub use normalise::{normalise_v4, normalise_v6};
pub use presets::{Grants, PRESETS, Preset, PresetKind, preset};
pub use print::{Addition, ListField};
pub use validate::is_variable_name;

/// Parse and validate a policy file's text. `source` names the file in errors
/// and gives the default instance name (its stem); it is not read.
pub fn parse_str(text: &str, source: &Path) -> Result<Policy, Errors> {
    validate::parse(text, source, false)
        .map(|parsed| parsed.policy)
        .map_err(Errors)
}
