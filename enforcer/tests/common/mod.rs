//! What the root integration tests share: a tiny test runner (these tests are their own
//! programs, `harness = false`, so they can re-execute themselves as a confined client), a
//! sandbox of a child cgroup in a private network namespace, and client probes.

#![allow(dead_code, reason = "each test binary uses a part")]
#![allow(clippy::print_stdout, reason = "libtest-style report on stdout")]

pub mod dns_upstream;
pub mod probe;
pub mod records;
pub mod sandbox;
pub mod users;

use std::process::ExitCode;

/// Prometheus's own checker: `$PROMTOOL`, else where `cargo xtask setup` unpacks it. `None` in
/// the VM guests, which do not have it (the host suite runs the checks).
pub fn promtool() -> Option<std::path::PathBuf> {
    if std::env::var_os("ISOLATE_IN_VM").is_some() {
        return None;
    }
    let path = std::env::var_os("PROMTOOL").map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache"))
                })
                .unwrap_or_else(|| std::path::PathBuf::from("/var/cache"))
                .join("isolate/prometheus/usr/bin/promtool")
        },
        std::path::PathBuf::from,
    );
    assert!(
        path.is_file(),
        "promtool is not at {}: run `cargo xtask setup` (it unpacks Debian's prometheus \
         package there), or point PROMTOOL at one",
        path.display()
    );
    Some(path)
}

/// `name` found on `$PATH` (or at `$VAR` when set). `None` in the VM guests, which do not have
/// the fleet checkers (the host suite runs those checks); on the host a missing one fails,
/// saying how to install it.
pub fn host_tool(name: &str, var: &str, installed_by: &str) -> Option<std::path::PathBuf> {
    if std::env::var_os("ISOLATE_IN_VM").is_some() {
        return None;
    }
    if let Some(path) = std::env::var_os(var) {
        return Some(std::path::PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    assert!(
        found.is_some(),
        "{name} is not on PATH: run `cargo xtask setup` ({installed_by}), or point {var} at one"
    );
    found
}

/// The binary under test: `$ISOLATE` (the VM suite shares it there) or the one cargo built.
pub fn isolate_binary() -> std::path::PathBuf {
    std::env::var_os("ISOLATE").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_BIN_EXE_isolate")),
        std::path::PathBuf::from,
    )
}

/// A named test.
pub type Test = (&'static str, fn());

/// Runs `tests` (filtered by the first free argument and `--skip NAME`, like libtest), each in its own thread
/// with its own network namespace, and prints libtest's summary line.
pub fn run_tests(tests: &[Test]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    // libtest's `--skip NAME` (repeatable): tests whose name contains NAME do not run.
    let mut skip: Vec<String> = Vec::new();
    let mut filter = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--skip" {
            skip.extend(rest.next().cloned());
        } else if filter.is_none() && !arg.starts_with('-') {
            filter = Some(arg.clone());
        }
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (they load eBPF programs and make cgroups); run them through `cargo xtask test`"
    );
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str()))
            || skip.iter().any(|s| name.contains(s.as_str()))
        {
            continue;
        }
        let test = *test;
        let started = std::time::Instant::now();
        let outcome = std::thread::spawn(move || {
            // Namespaces belong to the thread: each test gets a network of its own.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            sandbox::bring_up_loopback();
            test();
        })
        .join();
        // On stderr, so the runner's own lines keep their usual shape.
        eprintln!("{name} took {:.1} s", started.elapsed().as_secs_f64());
        if outcome.is_ok() {
            println!("test {name} ... ok");
            passed += 1;
        } else {
            println!("test {name} ... FAILED");
            failed += 1;
        }
    }
    let result = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {result}. {passed} passed; {failed} failed; 0 ignored");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How long a process the test started may take to come up. Generous: starting means loading
/// and verifying eBPF programs, which takes seconds in an emulated guest on a busy machine.
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(2);

/// Polls `ready` until it holds; panics naming `what` if `process` exits first (with its exit
/// status) or `START_TIMEOUT` passes.
pub fn wait_until_started(
    what: &str,
    process: &mut std::process::Child,
    mut ready: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    while !ready() {
        if let Some(status) = process.try_wait().expect("try_wait") {
            panic!("{what} exited before it was ready: {status}");
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "{what} was not ready after {START_TIMEOUT:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
