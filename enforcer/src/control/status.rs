//! What is enforced, as `isolate status` shows it and `/metrics` counts it: filled by the
//! running daemon, or read from the kernel when no daemon answers.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::layer::{BlockedCount, LayerKind};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Whether a running daemon answered.
    pub daemon_running: bool,
    pub instances: Vec<InstanceStatus>,
    /// The daemon's own counters (only a running daemon has them).
    #[serde(default)]
    pub daemon: Option<DaemonStats>,
    /// What the daemon's layers offer: `ebpf`, `nftables`, `unix` (the unix-socket
    /// allowlists) → whether they are in force, and why not.
    #[serde(default)]
    pub layers: Vec<LayerAvailability>,
}

/// Whether a layer (or part of one) is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerAvailability {
    pub layer: String,
    pub available: bool,
    /// Why not, when it is not.
    pub reason: Option<String>,
}

/// Counters of the daemon's own work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStats {
    /// Reloads that applied every instance.
    pub reloads_ok: u64,
    /// Reloads where at least one instance kept its previous policy.
    pub reloads_failed: u64,
    /// Block events taken from the ring buffer.
    pub events_received: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    /// `daemon` (enforced host-wide by UID) or `exec` (an `isolate exec` run).
    pub mode: String,
    pub uid: u32,
    pub user: String,
    pub layers: Vec<String>,
    pub policy_hash: String,
    pub entries_v4: usize,
    pub entries_v6: usize,
    /// Every blocked attempt the eBPF layer counted.
    pub blocked_ebpf: u64,
    /// Every packet the nftables layer dropped.
    pub blocked_nftables: u64,
    /// The counts behind the two totals, by layer, family, protocol and hook. The JSON
    /// lists only those above zero: the zeros were nine tenths of a status at 1,000
    /// instances (the metrics, rendered from this list before it is sent, keep them).
    #[serde(default, serialize_with = "above_zero")]
    pub counters: Vec<BlockedCount>,
    /// The latest blocked attempts (only known to a running daemon).
    pub recent: Vec<String>,
    /// Blocked attempts the eBPF layer counted but sent no event for (the instance's event
    /// budget in the kernel was spent, or the ring buffer was full), since the daemon started;
    /// the audit trail counts them among its suppressed records (only known to a running daemon).
    #[serde(default)]
    pub events_unsent: u64,
    /// Set when the instance runs on its last good policy because its file (or the policy
    /// directory) failed: why.
    #[serde(default)]
    pub kept: Option<String>,
    /// What isolate's resolver for the instance did and holds, where its names are followed
    /// (only known to a running daemon).
    #[serde(default)]
    pub dns: Option<DnsStatus>,
}

fn above_zero<S: serde::Serializer>(counts: &[BlockedCount], to: S) -> Result<S::Ok, S::Error> {
    to.collect_seq(counts.iter().filter(|c| c.count > 0))
}

/// What an instance's resolver did, and the names whose answers hold addresses now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    pub answered: u64,
    pub refused: u64,
    /// Answered SERVFAIL: no upstream answered, or the answer could not be admitted.
    pub failed: u64,
    pub names: Vec<NameStatus>,
}

/// A name answered, and the addresses its answers hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameStatus {
    pub name: String,
    /// Each address with the seconds it stays admitted.
    pub addresses: Vec<(String, u64)>,
}

impl From<crate::dns::Report> for DnsStatus {
    fn from(report: crate::dns::Report) -> Self {
        let mut names: Vec<NameStatus> = Vec::new();
        for (name, addr, left) in report.admitted {
            let entry = (addr.to_string(), left.as_secs());
            match names.last_mut() {
                Some(last) if last.name == name => last.addresses.push(entry),
                _ => names.push(NameStatus {
                    name,
                    addresses: vec![entry],
                }),
            }
        }
        Self {
            answered: report.answered,
            refused: report.refused,
            failed: report.failed,
            names,
        }
    }
}

