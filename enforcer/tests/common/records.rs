//! The audit records a test's instance left: journald's where journald runs (the VM guests),
//! else the lines of the stderr that the records fell back to.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The audit records of `instance`: journald's MESSAGE fields when journald runs, else the
/// matching stderr lines.
pub fn record_messages(instance: &str, stderr: &str, at_least: usize) -> Vec<String> {
    if let Some(entries) = journal_entries(instance, at_least) {
        return entries
            .iter()
            .map(|e| e["MESSAGE"].as_str().unwrap_or_default().to_owned())
            .collect();
    }
    let prefix = format!("isolate-{instance}-blocked");
    stderr
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// journald's records of `instance` (once there are `at_least`, or after 5 s), or `None`
/// where journald does not run.
pub fn journal_entries(instance: &str, at_least: usize) -> Option<Vec<serde_json::Value>> {
    if !Path::new("/run/systemd/journal/socket").exists() {
        return None;
    }
    let started = Instant::now();
    loop {
        let out = Command::new("journalctl")
            .args([
                "--no-pager",
                "-o",
                "json",
                &format!("ISOLATE_INSTANCE={instance}"),
            ])
            .output()
            .expect("journalctl");
        let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("journalctl -o json line"))
            .collect();
        if entries.len() >= at_least || started.elapsed() > Duration::from_secs(5) {
            return Some(entries);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (records of blocked attempts, the sum of the suppressed counts) in `instance`'s trail once
/// it has settled: when they account for `expected` refusals (or after 20 s), and 1.5 s later,
/// so that a count above `expected` shows as well as one below. `stderr` gives the output the
/// records fell back to, as it is now.
pub fn trail_once_settled(
    instance: &str,
    expected: u64,
    stderr: impl Fn() -> String,
) -> (u64, u64) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let (records, suppressed) = trail_accounts(instance, &stderr());
        if records + suppressed >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    trail_accounts(instance, &stderr())
}

/// (records of blocked attempts, the sum of the suppressed counts) in `instance`'s trail.
fn trail_accounts(instance: &str, stderr: &str) -> (u64, u64) {
    let suppressed_prefix = format!("isolate-{instance}-blocked: ");
    let mut accounts = (0, 0);
    for message in record_messages(instance, stderr, 0) {
        match message.strip_prefix(&suppressed_prefix) {
            Some(rest) => {
                let count = rest.split(' ').next().and_then(|n| n.parse::<u64>().ok());
                accounts.1 += count.unwrap_or_else(|| panic!("a suppressed count: {message}"));
            }
            None => accounts.0 += 1,
        }
    }
    accounts
}
