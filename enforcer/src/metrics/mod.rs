//! Prometheus metrics, rendered from a status snapshot the daemon fills with the kernel's
//! counters at each scrape, so the numbers are the counters themselves, never a copy that
//! drifts. Labels never carry a destination address (that would make the series unbounded).
//!
//! The families are written straight into the text exposition format (version 0.0.4), which
//! the tests check line for line against the `prometheus` crate's own encoder. Neither through
//! a `Registry` of metric vectors (at 1,000 instances, 22,000 series, filling and gathering one
//! took 80–120 ms of every scrape) nor through the crate's data model and encoder (15–22 ms:
//! a few allocations per label and sample), since a scrape at that size has 50 ms in all.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use crate::control::{InstanceStatus, Status};
use crate::layer::LayerKind;

/// The label naming the instance. Not `instance`: Prometheus sets that one itself (the scrape
/// target) and renames an exposed `instance` to `exported_instance`, breaking queries.
pub const INSTANCE_LABEL: &str = "isolate_instance";

/// The text exposition of every metric.
pub fn render(status: &Status) -> String {
    let families = families(status);
    let mut out = String::with_capacity(families.iter().map(Family::size_hint).sum());
    for family in &families {
        family.write(&mut out);
    }
    out
}

/// Every metric family of `status`, in name order.
fn families(status: &Status) -> Vec<Family<'_>> {
    let mut blocked = Family::counter(
        "isolate_blocked_total",
        "Blocked connection attempts and packets, by instance, layer, family and protocol",
        &[INSTANCE_LABEL, "layer", "family", "protocol"],
    );
    let mut hooks = Family::counter(
        "isolate_ebpf_blocked_by_hook_total",
        "Attempts the eBPF layer refused, by the hook that refused them",
        &[INSTANCE_LABEL, "hook"],
    );
    let mut entries = Family::gauge(
        "isolate_policy_entries",
        "Allowed destination entries in force, by instance and family",
        &[INSTANCE_LABEL, "family"],
    );
    let mut reloads = Family::counter(
        "isolate_policy_reloads_total",
        "Policy directory reloads, by result (ok: every instance applied; failed: at least one kept its old policy)",
        &["result"],
    );
    let mut count = Family::gauge("isolate_instances", "Instances enforced", &[]);
    let mut available = Family::gauge(
        "isolate_layer_available",
        "1 when the layer (ebpf, nftables, or unix: the unix-socket allowlists) is in force, 0 when it is not",
        &["layer"],
    );
    for layer in &status.layers {
        available.set(&[layer.layer.as_str()], u64::from(layer.available));
    }
    let mut kept = Family::gauge(
        "isolate_instance_on_last_good_policy",
        "1 when the instance runs on its last good policy because its file failed to load or apply",
        &[INSTANCE_LABEL],
    );
    let mut dropped = Family::counter(
        "isolate_events_dropped_total",
        "Blocked attempts counted by the eBPF layer that the kernel sent no event for (the instance's budget of events per second and CPU was spent, or the ring buffer was full); the audit trail counts them among its suppressed records",
        &[INSTANCE_LABEL],
    );
    let mut build = Family::gauge("isolate_build_info", "isolate's version", &["version"]);
    build.set(&[env!("CARGO_PKG_VERSION")], 1);

    count.set(&[], status.instances.len() as u64);
    let daemon = status.daemon.unwrap_or_default();
    reloads.set(&["ok"], daemon.reloads_ok);
    reloads.set(&["failed"], daemon.reloads_failed);
    for instance in instances(status) {
        let name = instance.name.as_str();
        entries.set(&[name, "ipv4"], instance.entries_v4 as u64);
        entries.set(&[name, "ipv6"], instance.entries_v6 as u64);
        kept.set(&[name], u64::from(instance.kept.is_some()));
        dropped.set(&[name], instance.events_unsent);

        // The counters are by hook too: summed here into the series' labels.
        let mut by_protocol: BTreeMap<[&str; 3], u64> = BTreeMap::new();
        let mut by_hook: BTreeMap<&str, u64> = BTreeMap::new();
        for counted in &instance.counters {
            let labels = [counted.layer.as_str(), &counted.family, &counted.protocol];
            *by_protocol.entry(labels).or_default() += counted.count;
            if counted.layer == LayerKind::Ebpf {
                let hook = counted.hook.as_deref().unwrap_or("unknown");
                *by_hook.entry(hook).or_default() += counted.count;
            }
        }
        for ([layer, family, protocol], n) in by_protocol {
            blocked.set(&[name, layer, family, protocol], n);
        }
        for (hook, n) in by_hook {
            hooks.set(&[name, hook], n);
        }
    }
    let (queries, admitted) = dns_families(status);

    let mut families = vec![
        blocked, hooks, entries, reloads, count, available, kept, dropped, build, queries, admitted,
    ];
    families.sort_by_key(|family| family.name);
    families
}

