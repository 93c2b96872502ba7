//! Scenarios: discovery in `vmtests/scenarios/`, the run lists the guests read, and the
//! results they leave in the results share.
//!
//! A scenario is any executable file. Its header comments say where and how long it runs:
//!
//! ```text
//! # vmtest-guest: initramfs systemd     (required: one or both guests)
//! # vmtest-timeout: 300                  (optional, seconds; default 120)
//! # vmtest-boot: 2                       (optional: the guest's second boot; default 1)
//! ```
//!
//! A guest kind boots once per kernel for its scenarios of boot 1, and once more for those of
//! boot 2 if any: two shorter boots, which two workers run side by side, instead of one long
//! one (the systemd guest's opencode scenarios take as long as all the others together).
//!
//! Exit 0 passes, 77 skips (the scenario does not apply, e.g. a kernel feature is absent),
//! anything else fails.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The two kinds of guest a scenario can run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Guest {
    /// busybox initramfs, no systemd: boots in about 3 s.
    Initramfs,
    /// Debian with systemd as PID 1 and journald.
    Systemd,
}

impl Guest {
    pub const ALL: [Guest; 2] = [Guest::Initramfs, Guest::Systemd];

    pub fn name(self) -> &'static str {
        match self {
            Guest::Initramfs => "initramfs",
            Guest::Systemd => "systemd",
        }
    }
}

const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// Exit status meaning "does not apply here" (the automake convention).
const SKIP_STATUS: i32 = 77;

#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file name without extension, e.g. `01-kernel-features`.
    pub name: String,
    /// Relative to `vmtests/`, e.g. `scenarios/01-kernel-features.sh`.
    pub path: PathBuf,
    pub guests: Vec<Guest>,
    pub timeout_secs: u64,
    /// Which boot of its guest kind runs it: 1 or 2.
    pub boot: u8,
}

/// The boots a guest kind may get per kernel.
pub const BOOTS: [u8; 2] = [1, 2];

