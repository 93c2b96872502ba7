//! `isolate daemon` end to end: several instances side by side, each confined by its own
//! policy; metrics equal to the attempts; status with and without the daemon; reload with good
//! and bad policies; SIGKILL and restart without a moment of lost enforcement; cleanup.
//!
//! On the host the daemon attaches to a child cgroup (hidden `--cgroup`), never the root, and
//! runs in the test's own network namespace, so its nftables tables live there.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use common::probe::{self, Mode, accept_one};
use common::sandbox::unique_name;
use common::users::TestUser;
use isolate_enforcer::cgroup::{Cgroup, cgroup2_mount};

fn main() -> ExitCode {
    if let Some(code) = probe::main_if_probe() {
        return code;
    }
    common::run_tests(&[
        (
            "instances_side_by_side_metrics_status_and_reload",
            side_by_side,
        ),
        (
            "sigkill_and_restart_never_let_a_forbidden_connect_through",
            restart,
        ),
        ("exec_hands_the_network_layers_to_the_daemon", exec_handoff),
        (
            "a_broken_policy_or_directory_never_opens_a_restarted_daemon",
            broken_policy_across_restart,
        ),
        (
            "exec_with_another_network_than_the_daemon_enforces_is_refused",
            exec_with_another_network,
        ),
        ("the_daemon_confines_what_an_instance_serves", inbound),
        (
            "every_exec_run_says_what_the_daemon_does_not_enforce",
            exec_names_what_is_not_enforced,
        ),
        (
            "learning_refuses_an_instance_the_daemon_enforces_and_its_own_policy_file",
            learning_refusals,
        ),
        (
            "cleanup_refuses_while_an_instance_still_runs",
            cleanup_while_running,
        ),
        (
            "the_daemon_follows_each_instances_own_dns_answers",
            dns_following,
        ),
        (
            "a_flood_is_accounted_exactly_and_hides_no_other_instances_refusal",
            flood_accounting,
        ),
    ])
}

/// One instance floods refused connects as fast as it can while another is refused once:
/// the flooder's kernel counter equals its refused connects; its audit records plus the
/// suppressed counts the trail reports equal them too, exactly (the kernel sends each instance
/// at most a budget of events and counts the rest); and the quiet instance's one refusal is
/// recorded (the flood cannot fill the ring buffer).
fn flood_accounting() {
    let (flooder, quiet) = (TestUser::new(), TestUser::new());
    let (_listener, allowed) = listen();
    let forbidden = SocketAddr::from(([127, 0, 0, 1], 9));
    let (flood_name, quiet_name) = (unique_name("flood"), unique_name("quiet"));
    let mut daemon = Daemon::new();
    let allow = format!("\"127.0.0.1/32:{}/tcp\"", allowed.port());
    daemon.write_policy(&flood_name, &flooder, &allow);
    daemon.write_policy(&quiet_name, &quiet, &allow);
    daemon.start();

    let flood = probe::start_flood(daemon.cgroup(), flooder.uid, forbidden, 3);
    std::thread::sleep(Duration::from_secs(1));
    let quiet_refusal = probe::run_in(daemon.cgroup(), quiet.uid, Mode::Tcp, forbidden);
    assert_eq!(quiet_refusal.code, libc::EPERM);
    let refused = probe::flood_count(flood);
    assert!(refused > 1000, "a flood, not a trickle: {refused} connects");

    let text = daemon.metrics();
    assert_eq!(
        metric(&text, &blocked_series(&flood_name)),
        Some(refused),
        "the kernel counted every refusal:\n{text}"
    );
    let (records, suppressed) =
        common::records::trail_once_settled(&flood_name, refused, || daemon.log());
    assert!(
        records > 0 && suppressed > 0,
        "{records} records, {suppressed} suppressed"
    );
    assert_eq!(
        records + suppressed,
        refused,
        "records ({records}) + suppressed ({suppressed}) = refused connects"
    );
    let text = daemon.metrics();
    let dropped = metric(
        &text,
        &format!("isolate_events_dropped_total{{isolate_instance=\"{flood_name}\"}}"),
    )
    .unwrap_or_else(|| panic!("no dropped-events series:\n{text}"));
    eprintln!(
        "flood: {refused} refused, {records} records, {suppressed} suppressed, \
         {dropped} not sent by the kernel"
    );
    assert!(
        dropped > 0 && dropped <= suppressed,
        "{dropped} events not sent by the kernel, {suppressed} suppressed"
    );

    let quiet_records = common::records::record_messages(&quiet_name, &daemon.log(), 1);
    assert_eq!(
        quiet_records
            .iter()
            .filter(|r| r.contains(&format!("{forbidden} ")))
            .count(),
        1,
        "the quiet instance's refusal during the flood is recorded: {quiet_records:#?}"
    );
}

