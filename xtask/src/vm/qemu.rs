//! Booting a guest in QEMU: the command line, accelerator detection, and a watchdog that
//! tells a slow guest from a hung one by the progress markers `runner.sh` prints.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::cache;

const QEMU: &str = "qemu-system-x86_64";

/// Which accelerator to use: `auto` tries KVM once (the result is cached) and falls back to TCG.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation)",
        })
    }
}

/// The QEMU machine type. `microvm` boots fastest; `pc` never showed the rare silent boot
/// hang of microvm under TCG (the harness retries those once) and is 1.5 s slower.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Machine {
    #[default]
    Microvm,
    Pc,
}

/// One guest boot.
pub struct Vm<'a> {
    pub accel: Accel,
    pub machine: Machine,
    pub vmlinux: &'a Path,
    pub initrd: &'a Path,
    /// Kernel arguments added to the common ones.
    pub args: Vec<String>,
    /// Shared read-only as 9p tag `share`.
    pub share: &'a Path,
    /// Shared writable as 9p tag `results`.
    pub results: &'a Path,
    /// A root disk image, used with `snapshot=on` (writes are discarded).
    pub disk: Option<&'a Path>,
    pub memory_mb: u32,
    pub cpus: u32,
}

impl Vm<'_> {
    fn command(&self, interactive: bool) -> Command {
        let mut cmd = Command::new(QEMU);
        let (machine, virtio) = match self.machine {
            Machine::Microvm => ("microvm", "device"),
            Machine::Pc => ("pc", "pci"),
        };
        cmd.args([
            "-M",
            machine,
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
        ]);
        cmd.args(["-display", "none", "-nic", "none"]);
        cmd.args(["-serial", if interactive { "mon:stdio" } else { "stdio" }]);
        match self.accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
        };
        cmd.args([
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &self.memory_mb.to_string(),
        ]);
        cmd.arg("-kernel").arg(self.vmlinux);
        cmd.arg("-initrd").arg(self.initrd);
        cmd.args(["-append", &self.kernel_args().join(" ")]);
        for (tag, path, readonly) in [
            ("share", self.share, true),
            ("results", self.results, false),
        ] {
            let mut fsdev = format!(
                "local,id={tag},path={},security_model=none,multidevs=remap",
                path.display()
            );
            if readonly {
                fsdev.push_str(",readonly=on");
            }
            cmd.args(["-fsdev", &fsdev]);
            cmd.args([
                "-device",
                &format!("virtio-9p-{virtio},fsdev={tag},mount_tag={tag}"),
            ]);
        }
        if let Some(disk) = self.disk {
            cmd.args([
                "-drive",
                &format!(
                    "id=root,file={},format=raw,if=none,snapshot=on",
                    disk.display()
                ),
            ]);
            cmd.args(["-device", &format!("virtio-blk-{virtio},drive=root")]);
        }
        cmd
    }

    fn kernel_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "console=ttyS0",
            "quiet",
            "panic=-1",
            "mitigations=off",
            "cryptomgr.notests",
            "no_timer_check",
            "tsc=reliable",
            "audit=0",
            "nowatchdog",
        ]
        .map(String::from)
        .into();
        if self.accel == Accel::Tcg {
            // Without it, microvm under TCG sometimes hangs calibrating the TSC.
            if let Some(khz) = host_cpu_khz() {
                args.push(format!("tsc_early_khz={khz}"));
            }
        }
        args.extend(self.args.iter().cloned());
        args
    }

    /// Boots with the console attached to this terminal (no watchdog).
    pub fn run_interactive(&self) -> anyhow::Result<ExitStatus> {
        eprintln!("vmtest: interactive guest; quit QEMU with Ctrl-A X");
        let mut cmd = self.command(true);
        cmd.status().with_context(|| format!("cannot start {QEMU}"))
    }

    /// Boots, writes the console to `console_log`, and stops the guest when `watch` says it
    /// hung.
    pub fn run_watched(&self, console_log: &Path, watch: &Watch) -> anyhow::Result<Ending> {
        let mut cmd = self.command(false);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let log = fs::File::create(console_log)
            .with_context(|| format!("cannot create {}", console_log.display()))?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {QEMU}"))?;
        let progress = Arc::new(Mutex::new(Progress::new()));
        let reader = spawn_console_reader(&mut child, log, Arc::clone(&progress), watch.verbose)?;
        let mut stderr = child.stderr.take().context("no stderr")?;
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let ending = loop {
            if let Some(status) = child.try_wait()? {
                break Ok(status);
            }
            if let Some(hang) = watch.check(&progress.lock().expect("progress lock")) {
                // Our own child: stop it.
                let _ = child.kill();
                let _ = child.wait();
                break Err(hang);
            }
            thread::sleep(Duration::from_millis(100));
        };
        let _ = reader.join();
        let qemu_stderr = stderr_reader.join().unwrap_or_default();
        if !qemu_stderr.trim().is_empty() {
            let mut log = fs::OpenOptions::new().append(true).open(console_log)?;
            writeln!(log, "--- qemu stderr ---\n{qemu_stderr}")?;
        }
        let progress = progress.lock().expect("progress lock");
        Ok(match ending {
            Err(hang) => hang,
            Ok(_) if progress.done => Ending::Finished,
            // The kernel itself fell over before the runner started (seen under TCG: a
            // panic while the kernel patches its text); nothing of the scenarios ran.
            Ok(status)
                if !progress.started
                    && progress.init_failure.is_none()
                    && qemu_stderr.trim().is_empty() =>
            {
                Ending::DiedBooting(describe_death(status, &progress, &qemu_stderr))
            }
            Ok(status) => Ending::Died(describe_death(status, &progress, &qemu_stderr)),
        })
    }
}

