//! The real `opencode serve` (npm package `opencode-ai`, installed by `cargo xtask setup`)
//! under `isolate exec`, with the policy a user copies: `examples/opencode.toml`, compiled in,
//! with only its name, project directory and port replaced (and the binary's directory added to
//! `exec` when it is not where npm puts it).
//!
//! Each test starts opencode in its own network namespace as the README says to, waits until
//! it answers on loopback, checks that what it tries to reach beyond the policy is refused and
//! recorded as a block event while it keeps serving, then stops `isolate` with SIGTERM and
//! checks that nothing of the instance is left.
//!
//! The binary is `$OPENCODE_BIN` (the VM suite shares it as `/share/opencode/opencode`), else
//! where `cargo xtask setup` installs it. A missing binary fails the tests.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sandbox::unique_name;

/// The policy under test, exactly as shipped.
const EXAMPLE: &str = include_str!("../../examples/opencode.toml");
/// The version `cargo xtask setup` installs (xtask/src/opencode.rs).
const OPENCODE_VERSION: &str = "1.18.33";
/// What the fake resolver answers for names the test serves itself: an address of TEST-NET-1
/// that the test puts on the loopback device of its own network namespace (a loopback answer
/// would not do: isolate never admits a name's loopback answer).
const LOCAL_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn main() -> ExitCode {
    common::run_tests(&[
        (
            "opencode_serves_under_the_example_policy_and_its_calls_out_are_blocked",
            serves_and_is_confined,
        ),
        (
            "with_dns_off_its_lookups_are_blocked_and_it_still_serves",
            dns_off,
        ),
        (
            "a_host_added_to_the_allow_list_is_reached_and_the_rest_stays_blocked",
            allowed_host,
        ),
        (
            "learn_mode_proposes_a_policy_under_which_opencode_serves_with_no_refusal",
            learn_mode,
        ),
    ])
}

/// Learn mode from a policy that grants opencode only its programs and system files: no
/// destination, no port to serve, no home. opencode serves under `--learn`, and the policy
/// written then (its port to serve, its lookups by name, its home directories) has opencode
/// serve again, enforced, with no refusal: nothing recorded, both names looked up answered.
fn learn_mode() {
    let resolver = first_nameserver().expect(
        "this test needs a `nameserver` line in /etc/resolv.conf (dns = \"system\" allows it)",
    );
    let dns = FakeDns::start(resolver, &[]);
    let run = Run::prepare(Dns::System, &[]);
    let starting = run.policy.with_file_name("starting.toml");
    let text = std::fs::read_to_string(&run.policy).unwrap();
    let mut bare = String::new();
    for line in text.lines() {
        // Keep read_only and exec; nothing to reach, serve or write.
        let line = match line.split(" = ").next() {
            Some("allow" | "listen") => line.split(" = ").next().map(|k| format!("{k} = []")),
            Some("read_write") => Some("read_write = []".to_owned()),
            _ => None,
        }
        .unwrap_or_else(|| line.to_owned());
        bare.push_str(&line);
        bare.push('\n');
    }
    std::fs::write(&starting, bare).unwrap();
    let learned = run.policy.with_file_name("learned.toml");
    // Its start-up lookups: answered, not refused, when learning and under what was learned.
    let wanted = ["models.opencode.ai", "registry.npmjs.org"];
    run.launch(&starting, Some(&learned));
    serve_and_look_up(&run, &dns, &wanted);
    run.stop();
    assert!(
        run.records().is_empty(),
        "learn mode recorded refusals: {:?}",
        run.records()
    );
    let proposed = std::fs::read_to_string(&learned)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", learned.display(), run.diagnostics()));
    let policy = isolate_policy::load_file(&learned).unwrap_or_else(|e| panic!("{e}\n{proposed}"));
    let listen: Vec<String> = policy
        .network
        .listen_v4
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        listen,
        [format!("127.0.0.1/32:{}/tcp", run.port)],
        "{proposed}"
    );
    let hosts: Vec<String> = policy
        .network
        .hosts
        .iter()
        .map(ToString::to_string)
        .collect();
    for name in wanted {
        assert!(
            hosts.iter().any(|h| h.starts_with(name)),
            "{name} in\n{proposed}"
        );
    }
    assert!(
        policy
            .filesystem
            .read_write
            .iter()
            .any(|p| p.starts_with("~")),
        "its home directories:\n{proposed}"
    );
    eprintln!("learned policy for opencode {OPENCODE_VERSION}:\n{proposed}");

    // Enforced: it serves, and nothing is refused.
    dns.forget();
    run.launch(&learned, None);
    serve_and_look_up(&run, &dns, &wanted);
    run.assert_healthy();
    assert!(
        run.records().is_empty(),
        "refused under the learned policy: {:?}\n{proposed}\n{}",
        run.records(),
        run.diagnostics()
    );
    run.stop();
    run.assert_clean();
}