/// Under the daemon, as under `isolate exec`: the instance's lookups go to the daemon's
/// resolver for it; a listed name (exact, wildcard) connects at once, an unlisted one is
/// refused without reaching the upstream, counted and recorded by name. Admitted addresses
/// stay in force across a SIGKILL and restart, and the restarted daemon answers again.
fn dns_following() {
    use common::dns_upstream::{
        LOOKUP_SCRIPT, Upstream, assert_lines, make_answers_local, test_zone,
    };
    make_answers_local();
    let user = TestUser::new();
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = Upstream::start("127.0.0.2:53".parse().unwrap(), test_zone(20)).unwrap();
    let mut daemon = Daemon::new();
    std::fs::write(
        daemon.policy_dir().join("alpha.toml"),
        format!(
            "user = \"{}\"\n[network]\ndns = [\"127.0.0.2\"]\nallow = [\"api.example.test:{port}/tcp\", \"*.wild.test:{port}/tcp\"]\n",
            user.name
        ),
    )
    .unwrap();
    daemon.start();
    let cgroup = daemon.cgroup().to_path_buf();
    let lookups = |steps: &[&str]| {
        let out = common::sandbox::command_in(&cgroup, user.uid, Path::new("/usr/bin/python3"))
            .args(["-c", LOOKUP_SCRIPT, &port.to_string()])
            .args(steps)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = lookups(&[
        "look refused evil.test",
        "look exact api.example.test",
        "look wildcard x.wild.test",
        "connect unanswered 192.0.2.99",
        "connect other-port 192.0.2.10 9",
    ]);
    let eperm = format!("errno {}", libc::EPERM);
    let wanted = [
        "refused 0   fast".to_owned(),
        "exact 1 192.0.2.10 ok fast".to_owned(),
        "wildcard 1 192.0.2.11 ok fast".to_owned(),
        format!("unanswered {eperm}"),
        format!("other-port {eperm}"),
    ];
    assert_lines(&text, &wanted, "");
    upstream.assert_never_asked("evil.test");
    assert_dns_reported(&daemon);

    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    // No daemon, no resolver: what was admitted stays in force, and no name is answered.
    let text = lookups(&["connect admitted 192.0.2.10", "look down x.wild.test"]);
    for wanted in ["admitted ok", "down 0   "] {
        assert!(
            text.lines().any(|l| l.starts_with(wanted)),
            "wanted {wanted:?} in:\n{text}"
        );
    }
    daemon.start();
    // The restarted daemon keeps what was admitted, and answers again.
    let text = lookups(&["connect kept 192.0.2.10", "look again x.wild.test"]);
    assert_lines(&text, &["kept ok", "again 1 192.0.2.11 ok fast"], "");
}

/// The resolver's work in `dns_following`, in the metrics and in status: the refused name
/// counted and recorded, the answered names and the addresses they hold.
fn assert_dns_reported(daemon: &Daemon) {
    let text = daemon.metrics();
    let dns_refusals = metric(
        &text,
        "isolate_ebpf_blocked_by_hook_total{hook=\"dns\",isolate_instance=\"alpha\"}",
    );
    assert!(dns_refusals >= Some(1), "{text}");
    for (series, at_least) in [
        (
            "isolate_dns_queries_total{isolate_instance=\"alpha\",verdict=\"refused\"}",
            1,
        ),
        (
            "isolate_dns_queries_total{isolate_instance=\"alpha\",verdict=\"answered\"}",
            2,
        ),
        (
            "isolate_dns_admitted_addresses{isolate_instance=\"alpha\"}",
            2,
        ),
    ] {
        assert!(
            metric(&text, series) >= Some(at_least),
            "{series} in\n{text}"
        );
    }
    let status = daemon.status_json();
    let alpha = instance_named(&status, "alpha");
    let recent = alpha["recent"].to_string();
    assert!(
        recent.contains("dns evil.test A")
            && recent.contains("tcp 192.0.2.10:9 (api.example.test)"),
        "{status}"
    );
    // The names seen, and the addresses they hold.
    let names = alpha["dns"]["names"].to_string();
    assert!(
        names.contains("api.example.test") && names.contains("192.0.2.10"),
        "{status}"
    );
}

/// `--cleanup` while an instance's processes run in its cgroup would leave them unconfined:
/// it refuses, naming them, and changes nothing; `--force` does it anyway.
fn cleanup_while_running() {
    let user = TestUser::new();
    let (_blocked, blocked_addr) = listen();
    let name = format!("cleanup{}", std::process::id());
    let mut daemon = Daemon::new();
    daemon.write_policy(&name, &user, "");
    daemon.start();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    // Where `isolate exec --instance NAME` runs it (the subtree made, and removed, if absent).
    let mount = cgroup2_mount().unwrap();
    let subtree = isolate_enforcer::paths::CGROUP_SUBTREE;
    let _subtree =
        (!mount.join(subtree).exists()).then(|| Cgroup::create(&mount, subtree).unwrap());
    let instance_cgroup = Cgroup::create(&mount.join(subtree), &name).unwrap();
    let mut running =
        common::sandbox::command_in(instance_cgroup.path(), user.uid, Path::new("/bin/sleep"))
            .arg("30")
            .spawn()
            .unwrap();
    let cleanup = |extra: &[&str]| {
        Command::new(common::isolate_binary())
            .arg("daemon")
            .args(daemon.args())
            .arg("--cleanup")
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = cleanup(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "instance {name} still runs {} (sleep) (UID {})",
            running.id(),
            user.uid
        )),
        "{stderr}"
    );
    assert!(daemon.pins.exists(), "nothing was taken away");
    assert_eq!(
        probe::run_in(daemon.cgroup(), user.uid, Mode::Tcp, blocked_addr).code,
        libc::EPERM,
        "still enforced"
    );
    let forced = cleanup(&["--force"]);
    let _ = running.kill();
    let _ = running.wait();
    drop(instance_cgroup);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(!daemon.pins.exists(), "--force took it away");
}

