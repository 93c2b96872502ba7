//! What a farm of instances costs, measured in one run (`cargo xtask bench`):
//!
//! - the daemon with both layers, at 10 and 100 instances of 1,000 CIDRs each and 1,000
//!   instances of 100 (`--quick`: 10 and 100 instances of 100): from its start until
//!   `isolate status` lists every instance, one `isolate status`, one `/metrics` scrape, its
//!   resident memory, and a restart after SIGKILL until status lists every instance again
//!   (`--size 1000x100`, repeatable, for only those sizes);
//! - `isolate exec -- /bin/true` with both layers, the eBPF layer and the nftables layer, each
//!   against a bare user switch (`setpriv`) in the same run;
//! - the flood accounting: one instance of the daemon refuses connects at full speed while
//!   another is refused once; the flooder's counter, its audit records and suppressed counts
//!   (and how many events the kernel's budget did not send), and whether the quiet
//!   instance's refusal was recorded.
//!
//! Everything happens in a private network namespace (the nftables tables live there), a
//! child cgroup of this run (the daemon attaches there) and pins of this run's own; the
//! instances' users are made for the run and removed afterwards, as is everything the daemon
//! enforced (`isolate daemon --cleanup`). Status and scrape figures are the median of
//! `REPEATS` runs with the fastest and slowest; start and restart are measured once per size.
//!
//! A benchmark, not a test: it reports what it measured and fails only when a setup step fails.

#![allow(clippy::print_stdout, reason = "the report goes to stdout")]
#![allow(
    clippy::cast_precision_loss,
    reason = "statistics on small, non-negative counts"
)]

#[path = "../tests/common/probe.rs"]
#[allow(dead_code, reason = "the bench uses a part")]
mod probe;
#[path = "../tests/common/records.rs"]
#[allow(dead_code, reason = "the bench uses a part")]
mod records;
#[path = "common/report.rs"]
mod report;
#[path = "../tests/common/sandbox.rs"]
#[allow(dead_code, reason = "the bench uses a part")]
mod sandbox;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use isolate_enforcer::cgroup::{Cgroup, cgroup2_mount};

/// Repetitions of each quick measurement (status, scrape, exec).
const REPEATS: usize = 7;
/// A daemon that has not listed every instance by then counts as failed.
const LISTED_TIMEOUT: Duration = Duration::from_mins(10);

/// How long the flood runs.
const FLOOD_SECONDS: u32 = 3;

