//! `isolate check` as a user meets it: exit codes, and errors that name the file, the line and
//! column, the field, and the fix.

use std::path::Path;
use std::process::{Command, Output};

fn isolate_check(paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isolate"))
        .arg("check")
        .args(paths)
        .output()
        .expect("run isolate check")
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Each bad policy, and what the error must say (after the file name).
const BAD_POLICIES: &[(&str, &str, &str)] = &[
    ("syntax", "user = \"a\"\n[network\n", ":2:9: syntax:"),
    (
        "unknown-key",
        "user = \"a\"\nuser_name = \"b\"\n",
        ":2:1: user_name: unknown field `user_name`",
    ),
    (
        "unknown-nested-key",
        "user = \"a\"\n[network]\nalow = []\n",
        ":3:1: network.alow: unknown field `alow`",
    ),
    (
        "missing-user",
        "[network]\nallow = []\n",
        "missing field `user`",
    ),
    (
        "bad-cidr",
        "user = \"a\"\n[network]\nallow = [\"10.0.0.0/33\"]\n",
        ":3:10: network.allow[0]:",
    ),
    (
        "host-bits",
        "user = \"a\"\n[network]\nallow = [\"10.0.0.1/8\"]\n",
        "did you mean 10.0.0.0/8?",
    ),
    (
        "bad-port",
        "user = \"a\"\n[network]\nallow = [\"10.0.0.0/8:0\"]\n",
        ":3:10: network.allow[0]:",
    ),
    (
        "reversed-ports",
        "user = \"a\"\n[network]\nallow = [\"10.0.0.0/8:900-100\"]\n",
        ":3:10: network.allow[0]:",
    ),
    (
        "bad-protocol",
        "user = \"a\"\n[network]\nallow = [\"10.0.0.0/8:53/icmp\"]\n",
        "protocol",
    ),
    (
        "bad-host",
        "user = \"a\"\n[network]\nallow = [\"bad_host.example:443\"]\n",
        ":3:10: network.allow[0]:",
    ),
    (
        "relative-path",
        "user = \"a\"\n[filesystem]\nread_only = [\"etc/ssl\"]\n",
        ":3:14: filesystem.read_only[0]:",
    ),
    (
        "relative-socket",
        "user = \"a\"\n[network]\nunix_sockets = [\"run/pg.sock\"]\n",
        ":3:17: network.unix_sockets[0]:",
    ),
    (
        "bad-rate",
        "user = \"a\"\n[network]\nlog = { rate = \"fast\" }\n",
        ":3:16: network.log.rate:",
    ),
    (
        "bad-abi",
        "user = \"a\"\n[landlock]\nminimum_abi = 99\n",
        ":3:15: landlock.minimum_abi:",
    ),
    (
        "bad-name",
        "name = \"Bad Name\"\nuser = \"a\"\n",
        ":1:8: name:",
    ),
    (
        "unknown-preset",
        "user = \"a\"\npresets = [\"opencod\"]\n",
        ":2:12: presets[0]: no preset is called `opencod`",
    ),
];

#[test]
fn each_kind_of_bad_policy_gets_a_precise_error_and_a_failing_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (name, text, expected) in BAD_POLICIES {
        let path = write(dir.path(), &format!("{name}.toml"), text);
        let out = isolate_check(&[&path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1)
            || !stderr.contains(&format!("{}", path.display()))
            || !stderr.contains(expected)
        {
            failures.push(format!(
                "{name}: exit {:?}, wanted {expected:?} in:\n{stderr}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn duplicate_names_and_users_across_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "one.toml", "user = \"shared\"\n");
    let second = write(dir.path(), "two.toml", "user = \"shared\"\n");
    let out = isolate_check(&[dir.path()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&second.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("one.toml"),
        "the error names the other file: {stderr}"
    );

    let other = tempfile::tempdir().unwrap();
    let a = write(other.path(), "a.toml", "name = \"same\"\nuser = \"u1\"\n");
    let b = write(other.path(), "b.toml", "name = \"same\"\nuser = \"u2\"\n");
    let out = isolate_check(&[&a, &b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same"));
}

#[test]
fn a_good_policy_passes_and_prints_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "demo.toml",
        "user = \"dynamic\"\n[network]\nallow = [\"10.128.0.0/9\", \"10.0.0.0/9\", \"::ffff:192.168.0.0/112\"]\n",
    );
    let out = isolate_check(&[&path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("name = \"demo\""),
        "name defaults to the file stem: {stdout}"
    );
    assert!(
        stdout.contains("\"10.0.0.0/8\""),
        "adjacent networks merged: {stdout}"
    );
    assert!(
        stdout.contains("\"192.168.0.0/16\""),
        "v4-mapped v6 became v4: {stdout}"
    );
    assert!(!stdout.contains("ffff"), "{stdout}");
}

#[test]
fn the_shipped_examples_are_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = isolate_check(&[&examples]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let out = isolate_check(&[Path::new("/nonexistent/isolate/policy.toml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/isolate/policy.toml"));
}

/// `--kernel` says what enforcement the kernel really offers by loading each kind of
/// isolate's programs (root only), not by reading its configuration.
#[test]
fn the_kernel_report_tries_loading_each_kind_of_program() {
    let out = Command::new(env!("CARGO_BIN_EXE_isolate"))
        .args(["check", "--kernel"])
        .output()
        .expect("run isolate check --kernel");
    let text = String::from_utf8_lossy(&out.stdout);
    if !nix::unistd::geteuid().is_root() {
        assert!(text.contains("run as root"), "{text}");
        return;
    }
    for what in [
        "eBPF socket hooks",
        "eBPF packet hooks (cgroup_skb egress backstop, ingress)",
        "BPF LSM programs (unix sockets, socket families)",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line for {what}:\n{text}"));
        assert!(
            line.starts_with("ok") || line.starts_with("MISSING"),
            "{line}"
        );
    }
    let missing = text.lines().any(|l| l.starts_with("MISSING"));
    assert_eq!(out.status.success(), !missing, "{text}");
}

/// `isolate check` shows where each preset's entries came from; `isolate presets` lists every
/// preset with what it adds, and prints one as shipped.
#[test]
fn presets_are_listed_and_their_entries_shown_by_origin() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "web.toml",
        "user = \"dynamic\"\npresets = [\"opencode\", \"npm\"]\n",
    );
    let out = isolate_check(&[&file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"registry.npmjs.org:443/tcp\",  # preset npm\n"),
        "{text}"
    );
    assert!(
        text.contains("\"127.0.0.1/32:4096/tcp\",  # preset opencode\n"),
        "{text}"
    );

    let presets = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_isolate"))
            .arg("presets")
            .args(args)
            .output()
            .expect("run isolate presets")
    };
    let out = presets(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for preset in &isolate_policy::PRESETS {
        assert!(
            text.contains(&format!("\n{:<12} ", preset.name)),
            "{}: {text}",
            preset.name
        );
    }
    assert!(
        text.contains("network.allow += \"api.anthropic.com:443/tcp\""),
        "{text}"
    );
    let out = presets(&["crates"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        include_str!("../../presets/crates.toml")
    );
    let out = presets(&["nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("opencode, claude-code, codex"));
}
