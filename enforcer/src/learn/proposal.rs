//! What a learning run saw, turned into policy entries: each attempt the policy would have
//! refused becomes the entry that allows it (the same fix a refusal record names), each file
//! access outside the policy's Landlock rules a path rule, folded to directories. Every entry
//! carries a note saying when, by which program and doing what it was first seen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use isolate_policy::{Addition, ListField};

use super::files::{Access, FileAccess};
use crate::audit::Fix;
use crate::bpf::{BlockedAttempt, UnixPeer};
use crate::landlock::LandlockPlan;

/// Files of one directory that make its folding worth it: from this many files (or
/// directories) seen in one directory, the directory is proposed rather than each of them.
const FOLD_SIBLINGS: usize = 3;

/// A directory this shallow (`/`, `/etc`, `/usr`) is never proposed for what was seen below
/// it: the files themselves are.
const MIN_FOLD_DEPTH: usize = 2;

/// The first sighting of an entry, and how often it was seen.
#[derive(Debug, Clone)]
struct Sighting {
    at: SystemTime,
    program: String,
    /// What was done, for the note: `connect 203.0.113.7:443/tcp`, `read /etc/hostname`.
    what: String,
    times: u64,
}

impl Sighting {
    fn new(program: &str, what: String) -> Self {
        Self {
            at: SystemTime::now(),
            program: if program.is_empty() {
                "a process".to_owned()
            } else {
                program.to_owned()
            },
            what,
            times: 1,
        }
    }

    fn note(&self) -> String {
        let more = match self.times {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        format!(
            "learned {}: {} {}{more}",
            humantime::format_rfc3339_seconds(self.at),
            self.program,
            self.what
        )
    }
}

/// The paths a plan's Landlock rules grant, canonical, by access.
#[derive(Debug, Default)]
struct Granted {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    exec: Vec<PathBuf>,
}

impl Granted {
    fn of(plan: &LandlockPlan) -> Self {
        let canonical = |rules: &[crate::landlock::PathRule]| -> Vec<PathBuf> {
            rules
                .iter()
                .filter_map(|rule| std::fs::canonicalize(&rule.path).ok())
                .collect()
        };
        let (read_only, write, exec) = (
            canonical(&plan.read_only),
            canonical(&plan.read_write),
            canonical(&plan.exec),
        );
        let read = read_only
            .into_iter()
            .chain(write.iter().cloned())
            .chain(exec.iter().cloned())
            .collect();
        Self { read, write, exec }
    }

    fn grants(&self, access: Access, path: &Path) -> bool {
        let trees = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
            Access::Exec => &self.exec,
        };
        trees.iter().any(|tree| path.starts_with(tree))
    }
}

/// Everything a learning run saw beyond its policy.
#[derive(Debug)]
pub struct Proposal {
    policy_file: PathBuf,
    home: PathBuf,
    granted: Granted,
    network: BTreeMap<(ListField, String), Sighting>,
    /// Names looked up that the policy does not list.
    names: BTreeMap<String, Sighting>,
    files: BTreeMap<(Access, PathBuf), Sighting>,
    /// The program each process last executed, by PID: a short-lived process is often gone
    /// before its name can be read, but its exec was seen first.
    programs: BTreeMap<i32, String>,
    /// What is on disk at a path (`OnDisk::of`; tests put a disk of their own).
    on_disk: fn(&Path) -> OnDisk,
    /// Refusals no policy entry can allow, by what the fix says.
    unlearnable: BTreeMap<String, Sighting>,
}

impl Proposal {
    /// An empty proposal for the run planned with `plan` (its Landlock rules say which file
    /// accesses are granted already), the instance's home being `home`.
    pub fn new(policy_file: &Path, plan: &LandlockPlan, home: &Path) -> Self {
        Self {
            policy_file: policy_file.to_path_buf(),
            home: home.to_path_buf(),
            granted: Granted::of(plan),
            network: BTreeMap::new(),
            names: BTreeMap::new(),
            files: BTreeMap::new(),
            programs: BTreeMap::new(),
            on_disk: OnDisk::of,
            unlearnable: BTreeMap::new(),
        }
    }