/// How long opencode may take to answer (it takes about 4 s on the host; far longer under TCG).
fn startup_timeout() -> Duration {
    if std::env::var_os("ISOLATE_IN_VM").is_some() {
        Duration::from_mins(4)
    } else {
        Duration::from_mins(1)
    }
}

/// The example as served, with a fake resolver answering every name with an address of
/// 203.0.113.0/24: opencode's lookups of models.opencode.ai and registry.npmjs.org are refused
/// by isolate's resolver and recorded by name, without ever reaching the fake resolver, and
/// opencode keeps serving.
fn serves_and_is_confined() {
    let resolver = first_nameserver().expect(
        "this test needs a `nameserver` line in /etc/resolv.conf (dns = \"system\" allows it)",
    );
    let dns = FakeDns::start(resolver, &[]);
    let run = Run::start(Dns::System, &[]);
    let started = run.wait_healthy();
    // The first request about the project loads its configuration, which installs opencode's
    // plugin from npm (the registry lookup awaited below).
    let project = run.get("/project/current").unwrap_or_default();
    if run.git {
        assert!(
            project.contains("\"vcs\":\"git\"")
                && project.contains(&*run.project.to_string_lossy()),
            "opencode ran git on the project: {project}\n{}",
            run.diagnostics()
        );
    }
    let files = run.get("/file?path=.").unwrap_or_default();
    assert!(
        files.contains("README.md"),
        "opencode lists the project: {files}"
    );

    // Both names opencode looks up at start, refused by name and recorded.
    let wanted = ["models.opencode.ai", "registry.npmjs.org"];
    let deadline = Instant::now() + startup_timeout();
    let mut missing: Vec<String>;
    loop {
        let records = run.records();
        missing = wanted
            .iter()
            .filter(|name| !records.iter().any(|r| r.refuses_lookup_of(&run.name, name)))
            .map(|name| (*name).to_owned())
            .collect();
        run.sample_rss();
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        missing.is_empty(),
        "no block event for {missing:?}; names answered: {:?}\n{}",
        dns.answered(),
        run.diagnostics()
    );
    let records = run.records();
    let blocked = records.len();
    for record in &records {
        assert!(
            record.layer == "resolver" || record.layer == "ebpf-connect",
            "refused by isolate's resolver or the eBPF layer at connect: {record:?}"
        );
    }
    assert!(
        dns.answered()
            .keys()
            .all(|name| !wanted.contains(&name.as_str())),
        "a refused name reached the resolver: {:?}",
        dns.answered()
    );
    run.assert_healthy();
    // Its state landed in the instance's home, TMPDIR included.
    for dir in [".local/share/opencode", ".config/opencode", "tmp/opencode"] {
        assert!(run.home.join(dir).is_dir(), "{dir} in the instance home");
    }
    let stopped = run.stop();
    eprintln!(
        "opencode {OPENCODE_VERSION}: answered after {:.1} s; {blocked} blocked attempt(s) recorded; \
         RSS at most {} MiB; SIGTERM to exit {:.2} s",
        started.as_secs_f64(),
        run.max_rss_kib() / 1024,
        stopped.as_secs_f64()
    );
    run.assert_clean();
}

