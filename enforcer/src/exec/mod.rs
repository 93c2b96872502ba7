//! `isolate exec` in embedded mode: the supervisor that applies an instance's layers itself,
//! runs the command as the confined instance, and removes what it installed when the child
//! exits. Nothing is left half-applied: if a layer cannot be applied, the child never starts
//! and everything applied before is taken away.

mod child;
mod environment;
mod learning;
mod seccomp;
mod supervise;

use std::ffi::{CString, OsString};
use std::fmt;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use isolate_policy::Policy;
use thiserror::Error;

use crate::audit::AuditSink;
use crate::bpf::{self, BpfLayer, EventReader, PinDir};
use crate::cgroup::{Cgroup, CgroupError, cgroup2_mount};
use crate::control::{self, Request, Response};
use crate::dns::{self, Resolver};
use crate::landlock::{LandlockError, LandlockPlan, Origin, PathRule, PreparedRuleset};
use learning::Learning;

use crate::layer::{
    ApplyError, InstanceId, InstanceRules, LayerSet, Layers, NetworkLayer, NftLayer,
};
use crate::network::{
    EffectiveRules, dns_servers, effective_rules, followed_rules, system_resolve,
};
use crate::paths;
use crate::user::{InstanceUser, UserError};

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    User(#[from] UserError),
    #[error("instance {instance}: {source}")]
    Cgroup {
        instance: String,
        #[source]
        source: CgroupError,
    },
    #[error("instance {instance}: eBPF layer: {source}")]
    Bpf {
        instance: String,
        #[source]
        source: bpf::BpfError,
    },
    #[error("instance {instance}: {source}")]
    Layer {
        instance: String,
        #[source]
        source: ApplyError,
    },
    #[error("instance {instance}: Landlock: {source}")]
    Landlock {
        instance: String,
        #[source]
        source: Box<LandlockError>,
    },
    #[error("instance {instance}: cannot make its private TMPDIR {}: {source}", .path.display())]
    TmpDir {
        instance: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("instance {instance} is already running (its cgroup {} has processes); stop it first", .cgroup.display())]
    AlreadyRunning { instance: String, cgroup: PathBuf },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("supervising the child: {0}")]
    Supervise(#[source] nix::Error),
    #[error(
        "instance {instance}: cannot start isolate's resolver on loopback (127.0.0.1 and ::1, UDP and TCP): {source}"
    )]
    Resolver {
        instance: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "instance {instance}: the daemon enforces it from {} with another network section than {}; \
         run it with `--instance {instance}` (the daemon's file), or make the two agree and reload the daemon",
        .daemon_file.display(), .file.display()
    )]
    DaemonPolicy {
        instance: String,
        daemon_file: PathBuf,
        file: PathBuf,
    },
    #[error(
        "instance {instance}: the daemon enforces it for UID {daemon_uid}, but this run's user has UID {uid}; use the same policy file as the daemon"
    )]
    DaemonUser {
        instance: String,
        daemon_uid: u32,
        uid: u32,
    },
    #[error("isolate exec must run as root (it switches users and loads eBPF programs)")]
    NotRoot,
    #[error("cannot build the seccomp filter of socket families: {0}")]
    Seccomp(#[source] seccompiler::BackendError),
    #[error("instance {instance}: {source}")]
    Environment {
        instance: String,
        #[source]
        source: environment::EnvironmentError,
    },
    #[error(
        "--keep-fd {fd}: {why}; pass descriptors above 2 that are open in the caller (0, 1 and 2 are always passed)"
    )]
    KeepFd { fd: RawFd, why: &'static str },
    #[error("--learn {}: {why}", .file.display())]
    LearnFile { file: PathBuf, why: &'static str },
    #[error(
        "instance {instance}: the daemon enforces it, so a learning run cannot observe it; \
         learn with a copy of the policy under another instance name (`name = ...` in the copy)"
    )]
    LearnUnderDaemon { instance: String },
    #[error("instance {instance}: learn mode: {source}")]
    FileWatch {
        instance: String,
        #[source]
        source: crate::learn::files::FileWatchError,
    },
    #[error(transparent)]
    LearnWrite(#[from] crate::learn::WriteError),
}

