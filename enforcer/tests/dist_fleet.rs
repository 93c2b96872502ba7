//! The fleet manifests: the NixOS module in `dist/nixos/` and the Kubernetes manifests in
//! `dist/kubernetes/`, checked by their ecosystems' own tools, and against isolate itself.
//!
//! - The module parses (`nix-instantiate --parse`, Debian's `nix-bin`), and evaluates without
//!   nixpkgs against the stand-in `tests/fleet/nixos-eval.nix`: the policy files it writes pass
//!   `isolate check`, and its services run `isolate daemon` and `isolate exec` with options
//!   isolate has.
//! - The built-in kinds validate with `kubernetes-validate --strict`; the `ServiceMonitor`, a
//!   custom resource it has no schema for, is checked field by field against the Service; the
//!   `ConfigMap`'s policies pass `isolate check`; the metrics port is one number everywhere.
//!
//! Each checker is also shown a broken copy and must refuse it, so a checker that checks
//! nothing cannot pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

fn module() -> PathBuf {
    dist().join("nixos/isolate.nix")
}

fn kubernetes(file: &str) -> PathBuf {
    dist().join("kubernetes").join(file)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs nix-instantiate with `args`, or returns `None` where the checks are skipped (the VM).
///
/// Self-contained: with the `dummy://` store, and its state, log and configuration directories
/// in a scratch directory, it writes nothing outside it (a plain run as root creates /nix/store
/// and /nix/var, and warns about the missing `nixbld` group of Debian's default nix.conf).
fn nix_instantiate(args: &[&str]) -> Option<Output> {
    let nix = common::host_tool(
        "nix-instantiate",
        "NIX_INSTANTIATE",
        "it installs Debian's nix-bin",
    )?;
    let scratch = tempfile::tempdir().unwrap();
    let conf = scratch.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    Some(
        Command::new(nix)
            .env("HOME", scratch.path())
            .env("NIX_CONF_DIR", &conf)
            .env("NIX_STATE_DIR", scratch.path().join("state"))
            .env("NIX_LOG_DIR", scratch.path().join("log"))
            .args(["--store", "dummy://"])
            .args(args)
            .output()
            .expect("run nix-instantiate"),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_nixos_module_parses() {
    let Some(out) = nix_instantiate(&["--parse", path(&module())]) else {
        return;
    };
    assert!(
        out.status.success(),
        "nix-instantiate --parse:\n{}",
        text(&out)
    );
}

#[test]
fn nix_instantiate_refuses_a_syntax_error() {
    let source = std::fs::read_to_string(module()).unwrap();
    // The module without its closing brace.
    let broken = &source[..source.trim_end().len() - 1];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("isolate.nix");
    std::fs::write(&file, broken).unwrap();
    let Some(out) = nix_instantiate(&["--parse", path(&file)]) else {
        return;
    };
    assert!(
        !out.status.success(),
        "a syntax error parsed:\n{}",
        text(&out)
    );
    assert!(text(&out).contains("syntax error"), "{}", text(&out));
}

/// What the module makes of `tests/fleet/nixos-eval.nix`'s instances (or of `instances`, a
/// Nix expression, instead): its policy files, services and users as JSON.
fn evaluate_module(instances: Option<&str>) -> Option<Output> {
    let eval = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fleet/nixos-eval.nix");
    let module = module();
    let mut args = vec![
        "--eval",
        "--strict",
        "--json",
        path(&eval),
        "--arg",
        "module",
        path(&module),
    ];
    if let Some(instances) = instances {
        args.extend(["--arg", "instances", instances]);
    }
    nix_instantiate(&args)
}

fn isolate_check(dir: &Path) {
    let out = Command::new(common::isolate_binary())
        .arg("check")
        .arg(dir)
        .output()
        .expect("run isolate check");
    assert!(out.status.success(), "isolate check:\n{}", text(&out));
}

#[test]
fn the_nixos_module_writes_policies_isolate_accepts() {
    let Some(out) = evaluate_module(None) else {
        return;
    };
    assert!(
        out.status.success(),
        "evaluating the module:\n{}",
        text(&out)
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Every instance option set (`web`), and every one at its default (`open`): each policy
    // is a TOML file isolate accepts, where an unknown field is an error.
    let policies = config["policies"].as_object().unwrap();
    let mut names: Vec<&str> = policies.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["isolate/instances/open.toml", "isolate/instances/web.toml"]
    );
    let dir = tempfile::tempdir().unwrap();
    for (file, policy) in policies {
        assert_eq!(policy["mode"], "0600", "{file}");
        let toml = toml::to_string(&policy["contents"]).unwrap();
        let name = Path::new(file).file_name().unwrap();
        std::fs::write(dir.path().join(name), toml).unwrap();
    }
    isolate_check(dir.path());

    // Each option reaches the policy field it names.
    let web = &policies["isolate/instances/web.toml"]["contents"];
    assert_eq!(web["user"], "isolate-web");
    assert_eq!(web["directory"], "/srv/web");
    assert_eq!(web["presets"], serde_json::json!(["npm"]));
    assert_eq!(
        web["network"]["allow"],
        serde_json::json!([
            "10.0.0.0/8",
            "192.168.1.10/32:5432/tcp",
            "api.example.com:443/tcp"
        ])
    );
    assert_eq!(web["network"]["dns"], serde_json::json!(["192.0.2.53"]));
    assert_eq!(web["network"]["log"]["rate"], "5/minute");
    assert_eq!(
        web["filesystem"]["read_write"],
        serde_json::json!(["/srv/web"])
    );
    assert_eq!(web["landlock"]["minimum_abi"], 2);
    let open = &policies["isolate/instances/open.toml"]["contents"];
    assert_eq!(open["user"], "isolate-open");
    assert_eq!(
        open["network"]["allow"],
        serde_json::json!(["0.0.0.0/0", "::/0"])
    );
    assert!(open.get("directory").is_none());

    // The services run isolate with options it has.
    let daemon = config["services"]["isolate"]["ExecStart"].as_str().unwrap();
    assert_eq!(
        daemon,
        "/stub/isolate/bin/isolate daemon --metrics 0.0.0.0:9477 --layers ebpf"
    );
    let help = Command::new(common::isolate_binary())
        .args(["daemon", "--help"])
        .output()
        .unwrap();
    for flag in ["--metrics", "--layers"] {
        assert!(text(&help).contains(flag), "isolate daemon has no {flag}");
    }
    assert_eq!(
        config["services"]["isolate-web"]["ExecStart"],
        "/stub/isolate/bin/isolate exec --instance web -- /usr/bin/node server.js"
    );
    assert!(
        config["services"].get("isolate-open").is_none(),
        "an instance without a command got a service"
    );
    // The daemon enforces by UID: each instance's user is made, with the home isolate wants.
    assert_eq!(
        config["users"]["isolate-web"]["home"],
        "/var/lib/isolate/web"
    );
}

#[test]
fn an_option_the_module_does_not_have_is_an_error() {
    let Some(out) = evaluate_module(Some("{ web.sandbox.readWrite = [ ]; }")) else {
        return;
    };
    assert!(!out.status.success(), "a misspelt option evaluated");
    assert!(
        text(&out)
            .contains("services.isolate.instances.web.sandbox: the module has no option readWrite"),
        "{}",
        text(&out)
    );
}

/// Runs `kubernetes-validate --strict` on `files`, or returns `None` in the VM.
fn kubernetes_validate(files: &[&Path]) -> Option<Output> {
    let tool = common::host_tool(
        "kubernetes-validate",
        "KUBERNETES_VALIDATE",
        "it installs kubernetes-validate from PyPI",
    )?;
    Some(
        Command::new(tool)
            .arg("--strict")
            .args(files)
            .output()
            .expect("run kubernetes-validate"),
    )
}

/// The manifests of the kinds Kubernetes itself defines.
const BUILT_IN: &[(&str, &str)] = &[
    ("00-namespace.yaml", "namespace/isolate"),
    ("10-policies.yaml", "configmap/isolate-policies"),
    ("20-daemonset.yaml", "daemonset/isolate"),
    ("30-service.yaml", "service/isolate"),
];

#[test]
fn the_built_in_kinds_validate_strictly() {
    let files: Vec<PathBuf> = BUILT_IN.iter().map(|(file, _)| kubernetes(file)).collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let Some(out) = kubernetes_validate(&paths) else {
        return;
    };
    let report = text(&out);
    assert!(out.status.success(), "kubernetes-validate:\n{report}");
    // It passes what it has no schema for, with a warning: each must have been validated.
    for (file, resource) in BUILT_IN {
        assert!(
            report.contains(&format!("{file} passed for resource {resource}")),
            "{file} was not validated:\n{report}"
        );
    }
}

#[test]
fn kubernetes_validate_refuses_a_field_of_the_wrong_type() {
    let daemonset = std::fs::read_to_string(kubernetes("20-daemonset.yaml")).unwrap();
    let broken = daemonset.replacen("hostNetwork: true", "hostNetwork: \"yes\"", 1);
    assert_ne!(broken, daemonset);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemonset.yaml");
    std::fs::write(&file, broken).unwrap();
    let Some(out) = kubernetes_validate(&[&file]) else {
        return;
    };
    assert!(
        !out.status.success(),
        "a wrong type validated:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("hostNetwork: 'yes' is not of type 'boolean'"),
        "{}",
        text(&out)
    );
}

/// The documents of a YAML file, as JSON, read by the Python that runs kubernetes-validate
/// (`PyYAML` is one of its dependencies).
fn yaml(file: &Path) -> Option<Vec<Value>> {
    common::host_tool(
        "kubernetes-validate",
        "KUBERNETES_VALIDATE",
        "it installs kubernetes-validate from PyPI",
    )?;
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "reading {}:\n{}",
        file.display(),
        text(&out)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn one(file: &str) -> Option<Value> {
    let mut documents = yaml(&kubernetes(file))?;
    assert_eq!(documents.len(), 1, "{file}");
    documents.pop()
}

#[test]
fn the_servicemonitor_is_not_schema_checked_so_its_fields_are() {
    let monitor_file = kubernetes("prometheus-operator/servicemonitor.yaml");
    let Some(out) = kubernetes_validate(&[&monitor_file]) else {
        return;
    };
    // kubernetes-validate knows no custom resource: it warns and passes. Should a version
    // learn this one, this test says so, and BUILT_IN should take it.
    assert!(
        text(&out).contains("Couldn't find schema for kind ServiceMonitor"),
        "{}",
        text(&out)
    );
    let monitor = yaml(&monitor_file).unwrap().pop().unwrap();
    let service = one("30-service.yaml").unwrap();
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    // It selects the Service, in its namespace, by its labels.
    let namespace = &service["metadata"]["namespace"];
    assert_eq!(&monitor["metadata"]["namespace"], namespace);
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        *namespace
    );
    let wanted = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (label, value) in wanted {
        assert_eq!(
            &service["metadata"]["labels"][label], value,
            "the Service has no label {label}={value}"
        );
    }
    // The job is named after the Service: the job the alerting rules watch.
    assert_eq!(service["metadata"]["name"], "isolate");
    let rules = std::fs::read_to_string(dist().join("prometheus/isolate-rules.yml")).unwrap();
    assert!(rules.contains("up{job=\"isolate\"}"));
    // Its endpoint is the Service's port, by name, on the path isolate serves.
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoints[0]["path"], "/metrics");
    // Only fields of monitoring.coreos.com/v1's ServiceMonitor (prometheus-operator's API).
    let known = [
        "selector",
        "namespaceSelector",
        "endpoints",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    ];
    for field in monitor["spec"].as_object().unwrap().keys() {
        assert!(known.contains(&field.as_str()), "spec.{field}");
    }
    let endpoint_fields = [
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
    ];
    for field in endpoints[0].as_object().unwrap().keys() {
        assert!(
            endpoint_fields.contains(&field.as_str()),
            "endpoints[0].{field}"
        );
    }
}

#[test]
fn the_metrics_port_is_one_port_everywhere() {
    let Some(daemonset) = one("20-daemonset.yaml") else {
        return;
    };
    let service = one("30-service.yaml").unwrap();
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = &container["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(port["containerPort"], 9477);
    // The daemon is told to serve on it (and on the node's address: it is the pod's).
    let script = container["args"][0].as_str().unwrap();
    assert!(
        script.contains(
            "exec isolate daemon --policy-dir /etc/isolate/instances --metrics \"$POD_IP:9477\""
        ),
        "{script}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["port"], 9477);
    assert_eq!(service_port["targetPort"], "metrics");
    assert_eq!(
        service["spec"]["selector"],
        daemonset["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn the_daemonset_reaches_what_the_daemon_uses_on_the_node() {
    let Some(daemonset) = one("20-daemonset.yaml") else {
        return;
    };
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["dnsPolicy"], "Default");
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["privileged"], true);
    // Each node path the daemon uses, mounted at the same path from the node.
    let volumes = pod["volumes"].as_array().unwrap();
    let host_path = |volume: &Value| {
        volumes
            .iter()
            .find(|v| v["name"] == *volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
    };
    let mounts = container["volumeMounts"].as_array().unwrap();
    for path in [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/run/isolate",
        "/var/lib/isolate",
        "/etc/isolate/instances",
        "/etc/passwd",
        "/run/systemd/journal",
    ] {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        assert_eq!(host_path(&mount["name"]), Some(path), "{path}");
    }
    let bpffs = mounts.iter().find(|m| m["mountPath"] == "/sys/fs/bpf");
    assert_eq!(bpffs.unwrap()["mountPropagation"], "Bidirectional");
}

#[test]
fn the_configmap_policies_pass_isolate_check() {
    let Some(configmap) = one("10-policies.yaml") else {
        return;
    };
    let data = configmap["data"].as_object().unwrap();
    assert!(data.len() >= 2);
    let dir = tempfile::tempdir().unwrap();
    for (file, policy) in data {
        assert!(
            Path::new(file).extension().is_some_and(|e| e == "toml"),
            "{file}: the daemon reads only *.toml"
        );
        std::fs::write(dir.path().join(file), policy.as_str().unwrap()).unwrap();
    }
    // As a directory: each `name` must equal its file's stem.
    isolate_check(dir.path());
}
