//! Prometheus metrics: built fresh from the kernel's counters at every scrape, so the numbers
//! are the counters themselves, never a copy that drifts. Labels never carry a destination
//! address (that would make the series unbounded).

use prometheus::{
    Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::bpf::{family_name, layer_name, protocol_name};
use crate::daemon::registry::Registry as Instances;

/// The text exposition of every metric.
pub fn render(instances: &Instances) -> String {
    let registry = Registry::new();
    let blocked = counter_vec(
        &registry,
        "isolate_blocked_total",
        "Blocked connection attempts and packets, by instance, layer, family and protocol",
        &["instance", "layer", "family", "protocol"],
    );
    let hooks = counter_vec(
        &registry,
        "isolate_ebpf_blocked_by_hook_total",
        "Attempts the eBPF layer refused, by the hook that refused them",
        &["instance", "hook"],
    );
    let entries = gauge_vec(
        &registry,
        "isolate_policy_entries",
        "Allowed destination entries in force, by instance and family",
        &["instance", "family"],
    );
    let reloads = counter_vec(
        &registry,
        "isolate_policy_reloads_total",
        "Policy directory reloads, by result (ok: every instance applied; failed: at least one kept its old policy)",
        &["result"],
    );
    let count = gauge(&registry, "isolate_instances", "Instances enforced");
    let dropped = counter(
        &registry,
        "isolate_events_dropped_total",
        "Blocked attempts counted by the eBPF layer whose event did not reach the daemon (ring buffer full)",
    );
    let build = gauge_vec(
        &registry,
        "isolate_build_info",
        "isolate's version",
        &["version"],
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

    count.set(i64::try_from(instances.instances.len()).unwrap_or(i64::MAX));
    reloads
        .with_label_values(&["ok"])
        .inc_by(instances.stats.reloads_ok);
    reloads
        .with_label_values(&["failed"])
        .inc_by(instances.stats.reloads_failed);
    let mut ebpf_total = 0;
    for (name, instance) in &instances.instances {
        entries
            .with_label_values(&[name.as_str(), "ipv4"])
            .set(gauge_value(instance.rules.v4.len()));
        entries
            .with_label_values(&[name.as_str(), "ipv6"])
            .set(gauge_value(instance.rules.v6.len()));
        if let Some(layer) = &instances.bpf {
            for (key, value) in layer.blocked_counts(instance.uid).unwrap_or_default() {
                blocked
                    .with_label_values(&[
                        name.as_str(),
                        "ebpf",
                        family_name(key.family),
                        protocol_name(key.protocol),
                    ])
                    .inc_by(value);
                hooks
                    .with_label_values(&[name.as_str(), layer_name(key.layer)])
                    .inc_by(value);
                ebpf_total += value;
            }
        }
        if instances.layers.nftables {
            for (counter, packets) in crate::nft::counters(name).unwrap_or_default() {
                // Counter names are blocked_<v4|v6>_<protocol>.
                let mut parts = counter.splitn(3, '_').skip(1);
                let (Some(family), Some(protocol)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let family = if family == "v4" { "ipv4" } else { "ipv6" };
                blocked
                    .with_label_values(&[name.as_str(), "nftables", family, protocol])
                    .inc_by(packets);
            }
        }
    }
    dropped.inc_by(ebpf_total.saturating_sub(instances.stats.events_received));

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encoding to a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
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

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("registered once");
    counter
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("registered once");
    gauge
}