    /// Takes in an attempt the network layers (or the resolver) would have refused. Returns
    /// the entry it adds when it is new, for the run to say so as it happens.
    pub fn attempt(&mut self, attempt: &BlockedAttempt) -> Option<String> {
        let what = describe(attempt);
        let (key, map) = match (attempt.hook, Fix::of(attempt, &self.policy_file)) {
            ("dns", _) => (attempt.host.clone().unwrap_or_default(), &mut self.names),
            (_, Fix::Add { entry, field, .. }) => {
                let field = if field == "network.listen" {
                    ListField::Listen
                } else {
                    ListField::Allow
                };
                return seen(
                    &mut self.network,
                    (field, entry.clone()),
                    &attempt.comm,
                    what,
                )
                .then(|| format!("{entry} to {}", field.as_str()));
            }
            (_, Fix::UnixSocket { .. }) => match attempt.unix.and_then(unix_socket_path) {
                Some(path) => {
                    let entry = path.to_string_lossy().into_owned();
                    return seen(
                        &mut self.network,
                        (ListField::UnixSockets, entry.clone()),
                        &attempt.comm,
                        what,
                    )
                    .then(|| format!("{entry} to network.unix_sockets"));
                }
                None => (
                    format!("{what}: its path was not found"),
                    &mut self.unlearnable,
                ),
            },
            (_, fix @ Fix::None { .. }) => (format!("{what}: {fix}"), &mut self.unlearnable),
        };
        seen(map, key.clone(), &attempt.comm, what).then_some(key)
    }

    /// Takes in a file access; accesses the plan grants already are left out.
    pub fn file(&mut self, access: &FileAccess) {
        // The kernel opens a program's ELF interpreter for execution too: not the program.
        if access.access == Access::Exec
            && let Some(name) = access.path.file_name()
            && !crate::landlock::baseline::EXEC
                .iter()
                .any(|interpreter| Path::new(interpreter).file_name() == Some(name))
        {
            self.programs
                .insert(access.pid, name.to_string_lossy().into_owned());
        }
        if self.granted.grants(access.access, &access.path) {
            return;
        }
        let program = match (&access.program, self.programs.get(&access.pid)) {
            (program, _) if !program.is_empty() => program.as_str(),
            (_, Some(executed)) => executed.as_str(),
            _ => "",
        };
        let verb = match access.access {
            Access::Read => "read",
            Access::Write => "wrote",
            Access::Exec => "ran",
        };
        let what = format!("{verb} {}", access.path.display());
        if depth(&access.path) < MIN_FOLD_DEPTH && (self.on_disk)(&access.path) == OnDisk::Directory
        {
            // Listing `/` or `/home`: a rule on it would grant everything below.
            let key = format!(
                "{program} listed {}: not proposed, a rule on it grants everything below it",
                access.path.display()
            );
            seen(&mut self.unlearnable, key, program, what);
            return;
        }
        seen(
            &mut self.files,
            (access.access, access.path.clone()),
            program,
            what,
        );
    }

    /// The entries to add, each with its note, in list order.
    pub fn additions(&self) -> Vec<Addition> {
        let mut additions: Vec<Addition> = self
            .network
            .iter()
            .map(|((field, entry), sighting)| Addition {
                field: *field,
                entry: entry.clone(),
                note: sighting.note(),
            })
            .collect();
        // An arrival on a port the instance was seen binding is allowed by that bind's entry;
        // the arrival's own entry (every local address) would be wider.
        let bound: BTreeSet<&str> = self
            .network
            .keys()
            .filter(|(field, entry)| *field == ListField::Listen && !is_every_address(entry))
            .filter_map(|(_, entry)| entry.rsplit_once(':').map(|(_, port)| port))
            .collect();
        additions.retain(|a| {
            !(a.field == ListField::Listen
                && is_every_address(&a.entry)
                && a.entry
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| bound.contains(port)))
        });
        // A name also connected to is allowed by that entry already; one only looked up
        // still needs listing, or the resolver refuses it.
        let connected: BTreeSet<&str> = self
            .network
            .keys()
            .filter_map(|(_, entry)| entry.split([':', '/']).next())
            .collect();
        for (name, sighting) in &self.names {
            if !connected.contains(name.as_str()) {
                additions.push(Addition {
                    field: ListField::Allow,
                    entry: name.clone(),
                    note: format!(
                        "{}; only looked up: add the port it needs, or remove it",
                        sighting.note()
                    ),
                });
            }
        }
        additions.extend(self.file_additions());
        additions.sort_by_key(|a| a.field);
        additions
    }

    /// What no policy entry can allow, one line each.
    pub fn unlearnable(&self) -> Vec<String> {
        self.unlearnable
            .iter()
            .map(|(what, sighting)| format!("{what} ({})", sighting.note()))
            .collect()
    }

    fn file_additions(&self) -> Vec<Addition> {
        let by_access = |access: Access| -> BTreeMap<PathBuf, Sighting> {
            self.files
                .iter()
                .filter(|((a, _), _)| *a == access)
                .map(|((_, path), sighting)| (path.clone(), sighting.clone()))
                .collect()
        };
        let write = fold(by_access(Access::Write), self.on_disk);
        let exec = fold(by_access(Access::Exec), self.on_disk);
        // Writing and running include reading.
        let mut read = fold(by_access(Access::Read), self.on_disk);
        read.retain(|path, _| {
            !write
                .keys()
                .chain(exec.keys())
                .any(|tree| path.starts_with(tree))
        });
        [
            (ListField::ReadOnly, read),
            (ListField::ReadWrite, write),
            (ListField::Exec, exec),
        ]
        .into_iter()
        .flat_map(|(field, trees)| {
            trees
                .into_iter()
                .map(move |(path, sighting)| (field, path, sighting))
        })
        .map(|(field, path, sighting)| Addition {
            field,
            entry: self.policy_path(&path),
            note: sighting.note(),
        })
        .collect()
    }

    /// `path` as a policy writes it: below the instance's home as `~/…`, which stays right
    /// for a dynamic user whose home is made per run.
    fn policy_path(&self, path: &Path) -> String {
        match path.strip_prefix(&self.home) {
            Ok(rest) if rest.as_os_str().is_empty() => "~".to_owned(),
            Ok(rest) => format!("~/{}", rest.display()),
            Err(_) => path.to_string_lossy().into_owned(),
        }
    }
}

