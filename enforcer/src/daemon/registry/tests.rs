//! The registry's rules, against fake layers: no root, no kernel.

use std::fs;

use super::*;
use crate::layer::fake::{FakeLog, Step, layer_pair};

/// A policy directory, a registry over two fake layers, and the test's view of them.
struct Harness {
    dir: tempfile::TempDir,
    registry: Registry,
    ebpf: FakeLog,
    nft: FakeLog,
}

/// Test users: a → 1001, b → 1002, c → 1003, …
/// `a`…`z` are UIDs 1001…1026; `a2`…`z2` are other names of the same UIDs.
fn uid_of(user: &str) -> Option<u32> {
    let byte = *user.as_bytes().first()?;
    let single = user.len() == 1 || user.get(1..) == Some("2");
    (single && byte.is_ascii_lowercase()).then(|| 1000 + u32::from(byte - b'a') + 1)
}

fn lookups() -> Lookups {
    Lookups {
        user: Box::new(|policy| match &policy.user {
            UserSpec::Named(name) => {
                uid_of(name)
                    .map(|uid| (uid, name.clone()))
                    .ok_or_else(|| UserError::Unknown {
                        file: policy.source.clone(),
                        name: name.clone(),
                    })
            }
            UserSpec::Dynamic => unreachable!("the registry refuses dynamic users first"),
        }),
        rules: Box::new(|policy| EffectiveRules {
            v4: policy.network.allow_v4.clone(),
            v6: policy.network.allow_v6.clone(),
            ..EffectiveRules::default()
        }),
    }
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("instances")).unwrap();
        let (layers, ebpf, nft) = layer_pair();
        let registry = Registry::new(dir.path().join("instances"), layers, lookups());
        Self {
            dir,
            registry,
            ebpf,
            nft,
        }
    }

    /// The same directory under a new registry whose layers hold what `self`'s held (the
    /// pins outlive the daemon), as after a restart.
    fn restart(self) -> (Self, Enforced) {
        let record = self.registry.record();
        let (layers, ebpf, nft) = layer_pair();
        for id in self.ebpf.enforced() {
            ebpf.preload(id.clone(), self.ebpf.v4_rules(&id.name).unwrap());
        }
        for id in self.nft.enforced() {
            nft.preload(id.clone(), self.nft.v4_rules(&id.name).unwrap());
        }
        let registry = Registry::new(self.dir.path().join("instances"), layers, lookups());
        let dir = self.dir;
        (
            Self {
                dir,
                registry,
                ebpf,
                nft,
            },
            record,
        )
    }

    fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("instances")
    }

    /// Writes `<file>` with user `user` and `rules` IPv4 entries allowed.
    fn write(&self, file: &str, user: &str, rules: usize) {
        // Apart, so that normalisation keeps them as `rules` entries.
        let allow: Vec<String> = (0..rules)
            .map(|i| format!("\"10.{}.0.0/16\"", 2 * i))
            .collect();
        let text = format!(
            "user = \"{user}\"\n[network]\ndns = \"none\"\nallow = [{}]\n",
            allow.join(", ")
        );
        fs::write(self.policy_dir().join(file), text).unwrap();
    }

    fn break_file(&self, file: &str) {
        fs::write(self.policy_dir().join(file), "user = \"a\"\nbogus = true\n").unwrap();
    }

    /// Instance name → IPv4 rules in force, as both fake layers agree (panics if they do not).
    fn enforced(&self) -> Vec<(String, usize)> {
        let names = |log: &FakeLog| -> Vec<(String, usize)> {
            log.enforced()
                .into_iter()
                .map(|id| {
                    let rules = log.v4_rules(&id.name).unwrap();
                    (id.name, rules)
                })
                .collect()
        };
        let ebpf = names(&self.ebpf);
        assert_eq!(ebpf, names(&self.nft), "the layers disagree");
        ebpf
    }

    fn kept(&self, name: &str) -> Option<String> {
        self.registry.instance(name).and_then(|i| i.kept.clone())
    }
}

fn pairs(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    list.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect()
}

