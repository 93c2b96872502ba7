//! Printing a policy back in the policy-file format (what `isolate check`
//! shows). Every setting is written out, defaults included, so the output is
//! the effective policy; parsing it gives the same [`Policy`] back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::model::{DnsSetting, Network, Policy};

/// Which presets an entry came from: (field, entry as printed) → preset names.
type Origins = BTreeMap<(&'static str, String), Vec<&'static str>>;

/// A list of a policy that entries can be added to, by its name in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListField {
    /// `network.allow`
    Allow,
    /// `network.listen`
    Listen,
    /// `network.unix_sockets`
    UnixSockets,
    /// `filesystem.read_only`
    ReadOnly,
    /// `filesystem.read_write`
    ReadWrite,
    /// `filesystem.exec`
    Exec,
}

impl ListField {
    /// Its name as errors and fixes spell it (`network.allow`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListField::Allow => "network.allow",
            ListField::Listen => "network.listen",
            ListField::UnixSockets => "network.unix_sockets",
            ListField::ReadOnly => "filesystem.read_only",
            ListField::ReadWrite => "filesystem.read_write",
            ListField::Exec => "filesystem.exec",
        }
    }
}

/// An entry to add to one of a policy's lists, as it would be typed, with the note printed
/// beside it (why it is there: when and by which program it was seen).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Addition {
    /// The list it goes to.
    pub field: ListField,
    /// The entry, spelled as in a policy file (`"api.example.com:443/tcp"`, a path).
    pub entry: String,
    /// The comment written after it.
    pub note: String,
}

impl Policy {
    /// The normalised policy as TOML, in the format of the policy files.
    /// `source` is not part of it.
    pub fn to_toml(&self) -> String {
        self.render(&Origins::new(), &[])
    }

    /// As [`Policy::to_toml`], each entry a preset added followed by a comment naming it
    /// (`# preset opencode`), for people reading what a policy comes to.
    pub fn to_toml_with_origins(&self) -> String {
        self.render(&self.preset_origins(), &[])
    }

    /// As [`Policy::to_toml_with_origins`], with `additions` appended to their lists, each
    /// followed by its note: the policy a learning run proposes. The entries are written as
    /// given; parsing the text checks (and normalises) them as any policy file's.
    pub fn to_toml_with_additions(&self, additions: &[Addition]) -> String {
        self.render(&self.preset_origins(), additions)
    }

    fn preset_origins(&self) -> Origins {
        let mut origins = Origins::new();
        for name in &self.presets {
            let Some(grants) = crate::presets::preset(name).and_then(|p| p.grants().ok()) else {
                continue;
            };
            let preset = crate::presets::preset(name).map_or("?", |p| p.name);
            for (field, entry) in grants.entries() {
                origins.entry((field, entry)).or_default().push(preset);
            }
        }
        origins
    }

    fn render(&self, origins: &Origins, additions: &[Addition]) -> String {
        let mut out = String::new();
        let net = &self.network;
        line(&mut out, "name", &quote(&self.name));
        line(&mut out, "user", &quote(&self.user.to_string()));
        if let Some(directory) = &self.directory {
            line(&mut out, "directory", &quote(&directory.to_string_lossy()));
        }
        // Written only when set, so that policies without them print (and hash) as before.
        if !self.environment.is_empty() {
            let pairs: Vec<String> = self
                .environment
                .iter()
                .map(|(key, value)| format!("{key} = {}", quote(value)))
                .collect();
            line(
                &mut out,
                "environment",
                &format!("{{ {} }}", pairs.join(", ")),
            );
        }
        if let Some(file) = &self.environment_file {
            line(
                &mut out,
                "environment_file",
                &quote(&file.to_string_lossy()),
            );
        }
        // Written only when set; the lists below already hold what they add (merging them
        // again on a re-read changes nothing).
        if !self.presets.is_empty() {
            line(&mut out, "presets", &inline_array(&self.presets));
        }

        out.push_str("\n[network]\n");
        let list = |field: &'static str, items: &[String]| {
            let mut notes: Vec<Option<String>> = items
                .iter()
                .map(|item| {
                    origins
                        .get(&(field, item.clone()))
                        .map(|names| format!("preset {}", names.join(", ")))
                })
                .collect();
            let mut items = items.to_vec();
            for addition in additions.iter().filter(|a| a.field.as_str() == field) {
                items.push(addition.entry.clone());
                notes.push(Some(addition.note.clone()));
            }
            array(&items, &notes)
        };
        line(&mut out, "allow", &list("network.allow", &allow_items(net)));
        let dns = match &net.dns {
            DnsSetting::System => quote("system"),
            DnsSetting::None => quote("none"),
            DnsSetting::Servers(servers) => {
                inline_array(&servers.iter().map(ToString::to_string).collect::<Vec<_>>())
            }
        };
        line(&mut out, "dns", &dns);
        let rate = format!("{{ rate = {} }}", quote(&net.log.rate.to_string()));
        line(&mut out, "log", &rate);
        let sockets = path_items(&net.unix_sockets);
        line(
            &mut out,
            "unix_sockets",
            &list("network.unix_sockets", &sockets),
        );
        line(
            &mut out,
            "listen",
            &list("network.listen", &listen_items(net)),
        );

        out.push_str("\n[filesystem]\n");
        let fs = &self.filesystem;
        let (read_only, read_write) = (path_items(&fs.read_only), path_items(&fs.read_write));
        line(
            &mut out,
            "read_only",
            &list("filesystem.read_only", &read_only),
        );
        line(
            &mut out,
            "read_write",
            &list("filesystem.read_write", &read_write),
        );
        line(
            &mut out,
            "exec",
            &list("filesystem.exec", &path_items(&fs.exec)),
        );

        out.push_str("\n[landlock]\n");
        line(
            &mut out,
            "minimum_abi",
            &self.landlock.minimum_abi.to_string(),
        );

        let limit = |value: Option<u64>| value.map_or_else(|| quote("max"), |n| n.to_string());
        out.push_str("\n[resources]\n");
        line(&mut out, "pids_max", &limit(self.resources.pids_max));
        line(&mut out, "memory_max", &limit(self.resources.memory_max));
        out
    }
}

fn line(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(out, "{key} = {value}");
}

/// A TOML string literal; the `toml` crate does the escaping.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// `network.allow` as printed: IPv4, IPv6, then host names.
pub(crate) fn allow_items(net: &Network) -> Vec<String> {
    (net.allow_v4.iter().map(ToString::to_string))
        .chain(net.allow_v6.iter().map(ToString::to_string))
        .chain(net.hosts.iter().map(ToString::to_string))
        .collect()
}

/// `network.listen` as printed.
pub(crate) fn listen_items(net: &Network) -> Vec<String> {
    (net.listen_v4.iter().map(ToString::to_string))
        .chain(net.listen_v6.iter().map(ToString::to_string))
        .collect()
}

pub(crate) fn path_items(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Short lists without notes on one line, others one item a line, each with its note as a
/// comment.
fn array(items: &[String], notes: &[Option<String>]) -> String {
    if items.len() <= 1 && notes.iter().all(Option::is_none) {
        return inline_array(items);
    }
    let mut out = String::from("[\n");
    for (item, note) in items.iter().zip(notes) {
        match note {
            Some(note) => {
                let _ = writeln!(out, "    {},  # {note}", quote(item));
            }
            None => {
                let _ = writeln!(out, "    {},", quote(item));
            }
        }
    }
    out.push(']');
    out
}

fn inline_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| quote(item)).collect();
    format!("[{}]", quoted.join(", "))
}
