//! From the file as written ([`crate::raw`]) to a checked, normalised
//! [`Policy`], collecting every problem rather than stopping at the first.

use std::net::IpAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use toml::Spanned;

use crate::allow::{self, Entry, Net, Problem, Target};
use crate::error::{Cursor, Doc, PolicyError, Pos};
use crate::locate;
use crate::model::{
    DnsSetting, Filesystem, HostRule, LandlockSettings, LogSettings, NetRule, Network, Policy,
    Rate, RateUnit, Resources, UserSpec,
};
use crate::raw::{
    RawAllow, RawAllowTable, RawDns, RawFilesystem, RawLandlock, RawLimit, RawNetwork, RawPolicy,
    RawPorts, RawResources,
};

/// A valid policy and where its `name` and `user` were written, for the
/// cross-file checks of [`crate::load`].
#[derive(Debug)]
pub(crate) struct Parsed {
    pub policy: Policy,
    pub name_at: Pos,
    pub user_at: Pos,
}

/// Parse and validate one file's text. With `stem_must_match`, an explicit
/// `name` must equal the file stem (policy directories are keyed by file name).
pub(crate) fn parse(
    text: &str,
    source: &Path,
    stem_must_match: bool,
) -> Result<Parsed, Vec<PolicyError>> {
    let doc = Doc { text, path: source };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| vec![locate::toml_error(doc, &e)])?;
    let mut v = Validator::new(doc);
    let (name, name_at) = v.name(raw.name.as_ref(), stem_must_match);
    let user = v.user(&raw.user);
    let directory = raw.directory.as_ref().and_then(|d| v.path(d, "directory"));
    let environment = raw
        .environment
        .as_ref()
        .map(|e| v.environment(e))
        .unwrap_or_default();
    let environment_file = raw
        .environment_file
        .as_ref()
        .and_then(|f| v.absolute_path(f, "environment_file"));
    let mut network = v.network(&raw.network);
    let mut filesystem = v.filesystem(&raw.filesystem);
    let presets = v.presets(&raw.presets, &mut network, &mut filesystem);
    let landlock = v.landlock(&raw.landlock);
    let resources = v.resources(&raw.resources);
    // Checks run field by field; report in the order of the file.
    v.finish()?;
    let mut policy = Policy {
        name,
        user,
        directory,
        environment,
        environment_file,
        network,
        filesystem,
        landlock,
        resources,
        presets,
        source: source.to_path_buf(),
    };
    policy.normalise();
    Ok(Parsed {
        policy,
        name_at,
        user_at: doc.pos(raw.user.span().start),
    })
}

/// Whether `name` is a valid instance name: `[a-z0-9][a-z0-9_-]{0,31}`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Whether `key` is an environment variable name a shell accepts: letters, digits and `_`,
/// not starting with a digit.
pub fn is_variable_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Variables isolate sets for every run, which a policy cannot override.
const SET_BY_ISOLATE: [&str; 4] = ["HOME", "USER", "LOGNAME", "TMPDIR"];

/// Accounts that belong to everyone and no one: the overflow user (UID 65534) under its
/// Debian and Red Hat names.
const SHARED_USERS: [&str; 2] = ["nobody", "nfsnobody"];