/// The scenarios in `vmtests/scenarios/` (and `vmtests/selfcheck/`, which only the harness's
/// self-check runs), sorted by name.
pub fn discover(vmtests: &Path, self_check: bool) -> anyhow::Result<Vec<Scenario>> {
    let mut dirs = vec!["scenarios"];
    if self_check {
        dirs.push("selfcheck");
    }
    let mut scenarios = Vec::new();
    for dir in dirs {
        let mut paths: Vec<PathBuf> = fs::read_dir(vmtests.join(dir))
            .with_context(|| format!("cannot list {}/{dir}", vmtests.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() || file.starts_with('.') || file.ends_with(".md") {
                continue;
            }
            scenarios.push(parse(vmtests, &path)?);
        }
    }
    for (i, scenario) in scenarios.iter().enumerate() {
        if scenarios[..i].iter().any(|s| s.name == scenario.name) {
            bail!("two scenarios are named {}", scenario.name);
        }
    }
    Ok(scenarios)
}

fn parse(vmtests: &Path, path: &Path) -> anyhow::Result<Scenario> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if fs::metadata(path)?.permissions().mode() & 0o111 == 0 {
        bail!(
            "scenario {} is not executable (chmod +x it)",
            path.display()
        );
    }
    let header = |key: &str| {
        text.lines()
            .take(30)
            .find_map(|line| {
                line.strip_prefix("# ")?
                    .strip_prefix(key)?
                    .strip_prefix(':')
            })
            .map(str::trim)
    };
    let guests = header("vmtest-guest")
        .with_context(|| {
            format!(
                "{} has no `# vmtest-guest: initramfs|systemd` line",
                path.display()
            )
        })?
        .split_whitespace()
        .map(|word| {
            <Guest as clap::ValueEnum>::from_str(word, false)
                .map_err(|_| anyhow::anyhow!("{}: unknown guest `{word}`", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout_secs = match header("vmtest-timeout") {
        Some(value) => value
            .parse()
            .with_context(|| format!("{}: bad vmtest-timeout `{value}`", path.display()))?,
        None => DEFAULT_TIMEOUT_SECS,
    };
    let boot = match header("vmtest-boot") {
        Some(value) => value
            .parse()
            .ok()
            .filter(|boot| BOOTS.contains(boot))
            .with_context(|| {
                format!(
                    "{}: vmtest-boot must be 1 or 2, not `{value}`",
                    path.display()
                )
            })?,
        None => 1,
    };
    Ok(Scenario {
        name: path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        path: path.strip_prefix(vmtests)?.to_path_buf(),
        guests,
        timeout_secs,
        boot,
    })
}

/// The scenarios of `scenarios` that `guest` runs: in its boot `boot`, or in any of its boots
/// (`None`, an interactive boot). The share's lists and the harness's boots both come from
/// here, so a guest runs exactly what the harness waits for.
pub fn of_boot<'a>(
    scenarios: &[&'a Scenario],
    guest: Guest,
    boot: Option<u8>,
) -> Vec<&'a Scenario> {
    scenarios
        .iter()
        .copied()
        .filter(|s| s.guests.contains(&guest))
        .filter(|s| boot.is_none_or(|boot| s.boot == boot))
        .collect()
}

/// The name of the list one boot of `guest` reads from the share (`vmtest.list=`): boot 1's
/// and 2's, or, for an interactive boot (`--keep`), every selected scenario of the guest.
pub fn list_name(guest: Guest, boot: Option<u8>) -> String {
    match boot {
        Some(boot) => format!("run-{}-{boot}.list", guest.name()),
        None => format!("run-{}.list", guest.name()),
    }
}

/// The list `runner.sh` reads: `name<TAB>timeout<TAB>path in the guest` per line.
pub fn run_list(scenarios: &[&Scenario]) -> String {
    let mut list = String::new();
    for scenario in scenarios {
        let _ = writeln!(
            list,
            "{}\t{}\t/share/vmtests/{}",
            scenario.name,
            scenario.timeout_secs,
            scenario.path.display()
        );
    }
    list
}

#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Skip,
    Fail(String),
}

pub struct Outcome {
    pub name: String,
    pub status: Status,
    pub elapsed: Duration,
    pub log: PathBuf,
}

/// Reads what the guest left in `results` for each scenario. `guest_problem` explains a
/// scenario without a result (the guest hung or died before it finished).
pub fn collect(results: &Path, scenarios: &[&Scenario], guest_problem: &str) -> Vec<Outcome> {
    scenarios
        .iter()
        .map(|scenario| {
            let log = results.join(format!("{}.log", scenario.name));
            let rc = fs::read_to_string(results.join(format!("{}.rc", scenario.name)));
            let limit = Duration::from_secs(scenario.timeout_secs);
            let (status, elapsed) = match rc.as_deref().map(parse_rc) {
                Ok(Some((0, elapsed))) => (Status::Pass, elapsed),
                Ok(Some((SKIP_STATUS, elapsed))) => (Status::Skip, elapsed),
                Ok(Some((code, elapsed))) if elapsed >= limit => (
                    Status::Fail(format!(
                        "timed out after {}s (exit {code})",
                        limit.as_secs()
                    )),
                    elapsed,
                ),
                Ok(Some((code, elapsed))) => (Status::Fail(format!("exit status {code}")), elapsed),
                Ok(None) => (
                    Status::Fail("unreadable result file".into()),
                    Duration::ZERO,
                ),
                Err(_) => (
                    Status::Fail(format!("no result: {guest_problem}")),
                    Duration::ZERO,
                ),
            };
            Outcome {
                name: scenario.name.clone(),
                status,
                elapsed,
                log,
            }
        })
        .collect()
}

/// `<exit code> <centiseconds>`.
fn parse_rc(text: &str) -> Option<(i32, Duration)> {
    let mut words = text.split_whitespace();
    let code = words.next()?.parse().ok()?;
    let centis: u64 = words.next()?.parse().ok()?;
    Some((code, Duration::from_millis(centis * 10)))
}

/// The last `lines` lines of a scenario log, for the failure report.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_files_give_status_and_time() {
        assert_eq!(parse_rc("0 123\n"), Some((0, Duration::from_millis(1230))));
        assert_eq!(parse_rc("143 500"), Some((143, Duration::from_secs(5))));
        assert_eq!(parse_rc("garbage"), None);
    }

    #[test]
    fn headers_give_guests_and_timeout() {
        let dir = std::env::temp_dir().join(format!("vmtest-scenario-{}", std::process::id()));
        fs::create_dir_all(dir.join("scenarios")).unwrap();
        let path = dir.join("scenarios/05-x.sh");
        fs::write(
            &path,
            "#!/bin/sh\n# vmtest-guest: systemd initramfs\n# vmtest-timeout: 7\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let scenario = parse(&dir, &path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(scenario.name, "05-x");
        assert_eq!(scenario.guests, [Guest::Systemd, Guest::Initramfs]);
        assert_eq!(scenario.timeout_secs, 7);
        assert_eq!(
            run_list(&[&scenario]),
            "05-x\t7\t/share/vmtests/scenarios/05-x.sh\n"
        );
    }
}