impl InstanceStatus {
    /// Takes in the layers' counters, and their totals per layer.
    pub fn set_counters(&mut self, counters: Vec<BlockedCount>) {
        let total = |kind| {
            counters
                .iter()
                .filter(|c| c.layer == kind)
                .map(|c| c.count)
                .sum()
        };
        self.blocked_ebpf = total(LayerKind::Ebpf);
        self.blocked_nftables = total(LayerKind::Nftables);
        self.counters = counters;
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = if self.daemon_running {
            "from the running daemon"
        } else {
            "from the kernel (no daemon answered)"
        };
        writeln!(
            f,
            "isolate status, {source}: {} instance(s)",
            self.instances.len()
        )?;
        for layer in self.layers.iter().filter(|l| !l.available) {
            writeln!(
                f,
                "NOT ENFORCED: {} ({})",
                layer.layer,
                layer.reason.as_deref().unwrap_or("turned off")
            )?;
        }
        if self.instances.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "{:<20} {:<6} {:>7} {:<20} {:<16} {:>8} {:>10} {:>13}  policy",
            "INSTANCE", "MODE", "UID", "USER", "LAYERS", "ENTRIES", "BLOCKED", "BLOCKED(nft)"
        )?;
        for i in &self.instances {
            writeln!(
                f,
                "{:<20} {:<6} {:>7} {:<20} {:<16} {:>8} {:>10} {:>13}  {}",
                i.name,
                i.mode,
                i.uid,
                i.user,
                i.layers.join(","),
                i.entries_v4 + i.entries_v6,
                i.blocked_ebpf,
                i.blocked_nftables,
                i.policy_hash
            )?;
            if let Some(why) = &i.kept {
                writeln!(f, "    running on its last good policy: {why}")?;
            }
            if let Some(dns) = &i.dns {
                writeln!(
                    f,
                    "    dns: {} answered, {} refused, {} failed",
                    dns.answered, dns.refused, dns.failed
                )?;
                for name in &dns.names {
                    let addresses: Vec<String> = name
                        .addresses
                        .iter()
                        .map(|(addr, left)| format!("{addr} ({left} s)"))
                        .collect();
                    writeln!(f, "    name {}: {}", name.name, addresses.join(", "))?;
                }
            }
            if i.events_unsent > 0 {
                writeln!(
                    f,
                    "    events not sent by the kernel (beyond the instance's budget): {} \
                     (counted, and reported as suppressed records)",
                    i.events_unsent
                )?;
            }
            for recent in &i.recent {
                writeln!(f, "    last blocked: {recent}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(layer: LayerKind, n: u64) -> BlockedCount {
        BlockedCount {
            layer,
            family: "ipv4".into(),
            protocol: "tcp".into(),
            hook: None,
            count: n,
        }
    }

    #[test]
    fn the_json_lists_only_counters_above_zero() {
        let mut instance = InstanceStatus::default();
        instance.set_counters(vec![
            count(LayerKind::Ebpf, 0),
            count(LayerKind::Ebpf, 3),
            count(LayerKind::Nftables, 0),
        ]);
        let json = serde_json::to_value(&instance).unwrap();
        let listed = json["counters"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{json}");
        assert_eq!(listed[0]["count"], 3);
        let back: InstanceStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.blocked_ebpf, 3);
        assert_eq!(
            instance.counters.len(),
            3,
            "the status itself keeps the zeros"
        );
    }

    #[test]
    fn totals_are_per_layer_and_kept_policies_say_why() {
        let mut instance = InstanceStatus {
            name: "a".into(),
            ..InstanceStatus::default()
        };
        instance.set_counters(vec![
            count(LayerKind::Ebpf, 2),
            count(LayerKind::Ebpf, 3),
            count(LayerKind::Nftables, 7),
        ]);
        assert_eq!((instance.blocked_ebpf, instance.blocked_nftables), (5, 7));
        instance.kept = Some("a.toml:2:1: bogus".into());
        let status = Status {
            daemon_running: true,
            instances: vec![instance],
            daemon: None,
            layers: vec![LayerAvailability {
                layer: "unix".into(),
                available: false,
                reason: Some("the kernel refused them".into()),
            }],
        };
        let text = status.to_string();
        assert!(
            text.contains("NOT ENFORCED: unix (the kernel refused them)"),
            "{text}"
        );
        assert!(
            text.contains("running on its last good policy: a.toml:2:1: bogus"),
            "{text}"
        );
        // Clients of an older daemon (no `counters`, no `kept`) still read its answers.
        let old = r#"{"daemon_running":false,"instances":[{"name":"a","mode":"exec","uid":1,
            "user":"u","layers":[],"policy_hash":"","entries_v4":0,"entries_v6":0,
            "blocked_ebpf":1,"blocked_nftables":0,"recent":[]}]}"#;
        let parsed: Status = serde_json::from_str(old).unwrap();
        assert_eq!(parsed.instances[0].blocked_ebpf, 1);
    }

    #[test]
    fn the_resolvers_report_groups_addresses_by_name() {
        use std::time::Duration;
        let report = crate::dns::Report {
            answered: 3,
            refused: 1,
            failed: 0,
            admitted: vec![
                (
                    "a.example".into(),
                    "192.0.2.1".parse().unwrap(),
                    Duration::from_secs(330),
                ),
                (
                    "a.example".into(),
                    "192.0.2.2".parse().unwrap(),
                    Duration::from_secs(40),
                ),
                (
                    "b.example".into(),
                    "2001:db8::1".parse().unwrap(),
                    Duration::from_secs(5),
                ),
            ],
        };
        let status = Status {
            instances: vec![InstanceStatus {
                name: "x".into(),
                dns: Some(report.into()),
                ..InstanceStatus::default()
            }],
            ..Status::default()
        };
        let text = status.to_string();
        for line in [
            "    dns: 3 answered, 1 refused, 0 failed",
            "    name a.example: 192.0.2.1 (330 s), 192.0.2.2 (40 s)",
            "    name b.example: 2001:db8::1 (5 s)",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
