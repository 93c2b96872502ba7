//! Applying, inspecting and removing an instance's table in the kernel.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use nftables::schema::Nftables;
use serde_json::Value;

use super::command::{self, RunError};
use super::netlink;
use super::render::{self, CounterValue, table_name};
use super::{NftError, NftPolicy};

/// Puts the instance's table in place, replacing the one there in a single transaction: packets
/// see the old policy or the new one, never a mixture. Applying the same policy again leaves one
/// identical table. When nft or the kernel refuses, nothing changes and the error quotes nft.
///
/// Counters carry over: their values are read just before and seeded into the new table, so a
/// re-apply (e.g. after host names are re-resolved) does not reset them. Packets counted between
/// that read and the commit are lost (a few milliseconds).
pub fn apply(policy: &NftPolicy) -> Result<(), NftError> {
    let instance = policy.instance;
    let batch = render_carrying_over(policy, is_applied(instance)?)?;
    command::apply(&batch).map_err(|e| match e {
        RunError::Failed(stderr) => NftError::Rejected {
            instance: instance.to_owned(),
            culprit: find_culprit(policy),
            stderr,
        },
        other => other.for_instance(instance, "apply its ruleset"),
    })
}

/// Puts several instances' tables in place as `apply` does, all in one transaction: every
/// run of `nft` reads the definitions of every table already there, so a daemon starting a
/// thousand instances one run each spent most of its time re-reading them. Either every table
/// is in place afterwards, or none changed and the error is the first instance's (`apply`
/// each on its own then tells which instance nft refuses).
pub fn apply_many(policies: &[NftPolicy]) -> Result<(), NftError> {
    let Some(first) = policies.first() else {
        return Ok(());
    };
    let tables = inet_tables(first.instance)?;
    let mut objects = Vec::new();
    for policy in policies {
        let applied = tables.contains(&table_name(policy.instance));
        objects.extend(render_carrying_over(policy, applied)?.objects.into_owned());
    }
    command::apply(&Nftables {
        objects: objects.into(),
    })
    .map_err(|e| e.for_instance(first.instance, "apply several instances' rulesets at once"))
}

/// The transaction that replaces the instance's table (`applied`: it is there now) with what
/// `policy` says, carrying over its counters and admitted host addresses.
fn render_carrying_over(policy: &NftPolicy, applied: bool) -> Result<Nftables<'static>, NftError> {
    let instance = policy.instance;
    check_instance(instance)?;
    let (seeds, host_seeds) = if applied {
        (read_counters(instance)?, read_host_elements(instance)?)
    } else {
        (BTreeMap::new(), Vec::new())
    };
    Ok(render::render_with_counters(policy, &seeds, &host_seeds))
}

/// Admits addresses a DNS answer gave the instance, in one transaction: each goes into its
/// host rule's set with its timeout (a later one replaces an earlier one).
pub fn admit(instance: &str, elements: &[render::HostElement]) -> Result<(), NftError> {
    check_instance(instance)?;
    if elements.is_empty() {
        return Ok(());
    }
    let batch = render::admit_elements(&table_name(instance), elements);
    command::apply(&batch).map_err(|e| e.for_instance(instance, "admit a DNS answer"))
}

/// Deletes the instance's table; no error when it is not there.
pub fn remove(instance: &str) -> Result<(), NftError> {
    delete_tables(&[instance], "delete its table")
}

/// Deletes each instance's table in one transaction; no error for one that is not there.
pub fn remove_many(instances: &[&str]) -> Result<(), NftError> {
    delete_tables(instances, "delete several instances' tables at once")
}

/// One transaction deleting each instance's table; an error is reported as the first's,
/// doing `action`.
fn delete_tables(instances: &[&str], action: &'static str) -> Result<(), NftError> {
    let Some(first) = instances.first() else {
        return Ok(());
    };
    let mut objects = Vec::new();
    for instance in instances {
        check_instance(instance)?;
        // `add` + `delete`: no error when absent, and no check-then-act race.
        objects.extend(render::delete_table(&table_name(instance)));
    }
    command::apply(&Nftables {
        objects: objects.into(),
    })
    .map_err(|e| e.for_instance(first, action))
}

/// Whether the instance's table is in place.
pub fn is_applied(instance: &str) -> Result<bool, NftError> {
    check_instance(instance)?;
    netlink::inet_table_exists(&table_name(instance)).map_err(|source| NftError::Netlink {
        instance: instance.to_owned(),
        action: "look the inet table up",
        source,
    })
}

/// The inet tables' names; an error is reported as `instance`'s.
fn inet_tables(instance: &str) -> Result<Vec<String>, NftError> {
    netlink::inet_tables().map_err(|source| NftError::Netlink {
        instance: instance.to_owned(),
        action: "list the inet tables",
        source,
    })
}

