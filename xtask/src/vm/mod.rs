//! `cargo xtask vmtest`: boots Debian's kernels in QEMU and runs `vmtests/scenarios/` inside,
//! one boot per kernel and guest kind (see vmtests/README.md).
//!
//! - `cache`: cache keys and atomic builds under `~/.cache/isolate/vm`
//! - `apt`, `kernel`: Debian kernel packages through a private apt, unpacked
//! - `initramfs`: the busybox initramfs (also the systemd guest's first stage)
//! - `image`: the systemd guest's root image (mmdebstrap)
//! - `artifacts`: building and sharing the binaries under test
//! - `qemu`: booting, accelerator detection, hang detection
//! - `scenario`: discovery and results

mod apt;
mod artifacts;
mod cache;
mod image;
mod initramfs;
mod kernel;
mod qemu;
mod scenario;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::util;
use kernel::{KERNELS, Kernel, KernelSpec};
use scenario::{Guest, Scenario, Status};

#[derive(clap::Args, Default)]
#[allow(clippy::struct_excessive_bools)]
pub struct VmTestArgs {
    /// Boot only this kernel (repeatable): 6.1, 6.12 or newest (Debian's newest, from
    /// trixie-backports). Default: all.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Run only scenarios whose name contains this (repeatable).
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Boot only this kind of guest. Default: each kind some selected scenario needs.
    #[arg(long, value_enum)]
    pub guest: Option<Guest>,
    /// List the kernels (series, Debian suite, cached version) and the scenarios (name,
    /// guests, timeout), and exit.
    #[arg(long)]
    pub list: bool,
    /// Boot one guest into an interactive root shell with the test environment (no scenarios).
    #[arg(long, conflicts_with = "keep")]
    pub shell: bool,
    /// Run the selected scenarios in one guest, then keep it running with a root shell.
    #[arg(long)]
    pub keep: bool,
    /// Accelerator: auto (KVM when it works here, else TCG), kvm or tcg.
    #[arg(long, value_enum, default_value_t)]
    pub accel: qemu::AccelChoice,
    /// QEMU machine type.
    #[arg(long, value_enum, default_value_t)]
    pub machine: qemu::Machine,
    /// Guest memory in MiB (default 2048).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// How many guests boot at once (default: 2 where there are 2 cores or more). Under TCG
    /// a guest mostly keeps one core busy, so a second guest uses the other one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Do not build: share target/release/isolate and the test executables as they are.
    #[arg(long)]
    pub no_build: bool,
    /// Copy the guest console to stderr as it comes.
    #[arg(long, short)]
    pub verbose: bool,
    /// Seconds a guest may take to start its first scenario before it counts as hung
    /// (default: 60 for the initramfs guest, 120 for the systemd guest).
    #[arg(long, value_name = "SECS", hide = true)]
    pub boot_timeout: Option<u64>,
    /// Add the deliberately failing scenarios of vmtests/selfcheck/ (the harness must report
    /// them as failures and keep their logs).
    #[arg(long, hide = true)]
    pub self_check: bool,
}

/// Where the per-run outputs go: `target/vmtest/<kernel>/<guest>/`.
fn output_dir() -> PathBuf {
    util::project_root().join("target/vmtest")
}

/// Downloads and builds everything the VM suite needs (kernels, initramfs, guest images)
/// into the cache; takes seconds when all of it is there.
pub fn setup_assets() -> anyhow::Result<()> {
    prepare(KERNELS, true).map(|_| ())
}

/// Everything one kernel needs to boot both guests.
struct KernelAssets {
    kernel: Kernel,
    initramfs: initramfs::Initramfs,
    image: Option<PathBuf>,
}

fn prepare(specs: &[KernelSpec], with_image: bool) -> anyhow::Result<Vec<KernelAssets>> {
    let started = Instant::now();
    for tool in [
        "dpkg-deb",
        "depmod",
        "cpio",
        "xz",
        "zstd",
        "mkfs.ext4",
        "mmdebstrap",
    ] {
        if !util::have(tool) {
            bail!("the VM suite needs `{tool}`: run `cargo xtask setup` (see vmtests/README.md)");
        }
    }
    qemu::require_qemu()?;
    let mirrors = || apt::Mirrors::from_host();
    let mut assets = Vec::new();
    for spec in specs {
        let kernel = kernel::ensure(spec, &mirrors)?;
        let initramfs = initramfs::ensure(&kernel)?;
        let image = if with_image {
            Some(image::ensure(&kernel, &mirrors)?)
        } else {
            None
        };
        assets.push(KernelAssets {
            kernel,
            initramfs,
            image,
        });
    }
    eprintln!(
        "vmtest: guest assets ready in {:.1}s ({})",
        started.elapsed().as_secs_f64(),
        cache::root().display()
    );
    Ok(assets)
}

