//! The Prometheus rules shipped in `dist/prometheus/`, checked by Prometheus's own tool: they
//! parse (`promtool check rules`) and each alert fires on what it is about, and not otherwise
//! (`promtool test rules`, against the unit tests beside them).

mod common;

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) {
    let Some(promtool) = common::promtool() else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/prometheus");
    let out = Command::new(promtool)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alerting_rules_parse() {
    promtool(&["check", "rules", "isolate-rules.yml"]);
}

#[test]
fn each_alert_fires_on_what_it_is_about() {
    promtool(&["test", "rules", "isolate-rules.test.yml"]);
}