fn main() -> ExitCode {
    // The flood's clients are this program, re-executed as an instance's user.
    if let Some(code) = probe::main_if_probe() {
        return code;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("farm bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--size 1000x100` (repeatable) measures only those farms, e.g. while working on one.
    let chosen: Vec<(usize, usize)> = args
        .windows(2)
        .filter(|pair| pair[0] == "--size")
        .map(|pair| parse_size(&pair[1]))
        .collect::<anyhow::Result<_>>()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (it starts the daemon and makes users): run `cargo xtask bench`");
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    sandbox::bring_up_loopback();
    let sizes: &[(usize, usize)] = if !chosen.is_empty() {
        &chosen
    } else if quick {
        &[(10, 100), (100, 100)]
    } else {
        &[(10, 1_000), (100, 1_000), (1_000, 100)]
    };
    let cgroup = Cgroup::create(&cgroup2_mount()?, &sandbox::unique_name("bench-farm"))?;

    // After the connect bench's tables: a blank line ends its last one.
    println!();
    println!(
        "| instances × CIDRs | start until status lists all | `isolate status` | `/metrics` scrape | restart after SIGKILL | daemon RSS |"
    );
    println!("|---|---|---|---|---|---|");
    for &(instances, cidrs) in sizes {
        let farm = Farm::new(instances, cidrs, cgroup.path())?;
        let row = farm.measure()?;
        println!(
            "| {} × {} | {} | {} | {} | {} | {:.0} MiB |",
            report::thousands(instances),
            report::thousands(cidrs),
            seconds(row.start),
            spread(&row.status),
            spread(&row.scrape),
            seconds(row.restart),
            row.rss_kib as f64 / 1024.0
        );
    }
    println!();
    exec_start()?;
    println!();
    flood(cgroup.path())
}

/// `INSTANCESxCIDRS`, as `--size` takes it.
fn parse_size(text: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = text
        .split_once('x')
        .and_then(|(instances, cidrs)| Some((instances.parse().ok()?, cidrs.parse().ok()?)));
    parsed.with_context(|| format!("--size {text}: expected INSTANCESxCIDRS, e.g. 1000x100"))
}

/// A daemon's instances, users and directories for one size; all removed on drop.
struct Farm<'a> {
    names: Vec<String>,
    users: Vec<String>,
    dir: tempfile::TempDir,
    cgroup: &'a Path,
    pins: PathBuf,
    metrics: SocketAddr,
}

struct Row {
    start: Duration,
    status: Vec<Duration>,
    scrape: Vec<Duration>,
    restart: Duration,
    rss_kib: u64,
}

impl<'a> Farm<'a> {
    fn new(instances: usize, cidrs: usize, cgroup: &'a Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("instances"))?;
        let tag = std::process::id() % 10_000;
        let mut farm = Self {
            names: Vec::new(),
            users: Vec::new(),
            dir,
            cgroup,
            pins: PathBuf::from("/sys/fs/bpf").join(sandbox::unique_name("bench-farm")),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..instances {
            let (name, user) = (format!("farm{i:04}"), format!("isofarm{tag}x{i}"));
            let made = Command::new("useradd")
                // Not system users, nor a group each: a thousand of either exhausts the
                // system ranges.
                .args(["--no-create-home", "--no-user-group", "--gid", "nogroup"])
                .args(["--shell", "/usr/sbin/nologin"])
                .arg(&user)
                .status()?;
            if !made.success() {
                bail!("useradd {user} failed");
            }
            farm.users.push(user.clone());
            let allow: Vec<String> = (0..cidrs)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let [a, b, ..] = rng.to_le_bytes();
                    format!("\"10.{a}.{b}.0/24\"")
                })
                .collect();
            std::fs::write(
                farm.dir.path().join(format!("instances/{name}.toml")),
                format!(
                    "user = \"{user}\"\n[network]\ndns = \"none\"\nallow = [{}]\n",
                    allow.join(", ")
                ),
            )?;
            farm.names.push(name);
        }
        Ok(farm)
    }

    fn args(&self) -> Vec<String> {
        let dir = self.dir.path();
        [
            "--policy-dir",
            &dir.join("instances").to_string_lossy(),
            "--state-dir",
            &dir.join("state").to_string_lossy(),
            "--control-socket",
            &dir.join("control.sock").to_string_lossy(),
            "--metrics",
            &self.metrics.to_string(),
            "--cgroup",
            &self.cgroup.to_string_lossy(),
            "--pin-dir",
            &self.pins.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn start(&self) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.path().join("daemon.log"))?;
        Ok(Command::new(isolate())
            .arg("daemon")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }

    /// How many of this farm's instances `isolate status` lists now.
    fn listed(&self) -> anyhow::Result<usize> {
        let out = Command::new(isolate())
            .args(["status", "--json", "--control-socket"])
            .arg(self.dir.path().join("control.sock"))
            .stderr(Stdio::null())
            .output()?;
        let status: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(status) => status,
            Err(_) => return Ok(0),
        };
        if status["daemon_running"] != true {
            return Ok(0);
        }
        Ok(status["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| {
                i["name"]
                    .as_str()
                    .is_some_and(|n| self.names.iter().any(|m| m == n))
            })
            .count())
    }

    fn wait_listed(&self, daemon: &mut Child) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.listed()? < self.names.len() {
            if let Some(status) = daemon.try_wait()? {
                bail!("the daemon exited ({status}); see {}", self.log().display());
            }
            if started.elapsed() > LISTED_TIMEOUT {
                bail!("the daemon did not list every instance within {LISTED_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn measure(&self) -> anyhow::Result<Row> {
        let started = Instant::now();
        let mut daemon = self.start()?;
        let result = self.wait_listed(&mut daemon).and_then(|()| {
            let start = started.elapsed();
            let status = timed(|| self.listed().map(drop))?;
            let scrape = timed(|| self.scrape())?;
            let rss_kib = rss_kib(daemon.id())?;
            kill(&mut daemon, nix::sys::signal::Signal::SIGKILL);
            let restarted = Instant::now();
            daemon = self.start()?;
            self.wait_listed(&mut daemon)?;
            Ok(Row {
                start,
                status,
                scrape,
                restart: restarted.elapsed(),
                rss_kib,
            })
        });
        kill(&mut daemon, nix::sys::signal::Signal::SIGTERM);
        result
    }

    fn scrape(&self) -> anyhow::Result<()> {
        self.metrics().map(drop)
    }

    /// One `/metrics` scrape, the response as text.
    fn metrics(&self) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(self.metrics)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        if !body.contains("isolate_") {
            bail!("the scrape returned no isolate metrics: {body:.200}");
        }
        Ok(body)
    }
}

