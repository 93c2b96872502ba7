//! The Landlock plan of an instance: which paths get which access, which TCP ports, which
//! scopes — computed from its validated policy, without touching the kernel.

use std::fmt;
use std::path::{Path, PathBuf};

use isolate_policy::{Policy, PortRange, expand_home};

use super::abi::Feature;
use super::error::LandlockError;
use super::{baseline, ports};

/// What a path rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAccess {
    /// Read files, list directories.
    ReadOnly,
    /// Everything but execute: read, write, create, remove, rename, truncate, device ioctl.
    ReadWrite,
    /// Read and execute.
    Exec,
}

/// Why a path is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Listed in the policy's `[filesystem]`.
    Policy,
    /// The policy's `directory`, added read-only (see [`LandlockPlan::from_policy`]).
    InstanceDirectory,
    /// Needed by practically any process (see the `baseline` module).
    Baseline,
}

/// One path of the plan: the rule covers it and everything beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub origin: Origin,
}

/// The Landlock ruleset an instance will get. Build it with [`LandlockPlan::from_policy`],
/// turn it into a kernel ruleset with [`LandlockPlan::prepare`]; `Display` lists every rule
/// (`isolate exec --dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockPlan {
    /// The instance name, for messages.
    pub instance: String,
    /// The policy file, for messages.
    pub policy_file: PathBuf,
    pub read_only: Vec<PathRule>,
    pub read_write: Vec<PathRule>,
    pub exec: Vec<PathRule>,
    /// The instance's user. When set, rule paths are resolved following only links it could
    /// not have planted (see `trusted_path`); `None` follows them as they are.
    pub writer: Option<crate::trusted_path::Writer>,
    /// The only TCP ports `connect` may reach (sorted, merged); `None`: not restricted.
    pub tcp_connect_ports: Option<Vec<PortRange>>,
    /// The only TCP ports `bind` may use; `None` (the default): not restricted, since a
    /// server such as `opencode serve` binds a port its (egress) policy does not name.
    pub tcp_bind_ports: Option<Vec<PortRange>>,
    /// Abstract unix sockets created outside the sandbox are out of reach.
    pub scope_abstract_unix_sockets: bool,
    /// Signals to processes outside the sandbox are refused.
    pub scope_signals: bool,
    /// Write denials to the audit log (also after `exec`).
    pub log_denials: bool,
    /// Refuse to run on a kernel whose Landlock ABI is below this.
    pub minimum_abi: u8,
    /// Decisions worth telling the user (shown by `Display`).
    pub notes: Vec<String>,
}