/// A layer the daemon cannot (or was told not to) put in force is said on each `exec` run
/// that hands its network layers to the daemon, not only once in the daemon's log.
fn exec_names_what_is_not_enforced() {
    let user = TestUser::new();
    let mut daemon = Daemon::new();
    std::fs::write(
        daemon.policy_dir().join("echo.toml"),
        format!(
            "user = \"{}\"\ndirectory = \"/tmp\"\n[network]\ndns = \"none\"\n[filesystem]\nexec = [\"/usr/bin\", \"/bin\"]\n",
            user.name
        ),
    )
    .unwrap();
    daemon.start_with(&["--layers", "ebpf"]);
    let out = Command::new(common::isolate_binary())
        .args(["exec", "--instance", "echo", "--policy-dir"])
        .arg(daemon.policy_dir())
        .arg("--control-socket")
        .arg(daemon.socket())
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("network layers enforced by the daemon"),
        "{stderr}"
    );
    assert!(
        stderr.contains("NOT ENFORCED by the daemon: nftables (turned off (--layers))"),
        "{stderr}"
    );
    let unix = daemon.status_json()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "unix")
        .cloned()
        .unwrap();
    assert_eq!(
        stderr.contains("NOT ENFORCED by the daemon: unix"),
        unix["available"] == false,
        "the unix-socket programs are named when the kernel refuses them: {stderr}"
    );
}