impl Drop for Farm<'_> {
    fn drop(&mut self) {
        let _ = Command::new(isolate())
            .arg("daemon")
            .args(self.args())
            .arg("--cleanup")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for user in &self.users {
            let _ = Command::new("userdel").arg(user).status();
        }
    }
}

/// `isolate exec -- /bin/true` by layers, against `setpriv` switching to a user as bare.
fn exec_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let policy = dir
        .path()
        .join(format!("bench-exec-{}.toml", std::process::id()));
    std::fs::write(
        &policy,
        "user = \"dynamic\"\n[network]\ndns = \"none\"\nallow = [\"127.0.0.1/32:9\"]\n\n\
         [filesystem]\nread_only = [\"/usr\", \"/etc\"]\nexec = [\"/usr/bin\", \"/bin\"]\n",
    )?;
    let bare = timed(|| {
        run_quietly(Command::new("setpriv").args([
            "--reuid=65524",
            "--regid=65524",
            "--clear-groups",
            "/bin/true",
        ]))
    })?;
    println!("| `isolate exec -- /bin/true` | median (fastest–slowest) | ÷ bare user switch |");
    println!("|---|---|---|");
    println!("| bare `setpriv` user switch | {} | ×1 |", spread(&bare));
    for layers in ["ebpf,nftables", "ebpf", "nftables"] {
        let runs = timed(|| {
            run_quietly(
                Command::new(isolate())
                    .arg("exec")
                    .arg("--policy")
                    .arg(&policy)
                    .args(["--layers", layers, "--", "/bin/true"])
                    .current_dir("/"),
            )
        })?;
        println!(
            "| layers {layers} | {} | ×{:.0} |",
            spread(&runs),
            median(&runs).as_secs_f64() / median(&bare).as_secs_f64()
        );
    }
    Ok(())
}

/// What one flood left: the flooder's refused connects and how they were accounted for, and
/// how the quiet instance's one refusal went.
struct Flood {
    refused: u64,
    elapsed: Duration,
    counter: Option<u64>,
    records: u64,
    suppressed: u64,
    /// Events the kernel's budget did not send (`isolate_events_dropped_total`).
    unsent: Option<u64>,
    quiet_code: i32,
    quiet_recorded: bool,
}