#[test]
fn a_broken_file_never_lets_a_dotfile_or_a_misnamed_file_in() {
    let h = Harness::new();
    let mut h = h;
    h.write("a.toml", "a", 1);
    h.write(".hidden.toml", "b", 1);
    assert!(h.registry.reload().failed.is_empty());
    assert_eq!(h.enforced(), pairs(&[("a", 1)]));
    // With one file broken, the others load by the same rules as a clean directory.
    h.break_file("b.toml");
    fs::write(
        h.policy_dir().join("c.toml"),
        "name = \"other\"\nuser = \"c\"\n",
    )
    .unwrap();
    h.write("d.toml", "a", 2);
    let report = h.registry.reload();
    assert_eq!(h.enforced(), pairs(&[("a", 1)]), "{report:?}");
    let failed: Vec<Option<String>> = report.failed.iter().map(|f| f.instance.clone()).collect();
    assert_eq!(
        failed,
        [Some("b".into()), Some("c".into()), Some("d".into())]
    );
    assert!(
        report.failed[2].reason.contains("user `a` is also used"),
        "{report:?}"
    );
}

#[test]
fn a_broken_file_keeps_its_last_good_policy_until_it_is_fixed() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.write("b.toml", "b", 1);
    let report = h.registry.reload();
    assert_eq!(report.applied, ["a", "b"]);
    h.break_file("a.toml");
    h.write("b.toml", "b", 2);
    let report = h.registry.reload();
    assert_eq!(report.applied, ["b"]);
    assert_eq!(
        report.failure_of("a").unwrap().file,
        Some(h.policy_dir().join("a.toml"))
    );
    assert_eq!(h.enforced(), pairs(&[("a", 1), ("b", 2)]));
    assert!(h.kept("a").unwrap().contains("bogus"), "{:?}", h.kept("a"));
    assert_eq!(h.registry.stats().reloads_failed, 1);
    h.write("a.toml", "a", 3);
    let report = h.registry.reload();
    assert_eq!(
        (report.applied, report.unchanged),
        (vec!["a".into()], vec!["b".into()])
    );
    assert_eq!(h.enforced(), pairs(&[("a", 3), ("b", 2)]));
    assert_eq!(h.kept("a"), None);
}

#[test]
fn an_unreadable_directory_changes_nothing() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.registry.reload();
    fs::rename(h.policy_dir(), h.dir.path().join("moved")).unwrap();
    let report = h.registry.reload();
    assert_eq!(h.enforced(), pairs(&[("a", 1)]));
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].file, Some(h.policy_dir()));
    assert!(report.removed.is_empty());
    assert!(h.kept("a").unwrap().contains("cannot be read"));
}

#[test]
fn a_layer_that_refuses_leaves_the_instance_on_its_previous_rules() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.registry.reload();
    h.write("a.toml", "a", 2);
    h.nft.fail_next_apply("nft refused");
    let report = h.registry.reload();
    assert!(
        report
            .failure_of("a")
            .unwrap()
            .reason
            .contains("nft refused"),
        "{report:?}"
    );
    assert_eq!(h.enforced(), pairs(&[("a", 1)]), "eBPF was put back");
    assert_eq!(h.registry.instance("a").unwrap().rules.v4.len(), 1);
    assert!(h.kept("a").is_some());
    // The next reload tries again.
    assert_eq!(h.registry.reload().applied, ["a"]);
    assert_eq!(h.enforced(), pairs(&[("a", 2)]));
}

#[test]
fn a_removal_that_fails_half_way_is_retried() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.registry.reload();
    fs::remove_file(h.policy_dir().join("a.toml")).unwrap();
    h.nft.fail_next_remove("busy");
    let report = h.registry.reload();
    assert!(report.removed.is_empty());
    assert!(report.failure_of("a").unwrap().reason.contains("busy"));
    assert!(h.ebpf.enforced().is_empty());
    assert_eq!(h.nft.enforced().len(), 1, "nftables still has it");
    assert_eq!(
        h.registry.record().removing,
        BTreeMap::from([("a".into(), 1001)])
    );
    // Recorded, so a restart goes on with it too.
    let (mut h, record) = h.restart();
    let report = h.registry.start(record);
    assert_eq!(report.removed, ["a"], "{report:?}");
    assert!(h.nft.enforced().is_empty());
    assert!(h.registry.record().removing.is_empty());
}