/// Whether a listen entry is the one an arrival proposes: every local address.
fn is_every_address(entry: &str) -> bool {
    entry.starts_with("0.0.0.0:") || entry.starts_with("[::]:")
}

/// Counts a sighting of `key`; true when it is the first.
fn seen<K: Ord>(map: &mut BTreeMap<K, Sighting>, key: K, program: &str, what: String) -> bool {
    if let Some(sighting) = map.get_mut(&key) {
        sighting.times += 1;
        return false;
    }
    map.insert(key, Sighting::new(program, what));
    true
}

/// What an attempt did, for its note: `connect 203.0.113.7:443/tcp`, `looked up a.example`.
fn describe(attempt: &BlockedAttempt) -> String {
    let target = match attempt.destination {
        std::net::IpAddr::V4(a) => format!("{a}:{}", attempt.port),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", attempt.port),
    };
    match (attempt.hook, &attempt.host, &attempt.unix) {
        ("dns", Some(name), _) => format!("looked up {name}"),
        ("ingress", _, _) => format!(
            "was reached from {} on port {}/{}",
            attempt.destination, attempt.port, attempt.protocol
        ),
        (_, _, Some(peer)) => format!("{} unix socket {peer}", attempt.hook),
        (hook, Some(name), _) => format!("{hook} {name} ({target}/{})", attempt.protocol),
        (hook, None, _) => format!("{hook} {target}/{}", attempt.protocol),
    }
}

/// The path of the listening unix socket whose file is `peer`, from the sockets this network
/// namespace has bound (`/proc/net/unix`).
fn unix_socket_path(peer: UnixPeer) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let UnixPeer::Path { major, minor, ino } = peer else {
        return None;
    };
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter(|path| path.starts_with('/'))
        .map(PathBuf::from)
        .find(|path| {
            std::fs::metadata(path).is_ok_and(|m| {
                m.ino() == ino
                    && nix::sys::stat::major(m.dev()) == u64::from(major)
                    && nix::sys::stat::minor(m.dev()) == u64::from(minor)
            })
        })
}