/// The example with `dns = "none"`: the lookups themselves are refused and recorded (UDP to
/// the resolver), and opencode serves regardless.
fn dns_off() {
    let resolver = first_nameserver().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let run = Run::start(Dns::None, &[]);
    let started = run.wait_healthy();
    let prefix = format!(
        "isolate-{}-blocked udp {}",
        run.name,
        SocketAddr::new(resolver, 53)
    );
    let deadline = Instant::now() + startup_timeout();
    while !run.records().iter().any(|r| r.message.starts_with(&prefix)) {
        assert!(
            Instant::now() < deadline,
            "no `{prefix}` block event\n{}",
            run.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    run.assert_healthy();
    let refused = run
        .records()
        .iter()
        .filter(|r| r.message.starts_with(&prefix))
        .count();
    let stopped = run.stop();
    eprintln!(
        "opencode {OPENCODE_VERSION}, dns = \"none\": answered after {:.1} s; {refused} lookup(s) \
         refused and recorded; RSS at most {} MiB; SIGTERM to exit {:.2} s",
        started.as_secs_f64(),
        run.max_rss_kib() / 1024,
        stopped.as_secs_f64()
    );
    run.assert_clean();
}

/// The README's way to let a provider in: a host name added to `network.allow`. opencode's own
/// lookup of it goes through isolate's resolver to the fake resolver, which answers 192.0.2.2
/// (where the test listens on 443); the answer is admitted before opencode gets it, so its
/// connection goes through at once, unrecorded, while the other name is refused by name.
fn allowed_host() {
    let resolver = first_nameserver().expect(
        "this test needs a `nameserver` line in /etc/resolv.conf (dns = \"system\" allows it)",
    );
    add_to_loopback(LOCAL_ANSWER.into());
    let provider = TcpListener::bind((LOCAL_ANSWER, 443)).expect("listen on 192.0.2.2:443");
    provider.set_nonblocking(true).unwrap();
    let dns = FakeDns::start(resolver, &["models.opencode.ai"]);
    let run = Run::start(Dns::System, &["models.opencode.ai:443/tcp"]);
    run.wait_healthy();
    // Loads the project's configuration, which installs the plugin from npm.
    run.get("/project/current");
    let deadline = Instant::now() + startup_timeout();
    let mut reached = false;
    let mut npm_blocked = false;
    while !(reached && npm_blocked) {
        assert!(
            Instant::now() < deadline,
            "reached the allowed host: {reached}; registry.npmjs.org blocked: {npm_blocked}; \
             names answered: {:?}\n{}",
            dns.answered(),
            run.diagnostics()
        );
        reached |= provider.accept().is_ok();
        npm_blocked = run
            .records()
            .iter()
            .any(|r| r.refuses_lookup_of(&run.name, "registry.npmjs.org"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let allowed = format!("isolate-{}-blocked tcp {LOCAL_ANSWER}:", run.name);
    assert!(
        !run.records()
            .iter()
            .any(|r| r.message.starts_with(&allowed)),
        "the allowed host was recorded as blocked: {:?}",
        run.records()
    );
    run.assert_healthy();
    run.stop();
    run.assert_clean();
}

/// Waits until opencode serves and lists the project, and until each of `names` was looked up
/// and answered, then a little more for the connects that follow the answers.
fn serve_and_look_up(run: &Run, dns: &FakeDns, names: &[&str]) {
    run.wait_healthy();
    run.get("/project/current");
    // Observed by a learning run, the first listing of a project can take longer than one
    // request waits under TCG: asked again until it comes.
    let deadline = Instant::now() + startup_timeout();
    loop {
        let files = run.get("/file?path=.").unwrap_or_default();
        if files.contains("README.md") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "opencode lists the project: {files}\n{}",
            run.diagnostics()
        );
    }
    while !names.iter().all(|n| dns.answered().contains_key(*n)) {
        assert!(
            Instant::now() < deadline,
            "answered: {:?}\n{}",
            dns.answered(),
            run.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
}

/// One block event as the audit sink wrote it.
#[derive(Debug)]
struct Record {
    message: String,
    layer: String,
}

impl Record {
    /// Whether this is isolate's resolver refusing `instance`'s lookup of `name` (any record
    /// type, over UDP or TCP).
    fn refuses_lookup_of(&self, instance: &str, name: &str) -> bool {
        ["udp", "tcp"].iter().any(|protocol| {
            self.message.starts_with(&format!(
                "isolate-{instance}-blocked {protocol} dns {name} "
            ))
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dns {
    /// As shipped.
    System,
    None,
}

/// One `isolate exec … opencode serve` and what the test learnt about it.
struct Run {
    name: String,
    /// The example as this run serves it.
    policy: PathBuf,
    binary: PathBuf,
    port: u16,
    home: PathBuf,
    project: PathBuf,
    git: bool,
    child: Mutex<Option<Child>>,
    uid: Mutex<Option<u32>>,
    stderr: Arc<Mutex<Vec<String>>>,
    max_rss_kib: Mutex<u64>,
    _dir: tempfile::TempDir,
}

impl Run {
    /// `allow` is added to the example's `network.allow`.
    fn start(dns: Dns, allow: &[&str]) -> Self {
        let run = Self::prepare(dns, allow);
        run.launch(&run.policy, None);
        run
    }

    /// The run's project, policy and home, without starting it.
    fn prepare(dns: Dns, allow: &[&str]) -> Self {
        let binary = opencode_binary();
        let name = unique_name("oc")
            .trim_start_matches("isolate-test-")
            .replace('_', "-");
        let dir = tempfile::Builder::new()
            .prefix("isolate-opencode-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let binary = reachable_by_others(&binary, dir.path());
        let (project, git) = make_project(dir.path());
        let port = free_port();
        let policy = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &policy,
            policy_text(&name, &project, port, binary.parent().unwrap(), dns, allow),
        )
        .unwrap();

        let home = instance_home(&policy);
        if git {
            // The README's advice for a dynamic user: let git trust a project it does not own.
            std::fs::create_dir_all(&home).unwrap();
            std::fs::write(
                home.join(".gitconfig"),
                format!("[safe]\n\tdirectory = {}\n", project.display()),
            )
            .unwrap();
        }

        Self {
            name,
            policy,
            binary,
            port,
            home,
            project,
            git,
            child: Mutex::new(None),
            uid: Mutex::new(None),
            stderr: Arc::new(Mutex::new(Vec::new())),
            max_rss_kib: Mutex::new(0),
            _dir: dir,
        }
    }

    /// Starts opencode under `policy` (learning into `learn`, when given).
    fn launch(&self, policy: &Path, learn: Option<&Path>) {
        // The README's command, with a clean environment as a service manager gives.
        let mut cmd = Command::new(common::isolate_binary());
        cmd.arg("exec").arg("--policy").arg(policy);
        if let Some(file) = learn {
            cmd.arg("--learn").arg(file);
        }
        cmd.arg("--")
            .arg(&self.binary)
            .args([
                "serve",
                "--port",
                &self.port.to_string(),
                "--hostname",
                "127.0.0.1",
            ])
            .arg("--print-logs")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in ["ISOLATE_IN_VM", "RUST_LOG"] {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        let mut child = cmd.spawn().expect("start isolate exec");
        collect_lines(child.stderr.take().unwrap(), Arc::clone(&self.stderr));
        collect_lines(child.stdout.take().unwrap(), Arc::clone(&self.stderr));
        *self.child.lock().unwrap() = Some(child);
    }

    /// Waits until `GET /global/health` answers; returns how long that took.
    fn wait_healthy(&self) -> Duration {
        let started = Instant::now();
        loop {
            // A request accepted while opencode is still starting may never be answered.
            if let Some(body) = self.get_within("/global/health", Duration::from_secs(2))
                && body.contains("\"healthy\":true")
            {
                self.sample_rss();
                return started.elapsed();
            }
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
            {
                panic!(
                    "isolate exited ({status}) before opencode answered\n{}",
                    self.diagnostics()
                );
            }
            assert!(
                started.elapsed() < startup_timeout(),
                "opencode did not answer on 127.0.0.1:{} within {:?}\n{}",
                self.port,
                startup_timeout(),
                self.diagnostics()
            );
            self.sample_rss();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn assert_healthy(&self) {
        let body = self.get("/global/health").unwrap_or_default();
        assert!(
            body.contains("\"healthy\":true"),
            "opencode still serves: {body}\n{}",
            self.diagnostics()
        );
    }

    /// The body of a 200 answer to `GET path`, from the test (root, outside the instance).
    /// opencode keeps connections open whatever the request says, so the body is read by its
    /// length (or its chunks).
    fn get(&self, path: &str) -> Option<String> {
        // Under TCG the first requests about a project take many seconds.
        let timeout = if std::env::var_os("ISOLATE_IN_VM").is_some() {
            Duration::from_mins(1)
        } else {
            Duration::from_secs(10)
        };
        self.get_within(path, timeout)
    }

    /// As `get`, waiting at most `timeout` for each read.
    fn get_within(&self, path: &str, timeout: Duration) -> Option<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(timeout)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).ok()?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).ok()?;
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse::<usize>().ok();
            }
            chunked |= header.starts_with("transfer-encoding:") && header.contains("chunked");
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).ok()?;
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).ok()?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length?, 0);
            reader.read_exact(&mut body).ok()?;
        }
        status
            .starts_with("HTTP/1.1 200")
            .then(|| String::from_utf8_lossy(&body).into_owned())
    }

    /// Adds up the RSS of the instance's processes; keeps the largest sum seen.
    fn sample_rss(&self) {
        let procs =
            std::fs::read_to_string(cgroup_of(&self.name).join("cgroup.procs")).unwrap_or_default();
        let mut total = 0;
        for pid in procs.split_whitespace() {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            for line in status.lines() {
                if let Some(kib) = line.strip_prefix("VmRSS:") {
                    total += kib
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
                if let Some(uids) = line.strip_prefix("Uid:") {
                    // The child joins the cgroup before it drops root: a process seen that
                    // early still shows UID 0, which is not the instance's.
                    let uid = uids
                        .split_whitespace()
                        .next()
                        .and_then(|u| u.parse::<u32>().ok())
                        .filter(|&u| u != 0);
                    let mut known = self.uid.lock().unwrap();
                    if known.is_none() {
                        *known = uid;
                    }
                }
            }
        }
        let mut max = self.max_rss_kib.lock().unwrap();
        *max = (*max).max(total);
    }

    fn max_rss_kib(&self) -> u64 {
        *self.max_rss_kib.lock().unwrap()
    }

    /// The instance's audit records: journald's where journald runs (the VM suite's systemd
    /// guest), else isolate's stderr lines.
    fn records(&self) -> Vec<Record> {
        let prefix = format!("isolate-{}-blocked ", self.name);
        if Path::new("/run/systemd/journal/socket").exists() {
            let out = Command::new("journalctl")
                .args([
                    "--no-pager",
                    "-o",
                    "json",
                    &format!("ISOLATE_INSTANCE={}", self.name),
                ])
                .output()
                .expect("journalctl");
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|e| {
                    Some(Record {
                        message: e["MESSAGE"].as_str()?.to_owned(),
                        layer: e["ISOLATE_LAYER"].as_str().unwrap_or_default().to_owned(),
                    })
                })
                .filter(|r| r.message.starts_with(&prefix))
                .collect();
        }
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| Record {
                message: l.clone(),
                layer: l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("layer="))
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect()
    }

    /// Sends SIGTERM to `isolate`; it must exit promptly with 128 + 15 (opencode dies of the
    /// forwarded signal) or 0. Returns how long it took.
    fn stop(&self) -> Duration {
        let mut guard = self.child.lock().unwrap();
        let child = guard.as_mut().unwrap();
        let asked = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().cast_signed()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                drop(guard);
                assert!(
                    matches!(status.code(), Some(0 | 143)),
                    "isolate exited with {status} after SIGTERM\n{}",
                    self.diagnostics()
                );
                return asked.elapsed();
            }
            assert!(
                asked.elapsed() < Duration::from_secs(15),
                "isolate still runs 15 s after SIGTERM\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// No cgroup, pinned eBPF objects, nftables table, dynamic-UID lease or process of the
    /// instance remains.
    fn assert_clean(&self) {
        assert!(!cgroup_of(&self.name).exists(), "cgroup left behind");
        assert!(
            !Path::new(&format!("/sys/fs/bpf/isolate/exec/{}", self.name)).exists(),
            "pins left behind"
        );
        assert!(
            !isolate_enforcer::nft::is_applied(&self.name).unwrap_or(false),
            "nftables table left behind"
        );
        let uid = self
            .uid
            .lock()
            .unwrap()
            .expect("the instance's UID was seen");
        assert!(
            !Path::new(&format!("/run/isolate/dynamic-uids/{uid}")).exists(),
            "the lease of UID {uid} is left behind"
        );
        let survivors: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            survivors.is_empty(),
            "processes of UID {uid} survive: {survivors:?}"
        );
    }

    fn diagnostics(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        let tail = lines.len().saturating_sub(60);
        format!(
            "--- isolate and opencode output (last 60 lines) ---\n{}",
            lines[tail..].join("\n")
        )
    }
}

impl Drop for Run {
    /// Never leaves opencode running (a failed assertion unwinds through here), and removes
    /// the instance's home this test made.
    fn drop(&mut self) {
        if let Ok(mut guard) = self.child.lock()
            && let Some(mut child) = guard.take()
        {
            if child.try_wait().ok().flatten().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id().cast_signed()),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = child.wait();
        }
        if self.home.starts_with("/var/lib/isolate") && self.home.ends_with(&self.name) {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}

/// A project directory in `parent` with a README, a git repository when git is installed
/// (the VM guest has none), readable by every UID.
fn make_project(parent: &Path) -> (PathBuf, bool) {
    let project = parent.join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("README.md"), "# a project\n").unwrap();
    let git = has_git();
    if git {
        for args in [
            &["init", "-q"][..],
            &["add", "README.md"],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-qm",
                "init",
            ],
        ] {
            let status = Command::new("git")
                .args(args)
                .current_dir(&project)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        }
    }
    make_readable(&project);
    (project, git)
}

/// The instance's home, as `isolate exec --dry-run` shows it.
fn instance_home(policy: &Path) -> PathBuf {
    let plan = Command::new(common::isolate_binary())
        .args(["exec", "--dry-run", "--policy"])
        .arg(policy)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let plan_text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.status.success(),
        "isolate exec --dry-run:\n{plan_text}{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    PathBuf::from(
        plan_text
            .lines()
            .find(|l| l.starts_with("user "))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("home=")))
            .expect("the plan names the home"),
    )
}

/// The example with this run's name, project, port, binary directory, `dns` and extra `allow`
/// entries.
fn policy_text(
    name: &str,
    project: &Path,
    port: u16,
    bin_dir: &Path,
    dns: Dns,
    allow: &[&str],
) -> String {
    let mut text = EXAMPLE.to_owned();
    let mut replace = |from: &str, to: &str| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "examples/opencode.toml has one `{from}`"
        );
        text = text.replacen(from, to, 1);
    };
    replace("\nname = \"opencode\"\n", &format!("\nname = \"{name}\"\n"));
    replace(
        "\ndirectory = \"/srv/my-project\"\n",
        &format!("\ndirectory = \"{}\"\n", project.display()),
    );
    replace(
        "\nallow = [\"127.0.0.1/32:8787/tcp\"]\n",
        &format!(
            "\nallow = [{}]\n",
            std::iter::once(format!("127.0.0.1/32:{port}/tcp"))
                .chain(allow.iter().map(|a| (*a).to_owned()))
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    replace(
        "\nlisten = [\"127.0.0.1:8787/tcp\"]\n",
        &format!("\nlisten = [\"127.0.0.1:{port}/tcp\"]\n"),
    );
    replace(
        "\nexec = [",
        &format!("\nexec = [\"{}\", ", bin_dir.display()),
    );
    if dns == Dns::None {
        replace("\ndns = \"system\"\n", "\ndns = \"none\"\n");
    }
    text
}

/// `$OPENCODE_BIN`, else where `cargo xtask setup` installs opencode.
fn opencode_binary() -> PathBuf {
    let path = std::env::var_os("OPENCODE_BIN").map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/var/cache"))
                .join("isolate/opencode/node_modules/opencode-ai/bin/opencode.exe")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "opencode is not installed at {}: run `cargo xtask setup` (it installs opencode-ai \
         {OPENCODE_VERSION} with npm), or point OPENCODE_BIN at an opencode binary",
        path.display()
    );
    path
}