impl LandlockPlan {
    /// The plan for `policy`, with `~/` expanded against `home` (the instance user's).
    ///
    /// Besides the policy's `[filesystem]` lists it holds:
    /// - the instance `directory`, read-only, unless a listed path already covers it (list it
    ///   under `read_write` or `exec` for more); it must exist;
    /// - the small [baseline](super::baseline) of system paths, unless already covered;
    /// - TCP connect ports: the union of the ports of every rule that allows TCP, or `None`
    ///   when one of them allows every port or there are more than
    ///   [`ports::MAX_PORT_RULES`] (the network layers filter destinations either way);
    /// - TCP bind ports: those `network.listen` lists for TCP, and 0 (ephemeral), or `None`
    ///   as for connect;
    /// - abstract unix socket and signal scoping, and denial logging, all on.
    ///
    /// Listed paths that do not exist are not an error here: [`LandlockPlan::prepare`] skips
    /// them with a warning.
    pub fn from_policy(policy: &Policy, home: &Path) -> Result<Self, LandlockError> {
        let listed = |paths: &[PathBuf]| -> Vec<PathRule> {
            let mut rules: Vec<PathRule> = Vec::with_capacity(paths.len());
            for path in paths.iter().map(|p| expand_home(p, home)) {
                if !rules.iter().any(|r| r.path == path) {
                    rules.push(PathRule {
                        path,
                        origin: Origin::Policy,
                    });
                }
            }
            rules
        };
        let mut plan = Self {
            instance: policy.name.clone(),
            policy_file: policy.source.clone(),
            read_only: listed(&policy.filesystem.read_only),
            read_write: listed(&policy.filesystem.read_write),
            exec: listed(&policy.filesystem.exec),
            writer: None,
            tcp_connect_ports: None,
            tcp_bind_ports: None,
            scope_abstract_unix_sockets: true,
            scope_signals: true,
            log_denials: true,
            minimum_abi: policy.landlock.minimum_abi,
            notes: Vec::new(),
        };
        if let Some(directory) = &policy.directory {
            let directory = expand_home(directory, home);
            if !directory.is_dir() {
                return Err(LandlockError::MissingDirectory {
                    instance: plan.instance,
                    file: plan.policy_file,
                    directory,
                });
            }
            plan.add_if_uncovered(PathAccess::ReadOnly, &directory, Origin::InstanceDirectory);
        }
        for (access, paths) in [
            (PathAccess::ReadOnly, baseline::READ_ONLY),
            (PathAccess::ReadWrite, baseline::READ_WRITE),
            (PathAccess::Exec, baseline::EXEC),
        ] {
            for path in paths {
                plan.add_if_uncovered(access, Path::new(path), Origin::Baseline);
            }
        }
        match ports::tcp_connect_ports(&policy.network) {
            Ok(ranges) => plan.tcp_connect_ports = Some(ranges),
            Err(why) => {
                if matches!(why, ports::Unrestricted::TooManyPorts(_)) {
                    tracing::warn!(instance = plan.instance, "Landlock: {why}");
                }
                plan.notes.push(format!(
                    "TCP connect is not restricted by Landlock: {why} (the network layers still filter destinations)"
                ));
            }
        }
        match ports::tcp_bind_ports(&policy.network) {
            Ok(ranges) => plan.tcp_bind_ports = Some(ranges),
            Err(why) => plan.notes.push(format!(
                "TCP bind is not restricted by Landlock: {why} (the eBPF layer still judges addresses)"
            )),
        }
        Ok(plan)
    }

    /// The rules granting `access`.
    pub fn rules(&self, access: PathAccess) -> &[PathRule] {
        match access {
            PathAccess::ReadOnly => &self.read_only,
            PathAccess::ReadWrite => &self.read_write,
            PathAccess::Exec => &self.exec,
        }
    }

    /// The Landlock features this plan uses, in ABI order.
    pub fn features(&self) -> Vec<Feature> {
        let mut features = vec![Feature::FileAccess, Feature::Refer, Feature::Truncate];
        if self.tcp_connect_ports.is_some() {
            features.push(Feature::TcpConnectPorts);
        }
        if self.tcp_bind_ports.is_some() {
            features.push(Feature::TcpBindPorts);
        }
        features.push(Feature::IoctlDev);
        if self.scope_abstract_unix_sockets {
            features.push(Feature::ScopeAbstractUnixSockets);
        }
        if self.scope_signals {
            features.push(Feature::ScopeSignals);
        }
        if self.log_denials {
            features.push(Feature::DenialLogging);
        }
        features
    }

    /// Adds `path` unless a rule of the plan already grants at least `access` on it or on a
    /// parent (compared as written: a symlinked spelling counts as another path).
    fn add_if_uncovered(&mut self, access: PathAccess, path: &Path, origin: Origin) {
        let granting: &[PathAccess] = match access {
            PathAccess::ReadOnly => &[
                PathAccess::ReadOnly,
                PathAccess::ReadWrite,
                PathAccess::Exec,
            ],
            PathAccess::ReadWrite => &[PathAccess::ReadWrite],
            PathAccess::Exec => &[PathAccess::Exec],
        };
        let covered = granting
            .iter()
            .any(|a| self.rules(*a).iter().any(|r| path.starts_with(&r.path)));
        if !covered {
            let rules = match access {
                PathAccess::ReadOnly => &mut self.read_only,
                PathAccess::ReadWrite => &mut self.read_write,
                PathAccess::Exec => &mut self.exec,
            };
            rules.push(PathRule {
                path: path.to_path_buf(),
                origin,
            });
        }
    }
}

