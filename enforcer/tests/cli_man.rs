//! The manual pages: one for isolate, one per subcommand, one for the policy format, each
//! accepted by mandoc's checker (`mandoc -T lint`).

use std::path::Path;
use std::process::Command;

#[test]
fn every_page_is_written_and_passes_mandoc_lint() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_isolate"))
        .arg("man-pages")
        .arg(dir.path())
        .output()
        .expect("run isolate man-pages");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages = vec!["isolate.1".to_owned(), "isolate.toml.5".to_owned()];
    for sub in [
        "exec",
        "daemon",
        "check",
        "presets",
        "status",
        "reload",
        "log",
        "completions",
    ] {
        pages.push(format!("isolate-{sub}.1"));
    }
    for page in &pages {
        let path = dir.path().join(page);
        assert!(path.is_file(), "{page} was not written");
        // The generated pages: no error (clap_mangen's paragraph breaks put a `.br` beside a
        // `.sp`, which mandoc flags as a harmless warning). The hand-written page: no warning.
        let level = if page.ends_with(".5") {
            "warning"
        } else {
            "error"
        };
        lint(&path, level);
    }
    let text = std::fs::read_to_string(dir.path().join("isolate-exec.1")).unwrap();
    assert!(
        text.contains("\\-\\-policy"),
        "the options are documented:\n{text}"
    );
}

fn lint(page: &Path, level: &str) {
    let out = Command::new("mandoc")
        .args(["-T", "lint", "-W", level])
        .arg(page)
        .output()
        .expect("run mandoc (Debian package mandoc; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "mandoc -T lint -W {level} {}:\n{}{}",
        page.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