/// Packets counted by each named counter of the instance's table (`blocked_v4_tcp`, …).
pub fn counters(instance: &str) -> Result<BTreeMap<String, u64>, NftError> {
    check_instance(instance)?;
    if !is_applied(instance)? {
        return Err(NftError::NotApplied {
            instance: instance.to_owned(),
        });
    }
    Ok(read_counters(instance)?
        .into_iter()
        .map(|(name, value)| (name, value.packets))
        .collect())
}

/// Packets counted by each named counter of every isolate table, by instance, in one netlink
/// dump: what status and metrics read, however many instances there are. An instance without
/// a table is absent.
pub fn all_counters() -> Result<BTreeMap<String, BTreeMap<String, u64>>, NftError> {
    let counters = netlink::inet_counters(None).map_err(|source| NftError::ListAll {
        action: "list the counters of every isolate table",
        reason: source.to_string(),
    })?;
    let mut tables: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for counter in counters {
        if let Some(instance) = counter.table.strip_prefix(render::TABLE_PREFIX) {
            tables
                .entry(instance.to_owned())
                .or_default()
                .insert(counter.name, counter.packets);
        }
    }
    Ok(tables)
}

/// The table's counters.
fn read_counters(instance: &str) -> Result<BTreeMap<String, CounterValue>, NftError> {
    let table = table_name(instance);
    let counters = netlink::inet_counters(Some(&table)).map_err(|source| NftError::Netlink {
        instance: instance.to_owned(),
        action: "list its counters",
        source,
    })?;
    Ok(counters
        .into_iter()
        .filter(|counter| counter.table == table)
        .map(|counter| {
            let value = CounterValue {
                packets: counter.packets,
                bytes: counter.bytes,
            };
            (counter.name, value)
        })
        .collect())
}

/// The elements of the table's host sets, each with the time it has left as its timeout.
fn read_host_elements(instance: &str) -> Result<Vec<render::HostElement>, NftError> {
    let action = "list its host sets";
    let table = table_name(instance);
    let out = command::list(&["list", "table", "inet", &table])
        .map_err(|e| e.for_instance(instance, action))?;
    let mut elements = Vec::new();
    for set in objects(instance, action, &out)?
        .iter()
        .filter_map(|o| o.get("set"))
        .filter(|set| set["name"].as_str().is_some_and(|n| n.starts_with("host_")))
    {
        let name = set["name"].as_str().unwrap_or_default();
        for elem in set["elem"].as_array().into_iter().flatten() {
            let timed = &elem["elem"];
            let (Some(addr), Some(left)) = (
                timed["val"].as_str().and_then(|v| v.parse().ok()),
                timed["expires"].as_u64(),
            ) else {
                continue;
            };
            elements.push(render::HostElement {
                set: name.to_owned(),
                addr,
                timeout_secs: u32::try_from(left.max(1)).unwrap_or(u32::MAX),
            });
        }
    }
    Ok(elements)
}

/// The objects of nft's JSON output (`{"nftables": [...]}`).
fn objects(instance: &str, action: &'static str, out: &str) -> Result<Vec<Value>, NftError> {
    let mut json: Value = serde_json::from_str(out).map_err(|source| NftError::Output {
        instance: instance.to_owned(),
        action,
        source,
    })?;
    Ok(match json["nftables"].take() {
        Value::Array(objects) => objects,
        _ => Vec::new(),
    })
}

/// After a refusal: which allow-list set nft refuses on its own (each checked with `nft -c`,
/// which commits nothing), described by the policy entries it was built from.
fn find_culprit(policy: &NftPolicy) -> Option<String> {
    let table = table_name(policy.instance);
    render::allow_sets(policy).into_iter().find_map(|set| {
        let mut batch = render::replace_table(&table);
        batch.push(render::add_set(&table, &set));
        let refused = matches!(
            command::check(&Nftables {
                objects: batch.into()
            }),
            Err(RunError::Failed(_))
        );
        refused.then(|| describe(&set.name, &set.entries))
    })
}

fn describe(set: &str, entries: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut list = entries[..entries.len().min(SHOWN)].join(", ");
    if entries.len() > SHOWN {
        let _ = write!(list, " and {} more", entries.len() - SHOWN);
    }
    format!("the set {set}, built from the network.allow entries {list}")
}

/// Instance names are the policy's (`[a-z0-9][a-z0-9_-]{0,31}`): they keep the table name
/// predictable and the log prefix within nft's 127 bytes.
fn check_instance(instance: &str) -> Result<(), NftError> {
    let mut chars = instance.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && instance.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(NftError::InvalidInstance {
            instance: instance.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_follow_the_policy_alphabet() {
        for ok in ["a", "my-project", "x_1", &"a".repeat(32)] {
            assert!(check_instance(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", &"a".repeat(33)] {
            assert!(
                matches!(check_instance(bad), Err(NftError::InvalidInstance { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_long_culprit_list_is_shortened() {
        let entries: Vec<String> = (0..10).map(|i| format!("10.0.{i}.0/24")).collect();
        let text = describe("allow_v4_any", &entries);
        assert!(text.ends_with("10.0.7.0/24 and 2 more"), "{text}");
    }
}