/// What `exec` will do, computed without changing anything (also what `--dry-run` prints).
pub struct ExecPlan {
    pub policy: Policy,
    pub user: InstanceUser,
    pub cgroup: PathBuf,
    pub pins: PinDir,
    pub layers: Layers,
    pub rules: EffectiveRules,
    /// The resolvers of `network.dns`: where isolate's resolver asks the names the policy
    /// allows, when the instance's lookups are followed (`rules.followed`).
    pub upstreams: Vec<std::net::IpAddr>,
    pub landlock: LandlockPlan,
    pub workdir: PathBuf,
    /// The run's private temporary directory (`TMPDIR`), made fresh at start and removed at exit.
    pub tmpdir: PathBuf,
    /// Where a running daemon would answer (it then enforces the network layers).
    pub control_socket: PathBuf,
    /// Descriptors above 2 the child keeps (`--keep-fd`); every other one is closed.
    pub keep_fds: Vec<RawFd>,
    /// Learn mode (`--learn FILE`): where the proposed policy goes. Nothing is refused then.
    pub learn: Option<PathBuf>,
}

/// Variables of the caller that would point the child at the caller's directories.
const CALLER_DIRECTORY_VARIABLES: [&str; 5] = [
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
];

impl ExecPlan {
    /// Plans a run; with `dry_run`, nothing is reserved or created.
    pub fn new(policy: Policy, layers: Layers, dry_run: bool) -> Result<Self, ExecError> {
        let instance = policy.name.clone();
        let cgroup_root = cgroup2_mount().map_err(|source| ExecError::Cgroup {
            instance: instance.clone(),
            source,
        })?;
        let cgroup = cgroup_root.join(paths::CGROUP_SUBTREE).join(&instance);
        if !dry_run {
            // Before the user is resolved: a dynamic user's home is handed to the UID this run
            // gets, and a running instance's live home is not this run's to touch.
            refuse_if_running(&instance, &cgroup)?;
        }
        let user = InstanceUser::resolve_for_run(&policy, dry_run)?;
        let resolv_conf = std::fs::read_to_string(paths::RESOLV_CONF).unwrap_or_default();
        let upstreams = dns_servers(&policy.network.dns, &resolv_conf);
        // With a network layer, the instance's own lookups are followed (each layer sends its
        // DNS queries to isolate's resolver); without resolvers to ask, names resolve nowhere.
        let rules = if (layers.ebpf || layers.nftables) && !upstreams.is_empty() {
            followed_rules(&policy.network, None)
        } else {
            effective_rules(&policy.network, &resolv_conf, system_resolve)
        };
        let mut landlock = LandlockPlan::from_policy(&policy, &user.home).map_err(|source| {
            ExecError::Landlock {
                instance: instance.clone(),
                source: Box::new(source),
            }
        })?;
        // Root opens the rule paths; a link the instance planted must not redirect them.
        landlock.writer = Some(crate::trusted_path::Writer {
            uid: user.uid,
            gid: user.gid,
        });
        if (layers.ebpf || layers.nftables) && landlock.tcp_connect_ports.take().is_some() {
            // Landlock refuses inside connect(), before the eBPF hooks run and before any packet
            // reaches nftables, so the refusal would go uncounted and unrecorded; the network
            // layers enforce the same ports and audit them.
            landlock.notes.push(
                "TCP connect ports are left to the network layers, which count and record each refusal"
                    .into(),
            );
        }
        if layers.ebpf && landlock.tcp_bind_ports.take().is_some() {
            // Likewise for bind; nftables has no part in inbound, so without the eBPF layer
            // Landlock keeps the bind ports.
            landlock.notes.push(
                "TCP bind ports are left to the eBPF layer, which counts and records each refusal"
                    .into(),
            );
        }
        // A private TMPDIR: the shared /tmp is outside most policies, and a name another user
        // took there first (programs like opencode use fixed names) would lock the instance out.
        let tmpdir = paths::instance_tmp(&instance);
        landlock.read_write.push(PathRule {
            path: tmpdir.clone(),
            origin: Origin::Baseline,
        });

        let workdir = policy.directory.as_deref().map_or_else(
            || user.home.clone(),
            |d| isolate_policy::expand_home(d, &user.home),
        );
        Ok(Self {
            cgroup,
            pins: PinDir::new(paths::exec_pins(&instance)),
            policy,
            user,
            layers,
            rules,
            upstreams,
            landlock,
            workdir,
            tmpdir,
            control_socket: paths::CONTROL_SOCKET.into(),
            keep_fds: Vec::new(),
            learn: None,
        })
    }
}