fn describe_death(status: ExitStatus, progress: &Progress, qemu_stderr: &str) -> String {
    if let Some(line) = qemu_stderr.lines().find(|l| !l.trim().is_empty()) {
        return format!("QEMU {status}: {line}");
    }
    if let Some(line) = &progress.init_failure {
        return format!("the guest's init failed: {line}");
    }
    match &progress.current {
        Some((name, _)) => format!("the guest stopped while running {name} ({status})"),
        None if progress.started => format!("the guest stopped between scenarios ({status})"),
        None => format!("the guest stopped before running any scenario ({status})"),
    }
}

/// How a watched boot ended.
#[derive(Debug)]
pub enum Ending {
    /// The runner finished and the guest powered off.
    Finished,
    /// No scenario started within the boot timeout (a hang, or a very slow machine).
    BootHang(Duration),
    /// The guest stopped making progress after it started the scenarios.
    Hung(String),
    /// The guest stopped before it started the runner, with no word from its init or QEMU.
    DiedBooting(String),
    /// QEMU exited before the runner finished.
    Died(String),
}

/// What the console has shown so far.
struct Progress {
    spawned: Instant,
    started: bool,
    done: bool,
    current: Option<(String, Instant)>,
    last_event: Instant,
    init_failure: Option<String>,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Progress {
            spawned: now,
            started: false,
            done: false,
            current: None,
            last_event: now,
            init_failure: None,
        }
    }

    fn see(&mut self, line: &str) {
        let now = Instant::now();
        if let Some(event) = line.split("vmtest-runner: ").nth(1) {
            self.last_event = now;
            let mut words = event.split_whitespace();
            match words.next() {
                Some("start") => self.started = true,
                Some("begin") => {
                    self.current = words.next().map(|name| (name.to_string(), now));
                }
                Some("end") => self.current = None,
                Some("done") => self.done = true,
                _ => {}
            }
        } else if line.contains("vmtest-init: ")
            && self.init_failure.is_none()
            && !line.contains("vmtest-init: failed")
            && !line.contains("powering off")
        {
            self.init_failure = Some(line.trim().to_string());
        }
    }
}

/// The watchdog's limits.
pub struct Watch {
    /// From QEMU's start to the runner's `start` marker.
    pub boot: Duration,
    /// Per scenario: its own timeout (enforced in the guest) plus a grace period.
    pub scenarios: HashMap<String, Duration>,
    /// Longest quiet time between scenarios and after the last one (journal dump, poweroff).
    pub idle: Duration,
    /// Copy the console to stderr as it comes.
    pub verbose: bool,
}

impl Watch {
    fn check(&self, progress: &Progress) -> Option<Ending> {
        let now = Instant::now();
        if !progress.started {
            let waited = now - progress.spawned;
            return (waited > self.boot).then_some(Ending::BootHang(waited));
        }
        if let Some((name, since)) = &progress.current {
            let limit = self.scenarios.get(name).copied().unwrap_or(self.idle);
            return (now - *since > limit).then(|| {
                Ending::Hung(format!(
                    "{name} ran for more than {}s and the guest did not stop it",
                    limit.as_secs()
                ))
            });
        }
        (now - progress.last_event > self.idle).then(|| {
            Ending::Hung(format!(
                "the guest showed no progress for {}s after the last scenario event",
                self.idle.as_secs()
            ))
        })
    }
}

