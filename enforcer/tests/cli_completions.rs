//! `isolate completions SHELL`: the script each shell loads, generated from the same argument
//! definitions the binary parses.

use std::io::Write as _;
use std::process::{Command, Stdio};

fn completions(shell: &str) -> (String, String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_isolate"))
        .args(["completions", shell])
        .output()
        .expect("run isolate completions");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[test]
fn each_shell_gets_a_script_naming_every_subcommand() {
    for (shell, marker) in [
        ("bash", "_isolate()"),
        ("zsh", "#compdef isolate"),
        ("fish", "complete -c isolate"),
    ] {
        let (script, stderr, code) = completions(shell);
        assert_eq!(code, Some(0), "{shell}: {stderr}");
        assert!(script.contains(marker), "{shell}:\n{script}");
        for subcommand in [
            "exec",
            "daemon",
            "presets",
            "check",
            "status",
            "reload",
            "log",
            "completions",
        ] {
            assert!(script.contains(subcommand), "{shell} lacks {subcommand}");
        }
    }
}

/// bash itself parses the script (`bash -n`): what it would load without an error.
#[test]
fn the_bash_script_parses() {
    let (script, _, _) = completions("bash");
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = bash.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unknown_shell_is_an_error_naming_the_known_ones() {
    let (script, stderr, code) = completions("tcsh");
    assert_eq!(code, Some(2));
    assert!(script.is_empty());
    assert!(
        stderr.contains("invalid value 'tcsh'")
            && stderr.contains("bash")
            && stderr.contains("fish"),
        "{stderr}"
    );
}
