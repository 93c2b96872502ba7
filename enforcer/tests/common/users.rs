//! System users made for a test and removed afterwards.

use std::process::Command;

use super::sandbox::unique_name;

/// A system user made for the test, removed afterwards.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
}

impl TestUser {
    /// A user with a home of its own (`/home/NAME`, removed with it).
    pub fn new() -> Self {
        Self::make(true)
    }

    /// A user whose home does not exist.
    pub fn without_home() -> Self {
        Self::make(false)
    }

    fn make(home: bool) -> Self {
        let name = format!(
            "isod{}{}",
            std::process::id() % 100_000,
            unique_name("").rsplit('-').next().unwrap()
        );
        let ok = Command::new("useradd")
            .args([
                "--system",
                if home {
                    "--create-home"
                } else {
                    "--no-create-home"
                },
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "useradd {name}");
        let uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        Self { name, uid }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .arg("--remove")
            .arg(&self.name)
            .status();
    }
}