/// A learning run cannot observe an instance the daemon enforces (the daemon's programs judge
/// its UID), and never writes the learned policy over the one it starts from: both are
/// refused before anything runs, and neither file is touched.
fn learning_refusals() {
    let user = TestUser::new();
    let mut daemon = Daemon::new();
    let policy = daemon.policy_dir().join("echo.toml");
    let text = format!(
        "user = \"{}\"\ndirectory = \"/tmp\"\n[network]\ndns = \"none\"\n[filesystem]\nexec = [\"/usr/bin\", \"/bin\"]\n",
        user.name
    );
    std::fs::write(&policy, &text).unwrap();
    daemon.start_with(&["--layers", "ebpf"]);
    let learned = tempfile::tempdir().unwrap();
    let learn = |file: &Path| {
        let out = Command::new(common::isolate_binary())
            .args(["exec", "--policy"])
            .arg(&policy)
            .arg("--control-socket")
            .arg(daemon.socket())
            .arg("--learn")
            .arg(file)
            .args(["--", "/bin/sh", "-c", "echo ran"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ran"),
            "{out:?}"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let file = learned.path().join("echo.toml");
    let stderr = learn(&file);
    assert!(
        stderr.contains("the daemon enforces it, so a learning run cannot observe it"),
        "{stderr}"
    );
    assert!(!file.exists(), "{stderr}");
    let stderr = learn(&policy);
    assert!(
        stderr.contains("that is the policy the run starts from"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), text);
}

/// `network.listen` in daemon mode: the instance's user may serve the listed port only; any
/// other port of its accepts nothing, and both kinds of refusal are counted by hook.
fn inbound() {
    let user = TestUser::new();
    let served = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Daemon::new();
    std::fs::write(
        daemon.policy_dir().join("alpha.toml"),
        format!(
            "user = \"{}\"\n[network]\ndns = \"none\"\nlisten = [\"127.0.0.1:{served}/tcp\"]\n",
            user.name
        ),
    )
    .unwrap();
    daemon.start();

    let serve = |addr: &str| probe::start_server(daemon.cgroup(), user.uid, "tcp", addr);
    let listed = serve(&format!("127.0.0.1:{served}")).expect("the listed port binds");
    assert!(TcpStream::connect_timeout(&listed.local, Duration::from_secs(5)).is_ok());
    assert_eq!(listed.outcome(), 0, "the listed port accepted");
    assert_eq!(
        serve("0.0.0.0:0").map(probe::Server::outcome),
        Ok(libc::ETIMEDOUT),
        "an ephemeral bind is allowed, and nothing arrives there"
    );
    let ephemeral = serve("127.0.0.1:0").unwrap();
    assert!(
        TcpStream::connect_timeout(&ephemeral.local, Duration::from_millis(500)).is_err(),
        "a connection to an unlisted port was accepted"
    );
    assert_eq!(ephemeral.outcome(), libc::ETIMEDOUT);
    assert_eq!(
        serve(&format!("0.0.0.0:{served}")).err(),
        Some(libc::EPERM),
        "only loopback is listed"
    );

    let text = daemon.metrics();
    let by_hook = |hook: &str| {
        metric(
            &text,
            &format!(
                "isolate_ebpf_blocked_by_hook_total{{hook=\"{hook}\",isolate_instance=\"alpha\"}}"
            ),
        )
    };
    assert_eq!(by_hook("bind"), Some(1), "{text}");
    assert!(by_hook("ingress") >= Some(1), "{text}");
}

/// A daemon with its own policy directory, state, socket, pins, cgroup and metrics port.
struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    cgroup: Cgroup,
    pins: PathBuf,
    metrics: SocketAddr,
}

impl Daemon {
    fn new() -> Self {
        let name = unique_name("daemon");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("instances")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            child: None,
            cgroup: Cgroup::create(&cgroup2_mount().unwrap(), &name).unwrap(),
            pins: PathBuf::from("/sys/fs/bpf").join(&name),
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        }
    }

    fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("instances")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn args(&self) -> Vec<String> {
        let attach_at = if std::env::var_os("ISOLATE_IN_VM").is_some() {
            cgroup2_mount().unwrap()
        } else {
            self.cgroup.path().to_path_buf()
        };
        [
            "--policy-dir",
            &self.policy_dir().to_string_lossy(),
            "--state-dir",
            &self.dir.path().join("state").to_string_lossy(),
            "--control-socket",
            &self.socket().to_string_lossy(),
            "--metrics",
            &self.metrics.to_string(),
            "--cgroup",
            &attach_at.to_string_lossy(),
            "--pin-dir",
            &self.pins.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn write_policy(&self, name: &str, user: &TestUser, allow: &str) {
        std::fs::write(
            self.policy_dir().join(format!("{name}.toml")),
            format!(
                "user = \"{}\"\n[network]\ndns = \"none\"\nallow = [{allow}]\n",
                user.name
            ),
        )
        .unwrap();
    }

    /// Starts the daemon and waits until its control socket answers.
    fn start(&mut self) {
        self.start_with(&[]);
    }

    /// As `start`, with more daemon options.
    fn start_with(&mut self, options: &[&str]) {
        // Appended to: a restarted daemon's lines follow its predecessor's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = Command::new(common::isolate_binary())
            .arg("daemon")
            .args(self.args())
            .args(options)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let socket = self.socket().to_string_lossy().into_owned();
        common::wait_until_started("the daemon", &mut child, || {
            !run_isolate(&["status", "--control-socket", &socket])
                .0
                .contains("from the kernel")
        });
        self.child = Some(child);
    }

    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().cast_signed()), signal)
            .unwrap();
        child.wait().unwrap();
    }

    fn reload(&self) -> bool {
        run_isolate(&[
            "reload",
            "--control-socket",
            &self.socket().to_string_lossy(),
        ])
        .1
    }

    fn status_json(&self) -> serde_json::Value {
        let (text, ok) = run_isolate(&[
            "status",
            "--json",
            "--control-socket",
            &self.socket().to_string_lossy(),
            "--state-dir",
            &self.dir.path().join("state").to_string_lossy(),
            "--pin-dir",
            &self.pins.to_string_lossy(),
        ]);
        assert!(ok, "isolate status failed");
        serde_json::from_str(&text).unwrap()
    }

    fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(self.metrics).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text
    }

    fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }

    /// Where the daemon's stderr goes (its log, and its audit records where journald does
    /// not run).
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- the daemon's log:\n{}--- end of the daemon's log",
                self.log()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut cleanup = Command::new(common::isolate_binary());
        // --force: a test that failed may have left a process of its user behind; the test's
        // pins must go all the same.
        cleanup
            .arg("daemon")
            .args(self.args())
            .args(["--cleanup", "--force"]);
        if !cleanup.status().is_ok_and(|s| s.success()) {
            eprintln!("isolate daemon --cleanup failed");
        }
    }
}