/// Folds the paths seen to the trees a policy grants: a file becomes its directory (unless
/// that is too shallow: then the file itself); what lies below another proposed tree goes;
/// and [`FOLD_SIBLINGS`] or more trees in one directory become that directory.
fn fold(
    seen: BTreeMap<PathBuf, Sighting>,
    on_disk: impl Fn(&Path) -> OnDisk,
) -> BTreeMap<PathBuf, Sighting> {
    let mut trees: BTreeMap<PathBuf, Sighting> = BTreeMap::new();
    for (path, sighting) in seen {
        let mut tree = match path.parent() {
            Some(parent)
                if on_disk(&path) != OnDisk::Directory && depth(parent) >= MIN_FOLD_DEPTH =>
            {
                parent.to_path_buf()
            }
            _ => path,
        };
        // A tree gone by the end of the run (a lock, a temporary directory) cannot be
        // granted; the nearest directory above it that is still there can, and lets it be
        // made again.
        while on_disk(&tree) == OnDisk::Gone
            && let Some(parent) = tree.parent().filter(|p| depth(p) >= MIN_FOLD_DEPTH)
        {
            tree = parent.to_path_buf();
        }
        merge(&mut trees, tree, sighting);
    }
    loop {
        trees = without_nested(trees);
        let mut children: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for tree in trees.keys() {
            if let Some(parent) = tree.parent()
                && depth(parent) >= MIN_FOLD_DEPTH
            {
                *children.entry(parent.to_path_buf()).or_default() += 1;
            }
        }
        let Some((parent, _)) = children.into_iter().find(|(_, n)| *n >= FOLD_SIBLINGS) else {
            return trees;
        };
        let (inside, mut rest): (BTreeMap<_, _>, BTreeMap<_, _>) = trees
            .into_iter()
            .partition(|(tree, _)| tree.parent() == Some(parent.as_path()));
        for (_, sighting) in inside {
            merge(&mut rest, parent.clone(), sighting);
        }
        trees = rest;
    }
}

/// What is at a path when the run has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    Directory,
    Other,
    Gone,
}

impl OnDisk {
    fn of(path: &Path) -> Self {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => OnDisk::Directory,
            Ok(_) => OnDisk::Other,
            Err(_) => OnDisk::Gone,
        }
    }
}

/// Drops the trees that lie inside another one, counting their sightings there.
fn without_nested(trees: BTreeMap<PathBuf, Sighting>) -> BTreeMap<PathBuf, Sighting> {
    let mut kept: BTreeMap<PathBuf, Sighting> = BTreeMap::new();
    // Sorted, a tree comes right before what lies inside it.
    for (tree, sighting) in trees {
        match kept.iter_mut().rev().find(|(k, _)| tree.starts_with(k)) {
            Some((_, outer)) => absorb(outer, sighting),
            None => {
                kept.insert(tree, sighting);
            }
        }
    }
    kept
}

fn merge(trees: &mut BTreeMap<PathBuf, Sighting>, tree: PathBuf, sighting: Sighting) {
    match trees.get_mut(&tree) {
        Some(existing) => absorb(existing, sighting),
        None => {
            trees.insert(tree, sighting);
        }
    }
}

/// Keeps the earlier of two sightings, counting both.
fn absorb(into: &mut Sighting, other: Sighting) {
    let times = into.times + other.times;
    if other.at < into.at {
        *into = other;
    }
    into.times = times;
}