pub fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let vmtests = util::project_root().join("vmtests");
    let all = scenario::discover(&vmtests, args.self_check)?;
    let selected: Vec<&Scenario> = all
        .iter()
        .filter(|s| {
            args.scenarios.is_empty() || args.scenarios.iter().any(|f| s.name.contains(f.as_str()))
        })
        .filter(|s| args.guest.is_none_or(|g| s.guests.contains(&g)))
        .collect();
    if args.list {
        print_list(&selected);
        return Ok(());
    }
    let specs = selected_kernels(&args.kernels)?;
    let interactive = args.shell || args.keep;
    let guests: Vec<Guest> = if interactive {
        vec![args.guest.unwrap_or(Guest::Initramfs)]
    } else {
        Guest::ALL
            .into_iter()
            .filter(|g| args.guest.is_none_or(|only| only == *g))
            .filter(|g| selected.iter().any(|s| s.guests.contains(g)))
            .collect()
    };
    if guests.is_empty() {
        bail!("no scenario matches the filters (see --list)");
    }
    if interactive && specs.len() > 1 {
        bail!("--shell and --keep boot one guest: pick one kernel with --kernel");
    }
    let assets = prepare(&specs, guests.contains(&Guest::Systemd))?;
    let binaries = artifacts::build(args.no_build)?;
    let share = output_dir().join("share");
    artifacts::stage(&share, &binaries, &selected, &assets[0].initramfs.libs)?;
    let accel = qemu::choose_accel(args.accel, &probe_vm(args, &assets[0], &share))?;
    eprintln!("vmtest: accelerator: {accel}");

    let mut boots = Vec::new();
    for kernel in &assets {
        for &guest in &guests {
            if interactive {
                let boot = Boot {
                    args,
                    kernel,
                    guest,
                    part: None,
                    accel,
                    share: &share,
                };
                boot.interactive(&scenario::of_boot(&selected, guest, None))?;
                return Ok(());
            }
            for part in scenario::BOOTS {
                let scenarios = scenario::of_boot(&selected, guest, Some(part));
                if scenarios.is_empty() {
                    continue;
                }
                let boot = Boot {
                    args,
                    kernel,
                    guest,
                    part: Some(part),
                    accel,
                    share: &share,
                };
                boots.push((boot, scenarios));
            }
        }
    }
    let outcomes = run_boots(&boots, jobs(args))?;
    report(&outcomes, started.elapsed())
}

/// Guests booted at once: `--jobs`, else 2 where there are at least 2 cores.
fn jobs(args: &VmTestArgs) -> usize {
    args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
        |jobs| jobs as usize,
    )
}

