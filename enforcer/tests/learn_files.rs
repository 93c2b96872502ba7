//! Learn mode's file watch on the running kernel: a command that joined the watch's mount
//! namespace has its reads, writes and execs reported, with their host paths; this test
//! process and a command started outside the namespace have nothing reported; dropping the
//! watch leaves the host's mounts as they were and no process in the namespace.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use isolate_enforcer::learn::files::{Access, FileAccess, FileWatch};
use nix::sched::CloneFlags;

fn main() -> ExitCode {
    common::run_tests(&[
        (
            "reports_the_runs_accesses_and_nothing_of_others",
            reports_the_runs_accesses_and_nothing_of_others,
        ),
        (
            "an_unlinked_file_keeps_its_path",
            an_unlinked_file_keeps_its_path,
        ),
        (
            "dropping_the_watch_leaves_nothing_behind",
            dropping_the_watch_leaves_nothing_behind,
        ),
    ])
}

/// Starts `sh -c script` in the watch's namespace, as the supervisor's child does.
fn spawn_inside(watch: &FileWatch, script: &str) -> Child {
    let namespace = watch.namespace().try_clone_to_owned().expect("dup");
    let mut command = Command::new("/bin/sh");
    command.args(["-c", script]);
    // SAFETY: one syscall on a descriptor opened before the fork.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNS).map_err(Into::into)
        });
    }
    command.spawn().expect("spawn sh in the namespace")
}

fn run_inside(watch: &FileWatch, script: &str) {
    let status = spawn_inside(watch, script).wait().expect("wait");
    assert!(status.success(), "{script}: {status}");
}

fn has(accesses: &[FileAccess], path: &Path, access: Access) -> bool {
    accesses
        .iter()
        .any(|a| a.path == path && a.access == access)
}

fn canonical(path: &str) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Reads the watch until `done` holds for everything read so far.
fn read_until(watch: &mut FileWatch, done: impl Fn(&[FileAccess]) -> bool) -> Vec<FileAccess> {
    let started = Instant::now();
    let mut accesses = Vec::new();
    while !done(&accesses) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not reported after 10 s; reported: {accesses:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        accesses.extend(watch.read());
    }
    accesses
}

fn reports_the_runs_accesses_and_nothing_of_others() {
    let dir = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(dir.path()).unwrap();
    let (hostname, true_, sleep) = (
        canonical("/etc/hostname"),
        canonical("/bin/true"),
        canonical("/bin/sleep"),
    );
    let mut watch = FileWatch::start().expect("start the watch");
    eprintln!("unmarked mounts: {:?}", watch.unmarked());
    let written = dir.join("written");
    // Ends in a long sleep, so that the last program is still there to be named.
    let mut inside = spawn_inside(
        &watch,
        &format!(
            "cat /etc/hostname >/dev/null; echo x > {}; /bin/true; exec /bin/sleep 60",
            written.display()
        ),
    );
    // Meanwhile, outside the namespace: this process, and a command of its own.
    let (own, others_read, others_written) = (
        dir.join("own"),
        dir.join("others-read"),
        dir.join("others-written"),
    );
    for file in [&own, &others_read] {
        fs::write(file, "fresh\n").unwrap();
    }
    assert_eq!(fs::read_to_string(&own).unwrap(), "fresh\n");
    let outside = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "cat {} >/dev/null; echo y > {}; /bin/true",
            others_read.display(),
            others_written.display()
        ))
        .status()
        .unwrap();
    assert!(outside.success());

    let accesses = read_until(&mut watch, |accesses| {
        has(accesses, &hostname, Access::Read)
            && has(accesses, &written, Access::Write)
            && has(accesses, &true_, Access::Exec)
            && has(accesses, &sleep, Access::Exec)
    });
    inside.kill().unwrap();
    inside.wait().unwrap();
    let accesses = [accesses, watch.read()].concat();

    let sleeping = accesses
        .iter()
        .find(|a| a.path == sleep && a.access == Access::Exec)
        .unwrap();
    assert_eq!(sleeping.pid.cast_unsigned(), inside.id(), "{sleeping:?}");
    assert_eq!(sleeping.program, "sleep", "{sleeping:?}");
    for access in &accesses {
        assert!(access.path.is_absolute(), "{access:?}");
        assert_ne!(access.pid.cast_unsigned(), std::process::id(), "{access:?}");
        assert!(
            ![&own, &others_read, &others_written].contains(&&access.path),
            "a process outside the namespace was reported: {access:?}"
        );
    }
}

fn an_unlinked_file_keeps_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let gone = fs::canonicalize(dir.path()).unwrap().join("gone");
    let mut watch = FileWatch::start().expect("start the watch");
    run_inside(&watch, &format!("echo x > {0}; rm {0}", gone.display()));
    // The event's descriptor holds the unlinked file: its link reads ".../gone (deleted)".
    let accesses = read_until(&mut watch, |accesses| has(accesses, &gone, Access::Write));
    assert!(
        accesses
            .iter()
            .all(|a| !a.path.to_string_lossy().ends_with(" (deleted)")),
        "{accesses:#?}"
    );
}

fn dropping_the_watch_leaves_nothing_behind() {
    let before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut watch = FileWatch::start().expect("start the watch");
    let namespace = format!(
        "mnt:[{}]",
        nix::sys::stat::fstat(watch.namespace()).unwrap().st_ino
    );
    run_inside(&watch, "/bin/true");
    assert!(!watch.read().is_empty(), "the run was not watched");
    drop(watch);
    assert_eq!(
        fs::read_to_string("/proc/self/mountinfo").unwrap(),
        before,
        "the host's mounts changed"
    );
    // The thread that made the namespace may still be exiting just after it was joined.
    let started = Instant::now();
    while let Some(holder) = holder_of(&namespace) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{holder} is still in the run's mount namespace {namespace}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A task of the host in mount namespace `namespace` (`mnt:[INODE]`), or a descriptor of it.
fn holder_of(namespace: &str) -> Option<String> {
    let processes = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok);
    let links = processes
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .flat_map(|entry| {
            let tasks = entries(&entry.path().join("task"))
                .into_iter()
                .map(|t| t.join("ns/mnt"));
            tasks.chain(entries(&entry.path().join("fd")))
        });
    links
        .filter(|link| fs::read_link(link).is_ok_and(|target| target.as_os_str() == namespace))
        .map(|link| link.display().to_string())
        .next()
}

/// The entries of `dir`; none if it is gone.
fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect()
}
