//! Private apt configurations for downloading Debian packages (kernels, the archive keyring)
//! without touching the host's apt state: each release gets its own sources list, state and
//! cache under the VM cache, pointed at the same mirror hosts the host's apt sources use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util;

/// The keyring Debian's `debian-archive-keyring` package installs.
const HOST_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The Debian archive and security mirrors the host's apt sources point at.
pub struct Mirrors {
    pub archive: String,
    pub security: Option<String>,
}

impl Mirrors {
    /// Reads the host's apt sources (deb822 `.sources` and one-line `.list` files) and takes
    /// the URIs of the entries for the host's release and its `-security` suite.
    pub fn from_host() -> anyhow::Result<Self> {
        let codename = host_codename()?;
        let entries = host_source_entries();
        let find = |suite: &str| {
            entries
                .iter()
                .find(|entry| entry.suites.iter().any(|s| s == suite))
                .map(|entry| entry.uri.trim_end_matches('/').to_string())
        };
        let archive = find(&codename).with_context(|| {
            format!("no apt source for the host's release `{codename}` in /etc/apt")
        })?;
        Ok(Mirrors {
            archive,
            security: find(&format!("{codename}-security")),
        })
    }

    /// The `deb` line of one suite of the archive (main only), e.g. `trixie-backports`.
    pub fn deb_line(&self, suite: &str, keyring: &Path) -> String {
        format!(
            "deb [signed-by={}] {} {suite} main",
            keyring.display(),
            self.archive
        )
    }

    /// `deb` lines for `release`, its `-updates` and its `-security` suites (main only).
    pub fn deb_lines(&self, release: &str, keyring: &Path) -> Vec<String> {
        let signed = format!("[signed-by={}]", keyring.display());
        let mut lines = vec![
            format!("deb {signed} {} {release} main", self.archive),
            format!("deb {signed} {} {release}-updates main", self.archive),
        ];
        if let Some(security) = &self.security {
            lines.push(format!("deb {signed} {security} {release}-security main"));
        }
        lines
    }
}

/// One apt configuration of our own, rooted at `root`, for one Debian release.
pub struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    /// Creates (or reuses) the configuration for `release` and refreshes its package lists.
    pub fn open(release: &str, mirrors: &Mirrors, keyring: &Path) -> anyhow::Result<Self> {
        Self::open_sources(release, &mirrors.deb_lines(release, keyring))
    }

    /// As `open`, for the suites of `sources` (`deb` lines), named `name` in the cache.
    pub fn open_sources(name: &str, sources: &[String]) -> anyhow::Result<Self> {
        let root = super::cache::root().join("apt").join(name);
        for dir in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(root.join(dir))?;
        }
        let status = root.join("state/status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let mut sources = sources.join("\n");
        sources.push('\n');
        fs::write(root.join("etc/sources.list"), sources)?;
        write_config(&root)?;
        let apt = PrivateApt { root };
        eprintln!("vmtest: refreshing the package lists of Debian {name} (private apt)");
        util::run(apt.command("apt-get").args(["-q", "update"]))
            .with_context(|| format!("cannot read Debian {name}'s package lists"))?;
        Ok(apt)
    }

    /// The packages `package` depends on (e.g. the versioned kernel image behind the
    /// `linux-image-amd64` meta package), from its candidate version.
    pub fn depends(&self, package: &str) -> anyhow::Result<Vec<String>> {
        let out = util::output(self.command("apt-cache").args(["depends", package]))?;
        Ok(out
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .map(|dep| dep.trim_matches(|c| c == '<' || c == '>').to_string())
            .collect())
    }

    /// Downloads `package`'s candidate `.deb` into `dir` and returns its path.
    pub fn download(&self, package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dir)?;
        util::run(
            self.command("apt-get")
                .args(["-q", "download", package])
                .current_dir(dir),
        )?;
        let prefix = format!("{package}_");
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".deb") {
                return Ok(path);
            }
        }
        bail!(
            "apt-get download {package} left no .deb in {}",
            dir.display()
        )
    }

    /// `program` (apt-get, apt-cache) reading our configuration file on top of the host's
    /// (which may set proxies); see `write_config`.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(self.root.join("apt.conf"));
        cmd
    }
}