impl PathAccess {
    /// The list's name and what it grants.
    pub fn describe(self) -> &'static str {
        match self {
            PathAccess::ReadOnly => "read-only (read files, list directories)",
            PathAccess::ReadWrite => {
                "read-write (read, write, create, remove, rename, truncate, device ioctl)"
            }
            PathAccess::Exec => "exec (read, execute)",
        }
    }
}

impl fmt::Display for LandlockPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Landlock plan of instance {} (minimum ABI {}):",
            self.instance, self.minimum_abi
        )?;
        for access in [
            PathAccess::ReadOnly,
            PathAccess::ReadWrite,
            PathAccess::Exec,
        ] {
            writeln!(f, "  {}:", access.describe())?;
            let rules = self.rules(access);
            if rules.is_empty() {
                writeln!(f, "    (none)")?;
            }
            for rule in rules {
                let tag = match rule.origin {
                    Origin::Policy => "",
                    Origin::InstanceDirectory => "  [instance directory]",
                    Origin::Baseline => "  [baseline]",
                };
                writeln!(f, "    {}{tag}", rule.path.display())?;
            }
        }
        writeln!(
            f,
            "  TCP connect: {}",
            ports_text(self.tcp_connect_ports.as_deref())
        )?;
        writeln!(
            f,
            "  TCP bind: {}",
            ports_text(self.tcp_bind_ports.as_deref())
        )?;
        let on_off = |on: bool, text: &'static str| if on { text } else { "not scoped" };
        writeln!(
            f,
            "  abstract unix sockets: {}",
            on_off(
                self.scope_abstract_unix_sockets,
                "only those created inside"
            )
        )?;
        writeln!(
            f,
            "  signals: {}",
            on_off(self.scope_signals, "only to processes inside")
        )?;
        writeln!(
            f,
            "  denial logging: {}",
            if self.log_denials {
                "on (kernel audit log)"
            } else {
                "off"
            }
        )?;
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