/// The instance called `name` in a status answer.
fn instance_named(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} missing from {status}"))
}

/// Runs `isolate ARGS`; returns stdout and whether it succeeded.
fn run_isolate(args: &[&str]) -> (String, bool) {
    let out = Command::new(common::isolate_binary())
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// `promtool check metrics` finds nothing to say about the exposition (names, units, types,
/// help) of the scrape `response`.
fn promtool_accepts(response: &str) {
    let Some(promtool) = common::promtool() else {
        return;
    };
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the metric line `name{labels}` (labels as Prometheus sorts them).
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn blocked_series(instance: &str) -> String {
    format!(
        "isolate_blocked_total{{family=\"ipv4\",isolate_instance=\"{instance}\",layer=\"ebpf\",protocol=\"tcp\"}}"
    )
}

fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn side_by_side() {
    let (user_a, user_b) = (TestUser::new(), TestUser::new());
    let (listener_a, port_a) = listen();
    let (listener_b, port_b) = listen();
    let mut daemon = Daemon::new();
    daemon.write_policy(
        "alpha",
        &user_a,
        &format!("\"127.0.0.1/32:{}/tcp\"", port_a.port()),
    );
    daemon.write_policy(
        "beta",
        &user_b,
        &format!("\"127.0.0.1/32:{}/tcp\"", port_b.port()),
    );
    daemon.start();

    // Each instance is confined by its own policy only.
    let attempt = |user: &TestUser, to: SocketAddr| {
        probe::run_in(daemon.cgroup(), user.uid, Mode::Tcp, to).code
    };
    assert_eq!(attempt(&user_a, port_a), 0);
    assert_eq!(attempt(&user_a, port_b), libc::EPERM);
    assert_eq!(attempt(&user_a, port_b), libc::EPERM);
    assert_eq!(attempt(&user_b, port_b), 0);
    assert_eq!(attempt(&user_b, port_a), libc::EPERM);
    assert!(accept_one(&listener_a).is_some() && accept_one(&listener_b).is_some());
    assert!(
        accept_one(&listener_a).is_none(),
        "only the allowed connect reached alpha's listener"
    );

    // Metrics equal the attempts.
    let text = daemon.metrics();
    promtool_accepts(&text);
    assert_eq!(metric(&text, &blocked_series("alpha")), Some(2), "{text}");
    assert_eq!(metric(&text, &blocked_series("beta")), Some(1), "{text}");
    assert_eq!(metric(&text, "isolate_instances"), Some(2), "{text}");
    assert_eq!(
        metric(
            &text,
            "isolate_policy_entries{family=\"ipv4\",isolate_instance=\"alpha\"}"
        ),
        Some(1),
        "{text}"
    );
    assert!(
        !text.contains("127.0.0.1"),
        "no destination addresses in labels"
    );

    // Status from the daemon.
    let status = daemon.status_json();
    assert_eq!(status["daemon_running"], true);
    // Whether unix-socket allowlists are enforced is said in status and metrics alike (the
    // host kernel here refuses the programs; the VM kernels run them).
    let unix = status["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "unix")
        .unwrap_or_else(|| panic!("no unix entry in {status}"))
        .clone();
    let available = unix["available"].as_bool().unwrap();
    assert_eq!(unix["reason"].is_null(), available, "{unix}");
    assert_eq!(
        metric(&text, "isolate_layer_available{layer=\"unix\"}"),
        Some(u64::from(available)),
        "{text}"
    );
    let by_name = instance_named;
    assert_eq!(by_name(&status, "alpha")["blocked_ebpf"], 2);
    assert_eq!(by_name(&status, "alpha")["uid"], user_a.uid);
    assert_eq!(by_name(&status, "beta")["blocked_ebpf"], 1);
    assert_eq!(
        by_name(&status, "alpha")["recent"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{status}"
    );
    // Each names the entry of alpha's own file that would allow it.
    let fix = format!(
        "fix: add \"127.0.0.1:{}/tcp\" to network.allow in {}",
        port_b.port(),
        daemon.policy_dir().join("alpha.toml").display()
    );
    assert!(
        by_name(&status, "alpha")["recent"][0]
            .as_str()
            .is_some_and(|r| r.ends_with(&fix)),
        "{status}\nshould end with: {fix}"
    );
    log_shows_the_records(&daemon, port_b, &fix, &user_b);

    reloads(&daemon, (&user_a, port_a), (&user_b, port_b));
}

/// `isolate log`: alpha's latest refusals as the trail records them, with their fix; then,
/// following beta, a refusal that happens while it follows.
fn log_shows_the_records(daemon: &Daemon, port_b: SocketAddr, fix: &str, user_b: &TestUser) {
    let socket = daemon.socket().to_string_lossy().into_owned();
    let (text, ok) = run_isolate(&["log", "alpha", "--control-socket", &socket]);
    assert!(ok, "isolate log failed: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for line in &lines {
        assert!(
            line.starts_with(&format!("isolate-alpha-blocked tcp {port_b} "))
                && line.ends_with(fix),
            "{line}"
        );
    }
    let (text, ok) = run_isolate(&["log", "nosuch", "--control-socket", &socket]);
    assert!(
        !ok && text.is_empty(),
        "an unknown instance is an error: {text}"
    );

    let mut follower = Command::new(common::isolate_binary())
        .args(["log", "--follow", "beta", "--control-socket", &socket])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // Refused while following (or, if before the follower asked, among its history).
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let refused = probe::run_in(daemon.cgroup(), user_b.uid, Mode::Tcp, elsewhere);
    assert_eq!(refused.code, libc::EPERM);
    let wanted = format!("isolate-beta-blocked tcp {elsewhere} ");
    let started = std::time::Instant::now();
    let seen = loop {
        let left = Duration::from_mins(1).saturating_sub(started.elapsed());
        match received.recv_timeout(left) {
            Ok(line) if line.starts_with(&wanted) => break Some(line),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    let seen = seen.unwrap_or_else(|| panic!("`isolate log -f beta` never showed {wanted}"));
    assert!(
        seen.ends_with(&format!(
            "fix: add \"{elsewhere}/tcp\" to network.allow in {}",
            daemon.policy_dir().join("beta.toml").display()
        )),
        "{seen}"
    );
}

/// Reload with a bad policy, a good change, and a removed file.
fn reloads(
    daemon: &Daemon,
    (user_a, port_a): (&TestUser, SocketAddr),
    (user_b, port_b): (&TestUser, SocketAddr),
) {
    let attempt = |user: &TestUser, to: SocketAddr| {
        probe::run_in(daemon.cgroup(), user.uid, Mode::Tcp, to).code
    };
    // A bad policy is reported and the instance keeps its previous policy.
    std::fs::write(
        daemon.policy_dir().join("alpha.toml"),
        "user = \"x\"\n[network]\nallow = [\"10.0.0.1/8\"]\n",
    )
    .unwrap();
    assert!(!daemon.reload(), "reload reports the failure");
    assert_eq!(attempt(user_a, port_a), 0, "alpha still has its old policy");
    assert_eq!(attempt(user_a, port_b), libc::EPERM);
    assert_eq!(
        metric(
            &daemon.metrics(),
            "isolate_policy_reloads_total{result=\"failed\"}"
        ),
        Some(1)
    );

    // A good change applies; other instances are untouched.
    daemon.write_policy(
        "alpha",
        user_a,
        &format!("\"127.0.0.1/32:{}/tcp\"", port_b.port()),
    );
    assert!(daemon.reload());
    assert_eq!(
        attempt(user_a, port_b),
        0,
        "the new policy allows beta's port"
    );
    assert_eq!(
        attempt(user_a, port_a),
        libc::EPERM,
        "and no longer alpha's"
    );
    assert_eq!(attempt(user_b, port_a), libc::EPERM, "beta unchanged");

    // Removing a file removes that instance's enforcement.
    std::fs::remove_file(daemon.policy_dir().join("beta.toml")).unwrap();
    assert!(daemon.reload());
    assert_eq!(attempt(user_b, port_a), 0, "beta is no longer confined");
    assert_eq!(metric(&daemon.metrics(), "isolate_instances"), Some(1));
}

fn restart() {
    let user = TestUser::new();
    let (allowed, allowed_addr) = listen();
    let (_blocked, blocked_addr) = listen();
    std::thread::spawn(move || {
        for stream in allowed.incoming() {
            drop(stream);
        }
    });
    let mut daemon = Daemon::new();
    daemon.write_policy(
        "gamma",
        &user,
        &format!("\"127.0.0.1/32:{}/tcp\"", allowed_addr.port()),
    );
    daemon.start();

    // A client hammers both destinations while the daemon is killed and restarted.
    let mut client = probe::run_loop(daemon.cgroup(), user.uid, allowed_addr, blocked_addr, 300);
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal(nix::sys::signal::Signal::SIGKILL);

    // Without a daemon, status reads the kernel.
    let status = daemon.status_json();
    assert_eq!(status["daemon_running"], false);
    let instances = status["instances"].as_array().unwrap();
    assert!(
        instances
            .iter()
            .any(|i| i["name"] == "gamma" && i["uid"] == user.uid),
        "{status}"
    );

    daemon.start();
    let ok = client.wait().unwrap().success();
    assert!(
        ok,
        "a forbidden connect got through, or an allowed one was refused, around the restart"
    );
    let blocked: u64 = metric(&daemon.metrics(), &blocked_series("gamma")).unwrap();
    assert_eq!(
        blocked, 300,
        "every forbidden attempt was counted, across the restart"
    );

    // SIGTERM leaves enforcement in place; --cleanup takes it away.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        probe::run_in(daemon.cgroup(), user.uid, Mode::Tcp, blocked_addr).code,
        libc::EPERM
    );
    let (_, ok) = run_isolate(
        &[
            &["daemon"][..],
            &daemon.args().iter().map(String::as_str).collect::<Vec<_>>(),
            &["--cleanup"],
        ]
        .concat(),
    );
    assert!(ok, "cleanup");
    assert!(!daemon.pins.exists(), "no pins left");
    assert_eq!(
        probe::run_in(daemon.cgroup(), user.uid, Mode::Tcp, blocked_addr).code,
        0,
        "nothing enforced"
    );
}

/// An admin's typo must not open the instance: a daemon restarted while its policy file is
/// broken keeps the last good enforcement (adopted from the pins), says so in status, and a
/// reload while the policy directory is missing changes nothing.
fn broken_policy_across_restart() {
    let user = TestUser::new();
    let (_blocked, blocked_addr) = listen();
    let mut daemon = Daemon::new();
    daemon.write_policy("delta", &user, "\"192.0.2.1/32:443/tcp\"");
    daemon.start();
    let refused = |daemon: &Daemon| {
        probe::run_in(daemon.cgroup(), user.uid, Mode::Tcp, blocked_addr).code == libc::EPERM
    };
    assert!(refused(&daemon), "enforced before the restart");

    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let file = daemon.policy_dir().join("delta.toml");
    std::fs::write(&file, "user = \"nobody-at-all\"\nbogus = true\n").unwrap();
    daemon.start();
    assert!(
        refused(&daemon),
        "a broken file after a restart opened the instance"
    );
    let status = daemon.status_json();
    let delta = instance_named(&status, "delta");
    assert_eq!(delta["uid"], user.uid);
    assert!(
        delta["kept"]
            .as_str()
            .is_some_and(|why| why.contains("bogus")),
        "status says why it runs on its last good policy: {status}"
    );

    let moved = daemon.dir.path().join("moved");
    std::fs::rename(daemon.policy_dir(), &moved).unwrap();
    assert!(
        !daemon.reload(),
        "a reload without the directory reports the failure"
    );
    assert!(
        refused(&daemon),
        "a missing directory removed the enforcement"
    );
    std::fs::rename(&moved, daemon.policy_dir()).unwrap();
}

/// The daemon confines the instance's UID by its own file: a run that brings a policy with
/// other network rules for the same instance would have them silently ignored, so it is
/// refused before anything is touched.
fn exec_with_another_network() {
    let user = TestUser::new();
    let mut daemon = Daemon::new();
    daemon.write_policy("epsilon", &user, "\"192.0.2.1/32:443/tcp\"");
    daemon.start();
    let mine = daemon.dir.path().join("mine.toml");
    std::fs::write(
        &mine,
        format!(
            "name = \"epsilon\"\nuser = \"{}\"\n[network]\ndns = \"none\"\nallow = [\"0.0.0.0/0\"]\n",
            user.name
        ),
    )
    .unwrap();
    let out = Command::new(common::isolate_binary())
        .args(["exec", "--policy"])
        .arg(&mine)
        .arg("--control-socket")
        .arg(daemon.socket())
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("with another network section than"),
        "{stderr}"
    );
    assert!(
        !Path::new("/var/lib/isolate/epsilon").exists(),
        "nothing was touched"
    );
}

fn exec_handoff() {
    // `isolate exec` puts its child in its own cgroup under the cgroup2 root: only a daemon
    // attached at the root (the VM suite) confines it.
    if std::env::var_os("ISOLATE_IN_VM").is_none() {
        eprintln!("exec_handoff: runs in the VM suite only (needs the daemon at the root cgroup)");
        return;
    }
    let user = TestUser::new();
    let (_blocked, blocked_addr) = listen();
    let mut daemon = Daemon::new();
    std::fs::write(
        daemon.policy_dir().join("delta.toml"),
        format!(
            "user = \"{}\"\ndirectory = \"/tmp\"\n[network]\ndns = \"none\"\n[filesystem]\nread_only = [\"/usr\", \"/etc\"]\nexec = [\"/usr/bin\", \"/bin\"]\n",
            user.name
        ),
    )
    .unwrap();
    daemon.start();
    let out = Command::new(common::isolate_binary())
        .args(["exec", "--instance", "delta", "--policy-dir"])
        .arg(daemon.policy_dir())
        .arg("--control-socket")
        .arg(daemon.socket())
        .args([
            "--",
            "/bin/bash",
            "-c",
            &format!("echo > /dev/tcp/127.0.0.1/{}", blocked_addr.port()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the connect was refused: {stderr}"
    );
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(
        stderr.contains("network layers enforced by the daemon"),
        "{stderr}"
    );
    let status = daemon.status_json();
    let delta = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "delta")
        .cloned()
        .unwrap();
    assert_eq!(delta["blocked_ebpf"], 1, "the daemon counted it: {status}");
    assert_eq!(
        delta["recent"].as_array().unwrap().len(),
        1,
        "and recorded it: {status}"
    );
}
