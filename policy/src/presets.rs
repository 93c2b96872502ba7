//! Presets: shipped policy fragments a policy merges with `presets = ["opencode", "anthropic"]`.
//! Per agent, the files, programs and port it needs; per destination group, the hosts. Each is a
//! TOML file of the repository's `presets/` directory, compiled in, so that a policy means the
//! same on every host whatever is installed.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Doc, PolicyError};
use crate::model::{Filesystem, Network};
use crate::raw::{RawFilesystem, RawNetwork};
use crate::validate::Validator;

/// What a preset is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetKind {
    /// An agent: its files, programs and own port. An instance runs one.
    Agent,
    /// A group of destinations (a model provider, a package registry).
    Destinations,
}

/// One shipped preset.
#[derive(Debug)]
pub struct Preset {
    /// The name a policy lists it by.
    pub name: &'static str,
    /// What it is about.
    pub kind: PresetKind,
    /// Its file, as shipped (`presets/NAME.toml`).
    pub text: &'static str,
}

macro_rules! preset {
    ($name:literal, $kind:ident) => {
        Preset {
            name: $name,
            kind: PresetKind::$kind,
            text: include_str!(concat!("../../presets/", $name, ".toml")),
        }
    };
}

/// Every shipped preset: agents first, then destination groups.
pub static PRESETS: [Preset; 11] = [
    preset!("opencode", Agent),
    preset!("claude-code", Agent),
    preset!("codex", Agent),
    preset!("anthropic", Destinations),
    preset!("openai", Destinations),
    preset!("openrouter", Destinations),
    preset!("google", Destinations),
    preset!("github", Destinations),
    preset!("npm", Destinations),
    preset!("pypi", Destinations),
    preset!("crates", Destinations),
];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// What a preset grants, checked as a policy's own entries are.
#[derive(Debug, Clone)]
pub struct Grants {
    /// One line on what it is for.
    pub description: String,
    /// Its `allow`, `listen` and `unix_sockets` entries (nothing else of `[network]`).
    pub network: Network,
    /// Its `read_only`, `read_write` and `exec` paths.
    pub filesystem: Filesystem,
}

/// A preset file: a description and the lists it adds to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    description: String,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    filesystem: RawFilesystem,
}

impl Preset {
    /// Its file's name, as errors in it name it.
    pub fn file(&self) -> String {
        format!("presets/{}.toml", self.name)
    }

    /// Parses and checks the preset. Shipped presets are tested to parse; the errors are for a
    /// broken build only.
    pub fn grants(&self) -> Result<Grants, Vec<PolicyError>> {
        let file = self.file();
        let doc = Doc {
            text: self.text,
            path: Path::new(&file),
        };
        let raw: RawPreset =
            toml::from_str(self.text).map_err(|e| vec![crate::locate::toml_error(doc, &e)])?;
        let mut v = Validator::new(doc);
        if let Some(dns) = &raw.network.dns {
            v.error(
                &dns.span(),
                "network.dns",
                "a preset sets no resolver".into(),
                None,
            );
        }
        let mut network = v.network(&raw.network);
        network.dns = crate::model::DnsSetting::default();
        let filesystem = v.filesystem(&raw.filesystem);
        v.finish()?;
        Ok(Grants {
            description: raw.description,
            network,
            filesystem,
        })
    }
}

impl Grants {
    /// What it adds, each entry as `isolate check` prints it, by field.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let net = &self.network;
        let mut entries: Vec<(&'static str, String)> = Vec::new();
        let mut add = |field, items: Vec<String>| {
            entries.extend(items.into_iter().map(|item| (field, item)));
        };
        add("network.allow", crate::print::allow_items(net));
        add("network.listen", crate::print::listen_items(net));
        add(
            "network.unix_sockets",
            crate::print::path_items(&net.unix_sockets),
        );
        add(
            "filesystem.read_only",
            crate::print::path_items(&self.filesystem.read_only),
        );
        add(
            "filesystem.read_write",
            crate::print::path_items(&self.filesystem.read_write),
        );
        add(
            "filesystem.exec",
            crate::print::path_items(&self.filesystem.exec),
        );
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_preset_parses_says_what_it_is_and_adds_something() {
        for preset in &PRESETS {
            let grants = preset
                .grants()
                .unwrap_or_else(|e| panic!("{}: {e:?}", preset.file()));
            assert!(!grants.description.is_empty(), "{}", preset.name);
            assert!(!grants.entries().is_empty(), "{} adds nothing", preset.name);
            let agent = preset.kind == PresetKind::Agent;
            assert_eq!(
                !grants.filesystem.exec.is_empty(),
                agent,
                "{}: agents, and only they, grant programs",
                preset.name
            );
            // Names, not a place: an agent's own port aside, presets reach hosts by name.
            if !agent {
                assert!(
                    grants.network.allow_v4.is_empty() && grants.network.allow_v6.is_empty(),
                    "{}",
                    preset.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique_and_found() {
        for preset in &PRESETS {
            assert!(std::ptr::eq(super::preset(preset.name).unwrap(), preset));
        }
        assert!(super::preset("nosuch").is_none());
    }
}