/// `binary` if the instance user (any UID) can reach and run it where it is; else a hard link
/// to it (or a copy) in `dir`, e.g. when it lives under root's 0700 home.
fn reachable_by_others(binary: &Path, dir: &Path) -> PathBuf {
    let others_may = |path: &Path, bits: u32| {
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & bits == bits)
    };
    let reachable =
        others_may(binary, 0o005) && binary.ancestors().skip(1).all(|dir| others_may(dir, 0o001));
    if reachable {
        return binary.to_path_buf();
    }
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let staged = bin.join("opencode");
    if std::fs::hard_link(binary, &staged).is_err() {
        std::fs::copy(binary, &staged).unwrap();
    }
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    staged
}

/// Makes a tree readable by every UID (the test made it as root with a 077 umask, maybe).
fn make_readable(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_symlink() {
        return;
    }
    let mode = meta.permissions().mode();
    let wanted = if meta.is_dir() { 0o055 } else { 0o044 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | wanted)).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            make_readable(&entry.unwrap().path());
        }
    }
}

fn has_git() -> bool {
    Command::new("git")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cgroup_of(instance: &str) -> PathBuf {
    isolate_enforcer::cgroup::cgroup2_mount()
        .unwrap()
        .join("isolate")
        .join(instance)
}

/// The first resolver of /etc/resolv.conf, as glibc uses it.
fn first_nameserver() -> Option<IpAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    isolate_enforcer::network::dns_servers(&isolate_policy::DnsSetting::System, &text)
        .into_iter()
        .next()
}