impl ExecPlan {
    /// Learn mode: the run observes instead of confining. The network layers and isolate's
    /// resolver let through (and report) what the policy would refuse; Landlock is not
    /// applied, the files the command uses are watched instead; at exit the policy plus what
    /// was seen is written to `file`.
    pub fn learn(&mut self, file: &Path) -> Result<(), ExecError> {
        let refuse = |why| ExecError::LearnFile {
            file: file.to_path_buf(),
            why,
        };
        let file = std::path::absolute(file).map_err(|_| refuse("cannot make it absolute"))?;
        if std::fs::canonicalize(&file).ok() == std::fs::canonicalize(&self.policy.source).ok()
            && file.exists()
        {
            return Err(refuse(
                "that is the policy the run starts from; write the learned one to another file",
            ));
        }
        if file.is_dir() {
            return Err(refuse("is a directory; name the file to write"));
        }
        if !file.parent().is_some_and(Path::is_dir) {
            return Err(refuse("its directory does not exist"));
        }
        self.rules.observe = true;
        self.learn = Some(file);
        Ok(())
    }

    /// Passes the caller's descriptors `fds` on to the child (each must be open and above 2).
    pub fn keep_fds(&mut self, fds: &[RawFd]) -> Result<(), ExecError> {
        for &fd in fds {
            if fd <= 2 {
                return Err(ExecError::KeepFd {
                    fd,
                    why: "0, 1 and 2 are passed anyway",
                });
            }
            // SAFETY: F_GETFD only reads the descriptor's flags.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(ExecError::KeepFd {
                    fd,
                    why: "no such open descriptor",
                });
            }
        }
        self.keep_fds = fds.to_vec();
        self.keep_fds.sort_unstable();
        self.keep_fds.dedup();
        Ok(())
    }
}

impl fmt::Display for ExecPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user_kind = if self.user.is_dynamic() {
            " (dynamic)"
        } else {
            ""
        };
        writeln!(
            f,
            "instance  {} ({})",
            self.policy.name,
            self.policy.source.display()
        )?;
        if let Some(file) = &self.learn {
            writeln!(
                f,
                "LEARN MODE  nothing is refused: the network layers let through and report what \
                 the policy would refuse, Landlock is not applied (the files used are watched); \
                 the policy plus what was seen goes to {}",
                file.display()
            )?;
        }
        writeln!(
            f,
            "user      {}{user_kind} uid={} gid={} home={}",
            self.user.name,
            self.user.uid,
            self.user.gid,
            self.user.home.display()
        )?;
        writeln!(f, "workdir   {}", self.workdir.display())?;
        let names: Vec<&str> = self.policy.environment.keys().map(String::as_str).collect();
        if !names.is_empty() {
            writeln!(f, "environment  {} (from the policy)", names.join(", "))?;
        }
        if let Some(file) = &self.policy.environment_file {
            writeln!(
                f,
                "environment file  {} (read by root at start)",
                file.display()
            )?;
        }
        writeln!(
            f,
            "TMPDIR    {} (private to the run)",
            self.tmpdir.display()
        )?;
        writeln!(f, "cgroup    {}", self.cgroup.display())?;
        writeln!(
            f,
            "session   its own (no controlling terminal of the caller's)"
        )?;
        let passed: Vec<String> = [0, 1, 2]
            .iter()
            .chain(&self.keep_fds)
            .map(ToString::to_string)
            .collect();
        writeln!(
            f,
            "descriptors  {} (every other one of the caller's is closed)",
            passed.join(", ")
        )?;
        writeln!(
            f,
            "privileges  no_new_privs, every capability dropped, supplementary groups reset"
        )?;
        let families: Vec<&str> = seccomp::ALLOWED_FAMILIES.iter().map(|(_, n)| *n).collect();
        writeln!(
            f,
            "sockets   {} only (BPF LSM, each refusal recorded, where the kernel runs it; \
             seccomp otherwise); no io_uring (seccomp)",
            families.join(", ")
        )?;
        let limit = |value: Option<u64>| value.map_or_else(|| "max".to_owned(), |n| n.to_string());
        writeln!(
            f,
            "resources  pids.max {}, memory.max {} (where the cgroup controllers are offered)",
            limit(self.policy.resources.pids_max),
            limit(self.policy.resources.memory_max)
        )?;
        self.write_network(f)?;
        write!(f, "landlock\n{}", self.landlock)
    }
}

