//! What the daemon enforces, written to `/run/isolate/daemon/instances.json` after every change,
//! so `isolate status` can tell without the daemon, and a restarted daemon knows what it had.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One enforced instance, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub uid: u32,
    pub user: String,
    pub source: PathBuf,
    /// Hash of what the instance's enforcement depends on (see `registry::enforcement_hash`).
    pub policy_hash: String,
    /// The last good policy, normalised (`Policy::to_toml`): what a restarted daemon keeps in
    /// force when the instance's file has since broken.
    #[serde(default)]
    pub policy: String,
    pub layers: Vec<String>,
    pub entries_v4: usize,
    pub entries_v6: usize,
}

/// Every instance the daemon enforces, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    pub instances: BTreeMap<String, InstanceRecord>,
    /// Instances whose removal failed in some layer, by name, with their UID: still to do.
    #[serde(default)]
    pub removing: BTreeMap<String, u32>,
}

impl Enforced {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("instances.json")
    }

    /// Reads the record; none yet is an empty one.
    pub fn load(state_dir: &Path) -> io::Result<Self> {
        match std::fs::read(Self::path(state_dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the record atomically (a reader never sees half of it).
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let tmp = state_dir.join("instances.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        std::fs::rename(tmp, Self::path(state_dir))
    }

    pub fn remove(state_dir: &Path) -> io::Result<()> {
        match std::fs::remove_file(Self::path(state_dir)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Enforced::load(dir.path()).unwrap(), Enforced::default());
        let mut enforced = Enforced::default();
        enforced.instances.insert(
            "a".into(),
            InstanceRecord {
                uid: 1000,
                user: "u".into(),
                source: "/etc/isolate/instances/a.toml".into(),
                policy_hash: "abc".into(),
                policy: "user = \"u\"\n".into(),
                layers: vec!["ebpf".into()],
                entries_v4: 2,
                entries_v6: 0,
            },
        );
        enforced.save(dir.path()).unwrap();
        assert_eq!(Enforced::load(dir.path()).unwrap(), enforced);
        Enforced::remove(dir.path()).unwrap();
        assert_eq!(Enforced::load(dir.path()).unwrap(), Enforced::default());
    }
}