fn spawn_console_reader(
    child: &mut Child,
    mut log: fs::File,
    progress: Arc<Mutex<Progress>>,
    verbose: bool,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let stdout = child.stdout.take().context("no stdout")?;
    Ok(thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let _ = log.write_all(&line);
            let text = String::from_utf8_lossy(&line);
            if verbose {
                eprint!("{text}");
            }
            progress.lock().expect("progress lock").see(&text);
            line.clear();
        }
    }))
}

/// Picks the accelerator. `auto` uses KVM only when a probe boot with `-accel kvm` works:
/// `/dev/kvm` can exist without being usable (here it is backed by PVM, which QEMU cannot
/// drive). The probe's verdict is cached per host kernel and QEMU build.
pub fn choose_accel(choice: AccelChoice, probe: &Vm) -> anyhow::Result<Accel> {
    match choice {
        AccelChoice::Kvm => return Ok(Accel::Kvm),
        AccelChoice::Tcg => return Ok(Accel::Tcg),
        AccelChoice::Auto => {}
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("vmtest: /dev/kvm is not available");
        return Ok(Accel::Tcg);
    }
    let key = probe_key()?;
    let verdict_file = cache::root().join("kvm-probe");
    if let Ok(text) = fs::read_to_string(&verdict_file)
        && let Some(verdict) = text.strip_prefix(&format!("{key} "))
    {
        let works = verdict.trim() == "works";
        if !works {
            eprintln!(
                "vmtest: KVM did not work in an earlier probe (cached in {})",
                verdict_file.display()
            );
        }
        return Ok(if works { Accel::Kvm } else { Accel::Tcg });
    }
    eprintln!("vmtest: /dev/kvm exists; probing whether QEMU can use it");
    let works = kvm_probe(probe)?;
    fs::create_dir_all(cache::root())?;
    fs::write(
        &verdict_file,
        format!("{key} {}\n", if works { "works" } else { "fails" }),
    )?;
    Ok(if works { Accel::Kvm } else { Accel::Tcg })
}

/// Boots the probe guest (`vmtest.mode=probe`: init prints a marker and powers off) with KVM.
/// QEMU does not exit on a KVM internal error (it pauses the guest), so anything on its
/// stderr ends the probe at once.
fn kvm_probe(probe: &Vm) -> anyhow::Result<bool> {
    let vm = Vm {
        accel: Accel::Kvm,
        args: vec!["vmtest.mode=probe".into()],
        disk: None,
        ..*probe
    };
    let mut child = vm
        .command(false)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {QEMU}"))?;
    let errors = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().context("no stderr")?;
    let stderr_reader = thread::spawn({
        let errors = Arc::clone(&errors);
        move || {
            let mut chunk = [0; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                errors
                    .lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }
    });
    let mut stdout = child.stdout.take().context("no stdout")?;
    let stdout_reader = thread::spawn(move || {
        let mut console = String::new();
        let _ = stdout.read_to_string(&mut console);
        console
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        let failed = !errors.lock().expect("stderr lock").trim().is_empty();
        if failed || started.elapsed() > Duration::from_secs(10) {
            // Give QEMU a moment to finish its error report, then stop our child.
            thread::sleep(Duration::from_millis(200));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let console = stdout_reader.join().unwrap_or_default();
    let _ = stderr_reader.join();
    let errors = errors.lock().expect("stderr lock").clone();
    let works = status.is_some_and(|s| s.success()) && console.contains("vmtest-probe: ok");
    if !works {
        let why = errors
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the probe guest did not boot");
        eprintln!("vmtest: KVM does not work here ({}), using TCG", why.trim());
    }
    Ok(works)
}

fn probe_key() -> anyhow::Result<String> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let qemu = which(QEMU)
        .with_context(|| format!("{QEMU} not found (apt-get install qemu-system-x86)"))?;
    let meta = fs::metadata(&qemu)?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(format!(
        "host={} qemu={}:{}:{mtime}",
        kernel.trim(),
        qemu.display(),
        meta.len()
    ))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The host CPU's clock in kHz (for `tsc_early_khz=`), from /proc/cpuinfo's `cpu MHz : 2600.000`.
fn host_cpu_khz() -> Option<u64> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = info
        .lines()
        .find_map(|line| line.strip_prefix("cpu MHz")?.split(':').nth(1))?
        .trim();
    let (whole, fraction) = mhz.split_once('.').unwrap_or((mhz, ""));
    let fraction = format!("{fraction:0<3}");
    Some(whole.parse::<u64>().ok()? * 1000 + fraction[..3].parse::<u64>().ok()?)
}

/// Fails early with a clear message when QEMU is missing.
pub fn require_qemu() -> anyhow::Result<()> {
    if which(QEMU).is_none() {
        bail!("{QEMU} not found: run `cargo xtask setup` (apt-get install qemu-system-x86)");
    }
    Ok(())
}