impl ExecPlan {
    /// The network part of the plan: layers, destinations, host names, DNS.
    fn write_network(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "network layers  {}", self.layers.names().join(", "))?;
        if self.layers.ebpf {
            writeln!(f, "  ebpf pins  {}", self.pins.path().display())?;
        }
        writeln!(f, "  allowed destinations:")?;
        for rule in &self.rules.v4 {
            writeln!(f, "    {rule}")?;
        }
        for rule in &self.rules.v6 {
            writeln!(f, "    {rule}")?;
        }
        if self.rules.v4.is_empty() && self.rules.v6.is_empty() {
            writeln!(f, "    (none: every connection is refused)")?;
        }
        if self.rules.followed && !self.policy.network.hosts.is_empty() {
            let upstreams: Vec<String> = self.upstreams.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "  host names (each address admitted as isolate's resolver answers the instance, \
                 asking {}):",
                upstreams.join(", ")
            )?;
            for host in &self.policy.network.hosts {
                writeln!(f, "    {host}")?;
            }
        }
        if self.rules.followed {
            writeln!(
                f,
                "  dns: every query goes to isolate's resolver; names not listed are refused there"
            )?;
        }
        for host in &self.rules.unresolved {
            writeln!(f, "    {host}: not resolved now, so not reachable")?;
        }
        for answer in &self.rules.refused {
            writeln!(
                f,
                "    {answer}: not admitted (list the address itself if it is meant)"
            )?;
        }
        Ok(())
    }
}

/// What a run put in place; dropping it takes it away again, the cgroup (and so the child)
/// first, then the network layers, then the run's own eBPF attachment.
struct Applied {
    instance: String,
    cgroup: Option<Cgroup>,
    layers: LayerSet,
    /// Set once the layers enforce the instance.
    enforced: Option<InstanceId>,
    /// The eBPF attachment this run made for itself, detached at the end.
    pins: Option<PinDir>,
    events: Option<EventReader>,
    /// The eBPF layer's BPF LSM programs judge the socket families the child creates, and
    /// record each refusal; otherwise the child's seccomp filter refuses them, unrecorded.
    families_judged: bool,
    /// isolate's resolver for the instance, when its lookups are followed, and the DNS
    /// questions it refused.
    resolver: Option<Resolver>,
    refusals: Option<std::sync::mpsc::Receiver<bpf::BlockedAttempt>>,
}

impl Applied {
    fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            cgroup: None,
            layers: LayerSet::default(),
            enforced: None,
            pins: None,
            events: None,
            families_judged: false,
            resolver: None,
            refusals: None,
        }
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let path = cgroup.path().to_path_buf();
            match cgroup.remove() {
                Ok(()) => {
                    if let Ok(root) = cgroup2_mount() {
                        remove_empty_parents(&path, &root);
                    }
                }
                Err(e) => tracing::warn!(instance = %self.instance, "{e}"),
            }
        }
        // The child is gone: nothing asks the resolver any more.
        self.resolver = None;
        if let Some(id) = self.enforced.take()
            && let Err(e) = self.layers.remove(&id)
        {
            tracing::warn!(instance = %self.instance, "{e}");
        }
        self.layers = LayerSet::default();
        self.events = None;
        if let Some(pins) = self.pins.take() {
            if let Err(e) = pins.remove() {
                tracing::warn!(instance = %self.instance, "eBPF layer: remove {}: {e}", pins.path().display());
            }
            remove_empty_parents(pins.path(), Path::new(paths::BPFFS));
        }
    }
}

