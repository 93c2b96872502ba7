//! The Prometheus rules shipped in `dist/prometheus/` and the Grafana dashboard in
//! `dist/grafana/`, checked by Prometheus's own tool: the rules parse (`promtool check rules`)
//! and each alert fires on what it is about, and not otherwise (`promtool test rules`, against
//! the unit tests beside them); every dashboard query parses as a Prometheus query; both name only metrics
//! isolate exposes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

fn promtool(args: &[&str]) {
    promtool_in(&dist().join("prometheus"), args);
}

fn promtool_in(dir: &Path, args: &[&str]) {
    let Some(promtool) = common::promtool() else {
        return;
    };
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
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

/// Every `isolate_*` metric `text` names is one isolate registers (`enforcer/src/metrics`).
fn assert_names_real_metrics(what: &str, text: &str) {
    let source = include_str!("../src/metrics/mod.rs");
    let mut rest = text;
    while let Some(at) = rest.find("isolate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // Label names (isolate_instance) and template variables are not metrics.
        if name == "isolate_instance" || name.ends_with('_') {
            continue;
        }
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{what} names `{name}`, which isolate does not expose"
        );
    }
}

#[test]
fn the_rules_name_real_metrics() {
    let rules = std::fs::read_to_string(dist().join("prometheus/isolate-rules.yml")).unwrap();
    assert_names_real_metrics("isolate-rules.yml", &rules);
}

/// Each panel's query, with Grafana's variables filled in, parses as a Prometheus query (as a recording
/// rule of a scratch file, for `promtool check rules`) and names only real metrics.
#[test]
fn every_dashboard_query_parses_and_names_real_metrics() {
    let text = std::fs::read_to_string(dist().join("grafana/isolate.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 8, "{} queries", exprs.len());
    for expr in &exprs {
        assert_names_real_metrics("isolate.json", expr);
    }
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let promql = expr
                .replace("$__rate_interval", "5m")
                .replace("$host", ".*")
                .replace("$isolate_instance", ".*");
            serde_json::json!({ "record": format!("isolate:panel_{i}"), "expr": promql })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: promtool reads it as a rules file.
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(dir.path().join("dashboard.yml"), file.to_string()).unwrap();
    promtool_in(dir.path(), &["check", "rules", "dashboard.yml"]);
}
