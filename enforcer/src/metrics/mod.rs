//! Prometheus metrics, rendered from a status snapshot the daemon fills with the kernel's
//! counters at each scrape, so the numbers are the counters themselves, never a copy that
//! drifts. Labels never carry a destination address (that would make the series unbounded).

use prometheus::{Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::control::Status;
use crate::layer::LayerKind;

/// The label naming the instance. Not `instance`: Prometheus sets that one itself (the scrape
/// target) and renames an exposed `instance` to `exported_instance`, breaking queries.
pub const INSTANCE_LABEL: &str = "isolate_instance";

/// The text exposition of every metric.
pub fn render(status: &Status) -> String {
    let registry = Registry::new();
    let blocked = counter_vec(
        &registry,
        "isolate_blocked_total",
        "Blocked connection attempts and packets, by instance, layer, family and protocol",
        &[INSTANCE_LABEL, "layer", "family", "protocol"],
    );
    let hooks = counter_vec(
        &registry,
        "isolate_ebpf_blocked_by_hook_total",
        "Attempts the eBPF layer refused, by the hook that refused them",
        &[INSTANCE_LABEL, "hook"],
    );
    let entries = gauge_vec(
        &registry,
        "isolate_policy_entries",
        "Allowed destination entries in force, by instance and family",
        &[INSTANCE_LABEL, "family"],
    );
    let reloads = counter_vec(
        &registry,
        "isolate_policy_reloads_total",
        "Policy directory reloads, by result (ok: every instance applied; failed: at least one kept its old policy)",
        &["result"],
    );
    let count = gauge(&registry, "isolate_instances", "Instances enforced");
    let available = gauge_vec(
        &registry,
        "isolate_layer_available",
        "1 when the layer (ebpf, nftables, or unix: the unix-socket allowlists) is in force, 0 when it is not",
        &["layer"],
    );
    for layer in &status.layers {
        available
            .with_label_values(&[layer.layer.as_str()])
            .set(i64::from(layer.available));
    }
    let kept = gauge_vec(
        &registry,
        "isolate_instance_on_last_good_policy",
        "1 when the instance runs on its last good policy because its file failed to load or apply",
        &[INSTANCE_LABEL],
    );
    let dropped = counter_vec(
        &registry,
        "isolate_events_dropped_total",
        "Blocked attempts counted by the eBPF layer that the kernel sent no event for (the instance's budget of events per second and CPU was spent, or the ring buffer was full); the audit trail counts them among its suppressed records",
        &[INSTANCE_LABEL],
    );
    let build = gauge_vec(
        &registry,
        "isolate_build_info",
        "isolate's version",
        &["version"],
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

    count.set(gauge_value(status.instances.len()));
    let daemon = status.daemon.unwrap_or_default();
    reloads.with_label_values(&["ok"]).inc_by(daemon.reloads_ok);
    reloads
        .with_label_values(&["failed"])
        .inc_by(daemon.reloads_failed);
    for instance in &status.instances {
        let name = instance.name.as_str();
        entries
            .with_label_values(&[name, "ipv4"])
            .set(gauge_value(instance.entries_v4));
        entries
            .with_label_values(&[name, "ipv6"])
            .set(gauge_value(instance.entries_v6));
        kept.with_label_values(&[name])
            .set(i64::from(instance.kept.is_some()));
        dropped
            .with_label_values(&[name])
            .inc_by(instance.events_unsent);

        for counted in &instance.counters {
            blocked
                .with_label_values(&[
                    name,
                    counted.layer.as_str(),
                    &counted.family,
                    &counted.protocol,
                ])
                .inc_by(counted.count);
            if counted.layer == LayerKind::Ebpf {
                let hook = counted.hook.as_deref().unwrap_or("unknown");
                hooks.with_label_values(&[name, hook]).inc_by(counted.count);
            }
        }
    }
    render_dns(&registry, status);

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encoding to a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The resolvers' metrics, for the instances whose names are followed.
fn render_dns(registry: &Registry, status: &Status) {
    let queries = counter_vec(
        registry,
        "isolate_dns_queries_total",
        "DNS questions isolate's resolver got from the instance, by verdict (answered, refused: not in the policy, failed: SERVFAIL)",
        &[INSTANCE_LABEL, "verdict"],
    );
    let admitted = gauge_vec(
        registry,
        "isolate_dns_admitted_addresses",
        "Addresses DNS answers hold admitted for the instance now",
        &[INSTANCE_LABEL],
    );
    for instance in &status.instances {
        let Some(dns) = &instance.dns else { continue };
        let name = instance.name.as_str();
        for (verdict, n) in [
            ("answered", dns.answered),
            ("refused", dns.refused),
            ("failed", dns.failed),
        ] {
            queries.with_label_values(&[name, verdict]).inc_by(n);
        }
        let held: usize = dns.names.iter().map(|n| n.addresses.len()).sum();
        admitted.with_label_values(&[name]).set(gauge_value(held));
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("registered once");
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("registered once");
    vec
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("registered once");
    gauge
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{DaemonStats, InstanceStatus, LayerAvailability};
    use crate::layer::BlockedCount;

    fn count(layer: LayerKind, protocol: &str, hook: Option<&str>, n: u64) -> BlockedCount {
        BlockedCount {
            layer,
            family: "ipv4".into(),
            protocol: protocol.into(),
            hook: hook.map(Into::into),
            count: n,
        }
    }

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_every_counter_by_its_labels() {
        let mut a = InstanceStatus {
            name: "a".into(),
            entries_v4: 3,
            events_unsent: 2,
            ..InstanceStatus::default()
        };
        a.set_counters(vec![
            count(LayerKind::Ebpf, "tcp", Some("connect"), 4),
            count(LayerKind::Ebpf, "udp", Some("sendmsg"), 1),
            count(LayerKind::Nftables, "tcp", None, 2),
        ]);
        let b = InstanceStatus {
            name: "b".into(),
            kept: Some("broken".into()),
            ..InstanceStatus::default()
        };
        let status = Status {
            daemon_running: true,
            instances: vec![a, b],
            daemon: Some(DaemonStats {
                reloads_ok: 2,
                reloads_failed: 1,
                events_received: 3,
            }),
            layers: vec![
                LayerAvailability {
                    layer: "ebpf".into(),
                    available: true,
                    reason: None,
                },
                LayerAvailability {
                    layer: "unix".into(),
                    available: false,
                    reason: Some("the kernel refused the programs".into()),
                },
            ],
        };
        let text = render(&status);
        let series = [
            (
                r#"isolate_blocked_total{family="ipv4",isolate_instance="a",layer="ebpf",protocol="tcp"}"#,
                4,
            ),
            (
                r#"isolate_blocked_total{family="ipv4",isolate_instance="a",layer="ebpf",protocol="udp"}"#,
                1,
            ),
            (
                r#"isolate_blocked_total{family="ipv4",isolate_instance="a",layer="nftables",protocol="tcp"}"#,
                2,
            ),
            (
                r#"isolate_ebpf_blocked_by_hook_total{hook="connect",isolate_instance="a"}"#,
                4,
            ),
            (
                r#"isolate_policy_entries{family="ipv4",isolate_instance="a"}"#,
                3,
            ),
            (r#"isolate_policy_reloads_total{result="ok"}"#, 2),
            (r#"isolate_policy_reloads_total{result="failed"}"#, 1),
            ("isolate_instances", 2),
            (
                r#"isolate_instance_on_last_good_policy{isolate_instance="a"}"#,
                0,
            ),
            (
                r#"isolate_instance_on_last_good_policy{isolate_instance="b"}"#,
                1,
            ),
            (r#"isolate_events_dropped_total{isolate_instance="a"}"#, 2),
            (r#"isolate_events_dropped_total{isolate_instance="b"}"#, 0),
            (r#"isolate_layer_available{layer="ebpf"}"#, 1),
            (r#"isolate_layer_available{layer="unix"}"#, 0),
        ];
        for (name, expected) in series {
            assert_eq!(value(&text, name), Some(expected), "{name} in\n{text}");
        }
        // Prometheus would rename an exposed `instance` label.
        assert!(
            !text.contains("{instance=") && !text.contains(",instance="),
            "{text}"
        );
    }
}