/// Runs `command` as the confined instance and returns its exit code (128 + signal when killed).
pub fn run(plan: ExecPlan, command: &[OsString]) -> Result<i32, ExecError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ExecError::NotRoot);
    }
    let instance = plan.policy.name.clone();
    // Before anything is touched: another run's TMPDIR and layers are not ours to replace.
    refuse_if_running(&instance, &plan.cgroup)?;
    warn_of_shared_uid(&plan);
    // Also before anything is touched: a daemon that enforces the instance otherwise refuses.
    let daemon = daemon_enforces(&plan)?;
    if plan.learn.is_some() && daemon.is_some() {
        return Err(ExecError::LearnUnderDaemon { instance });
    }
    let secrets = match &plan.policy.environment_file {
        Some(path) => environment::read_file(path).map_err(|source| ExecError::Environment {
            instance: instance.clone(),
            source,
        })?,
        None => Vec::new(),
    };
    // Before Landlock is prepared: its rules open the paths they name.
    let tmpdir =
        PrivateDir::create(&plan.tmpdir, plan.user.uid, plan.user.gid).map_err(|source| {
            ExecError::TmpDir {
                instance: instance.clone(),
                path: plan.tmpdir.clone(),
                source,
            }
        })?;
    let (landlock, mut learning) = confinement_of_files(&plan)?;
    let mut applied = if let Some(daemon) = daemon {
        // The daemon confines the instance's UID host-wide and records its block events.
        let mut applied = Applied::new(&instance);
        applied.cgroup = Some(create_cgroup(&plan.policy, &plan.cgroup)?);
        applied.families_judged = daemon.families_judged;
        applied
    } else {
        apply_layers(&plan)?
    };
    let cgroup = applied.cgroup.as_ref().expect("created by apply_layers");
    let mut signals = supervise::block_signals().map_err(ExecError::Supervise)?;
    let namespace = match &learning {
        Some(learning) => Some(learning.namespace().map_err(|source| ExecError::Spawn {
            command: shell_words(command),
            source,
        })?),
        None => None,
    };
    let child = spawn(
        &plan,
        cgroup,
        landlock,
        namespace,
        &secrets,
        command,
        applied.families_judged,
    )?;
    tracing::info!(instance, pid = child.id(), uid = plan.user.uid, "started");
    let rate = plan.policy.network.log.rate;
    let mut audit = AuditSink::new();
    let code = supervise::wait(&child, &mut signals, Duration::from_millis(200), || {
        let mut attempts = Vec::new();
        if let Some(events) = applied.events.as_mut() {
            for mut event in events.read() {
                if let Some(resolver) = &applied.resolver {
                    event.host = resolver.name_of(event.destination);
                }
                attempts.push(event);
            }
            match events.unsent_since(plan.user.uid) {
                Ok(count) => audit.unsent(&instance, &rate, count),
                Err(e) => tracing::warn!(instance, "eBPF layer: {e}"),
            }
        }
        attempts.extend(applied.refusals.iter().flat_map(|r| r.try_iter()));
        for attempt in &attempts {
            match &mut learning {
                Some(learning) => learning.attempt(&instance, attempt),
                None => audit.record(&instance, &rate, &plan.policy.source, attempt),
            }
        }
        if let Some(learning) = &mut learning {
            learning.take_files();
        }
        audit.flush_quiet();
    })
    .map_err(ExecError::Supervise)?;
    audit.flush_suppressed();
    tracing::info!(instance, code, "exited");
    drop(applied);
    if let Some(learning) = &learning {
        learning.finish(&plan.policy, &shell_words(command))?;
    }
    drop(tmpdir);
    // Last: a dynamic user's UID is released only once nothing of the run holds it.
    drop(plan);
    Ok(code)
}