/// One instance floods refused connects for `FLOOD_SECONDS` while another is refused once.
fn flood(cgroup: &Path) -> anyhow::Result<()> {
    let farm = Farm::new(2, 10, cgroup)?;
    let uid = |user: &str| -> anyhow::Result<u32> {
        Ok(nix::unistd::User::from_name(user)?
            .with_context(|| format!("no user {user}"))?
            .uid
            .as_raw())
    };
    let (flooder, quiet) = (uid(&farm.users[0])?, uid(&farm.users[1])?);
    let (flood_name, quiet_name) = (&farm.names[0], &farm.names[1]);
    // Not in either policy: every connect is refused at once.
    let forbidden = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut daemon = farm.start()?;
    let result = farm.wait_listed(&mut daemon).and_then(|()| {
        let started = Instant::now();
        let flood = probe::start_flood(cgroup, flooder, forbidden, FLOOD_SECONDS);
        std::thread::sleep(Duration::from_secs(1));
        let quiet_refusal = probe::run_in(cgroup, quiet, probe::Mode::Tcp, forbidden);
        let refused = probe::flood_count(flood);
        let elapsed = started.elapsed();
        let log = || std::fs::read_to_string(farm.log()).unwrap_or_default();
        let (records, suppressed) = records::trail_once_settled(flood_name, refused, log);
        let metrics = farm.metrics()?;
        let counter = metric(
            &metrics,
            "isolate_blocked_total",
            flood_name,
            "protocol=\"tcp\"",
        );
        let unsent = metric(&metrics, "isolate_events_dropped_total", flood_name, "");
        let quiet_recorded = records::record_messages(quiet_name, &log(), 1)
            .iter()
            .any(|r| r.contains(&format!("{forbidden} ")));
        Ok(Flood {
            refused,
            elapsed,
            counter,
            records,
            suppressed,
            unsent,
            quiet_code: quiet_refusal.code,
            quiet_recorded,
        })
    });
    kill(&mut daemon, nix::sys::signal::Signal::SIGTERM);
    let Flood {
        refused,
        elapsed,
        counter,
        records,
        suppressed,
        unsent,
        quiet_code,
        quiet_recorded,
    } = result?;
    println!(
        "| flood ({FLOOD_SECONDS} s, one instance) | refused connects | kernel counter | audit records | suppressed (not sent by the kernel) | records + suppressed = counter | the quiet instance's one refusal |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} per second | {} | {} | {} | {} ({}) | {} | {} |",
        report::thousands(
            usize::try_from(u128::from(refused) * 1000 / elapsed.as_millis().max(1))
                .unwrap_or(usize::MAX)
        ),
        report::thousands(refused as usize),
        counter.map_or_else(|| "none".to_owned(), |c| report::thousands(c as usize)),
        report::thousands(records as usize),
        report::thousands(suppressed as usize),
        unsent.map_or_else(|| "none".to_owned(), |c| report::thousands(c as usize)),
        if counter == Some(records + suppressed) {
            "yes, exactly"
        } else {
            "NO"
        },
        match (quiet_code == libc::EPERM, quiet_recorded) {
            (true, true) => "refused (EPERM) and recorded",
            (true, false) => "refused (EPERM), NOT recorded",
            (false, _) => "NOT refused",
        }
    );
    Ok(())
}

/// The value of the series `name{…isolate_instance="INSTANCE"…}` whose labels also contain
/// `also` (e.g. `protocol="tcp"`), summed over the series that match.
fn metric(text: &str, name: &str, instance: &str, also: &str) -> Option<u64> {
    let wanted = format!("isolate_instance=\"{instance}\"");
    let values: Vec<u64> = text
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| line.contains(&wanted) && line.contains(also))
        .filter(|line| !line.contains("family=\"unix\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn run_quietly(command: &mut Command) -> anyhow::Result<()> {
    let out = command.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn isolate() -> &'static str {
    env!("CARGO_BIN_EXE_isolate")
}

fn kill(child: &mut Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id().cast_signed());
    let _ = nix::sys::signal::kill(pid, signal);
    let _ = child.wait();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// `REPEATS` timings of `what`, sorted.
fn timed(mut what: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let started = Instant::now();
        what()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn spread(sorted: &[Duration]) -> String {
    format!(
        "{} ({}–{})",
        millis(median(sorted)),
        millis(sorted[0]),
        millis(sorted[sorted.len() - 1])
    )
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        millis(d)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