fn depth(path: &Path) -> usize {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn sightings(paths: &[&str]) -> BTreeMap<PathBuf, Sighting> {
        paths
            .iter()
            .map(|p| (PathBuf::from(p), Sighting::new("cat", format!("read {p}"))))
            .collect()
    }

    fn folded(paths: &[&str]) -> Vec<String> {
        // Paths that do not exist here: each counts as a file still there.
        fold(sightings(paths), |_| OnDisk::Other)
            .keys()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn files_fold_to_their_directories_and_siblings_to_their_parent() {
        // Paths that do not exist here: each counts as a file.
        assert_eq!(
            folded(&["/srv/learn-test/a/one", "/srv/learn-test/a/two"]),
            ["/srv/learn-test/a"]
        );
        // A shallow directory is never proposed for a file in it.
        assert_eq!(
            folded(&["/etc/hostname", "/etc/os-release"]),
            ["/etc/hostname", "/etc/os-release"]
        );
        // Three subdirectories of one directory: the directory.
        assert_eq!(
            folded(&[
                "/srv/learn-test/a/x",
                "/srv/learn-test/b/x",
                "/srv/learn-test/c/x",
                "/srv/other/d/x",
            ]),
            ["/srv/learn-test", "/srv/other/d"]
        );
        // What lies below a proposed tree goes, and its sightings count there.
        let trees = fold(
            sightings(&["/srv/t/a/b/c/file", "/srv/t/a/b/c/d/file", "/srv/t/a/b/c"]),
            |_| OnDisk::Other,
        );
        assert_eq!(trees.len(), 1);
        assert_eq!(trees.values().next().unwrap().times, 3);
        // A directory gone by the end of the run (a lock): the nearest one still there.
        let lock = Path::new("/srv/t/locks/x.lock");
        let trees = fold(sightings(&["/srv/t/locks/x.lock/heartbeat"]), |path| {
            if path.starts_with(lock) {
                OnDisk::Gone
            } else {
                OnDisk::Directory
            }
        });
        assert_eq!(
            trees.keys().collect::<Vec<_>>(),
            [Path::new("/srv/t/locks")]
        );
    }

    fn attempt(hook: &'static str, host: Option<&str>) -> BlockedAttempt {
        BlockedAttempt {
            timestamp_ns: 0,
            uid: 1000,
            pid: 1,
            comm: "curl".into(),
            destination: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            port: 443,
            protocol: "tcp",
            hook,
            unix: None,
            host: host.map(Into::into),
            record_type: None,
        }
    }

    fn proposal() -> Proposal {
        let plan = LandlockPlan {
            instance: "t".into(),
            policy_file: "/etc/isolate/instances/t.toml".into(),
            read_only: Vec::new(),
            read_write: Vec::new(),
            exec: Vec::new(),
            writer: None,
            tcp_connect_ports: None,
            tcp_bind_ports: None,
            scope_abstract_unix_sockets: true,
            scope_signals: true,
            log_denials: true,
            minimum_abi: 1,
            notes: Vec::new(),
        };
        let mut proposal = Proposal::new(
            Path::new("/etc/isolate/instances/t.toml"),
            &plan,
            Path::new("/home/t"),
        );
        // None of the paths below exist here: each counts as a file still there.
        proposal.on_disk = |_| OnDisk::Other;
        proposal
    }

    #[test]
    fn network_attempts_become_their_fixes_named_where_known() {
        let mut proposal = proposal();
        assert_eq!(
            proposal.attempt(&attempt("connect", Some("api.example.com"))),
            Some("api.example.com:443/tcp to network.allow".into())
        );
        // Seen again: nothing new.
        assert_eq!(
            proposal.attempt(&attempt("connect", Some("api.example.com"))),
            None
        );
        proposal.attempt(&attempt("connect", None));
        proposal.attempt(&attempt("dns", Some("api.example.com")));
        proposal.attempt(&attempt("dns", Some("only.example.com")));
        let mut bind = attempt("bind", None);
        bind.destination = IpAddr::V4(Ipv4Addr::LOCALHOST);
        bind.port = 4096;
        proposal.attempt(&bind);
        // Reached on the port it bound: the bind's entry covers it; no every-address entry.
        let mut arrival = attempt("ingress", None);
        arrival.port = 4096;
        proposal.attempt(&arrival);
        proposal.attempt(&attempt("socket", None));
        let additions = proposal.additions();
        let entries: Vec<(&str, &str)> = additions
            .iter()
            .map(|a| (a.field.as_str(), a.entry.as_str()))
            .collect();
        assert_eq!(
            entries,
            [
                ("network.allow", "192.0.2.7:443/tcp"),
                ("network.allow", "api.example.com:443/tcp"),
                ("network.allow", "only.example.com"),
                ("network.listen", "127.0.0.1:4096/tcp"),
            ]
        );
        assert!(
            additions[1].note.contains("curl connect api.example.com"),
            "{}",
            additions[1].note
        );
        assert!(
            additions[1].note.contains("(and 1 more)"),
            "{}",
            additions[1].note
        );
        assert!(
            additions[2].note.contains("only looked up"),
            "{}",
            additions[2].note
        );
        assert_eq!(proposal.unlearnable().len(), 1);
    }

    #[test]
    fn file_accesses_fold_by_access_and_home_is_written_as_tilde() {
        let mut proposal = proposal();
        let access = |path: &str, access| FileAccess {
            path: path.into(),
            access,
            pid: 2,
            program: "sh".into(),
            at: SystemTime::now(),
        };
        for (path, kind) in [
            ("/home/t/project/src/main.rs", Access::Read),
            ("/home/t/project/src/lib.rs", Access::Write),
            ("/srv/data/in/file", Access::Read),
            ("/opt/tool/bin/tool", Access::Exec),
            ("/opt/tool/bin/tool", Access::Read),
        ] {
            proposal.file(&access(path, kind));
        }
        let entries: Vec<(&str, String)> = proposal
            .additions()
            .into_iter()
            .map(|a| (a.field.as_str(), a.entry))
            .collect();
        assert_eq!(
            entries,
            [
                ("filesystem.read_only", "/srv/data/in".to_owned()),
                ("filesystem.read_write", "~/project/src".to_owned()),
                ("filesystem.exec", "/opt/tool/bin".to_owned()),
            ]
        );
    }
}