/// What confines the child's files: a prepared Landlock ruleset, or, in learn mode, a watch of
/// the files it uses and the proposal it feeds.
fn confinement_of_files(
    plan: &ExecPlan,
) -> Result<(Option<PreparedRuleset>, Option<Learning>), ExecError> {
    let instance = &plan.policy.name;
    if let Some(file) = &plan.learn {
        let learning = Learning::start(plan, file).map_err(|source| ExecError::FileWatch {
            instance: instance.clone(),
            source,
        })?;
        return Ok((None, Some(learning)));
    }
    let landlock = plan
        .landlock
        .prepare()
        .map_err(|source| ExecError::Landlock {
            instance: instance.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(instance, "Landlock: {}", landlock.report());
    Ok((Some(landlock), None))
}

/// The command as one line, for messages.
pub fn shell_words(words: &[OsString]) -> String {
    words
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A named user's other processes share the instance's UID: its files and unix sockets are
/// theirs, and a daemon confines them with the instance. Said loudly, at every start.
fn warn_of_shared_uid(plan: &ExecPlan) {
    if plan.user.is_dynamic() {
        return;
    }
    let instance = &plan.policy.name;
    let outside: Vec<_> = crate::procs::of_uid(plan.user.uid)
        .into_iter()
        .filter(|p| !p.in_instance(instance))
        .collect();
    if !outside.is_empty() {
        tracing::warn!(
            instance,
            "user {} (UID {}) runs {} process(es) outside the instance: {}. They share its UID: \
             the instance can reach their files and unix sockets, and a daemon confines them \
             with it. Give the instance a user of its own, or user = \"dynamic\"",
            plan.user.name,
            plan.user.uid,
            outside.len(),
            crate::procs::list(&outside, 5)
        );
    }
}

/// What a running daemon enforces for this run.
struct DaemonEnforcement {
    /// Its BPF LSM programs judge (and record) the socket families of the instance's UID.
    families_judged: bool,
}

/// Asks a running daemon to make sure it enforces this instance. `None` when no daemon runs or
/// it does not know the instance (a policy file of its own: embedded mode).
fn daemon_enforces(plan: &ExecPlan) -> Result<Option<DaemonEnforcement>, ExecError> {
    let instance = plan.policy.name.clone();
    let request = Request::Ensure {
        instance: instance.clone(),
    };
    match control::request(&plan.control_socket, &request) {
        Ok(Some(Response::Ensured {
            uid,
            source,
            network,
            not_enforced,
            ..
        })) if uid == plan.user.uid => {
            if network != control::network_digest(&plan.policy.network) {
                // The daemon enforces its own file's rules for this UID; this run's would be
                // silently ignored.
                return Err(ExecError::DaemonPolicy {
                    instance,
                    daemon_file: source,
                    file: plan.policy.source.clone(),
                });
            }
            tracing::info!(instance, "network layers enforced by the daemon");
            // Said on every run, not only in the daemon's log at its start.
            for layer in &not_enforced {
                let reason = layer.reason.as_deref().unwrap_or("unavailable");
                tracing::warn!(
                    instance,
                    "NOT ENFORCED by the daemon: {} ({reason})",
                    layer.layer
                );
            }
            Ok(Some(DaemonEnforcement {
                families_judged: !not_enforced.iter().any(|l| l.layer == "unix"),
            }))
        }
        Ok(Some(Response::Ensured { uid, .. })) => Err(ExecError::DaemonUser {
            instance,
            daemon_uid: uid,
            uid: plan.user.uid,
        }),
        // The daemon does not enforce the instance (or did not answer): this run enforces
        // it itself, as when no daemon runs.
        Ok(Some(Response::Error { message })) => {
            tracing::info!(instance, "the daemon does not enforce it ({message})");
            Ok(None)
        }
        Ok(Some(_) | None) => Ok(None),
        Err(e) => {
            tracing::warn!(instance, "{e}");
            Ok(None)
        }
    }
}

fn apply_layers(plan: &ExecPlan) -> Result<Applied, ExecError> {
    let instance = plan.policy.name.clone();
    let mut applied = Applied::new(&instance);
    applied.cgroup = Some(create_cgroup(&plan.policy, &plan.cgroup)?);
    let mut layers: Vec<Box<dyn NetworkLayer>> = Vec::new();
    let mut host_maps = None;
    if plan.layers.ebpf {
        let bpf_error = |source| ExecError::Bpf {
            instance: instance.clone(),
            source,
        };
        if plan.pins.exists() {
            // Left by a run that crashed: its cgroup is gone, so start afresh.
            plan.pins.remove().map_err(|e| {
                bpf_error(bpf::BpfError::Pin {
                    action: "remove stale",
                    path: plan.pins.path().to_path_buf(),
                    source: e,
                })
            })?;
        }
        let bpf = BpfLayer::attach(&plan.cgroup, plan.pins.clone()).map_err(bpf_error)?;
        applied.families_judged = matches!(bpf.unix_support(), bpf::UnixSupport::Enforced);
        applied.pins = Some(plan.pins.clone());
        applied.events = Some(bpf.events().map_err(bpf_error)?);
        if plan.rules.followed {
            host_maps = Some((
                bpf.host_maps().map_err(bpf_error)?,
                bpf.host_maps().map_err(bpf_error)?,
            ));
        }
        layers.push(Box::new(bpf));
    }
    if plan.layers.nftables {
        layers.push(Box::new(NftLayer));
    }
    applied.layers = LayerSet::new(layers);
    let id = InstanceId {
        name: instance.clone(),
        uid: plan.user.uid,
    };
    // The resolver's port is in the rules (the instance reaches it, and hears its answers).
    let listener = if plan.rules.followed {
        Some(dns::Listener::bind().map_err(|source| ExecError::Resolver {
            instance: instance.clone(),
            source,
        })?)
    } else {
        None
    };
    let mut followed;
    let rules = match &listener {
        Some(listener) => {
            let endpoint = listener.endpoint();
            followed = followed_rules(&plan.policy.network, Some(endpoint));
            followed.observe = plan.rules.observe;
            if !plan.layers.ebpf {
                followed = followed.translating_dns(endpoint);
            }
            &followed
        }
        None => &plan.rules,
    };
    let rules = InstanceRules {
        id: &id,
        policy: &plan.policy,
        rules,
    };
    applied
        .layers
        .apply(&rules, None)
        .map_err(|source| ExecError::Layer {
            instance: instance.clone(),
            source,
        })?;
    applied.enforced = Some(id);
    if let Some(listener) = listener {
        let (resolver, refusals) = start_resolver(plan, listener, host_maps)?;
        applied.resolver = Some(resolver);
        applied.refusals = Some(refusals);
    }
    Ok(applied)
}

/// Starts the instance's resolver on `listener`, then has the eBPF layer send the instance's
/// DNS queries to it (last: they go to a resolver that answers; the nftables layer's
/// translation is in its table already). `maps` are two handles on the eBPF host maps, where
/// that layer is on: the resolver's own, and one to write the redirect with.
fn start_resolver(
    plan: &ExecPlan,
    listener: dns::Listener,
    maps: Option<(bpf::HostMaps, bpf::HostMaps)>,
) -> Result<(Resolver, std::sync::mpsc::Receiver<bpf::BlockedAttempt>), ExecError> {
    let instance = &plan.policy.name;
    let endpoint = listener.endpoint();
    let (sender, receiver) = std::sync::mpsc::channel();
    let (resolver_maps, redirect_maps) = maps.unzip();
    let service = dns::Service {
        instance: instance.clone(),
        uid: plan.user.uid,
        hosts: plan.policy.network.hosts.clone(),
        upstreams: plan.upstreams.clone(),
        layers: dns::Layers {
            bpf: resolver_maps,
            nft: plan.layers.nftables,
        },
        observe: plan.learn.is_some(),
        refusals: sender,
    };
    let resolver = listener
        .serve(service)
        .map_err(|source| ExecError::Resolver {
            instance: instance.clone(),
            source,
        })?;
    if let Some(mut maps) = redirect_maps {
        maps.redirect(plan.user.uid, dns::redirect_to(endpoint))
            .map_err(|source| ExecError::Bpf {
                instance: instance.clone(),
                source,
            })?;
    }
    Ok((resolver, receiver))
}

/// Fails when the instance's cgroup has processes: another run of it is going on.
fn refuse_if_running(instance: &str, cgroup: &Path) -> Result<(), ExecError> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    if procs.trim().is_empty() {
        Ok(())
    } else {
        Err(ExecError::AlreadyRunning {
            instance: instance.to_owned(),
            cgroup: cgroup.to_path_buf(),
        })
    }
}

/// Creates the instance cgroup (a leftover empty one, from a crash, is replaced), with the
/// policy's `[resources]` limits where the kernel offers the controllers (said plainly where
/// it does not).
fn create_cgroup(policy: &Policy, path: &Path) -> Result<Cgroup, ExecError> {
    let instance = policy.name.as_str();
    let cgroup_error = |source| ExecError::Cgroup {
        instance: instance.to_owned(),
        source,
    };
    let parent = path.parent().expect("the cgroup is below the subtree");
    std::fs::create_dir_all(parent).map_err(|source| {
        cgroup_error(CgroupError::Io {
            path: parent.to_path_buf(),
            action: "create",
            source,
        })
    })?;
    if path.exists() {
        refuse_if_running(instance, path)?;
        let _ = std::fs::remove_dir(path);
    }
    let name = path
        .file_name()
        .expect("named")
        .to_string_lossy()
        .into_owned();
    let cgroup = Cgroup::create(parent, &name).map_err(cgroup_error)?;
    for (field, controller, file, value) in [
        ("pids_max", "pids", "pids.max", policy.resources.pids_max),
        (
            "memory_max",
            "memory",
            "memory.max",
            policy.resources.memory_max,
        ),
    ] {
        // No limit asked for: nothing to write (a new cgroup has none).
        let Some(value) = value else { continue };
        if let Some(why) = cgroup
            .set_limit(controller, file, &value.to_string())
            .map_err(cgroup_error)?
        {
            tracing::warn!(instance, "resources.{field} is NOT applied: {why}");
        }
    }
    Ok(cgroup)
}

fn spawn(
    plan: &ExecPlan,
    cgroup: &Cgroup,
    landlock: Option<PreparedRuleset>,
    mount_namespace: Option<OwnedFd>,
    secrets: &[(String, String)],
    command: &[OsString],
    families_judged: bool,
) -> Result<std::process::Child, ExecError> {
    let spawn_error = |source| ExecError::Spawn {
        command: command
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        source,
    };
    let procs: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.path().join("cgroup.procs"))
        .map_err(spawn_error)?
        .into();
    let workdir = CString::new(plan.workdir.clone().into_os_string().into_encoded_bytes())
        .map_err(|e| spawn_error(std::io::Error::other(e)))?;
    // Socket activation aimed at isolate goes on to the command: its descriptors (3 on) and
    // `LISTEN_FDS`/`LISTEN_FDNAMES` are kept, `LISTEN_PID` names the command.
    let activation = environment::socket_activation();
    let mut keep_fds = plan.keep_fds.clone();
    keep_fds.extend((3..).take(activation.map_or(0, |n| n.cast_unsigned() as usize)));
    keep_fds.sort_unstable();
    keep_fds.dedup();
    let mut setup = child::ChildSetup {
        cgroup_procs: procs,
        uid: plan.user.uid,
        gid: plan.user.gid,
        workdir,
        landlock,
        mount_namespace,
        supervisor_pid: nix::unistd::getpid().as_raw(),
        keep_fds,
        seccomp: Some(seccomp::filter(!families_judged).map_err(ExecError::Seccomp)?),
        environment: child_environment(plan, secrets, activation.is_some()),
    };
    let mut cmd = Command::new(&command[0]);
    // The environment is changed by the child itself (see `child_environment`): a change
    // made here would make std replace the whole environment after the child's changes.
    cmd.args(&command[1..]);
    // SAFETY: `enter` only makes syscalls (and small allocations, safe in this single-threaded
    // process) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || setup.enter());
    }
    cmd.spawn().map_err(spawn_error)
}