/// The private configuration: our own sources, state and cache directories.
fn write_config(root: &Path) -> anyhow::Result<()> {
    let dir = |sub: &str| root.join(sub).display().to_string();
    let config = format!(
        r#"Dir::Etc::sourcelist "{}";
Dir::Etc::sourceparts "{}";
Dir::Etc::preferences "{}";
Dir::Etc::preferencesparts "{}";
Dir::State "{}";
Dir::State::status "{}";
Dir::Cache "{}";
// The cache lives under root's home, which apt's `_apt` sandbox user cannot enter.
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
"#,
        dir("etc/sources.list"),
        dir("etc/sources.list.d"),
        dir("etc/preferences"),
        dir("etc/preferences.d"),
        dir("state"),
        dir("state/status"),
        dir("cache"),
    );
    fs::write(root.join("apt.conf"), config)?;
    Ok(())
}

/// A keyring that can verify `release`'s archive signatures: the host's own when its
/// `debian-archive-keyring` already carries that release's keys, otherwise the keyring from
/// the newest `debian-archive-keyring` package of the host's release (downloaded through a
/// private apt that verifies it with the host's keyring).
pub fn keyring_for(release: &str, mirrors: &Mirrors) -> anyhow::Result<PathBuf> {
    let host = Path::new(HOST_KEYRING);
    let knows = |keyrings: &Path| {
        keyrings
            .join(format!("debian-archive-{release}-stable.gpg"))
            .exists()
    };
    if host.exists() && knows(host.parent().unwrap_or(host)) {
        return Ok(host.to_path_buf());
    }
    let dest = super::cache::root().join("keyring");
    super::cache::build_once(&dest, |out| {
        let apt = PrivateApt::open(&host_codename()?, mirrors, host)?;
        let deb = apt.download("debian-archive-keyring", &out.join("deb"))?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(out))?;
        Ok(())
    })?;
    let keyrings = dest.join("usr/share/keyrings");
    if !knows(&keyrings) {
        bail!(
            "neither the host's nor the newest debian-archive-keyring has Debian {release}'s \
             keys; remove {} once a newer keyring is published",
            dest.display()
        );
    }
    Ok(keyrings.join("debian-archive-keyring.gpg"))
}

/// The host's Debian release codename (`VERSION_CODENAME` in /etc/os-release).
pub fn host_codename() -> anyhow::Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|value| value.trim_matches('"').to_string())
        .context("no VERSION_CODENAME in /etc/os-release")
}

struct SourceEntry {
    uri: String,
    suites: Vec<String>,
}

fn host_source_entries() -> Vec<SourceEntry> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        parts.sort();
        files.extend(parts);
    }
    let mut entries = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            Some("list") => entries.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    entries
}

/// Stanzas of a deb822 `.sources` file with `Types: deb` (each URI × its suites).
fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| {
                    value
                        .split_whitespace()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") || field("Enabled") == ["no"] {
            continue;
        }
        let suites = field("Suites");
        entries.extend(field("URIs").into_iter().map(|uri| SourceEntry {
            uri,
            suites: suites.clone(),
        }));
    }
    entries
}

/// `deb [options] URI suite component…` lines of a one-line `.list` file.
fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            Some(SourceEntry {
                uri: words.next()?.to_string(),
                suites: vec![words.next()?.to_string()],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_stanzas_give_each_uri_its_suites() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://mirror.example/debian-security\n\
                    Suites: bookworm-security\nEnabled: no\n";
        let entries = parse_deb822(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].uri, "http://mirror.example/debian");
        assert_eq!(entries[0].suites, ["bookworm", "bookworm-updates"]);
    }

    #[test]
    fn one_line_sources_skip_options_and_comments() {
        let text = "# deb http://commented.example/debian bookworm main\n\
                    deb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian bookworm main\n\
                    deb-src http://src.example/debian bookworm main\n";
        let entries = parse_one_line(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].uri, "http://mirror.example/debian");
        assert_eq!(entries[0].suites, ["bookworm"]);
    }

    #[test]
    fn deb_lines_cover_release_updates_and_security() {
        let mirrors = Mirrors {
            archive: "http://mirror.example/debian".into(),
            security: Some("http://mirror.example/debian-security".into()),
        };
        let lines = mirrors.deb_lines("trixie", Path::new("/k.gpg"));
        assert_eq!(
            lines,
            [
                "deb [signed-by=/k.gpg] http://mirror.example/debian trixie main",
                "deb [signed-by=/k.gpg] http://mirror.example/debian trixie-updates main",
                "deb [signed-by=/k.gpg] http://mirror.example/debian-security trixie-security main",
            ]
        );
    }
}