/// Collects `reader`'s lines into `into`, in a thread of its own.
fn collect_lines(reader: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    });
}

/// Puts `address` on `lo` of the test's own network namespace, so traffic to it stays there.
fn add_to_loopback(address: IpAddr) {
    let prefix = if address.is_ipv4() { 32 } else { 128 };
    let status = Command::new("ip")
        .args(["addr", "add", &format!("{address}/{prefix}"), "dev", "lo"])
        .status()
        .expect("ip addr add (iproute2)");
    assert!(status.success(), "ip addr add {address} dev lo");
}

/// A resolver on the system resolver's address, inside the test's network namespace: an A query
/// for one of the `local` names gets 192.0.2.2 (where the test may listen), any other gets an
/// address of 203.0.113.0/24 (TEST-NET-3), one per name; other queries get an empty answer.
struct FakeDns {
    answered: Arc<Mutex<BTreeMap<String, Ipv4Addr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDns {
    fn start(address: IpAddr, local: &[&str]) -> Self {
        if !address.is_loopback() {
            add_to_loopback(address);
        }
        let socket = UdpSocket::bind((address, 53)).expect("bind the fake resolver");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let answered = Arc::new(Mutex::new(
            local
                .iter()
                .map(|name| ((*name).to_owned(), LOCAL_ANSWER))
                .collect::<BTreeMap<_, _>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let answered = Arc::clone(&answered);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = dns_reply(&buf[..len], &answered) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        Self {
            answered,
            stop,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> BTreeMap<String, Ipv4Addr> {
        self.answered.lock().unwrap().clone()
    }

    /// Forgets what it answered (names answered locally included).
    fn forget(&self) {
        self.answered.lock().unwrap().clear();
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to one DNS query (RFC 1035 §4): the question echoed, and for an A query one
/// record pointing at the name (compression pointer to offset 12).
fn dns_reply(query: &[u8], answered: &Mutex<BTreeMap<String, Ipv4Addr>>) -> Option<Vec<u8>> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).to_lowercase());
        at += 1 + len;
    }
    let question_end = at + 5;
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    let question = query.get(12..question_end)?;
    let answer = (qtype == 1).then(|| {
        let mut names = answered.lock().unwrap();
        let next =
            u8::try_from(names.values().filter(|a| **a != LOCAL_ANSWER).count() + 1).unwrap_or(254);
        *names
            .entry(labels.join("."))
            .or_insert(Ipv4Addr::new(203, 0, 113, next))
    });
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available
    reply.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if let Some(addr) = answer {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&addr.octets());
    }
    Some(reply)
}