/// What the child's environment becomes: the caller's, without the variables that point at
/// the caller's directories, with the instance's HOME, TMPDIR, USER and LOGNAME, then the
/// policy's `environment`, then its `environment_file` (each over what came before).
fn child_environment(
    plan: &ExecPlan,
    secrets: &[(String, String)],
    socket_activation: bool,
) -> environment::ChildEnvironment {
    let mut env = environment::ChildEnvironment {
        listen_pid: socket_activation,
        ..Default::default()
    };
    for variable in CALLER_DIRECTORY_VARIABLES {
        env.unset(variable);
    }
    if !socket_activation {
        for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            env.unset(variable);
        }
    }
    env.set("HOME", &plan.user.home);
    env.set("TMPDIR", &plan.tmpdir);
    env.set("USER", &plan.user.name);
    env.set("LOGNAME", &plan.user.name);
    for (key, value) in plan
        .policy
        .environment
        .iter()
        .chain(secrets.iter().map(|(k, v)| (k, v)))
    {
        env.set(key, value);
    }
    env
}

/// A directory owned by the instance user, made empty at start and removed when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(path: &Path, uid: u32, gid: u32) -> std::io::Result<Self> {
        // Whatever an earlier run left (it may have crashed) is not this run's.
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::create_dir(path)?;
        let dir = Self(path.to_path_buf());
        // By descriptor: the directory lies in the instance's home, where the instance could
        // swap it for a link to anything between the mkdir and the chown.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        std::os::unix::fs::fchown(&opened, Some(uid), Some(gid))?;
        opened.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(dir)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes `path`'s parent directories up to (not including) `stop` while they are empty.
fn remove_empty_parents(path: &Path, stop: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