/// Whether `user` is a valid Linux user name: `[a-z_][a-z0-9_-]{0,31}`,
/// optionally followed by `$`.
fn is_valid_user(user: &str) -> bool {
    let body = user.strip_suffix('$').unwrap_or(user);
    let mut chars = body.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && body.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

const NAME_HELP: &str = "instance names are 1 to 32 characters of a-z, 0-9, `_` and `-`, \
     starting with a letter or digit";

pub(crate) struct Validator<'a> {
    doc: Doc<'a>,
    errors: Vec<PolicyError>,
    /// Where the last error was: checks go through a list in order, so each error's position
    /// is found from the one before.
    cursor: Cursor,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(doc: Doc<'a>) -> Self {
        Self {
            doc,
            errors: Vec::new(),
            cursor: Cursor::default(),
        }
    }

    /// Every problem found, in the order of the file.
    pub(crate) fn finish(mut self) -> Result<(), Vec<PolicyError>> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors.sort_by_key(|e| (e.line, e.col));
        Err(self.errors)
    }

    pub(crate) fn error(
        &mut self,
        span: &Range<usize>,
        field: &str,
        message: String,
        help: Option<String>,
    ) {
        let pos = self.doc.pos_from(&mut self.cursor, span.start);
        self.errors
            .push(self.doc.error_at(pos, field, message, help));
    }

    fn problem(&mut self, span: &Range<usize>, field: &str, problem: Problem) {
        self.error(span, field, problem.message, problem.help);
    }

    fn name(&mut self, name: Option<&Spanned<String>>, stem_must_match: bool) -> (String, Pos) {
        let stem = self
            .doc
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        let Some(name) = name else {
            // No `name`: the file stem is the name, so it must be a valid one.
            let at = Pos { line: 1, col: 1 };
            let stem = stem.unwrap_or_default();
            if !is_valid_name(&stem) {
                let message = format!(
                    "no `name` is set and the file name `{stem}` is not a valid instance name"
                );
                let help = format!("rename the file or set `name = \"...\"`; {NAME_HELP}");
                self.errors
                    .push(self.doc.error_at(at, "name", message, Some(help)));
            }
            return (stem, at);
        };
        let span = name.span();
        let name = name.get_ref();
        if !is_valid_name(name) {
            let message = format!("`{name}` is not a valid instance name");
            self.error(&span, "name", message, Some(NAME_HELP.into()));
        } else if let Some(stem) = stem.filter(|stem| stem_must_match && stem != name) {
            let message = format!("name `{name}` differs from the file name `{stem}.toml`");
            let help = format!("rename the file to `{name}.toml`, or remove the `name` line");
            self.error(&span, "name", message, Some(help));
        }
        (name.clone(), self.doc.pos(span.start))
    }

    fn user(&mut self, user: &Spanned<String>) -> UserSpec {
        let name = user.get_ref();
        if name == "dynamic" {
            return UserSpec::Dynamic;
        }
        if name == "root" {
            let message = "the instance must not run as root".to_owned();
            let help = "use a dedicated user, or \"dynamic\"".to_owned();
            self.error(&user.span(), "user", message, Some(help));
        } else if SHARED_USERS.contains(&name.as_str()) {
            let message = format!(
                "`{name}` is shared with unrelated services: every process of theirs would be \
                 confined too, and theirs would be ways out for the instance"
            );
            let help = "give the instance a user of its own (e.g. `useradd --system \
                        isolate-NAME`), or \"dynamic\""
                .to_owned();
            self.error(&user.span(), "user", message, Some(help));
        } else if !is_valid_user(name) {
            let message = format!("`{name}` is not a valid user name");
            let help = "user names are a-z, 0-9, `_` and `-` (up to 32, not starting with a \
                        digit or `-`), or \"dynamic\" to allocate one"
                .to_owned();
            self.error(&user.span(), "user", message, Some(help));
        }
        UserSpec::Named(name.clone())
    }

    /// `environment`: names a shell would accept, none that isolate sets itself.
    fn environment(
        &mut self,
        table: &Spanned<std::collections::BTreeMap<String, String>>,
    ) -> std::collections::BTreeMap<String, String> {
        for (key, value) in table.get_ref() {
            let problem = if !is_variable_name(key) {
                Some((
                    format!("`{key}` is not a variable name"),
                    "use letters, digits and `_`, not starting with a digit".to_owned(),
                ))
            } else if SET_BY_ISOLATE.contains(&key.as_str()) {
                Some((
                    format!("`{key}` is set by isolate for every run (the instance's own)"),
                    format!("remove `{key}`; isolate sets HOME, USER, LOGNAME and TMPDIR"),
                ))
            } else if value.contains('\0') {
                Some((
                    format!("the value of `{key}` contains a NUL character"),
                    "remove it".to_owned(),
                ))
            } else {
                None
            };
            if let Some((message, help)) = problem {
                self.error(&table.span(), "environment", message, Some(help));
            }
        }
        table.get_ref().clone()
    }

    /// A path that must be absolute (root reads it, so `~` means nothing).
    fn absolute_path(&mut self, path: &Spanned<String>, field: &str) -> Option<PathBuf> {
        if path.get_ref().starts_with('~') {
            let message = format!("`{}`: must be an absolute path", path.get_ref());
            self.error(
                &path.span(),
                field,
                message,
                Some("write an absolute path".into()),
            );
            return None;
        }
        self.path(path, field)
    }

    /// A filesystem path: absolute, or `~`-relative; no `..`.
    fn path(&mut self, path: &Spanned<String>, field: &str) -> Option<PathBuf> {
        let text = path.get_ref();
        let home_relative = text == "~" || text.starts_with("~/");
        let problem = if text.is_empty() {
            Some(("the path is empty".to_owned(), None))
        } else if text.contains('\0') {
            Some(("the path contains a NUL character".to_owned(), None))
        } else if text.starts_with('~') && !home_relative {
            let message = format!("`{text}`: only the instance user's home (`~/`) can be named");
            Some((message, Some("write ~/... or an absolute path".to_owned())))
        } else if !text.starts_with('/') && !home_relative {
            let message = format!("`{text}` is a relative path");
            let help = format!(
                "write an absolute path (/{text}) or one in the instance user's home (~/{text})"
            );
            Some((message, Some(help)))
        } else if Path::new(text)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            let message = format!("`{text}` contains a `..` component");
            Some((message, Some("write the path without `..`".to_owned())))
        } else {
            None
        };
        if let Some((message, help)) = problem {
            self.error(&path.span(), field, message, help);
            return None;
        }
        // Drops `.` components and trailing slashes, so duplicates compare equal.
        Some(Path::new(text).components().collect())
    }

    fn paths(&mut self, paths: &[Spanned<String>], field: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            out.extend(self.path(path, &format!("{field}[{i}]")));
        }
        out
    }

    pub(crate) fn network(&mut self, raw: &RawNetwork) -> Network {
        let mut network = Network::default();
        for (i, item) in raw.allow.iter().enumerate() {
            let field = format!("network.allow[{i}]");
            let entry = match item.get_ref() {
                RawAllow::Text(text) => allow::parse_entry(text)
                    .map_err(|problem| self.problem(&item.span(), &field, problem))
                    .ok(),
                RawAllow::Table(table) => self.allow_table(table, &item.span(), &field),
            };
            let Some(Entry {
                target,
                ports,
                protocol,
            }) = entry
            else {
                continue;
            };
            match target {
                Target::V4(net) => network.allow_v4.push(NetRule {
                    net,
                    ports,
                    protocol,
                }),
                Target::V6(net) => network.allow_v6.push(NetRule {
                    net,
                    ports,
                    protocol,
                }),
                Target::Host(pattern) => network.hosts.push(HostRule {
                    pattern,
                    ports,
                    protocol,
                }),
            }
        }
        if let Some(dns) = &raw.dns {
            network.dns = self.dns(dns);
        }
        if let Some(rate) = raw.log.as_ref().and_then(|log| log.rate.as_ref()) {
            network.log = LogSettings {
                rate: self.rate(rate),
            };
        }
        for (i, item) in raw.listen.iter().enumerate() {
            self.listen(item, &format!("network.listen[{i}]"), &mut network);
        }
        for (i, socket) in raw.unix_sockets.iter().enumerate() {
            network
                .unix_sockets
                .extend(self.unix_socket(socket, &format!("network.unix_sockets[{i}]")));
        }
        network
    }

    /// One `network.listen` entry: a local address (not a name: the instance binds
    /// addresses), where the unspecified address means every local address.
    fn listen(&mut self, item: &Spanned<String>, field: &str, network: &mut Network) {
        let entry = match allow::parse_entry(item.get_ref()) {
            Ok(entry) => entry,
            Err(problem) => {
                self.problem(&item.span(), field, problem);
                return;
            }
        };
        let Entry {
            target,
            ports,
            protocol,
        } = entry;
        match target {
            Target::V4(net) => {
                let net = if net.addr().is_unspecified() {
                    Ipv4Net::default()
                } else {
                    net
                };
                network.listen_v4.push(NetRule {
                    net,
                    ports,
                    protocol,
                });
            }
            Target::V6(net) => {
                let net = if net.addr().is_unspecified() {
                    Ipv6Net::default()
                } else {
                    net
                };
                network.listen_v6.push(NetRule {
                    net,
                    ports,
                    protocol,
                });
            }
            Target::Host(name) => {
                let message = format!("`{name}` is a name; listen entries are local addresses");
                let help = "write the address the service binds, e.g. \"127.0.0.1:8787/tcp\", \
                            \"[::1]:8787/tcp\" or \"0.0.0.0:8787/tcp\" for every IPv4 address"
                    .to_owned();
                self.error(&item.span(), field, message, Some(help));
            }
        }
    }

    fn allow_table(
        &mut self,
        table: &RawAllowTable,
        span: &Range<usize>,
        field: &str,
    ) -> Option<Entry> {
        let target = match (&table.cidr, &table.host) {
            (Some(cidr), None) => match allow::parse_net(cidr.get_ref()) {
                Ok(Net::V4(net)) => Some(Target::V4(net)),
                Ok(Net::V6(net)) => Some(Target::V6(net)),
                Err(problem) => {
                    self.problem(&cidr.span(), &format!("{field}.cidr"), problem);
                    None
                }
            },
            (None, Some(host)) => allow::parse_host(host.get_ref())
                .map(Target::Host)
                .map_err(|problem| self.problem(&host.span(), &format!("{field}.host"), problem))
                .ok(),
            (Some(_), Some(host)) => {
                let message = "an entry has either `cidr` or `host`, not both".to_owned();
                let help = "split it into two entries".to_owned();
                self.error(&host.span(), &format!("{field}.host"), message, Some(help));
                None
            }
            (None, None) => {
                let message = "the entry has neither `cidr` nor `host`".to_owned();
                let help = "add cidr = \"10.0.0.0/8\" or host = \"api.example.com\"".to_owned();
                self.error(span, field, message, Some(help));
                None
            }
        };
        let ports = match &table.ports {
            None => Ok(None),
            Some(ports) => match ports.get_ref() {
                RawPorts::Number(n) => allow::port_number(*n),
                RawPorts::Text(text) => allow::parse_ports(text),
            }
            .map(Some)
            .map_err(|problem| self.problem(&ports.span(), &format!("{field}.ports"), problem)),
        };
        let protocol = match &table.protocol {
            None => Ok(crate::model::Protocol::Any),
            Some(protocol) => allow::parse_protocol(protocol.get_ref()).map_err(|problem| {
                self.problem(&protocol.span(), &format!("{field}.protocol"), problem);
            }),
        };
        Some(Entry {
            target: target?,
            ports: ports.ok()?,
            protocol: protocol.ok()?,
        })
    }

    fn dns(&mut self, dns: &Spanned<RawDns>) -> DnsSetting {
        match dns.get_ref() {
            RawDns::Word(word) if word == "system" => DnsSetting::System,
            RawDns::Word(word) if word == "none" => DnsSetting::None,
            RawDns::Word(word) => {
                let message = format!("unknown dns setting `{word}`");
                let help = "use \"system\", \"none\" or a list of resolver addresses such as \
                            [\"10.0.0.53\"]"
                    .to_owned();
                self.error(&dns.span(), "network.dns", message, Some(help));
                DnsSetting::System
            }
            RawDns::Servers(servers) if servers.is_empty() => {
                let message = "the resolver list is empty".to_owned();
                let help = "use dns = \"none\" to allow no resolver".to_owned();
                self.error(&dns.span(), "network.dns", message, Some(help));
                DnsSetting::None
            }
            RawDns::Servers(servers) => {
                let mut out = Vec::new();
                for (i, server) in servers.iter().enumerate() {
                    if let Ok(addr) = server.get_ref().parse::<IpAddr>() {
                        // An IPv4-mapped address is the IPv4 resolver.
                        out.push(addr.to_canonical());
                    } else {
                        let message = format!("`{}` is not an IP address", server.get_ref());
                        let help = "resolvers are given by address (a name could not be \
                                    looked up without one)"
                            .to_owned();
                        self.error(
                            &server.span(),
                            &format!("network.dns[{i}]"),
                            message,
                            Some(help),
                        );
                    }
                }
                DnsSetting::Servers(out)
            }
        }
    }

    fn rate(&mut self, rate: &Spanned<String>) -> Rate {
        let text = rate.get_ref();
        let help = "write COUNT/second, COUNT/minute or COUNT/hour with COUNT at least 1, \
                    e.g. \"10/second\"";
        let parsed = text.split_once('/').and_then(|(count, unit)| {
            let per = match unit {
                "second" => RateUnit::Second,
                "minute" => RateUnit::Minute,
                "hour" => RateUnit::Hour,
                _ => return None,
            };
            let count = count.parse::<u32>().ok().filter(|&c| c >= 1)?;
            Some(Rate { count, per })
        });
        parsed.unwrap_or_else(|| {
            let message = format!("`{text}` is not a rate");
            self.error(&rate.span(), "network.log.rate", message, Some(help.into()));
            Rate::default()
        })
    }

    /// A pathname unix socket: absolute (the kernel compares `sun_path` as
    /// given) and short enough for `sun_path`.
    fn unix_socket(&mut self, socket: &Spanned<String>, field: &str) -> Option<PathBuf> {
        let text = socket.get_ref();
        let problem = if !text.starts_with('/') {
            let message = format!("`{text}` is not an absolute path");
            let help = "write the socket's absolute path, e.g. \"/run/postgresql/.s.PGSQL.5432\"";
            Some((message, help))
        } else if text.len() > 107 || text.contains('\0') {
            let message = format!("`{text}` cannot be a unix socket path");
            Some((message, "socket paths are at most 107 bytes, without NUL"))
        } else if Path::new(text)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            let message = format!("`{text}` contains a `..` component");
            Some((message, "write the path without `..`"))
        } else {
            None
        };
        if let Some((message, help)) = problem {
            self.error(&socket.span(), field, message, Some(help.to_owned()));
            return None;
        }
        Some(Path::new(text).components().collect())
    }

    /// `presets`: each name a shipped preset, listed once, at most one agent; what each grants
    /// is added to the policy's own lists. Returns the names, in order.
    fn presets(
        &mut self,
        names: &[Spanned<String>],
        network: &mut Network,
        filesystem: &mut Filesystem,
    ) -> Vec<String> {
        let mut merged: Vec<String> = Vec::new();
        let mut agent: Option<&str> = None;
        for (i, item) in names.iter().enumerate() {
            let field = format!("presets[{i}]");
            let name = item.get_ref();
            let Some(preset) = crate::presets::preset(name) else {
                let known: Vec<&str> = crate::presets::PRESETS.iter().map(|p| p.name).collect();
                let help = format!(
                    "use one of {} (`isolate presets` says what each adds)",
                    known.join(", ")
                );
                self.error(
                    &item.span(),
                    &field,
                    format!("no preset is called `{name}`"),
                    Some(help),
                );
                continue;
            };
            if merged.iter().any(|m| m == name) {
                let help = "list each preset once".to_owned();
                self.error(
                    &item.span(),
                    &field,
                    format!("`{name}` is listed twice"),
                    Some(help),
                );
                continue;
            }
            if preset.kind == crate::presets::PresetKind::Agent {
                if let Some(first) = agent {
                    let message = format!("`{first}` and `{name}` are both agents");
                    let help = "an instance runs one agent: keep one agent preset, and give                                 each agent an instance of its own"
                        .to_owned();
                    self.error(&item.span(), &field, message, Some(help));
                    continue;
                }
                agent = Some(preset.name);
            }
            match preset.grants() {
                Ok(grants) => {
                    let net = grants.network;
                    network.allow_v4.extend(net.allow_v4);
                    network.allow_v6.extend(net.allow_v6);
                    network.hosts.extend(net.hosts);
                    network.unix_sockets.extend(net.unix_sockets);
                    network.listen_v4.extend(net.listen_v4);
                    network.listen_v6.extend(net.listen_v6);
                    filesystem.read_only.extend(grants.filesystem.read_only);
                    filesystem.read_write.extend(grants.filesystem.read_write);
                    filesystem.exec.extend(grants.filesystem.exec);
                }
                Err(errors) => self.errors.extend(errors),
            }
            merged.push(name.clone());
        }
        merged
    }

    pub(crate) fn filesystem(&mut self, raw: &RawFilesystem) -> Filesystem {
        Filesystem {
            read_only: self.paths(&raw.read_only, "filesystem.read_only"),
            read_write: self.paths(&raw.read_write, "filesystem.read_write"),
            exec: self.paths(&raw.exec, "filesystem.exec"),
        }
    }

    fn resources(&mut self, raw: &RawResources) -> Resources {
        let mut resources = Resources::default();
        if let Some(pids) = &raw.pids_max {
            let parsed = match pids.get_ref() {
                RawLimit::Text(word) if word == "max" => Ok(None),
                RawLimit::Number(n @ 1..=4_194_304) => Ok(Some(n.cast_unsigned())),
                RawLimit::Number(n) => Err(format!("pids_max {n} is out of range")),
                RawLimit::Text(text) => Err(format!("`{text}` is not a number of tasks")),
            };
            match parsed {
                Ok(limit) => resources.pids_max = limit,
                Err(message) => {
                    let help = format!(
                        "give the most tasks the instance may run at once, 1 to 4194304 (default \
                         {}), or \"max\" for no limit",
                        Resources::DEFAULT_PIDS_MAX
                    );
                    self.error(&pids.span(), "resources.pids_max", message, Some(help));
                }
            }
        }
        if let Some(memory) = &raw.memory_max {
            match memory_bytes(memory.get_ref()) {
                Ok(limit) => resources.memory_max = limit,
                Err(message) => {
                    let help = "give bytes (at least 1M) with an optional K, M, G or T suffix, \
                                e.g. \"4G\", or \"max\" for no limit"
                        .to_owned();
                    self.error(&memory.span(), "resources.memory_max", message, Some(help));
                }
            }
        }
        resources
    }

    fn landlock(&mut self, raw: &RawLandlock) -> LandlockSettings {
        let Some(abi) = &raw.minimum_abi else {
            return LandlockSettings::default();
        };
        if let Ok(minimum_abi @ 1..=7) = u8::try_from(*abi.get_ref()) {
            return LandlockSettings { minimum_abi };
        }
        let message = format!("minimum_abi {} is out of range", abi.get_ref());
        let help = "Landlock ABI versions run from 1 to 7".to_owned();
        self.error(&abi.span(), "landlock.minimum_abi", message, Some(help));
        LandlockSettings::default()
    }
}

/// `memory_max` in bytes (`None`: `"max"`), or what is wrong with it.
fn memory_bytes(raw: &RawLimit) -> Result<Option<u64>, String> {
    const MINIMUM: u64 = 1 << 20;
    let bytes = match raw {
        RawLimit::Text(word) if word == "max" => return Ok(None),
        RawLimit::Number(n) => {
            u64::try_from(*n).map_err(|_| format!("memory_max {n} is negative"))?
        }
        RawLimit::Text(text) => {
            let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
                Some(at) => text.split_at(at),
                None => (text.as_str(), ""),
            };
            let shift = match unit {
                "" => 0,
                "K" | "k" => 10,
                "M" | "m" => 20,
                "G" | "g" => 30,
                "T" | "t" => 40,
                _ => return Err(format!("`{text}` is not a size")),
            };
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(1 << shift))
                .ok_or_else(|| format!("`{text}` is not a size"))?
        }
    };
    if bytes < MINIMUM {
        return Err(format!("memory_max {bytes} bytes is below 1M"));
    }
    Ok(Some(bytes))
}
