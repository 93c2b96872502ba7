//! Printing a policy back in the policy-file format (what `isolate check`
//! shows). Every setting is written out, defaults included, so the output is
//! the effective policy; parsing it gives the same [`Policy`] back.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::model::{DnsSetting, Policy};

impl Policy {
    /// The normalised policy as TOML, in the format of the policy files.
    /// `source` is not part of it.
    pub fn to_toml(&self) -> String {
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

        out.push_str("\n[network]\n");
        let allow: Vec<String> = (net.allow_v4.iter().map(ToString::to_string))
            .chain(net.allow_v6.iter().map(ToString::to_string))
            .chain(net.hosts.iter().map(ToString::to_string))
            .collect();
        line(&mut out, "allow", &array(&allow));
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
        line(&mut out, "unix_sockets", &paths(&net.unix_sockets));
        let listen: Vec<String> = (net.listen_v4.iter().map(ToString::to_string))
            .chain(net.listen_v6.iter().map(ToString::to_string))
            .collect();
        line(&mut out, "listen", &array(&listen));

        out.push_str("\n[filesystem]\n");
        line(&mut out, "read_only", &paths(&self.filesystem.read_only));
        line(&mut out, "read_write", &paths(&self.filesystem.read_write));
        line(&mut out, "exec", &paths(&self.filesystem.exec));

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

fn paths(paths: &[PathBuf]) -> String {
    let items: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    array(&items)
}

/// Short lists on one line, longer ones one item a line.
fn array(items: &[String]) -> String {
    if items.len() <= 1 {
        return inline_array(items);
    }
    let mut out = String::from("[\n");
    for item in items {
        let _ = writeln!(out, "    {},", quote(item));
    }
    out.push(']');
    out
}

fn inline_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| quote(item)).collect();
    format!("[{}]", quoted.join(", "))
}