/// Runs the boots, `jobs` at a time, the systemd guests' (the long ones) first; the outcomes
/// come back in the boots' order, whatever order they finished in.
fn run_boots(boots: &[(Boot<'_>, Vec<&Scenario>)], jobs: usize) -> anyhow::Result<Vec<Labelled>> {
    let mut order: Vec<usize> = (0..boots.len()).collect();
    order.sort_by_key(|&i| boots[i].0.guest != Guest::Systemd);
    let queue = std::sync::Mutex::new(order.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(boots.len()) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue lock").next();
                    let Some(i) = next else { break };
                    let (boot, scenarios) = &boots[i];
                    let outcome = boot.run(scenarios);
                    results.lock().expect("results lock").push((i, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|(i, _)| *i);
    let mut outcomes = Vec::new();
    for (_, outcome) in results {
        outcomes.extend(outcome?);
    }
    Ok(outcomes)
}

/// One guest boot: a kernel, a guest kind, the scenarios it runs.
struct Boot<'a> {
    args: &'a VmTestArgs,
    kernel: &'a KernelAssets,
    guest: Guest,
    /// Which of the guest's boots (`vmtest-boot`); `None` for an interactive boot, which runs
    /// every selected scenario of the guest.
    part: Option<u8>,
    accel: qemu::Accel,
    share: &'a Path,
}

/// A scenario's result, labelled for the report.
struct Labelled {
    label: String,
    outcome: scenario::Outcome,
}

impl Boot<'_> {
    /// `target/vmtest/<kernel>/<guest>`, `<guest>-2` for the second boot.
    fn dir(&self) -> PathBuf {
        output_dir()
            .join(self.kernel.kernel.series)
            .join(self.name())
    }

    /// `6.12, systemd`: the kernel and the boot, as the report names it.
    fn label(&self) -> String {
        format!("{}, {}", self.kernel.kernel.series, self.name())
    }

    /// `systemd`, or `systemd-2` for the guest's second boot.
    fn name(&self) -> String {
        match self.part {
            Some(part) if part > 1 => format!("{}-{part}", self.guest.name()),
            _ => self.guest.name().to_owned(),
        }
    }

    fn vm<'v>(&'v self, results: &'v Path, mode: &str) -> qemu::Vm<'v> {
        let kernel = &self.kernel;
        qemu::Vm {
            accel: self.accel,
            machine: self.args.machine,
            vmlinux: &kernel.kernel.vmlinux,
            initrd: &kernel.initramfs.path,
            args: vec![
                format!("vmtest.guest={}", self.guest.name()),
                format!("vmtest.mode={mode}"),
                format!("vmtest.kernel={}", kernel.kernel.series),
                format!("vmtest.list={}", scenario::list_name(self.guest, self.part)),
            ],
            share: self.share,
            results,
            disk: match self.guest {
                Guest::Systemd => kernel.image.as_deref(),
                Guest::Initramfs => None,
            },
            memory_mb: self.args.memory.unwrap_or(2048),
            cpus: 2,
        }
    }

    /// Fresh output directory: `console.log`, and `results/` shared with the guest.
    fn fresh_results(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir();
        cache::remove(&dir)?;
        let results = dir.join("results");
        fs::create_dir_all(&results)
            .with_context(|| format!("cannot create {}", results.display()))?;
        Ok(results)
    }

    fn run(&self, scenarios: &[&Scenario]) -> anyhow::Result<Vec<Labelled>> {
        let watch = qemu::Watch {
            boot: Duration::from_secs(self.args.boot_timeout.unwrap_or(match self.guest {
                Guest::Initramfs => 60,
                Guest::Systemd => 120,
            })),
            scenarios: scenarios
                .iter()
                .map(|s| (s.name.clone(), Duration::from_secs(s.timeout_secs + 30)))
                .collect::<HashMap<_, _>>(),
            idle: Duration::from_secs(90),
            verbose: self.args.verbose,
        };
        let label = self.label();
        eprintln!(
            "vmtest: booting {} ({label}): {} scenario(s)",
            self.kernel.kernel.version,
            scenarios.len()
        );
        let console = self.dir().join("console.log");
        let mut attempt = 0;
        let problem = loop {
            attempt += 1;
            let started = Instant::now();
            let results = self.fresh_results()?;
            let ending = self.vm(&results, "run").run_watched(&console, &watch)?;
            eprintln!(
                "vmtest: {label}: guest ran {:.1}s",
                started.elapsed().as_secs_f64()
            );
            match ending {
                qemu::Ending::Finished => break String::new(),
                qemu::Ending::BootHang(waited) if attempt == 1 => {
                    eprintln!(
                        "vmtest: {label}: no scenario started within {}s: the guest hung while \
                         booting; retrying once",
                        waited.as_secs()
                    );
                }
                qemu::Ending::BootHang(waited) => {
                    break format!(
                        "the guest hung while booting twice (no start within {}s)",
                        waited.as_secs()
                    );
                }
                qemu::Ending::DiedBooting(why) if attempt == 1 => {
                    eprintln!(
                        "vmtest: {label}: {why}: the guest died while booting; retrying once"
                    );
                }
                qemu::Ending::DiedBooting(why) => break format!("{why}, twice"),
                qemu::Ending::Hung(why) => break format!("the guest hung: {why}"),
                qemu::Ending::Died(why) => break why,
            }
        };
        if !problem.is_empty() {
            eprintln!("vmtest: {label}: {problem}; console: {}", console.display());
        }
        let outcomes = scenario::collect(&self.dir().join("results"), scenarios, &problem);
        Ok(outcomes
            .into_iter()
            .map(|outcome| Labelled {
                label: label.clone(),
                outcome,
            })
            .collect())
    }

    fn interactive(&self, scenarios: &[&Scenario]) -> anyhow::Result<()> {
        let results = self.fresh_results()?;
        let mode = if self.args.keep { "keep" } else { "shell" };
        eprintln!(
            "vmtest: {mode}: {} {} guest; results in {}",
            self.kernel.kernel.version,
            self.guest.name(),
            results.display()
        );
        self.vm(&results, mode).run_interactive()?;
        if self.args.keep {
            let outcomes =
                scenario::collect(&results, scenarios, "the guest stopped before it finished");
            let label = self.label();
            let labelled: Vec<Labelled> = outcomes
                .into_iter()
                .map(|outcome| Labelled {
                    label: label.clone(),
                    outcome,
                })
                .collect();
            return report(&labelled, Duration::ZERO);
        }
        Ok(())
    }
}

/// The guest used for the KVM probe (any kernel will do).
fn probe_vm<'a>(args: &VmTestArgs, kernel: &'a KernelAssets, share: &'a Path) -> qemu::Vm<'a> {
    qemu::Vm {
        accel: qemu::Accel::Kvm,
        machine: args.machine,
        vmlinux: &kernel.kernel.vmlinux,
        initrd: &kernel.initramfs.path,
        args: Vec::new(),
        share,
        results: share,
        disk: None,
        memory_mb: 256,
        cpus: 1,
    }
}

fn selected_kernels(names: &[String]) -> anyhow::Result<Vec<KernelSpec>> {
    if names.is_empty() {
        return Ok(KERNELS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            KERNELS
                .iter()
                .find(|spec| spec.series == name.as_str())
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = KERNELS.iter().map(|k| k.series).collect();
                    format!("unknown kernel `{name}`; known: {}", known.join(", "))
                })
        })
        .collect()
}