/// The status's instances, each name once (the first): a series repeated would make
/// Prometheus refuse the whole scrape. The daemon's names are unique already.
fn instances(status: &Status) -> impl Iterator<Item = &InstanceStatus> {
    let mut seen = HashSet::new();
    status
        .instances
        .iter()
        .filter(move |instance| seen.insert(instance.name.as_str()))
}

/// The resolvers' metrics, for the instances whose names are followed.
fn dns_families(status: &Status) -> (Family<'_>, Family<'_>) {
    let mut queries = Family::counter(
        "isolate_dns_queries_total",
        "DNS questions isolate's resolver got from the instance, by verdict (answered, refused: not in the policy, failed: SERVFAIL)",
        &[INSTANCE_LABEL, "verdict"],
    );
    let mut admitted = Family::gauge(
        "isolate_dns_admitted_addresses",
        "Addresses DNS answers hold admitted for the instance now",
        &[INSTANCE_LABEL],
    );
    for instance in instances(status) {
        let Some(dns) = &instance.dns else { continue };
        let name = instance.name.as_str();
        for (verdict, n) in [
            ("answered", dns.answered),
            ("refused", dns.refused),
            ("failed", dns.failed),
        ] {
            queries.set(&[name, verdict], n);
        }
        let held: usize = dns.names.iter().map(|n| n.addresses.len()).sum();
        admitted.set(&[name], held as u64);
    }
    (queries, admitted)
}

/// One metric family as it is filled: each series by its label values, in the order of
/// `labels`, each set once.
struct Family<'a> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    series: Vec<(Vec<&'a str>, u64)>,
}

/// The metric types isolate exposes, as the format's `# TYPE` line names them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

impl<'a> Family<'a> {
    fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self::new(name, help, Kind::Counter, labels)
    }

    fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self::new(name, help, Kind::Gauge, labels)
    }

    fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            kind,
            labels,
            series: Vec::new(),
        }
    }

    fn set(&mut self, values: &[&'a str], n: u64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        self.series.push((values.to_vec(), n));
    }

    /// The label indices in name order, as Prometheus writes labels.
    fn label_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.labels.len()).collect();
        order.sort_by_key(|&i| self.labels[i]);
        order
    }

    /// Bytes the family takes in the exposition, about (to size the output once).
    fn size_hint(&self) -> usize {
        let labels: usize = self.labels.iter().map(|label| label.len() + 4).sum();
        self.help.len() + self.series.len() * (self.name.len() + labels + 48)
    }

    /// Writes the family as the text format has it: its `# HELP` and `# TYPE` lines, then a
    /// line per series, labels in name order. Nothing for a family without series (the format
    /// has no empty family).
    fn write(&self, out: &mut String) {
        if self.series.is_empty() {
            return;
        }
        out.push_str("# HELP ");
        out.push_str(self.name);
        out.push(' ');
        push_escaped(out, self.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(self.name);
        out.push(' ');
        out.push_str(self.kind.as_str());
        out.push('\n');
        let order = self.label_order();
        for (values, n) in &self.series {
            out.push_str(self.name);
            for (k, &i) in order.iter().enumerate() {
                out.push(if k == 0 { '{' } else { ',' });
                out.push_str(self.labels[i]);
                out.push_str("=\"");
                push_escaped(out, values[i], true);
                out.push('"');
            }
            if !order.is_empty() {
                out.push('}');
            }
            // Writing to a String cannot fail.
            let _ = writeln!(out, " {n}");
        }
    }
}