#[test]
fn a_restart_adopts_an_unchanged_instance_without_writing_it() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 2);
    h.registry.reload();
    let (mut h, record) = h.restart();
    let saved = record.instances["a"].clone();
    let report = h.registry.start(record);
    assert_eq!(report.unchanged, ["a"], "{report:?}");
    assert!(h.ebpf.steps().is_empty() && h.nft.steps().is_empty());
    assert_eq!(h.enforced(), pairs(&[("a", 2)]));
    // What the next restart finds is what this one found.
    let again = &h.registry.record().instances["a"];
    assert_eq!(
        (&again.policy, &again.policy_hash, again.uid),
        (&saved.policy, &saved.policy_hash, saved.uid)
    );
}

#[test]
fn a_restart_rewrites_what_the_record_claims_but_a_layer_lacks() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 2);
    h.registry.reload();
    let (mut h, record) = h.restart();
    // The table was deleted by hand while no daemon ran; the record still lists it.
    let id = h.nft.enforced()[0].clone();
    h.nft.forget(&id);
    let report = h.registry.start(record);
    assert_eq!(report.applied, ["a"], "{report:?}");
    assert_eq!(h.enforced(), pairs(&[("a", 2)]));
}

#[test]
fn a_restart_with_a_broken_file_keeps_what_is_pinned() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 2);
    h.write("b.toml", "b", 1);
    h.registry.reload();
    h.break_file("a.toml");
    let (mut h, record) = h.restart();
    let report = h.registry.start(record);
    assert_eq!(report.unchanged, ["b"]);
    assert_eq!(
        report.failure_of("a").map(|f| f.file.clone()),
        Some(Some(h.policy_dir().join("a.toml")))
    );
    assert_eq!(
        h.enforced(),
        pairs(&[("a", 2), ("b", 1)]),
        "nothing removed"
    );
    assert!(
        h.ebpf.steps().is_empty(),
        "nothing rewritten: {:?}",
        h.ebpf.steps()
    );
    assert!(h.kept("a").is_some());
    // The last good policy is known, so it is recorded again and survives another restart.
    let record = h.registry.record();
    assert_eq!(record.instances["a"].entries_v4, 2);
    let (mut h, record) = h.restart();
    h.registry.start(record);
    assert_eq!(h.enforced(), pairs(&[("a", 2), ("b", 1)]));
}

#[test]
fn a_restart_without_the_directory_keeps_everything() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.registry.reload();
    fs::rename(h.policy_dir(), h.dir.path().join("moved")).unwrap();
    let (mut h, record) = h.restart();
    let report = h.registry.start(record);
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(h.enforced(), pairs(&[("a", 1)]));
    assert!(h.kept("a").is_some());
}

#[test]
fn a_restart_removes_instances_whose_file_went_away_and_what_no_one_owns() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.write("b.toml", "b", 1);
    h.registry.reload();
    fs::remove_file(h.policy_dir().join("b.toml")).unwrap();
    let (mut h, record) = h.restart();
    let orphan = InstanceId {
        name: "crashed-before-saving".into(),
        uid: 4242,
    };
    h.ebpf.preload(orphan.clone(), 1);
    let report = h.registry.start(record);
    assert_eq!(report.removed, ["b"], "{report:?}");
    assert_eq!(h.enforced(), pairs(&[("a", 1)]));
    assert!(h.ebpf.steps().contains(&Step::Remove(InstanceId {
        name: "b".into(),
        uid: 1002
    })));
}

#[test]
fn a_user_change_moves_the_instance_to_its_new_uid() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.registry.reload();
    h.write("a.toml", "c", 1);
    assert_eq!(h.registry.reload().applied, ["a"]);
    let ids = h.ebpf.enforced();
    assert_eq!(
        ids,
        [InstanceId {
            name: "a".into(),
            uid: 1003
        }]
    );
}