#[allow(clippy::print_stdout)]
fn print_list(scenarios: &[&Scenario]) {
    for spec in KERNELS {
        let cached = kernel::cached_version(spec)
            .map_or_else(|| "not fetched yet".to_owned(), |v| format!("cached: {v}"));
        println!("kernel {:<8} {:<18} {cached}", spec.series, spec.suite);
    }
    for scenario in scenarios {
        let guests: Vec<&str> = scenario.guests.iter().map(|g| g.name()).collect();
        println!(
            "{:<32} {:<20} boot {} {}s",
            scenario.name,
            guests.join(","),
            scenario.boot,
            scenario.timeout_secs
        );
    }
}

/// Prints one line per scenario and the summary; fails when any scenario failed.
#[allow(clippy::print_stdout)]
fn report(outcomes: &[Labelled], elapsed: Duration) -> anyhow::Result<()> {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for Labelled { label, outcome } in outcomes {
        let secs = outcome.elapsed.as_secs_f64();
        match &outcome.status {
            Status::Pass => {
                passed += 1;
                println!("PASS {} ({label}) {secs:.1}s", outcome.name);
            }
            Status::Skip => {
                skipped += 1;
                let why = scenario::tail(&outcome.log, 1);
                println!("SKIP {} ({label}) {why}", outcome.name);
            }
            Status::Fail(why) => {
                failed += 1;
                println!("FAIL {} ({label}) {why}", outcome.name);
                let tail = scenario::tail(&outcome.log, 25);
                if !tail.is_empty() {
                    println!("  --- last lines of {} ---", outcome.log.display());
                    for line in tail.lines() {
                        println!("  | {line}");
                    }
                }
            }
        }
    }
    if skipped > 0 {
        println!("vmtest: {skipped} skipped");
    }
    if !elapsed.is_zero() {
        eprintln!(
            "vmtest: took {:.0}s; logs in {}",
            elapsed.as_secs_f64(),
            output_dir().display()
        );
    }
    println!("vmtest: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!(
            "{failed} VM scenario(s) failed (logs in {})",
            output_dir().display()
        );
    }
    Ok(())
}