/// `text` escaped as the format wants it: backslash and line feed always, the double quote
/// too within a label value.
fn push_escaped(out: &mut String, text: &str, label_value: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
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

    /// `families` as the `prometheus` crate's own text encoder writes them, from its data
    /// model: the reference `render` must match byte for byte.
    fn encoded_by_the_crate(families: Vec<Family<'_>>) -> String {
        use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
        use prometheus::{Encoder as _, TextEncoder};
        let families: Vec<MetricFamily> = families
            .into_iter()
            .filter(|family| !family.series.is_empty())
            .map(|family| {
                let order = family.label_order();
                let metrics = family
                    .series
                    .iter()
                    .map(|(values, n)| {
                        let labels = order
                            .iter()
                            .map(|&i| {
                                let mut pair = LabelPair::default();
                                pair.set_name(family.labels[i].to_owned());
                                pair.set_value(values[i].to_owned());
                                pair
                            })
                            .collect();
                        let mut metric = Metric::from_label(labels);
                        #[allow(clippy::cast_precision_loss, reason = "small test values")]
                        let sample = *n as f64;
                        if family.kind == Kind::Counter {
                            let mut counter = Counter::default();
                            counter.set_value(sample);
                            metric.set_counter(counter);
                        } else {
                            let mut gauge = Gauge::default();
                            gauge.set_value(sample);
                            metric.set_gauge(gauge);
                        }
                        metric
                    })
                    .collect();
                let mut encoded = MetricFamily::default();
                encoded.set_name(family.name.to_owned());
                encoded.set_help(family.help.to_owned());
                encoded.set_field_type(match family.kind {
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Gauge => MetricType::GAUGE,
                });
                encoded.set_metric(metrics);
                encoded
            })
            .collect();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A status with something in every family, and names that need escaping.
    fn full_status() -> Status {
        let mut odd = InstanceStatus {
            name: "quote\"back\\slash\nnewline".into(),
            entries_v4: 3,
            entries_v6: 1,
            events_unsent: 2,
            kept: Some("broken".into()),
            ..InstanceStatus::default()
        };
        odd.set_counters(vec![
            count(LayerKind::Ebpf, "tcp", Some("connect"), 4),
            count(LayerKind::Nftables, "udp", None, 0),
        ]);
        let mut plain = InstanceStatus {
            name: "plain".into(),
            dns: Some(crate::control::DnsStatus {
                answered: 5,
                refused: 1,
                ..crate::control::DnsStatus::default()
            }),
            ..InstanceStatus::default()
        };
        plain.set_counters(vec![count(LayerKind::Ebpf, "udp", Some("sendmsg"), 7)]);
        Status {
            daemon_running: true,
            instances: vec![odd, plain],
            daemon: Some(DaemonStats {
                reloads_ok: 2,
                reloads_failed: 1,
                events_received: 3,
            }),
            layers: vec![LayerAvailability {
                layer: "ebpf".into(),
                available: true,
                reason: None,
            }],
        }
    }

    #[test]
    fn writes_what_the_prometheus_crate_would() {
        let status = full_status();
        let text = render(&status);
        assert_eq!(text, encoded_by_the_crate(families(&status)));
        assert!(
            text.contains(r#"isolate_instance="quote\"back\\slash\nnewline""#),
            "{text}"
        );
        // Every family has a series here: none was left out of the comparison.
        assert!(
            families(&status)
                .iter()
                .all(|family| !family.series.is_empty())
        );
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