#[test]
fn one_reload_applies_every_instance_but_the_refused_one() {
    let mut h = Harness::new();
    for (file, user) in [("a.toml", "a"), ("b.toml", "b"), ("c.toml", "c")] {
        h.write(file, user, 1);
    }
    // The fake nftables layer refuses the first instance of the batch: a.
    h.nft.fail_next_apply("nft refused");
    let report = h.registry.reload();
    assert!(
        report
            .failure_of("a")
            .unwrap()
            .reason
            .contains("nft refused"),
        "{report:?}"
    );
    assert_eq!(report.applied, ["b", "c"]);
    assert_eq!(h.enforced(), pairs(&[("b", 1), ("c", 1)]), "a was put back");
    assert!(h.registry.instance("a").is_none());
    assert_eq!(h.registry.reload().applied, ["a"]);
}

#[test]
fn two_new_instances_of_one_uid_in_one_reload_are_not_both_applied() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    h.write("b.toml", "a2", 2);
    let report = h.registry.reload();
    assert_eq!(report.applied, ["a"]);
    assert!(
        report
            .failure_of("b")
            .unwrap()
            .reason
            .contains("UID 1001 is already instance a's"),
        "{report:?}"
    );
    assert_eq!(h.enforced(), pairs(&[("a", 1)]));
}

#[test]
fn shared_and_dynamic_users_are_refused() {
    let mut h = Harness::new();
    h.write("a.toml", "a", 1);
    fs::write(h.policy_dir().join("d.toml"), "user = \"dynamic\"\n").unwrap();
    let report = h.registry.reload();
    assert!(
        report
            .failure_of("d")
            .unwrap()
            .reason
            .contains("dynamic users are for `isolate exec`")
    );
    h.write("b.toml", "a", 1);
    let report = h.registry.reload();
    assert!(
        report
            .failure_of("b")
            .unwrap()
            .reason
            .contains("user `a` is also used"),
        "{report:?}"
    );
    assert_eq!(h.enforced(), pairs(&[("a", 1)]));
}

#[test]
fn the_enforcement_hash_is_stable_and_covers_rules_and_uid() {
    let policy = isolate_policy::parse_str(
        "user = \"a\"\n[network]\ndns = \"none\"\nallow = [\"10.0.0.0/8\"]\n",
        Path::new("/etc/isolate/instances/a.toml"),
    )
    .unwrap();
    let rules = (lookups().rules)(&policy);
    let hash = enforcement_hash(&policy, &rules, 1001);
    // Fixed: a different value means every running instance is rewritten after an upgrade.
    assert_eq!(
        hash,
        "sha256:e441fe25b9966d4b7fc7966c37c3313141eae35671c38d44137afbd7e281d08f"
    );
    assert_ne!(enforcement_hash(&policy, &rules, 1002), hash);
    assert_ne!(
        enforcement_hash(&policy, &EffectiveRules::default(), 1001),
        hash
    );
}

/// What a recording name follower was told, in order.
#[derive(Clone, Default)]
struct FollowLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl FollowNames for FollowLog {
    fn rules(&mut self, policy: &Policy) -> Option<EffectiveRules> {
        self.0
            .lock()
            .unwrap()
            .push(format!("rules {}", policy.name));
        None
    }
    fn in_force(&mut self, id: &InstanceId, _policy: &Policy) {
        self.0.lock().unwrap().push(format!("in force {}", id.name));
    }
    fn removed(&mut self, id: &InstanceId) {
        self.0.lock().unwrap().push(format!("removed {}", id.name));
    }
}

#[test]
fn the_name_follower_hears_what_is_in_force_and_what_is_removed() {
    let mut h = Harness::new();
    let log = FollowLog::default();
    h.registry.follow_names(Box::new(log.clone()));
    h.write("alpha.toml", "a", 1);
    h.registry.reload();
    // Unchanged at the next reload: still in force (a restarted resolver needs to hear it).
    h.registry.reload();
    fs::remove_file(h.policy_dir().join("alpha.toml")).unwrap();
    h.registry.reload();
    assert_eq!(
        *log.0.lock().unwrap(),
        [
            "rules alpha",
            "in force alpha",
            "rules alpha",
            "in force alpha",
            "removed alpha"
        ]
    );
}