fn ports_text(ranges: Option<&[PortRange]>) -> String {
    match ranges {
        None => "any port".to_owned(),
        Some([]) => "no port".to_owned(),
        Some(ranges) => {
            let list: Vec<String> = ranges
                .iter()
                .map(|range| match range.first {
                    0 if range.last == 0 => "0 (ephemeral)".to_owned(),
                    0 => format!("0 (ephemeral), 1-{}", range.last),
                    _ => range.to_string(),
                })
                .collect();
            format!("ports {}", list.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Policy {
        isolate_policy::parse_str(
            &format!("user = \"dynamic\"\n{extra}"),
            Path::new("/etc/isolate/instances/demo.toml"),
        )
        .unwrap()
    }

    fn paths(rules: &[PathRule], origin: Origin) -> Vec<&Path> {
        rules
            .iter()
            .filter(|r| r.origin == origin)
            .map(|r| r.path.as_path())
            .collect()
    }

    #[test]
    fn home_is_expanded_and_duplicates_dropped() {
        let policy = policy(
            "[filesystem]\nread_write = [\"~/.local/share/opencode\", \"~\", \"/srv/a\", \"/srv/a\"]\nread_only = [\"/usr\"]\nexec = [\"~/bin\"]\n",
        );
        let plan = LandlockPlan::from_policy(&policy, Path::new("/home/agent")).unwrap();
        assert_eq!(
            paths(&plan.read_write, Origin::Policy),
            [
                Path::new("/home/agent/.local/share/opencode"),
                Path::new("/home/agent"),
                Path::new("/srv/a"),
            ]
        );
        assert_eq!(paths(&plan.read_only, Origin::Policy), [Path::new("/usr")]);
        assert_eq!(
            paths(&plan.exec, Origin::Policy),
            [Path::new("/home/agent/bin")]
        );
        assert_eq!(plan.instance, "demo");
        assert_eq!(plan.minimum_abi, 1);
    }

    #[test]
    fn instance_directory_is_read_only_unless_covered() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let bare = policy(&format!("directory = \"{d}\"\n"));
        let plan = LandlockPlan::from_policy(&bare, Path::new("/home/a")).unwrap();
        assert_eq!(
            paths(&plan.read_only, Origin::InstanceDirectory),
            [dir.path()]
        );

        let parent = dir.path().parent().unwrap().display();
        let covered = policy(&format!(
            "directory = \"{d}\"\n[filesystem]\nread_write = [\"{parent}\"]\n"
        ));
        let plan = LandlockPlan::from_policy(&covered, Path::new("/home/a")).unwrap();
        assert!(paths(&plan.read_only, Origin::InstanceDirectory).is_empty());
    }

    #[test]
    fn a_missing_instance_directory_is_an_error_naming_it() {
        let policy = policy("directory = \"~/no-such-project\"\n");
        let err = LandlockPlan::from_policy(&policy, Path::new("/nonexistent-home")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent-home/no-such-project") && text.contains("demo.toml"),
            "{text}"
        );
    }

    #[test]
    fn baseline_is_added_unless_the_policy_covers_it() {
        let plan = LandlockPlan::from_policy(&policy(""), Path::new("/h")).unwrap();
        assert!(paths(&plan.read_write, Origin::Baseline).contains(&Path::new("/dev/null")));
        assert!(paths(&plan.read_only, Origin::Baseline).contains(&Path::new("/usr/lib")));
        assert!(paths(&plan.read_only, Origin::Baseline).contains(&Path::new("/proc")));

        let usr = policy("[filesystem]\nread_only = [\"/usr\"]\nread_write = [\"/dev\"]\n");
        let plan = LandlockPlan::from_policy(&usr, Path::new("/h")).unwrap();
        assert!(!paths(&plan.read_only, Origin::Baseline).contains(&Path::new("/usr/lib")));
        assert!(paths(&plan.read_write, Origin::Baseline).is_empty());
        // Read access under /dev does not cover exec of the loader.
        assert_eq!(
            paths(&plan.exec, Origin::Baseline).len(),
            baseline::EXEC.len()
        );
    }

    #[test]
    fn tcp_ports_follow_the_network_policy() {
        let ports = policy(
            "[network]\ndns = \"none\"\nallow = [\"10.0.0.0/8:443\", \"api.example.com:8000-8002/tcp\"]\n",
        );
        let plan = LandlockPlan::from_policy(&ports, Path::new("/h")).unwrap();
        assert_eq!(
            plan.tcp_connect_ports,
            Some(vec![
                PortRange::single(443),
                PortRange {
                    first: 8000,
                    last: 8002
                }
            ])
        );
        assert!(plan.features().contains(&Feature::TcpConnectPorts));
        assert!(plan.notes.is_empty());

        let all = policy("[network]\nallow = [\"10.0.0.0/8\"]\n");
        let plan = LandlockPlan::from_policy(&all, Path::new("/h")).unwrap();
        assert_eq!(plan.tcp_connect_ports, None);
        assert!(!plan.features().contains(&Feature::TcpConnectPorts));
        assert!(plan.notes[0].contains("10.0.0.0/8"), "{:?}", plan.notes);

        let many = policy("[network]\nallow = [\"10.0.0.0/8:1000-3000/tcp\"]\n");
        let plan = LandlockPlan::from_policy(&many, Path::new("/h")).unwrap();
        assert_eq!(plan.tcp_connect_ports, None);
        assert!(plan.notes[0].contains("2002 TCP ports"), "{:?}", plan.notes);
    }

    #[test]
    fn display_lists_every_rule_with_its_origin() {
        let mut plan = LandlockPlan::from_policy(&policy(""), Path::new("/h")).unwrap();
        plan.tcp_connect_ports = Some(vec![PortRange::single(53), PortRange::single(443)]);
        let text = plan.to_string();
        assert!(text.contains("/dev/null  [baseline]"), "{text}");
        assert!(text.contains("TCP connect: ports 53, 443"), "{text}");
        assert!(text.contains("TCP bind: ports 0 (ephemeral)\n"), "{text}");
        plan.tcp_bind_ports = None;
        assert!(plan.to_string().contains("TCP bind: any port"));
        assert!(text.contains("signals: only to processes inside"), "{text}");
    }
}
