//! `cargo xtask fuzz`: the policy parser under cargo-fuzz (libFuzzer) on the nightly toolchain
//! that builds the eBPF crate. Each target runs for a fixed time from a corpus seeded from the
//! repository's policies and tests; a crash fails the run, naming the input that caused it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util;

/// Installed with `--locked` when `cargo fuzz --version` does not print it.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The targets in `fuzz/fuzz_targets/`.
const TARGETS: &[&str] = &["policy", "allow_entry"];

/// The largest input (1 MiB): a policy file is a few KiB; this is far past any real one.
const MAX_LEN: usize = 1 << 20;

/// Memory bound, MiB: libFuzzer's default. A 1 MiB input peaks near 150 MiB of heap (see
/// `policy/tests/limits.rs`); `AddressSanitizer`'s shadow and quarantine take the rest.
const RSS_LIMIT_MB: usize = 2048;

/// An input that takes longer than this, in seconds, is a hang: the slowest 1 MiB input
/// takes about a second in a debug build.
const TIMEOUT_SECONDS: u64 = 10;

#[derive(Args)]
pub struct FuzzArgs {
    /// How long to run each target (libFuzzer reads 0 as "for ever").
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Run only this target (default: all).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    crate::setup::ensure_nightly_rust_src()?;
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = match &args.target {
        Some(name) => vec![name.as_str()],
        None => TARGETS.to_vec(),
    };
    for target in targets {
        let corpus = seed_corpus(target)?;
        fuzz(target, &corpus, args.seconds)?;
    }
    Ok(())
}

/// Installs cargo-fuzz unless the pinned version is there.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let version = Command::new("cargo").args(["fuzz", "--version"]).output();
    if version.is_ok_and(|out| {
        String::from_utf8_lossy(&out.stdout).contains(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"))
    }) {
        return Ok(());
    }
    util::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .current_dir(std::env::temp_dir()),
    )
    .context("installing cargo-fuzz")
}

fn fuzz_dir() -> PathBuf {
    util::project_root().join("fuzz")
}

fn fuzz(target: &str, corpus: &Path, seconds: u64) -> anyhow::Result<()> {
    let artifacts = fuzz_dir().join("artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    let before = crashes(&artifacts)?;
    let result = util::run(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={MAX_LEN}"))
            // Also the bound on a single allocation (-malloc_limit_mb defaults to it).
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-timeout={TIMEOUT_SECONDS}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .current_dir(fuzz_dir()),
    );
    let found: Vec<PathBuf> = crashes(&artifacts)?.difference(&before).cloned().collect();
    if !found.is_empty() {
        let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "fuzz target `{target}` found {} failing input(s):\n  {}\nreproduce with `cargo +nightly fuzz run {target} {}` (in fuzz/), fix it and add the input as a unit test in policy/",
            found.len(),
            list.join("\n  "),
            list[0]
        );
    }
    result.with_context(|| format!("fuzz target `{target}` failed"))
}

/// The inputs libFuzzer left in `dir`: crash-, timeout-, oom-, leak-, slow-unit-… files.
fn crashes(dir: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    Ok(fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| !name.to_string_lossy().starts_with("slow-unit-"))
        })
        .collect())
}

/// Writes the seeds into fuzz/corpus/TARGET (git-ignored, where libFuzzer also keeps what it
/// finds, so later runs start from there): the policies of the repository and the TOML texts of
/// the policy crate's tests for `policy`; their allow and listen entries, and the string
/// literals of the allow-entry tests, for `allow_entry`. Generated rather than committed, so
/// that they follow the tests.
fn seed_corpus(target: &str) -> anyhow::Result<PathBuf> {
    let root = util::project_root();
    let corpus = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let mut policies = Vec::new();
    for dir in [
        "examples",
        "presets",
        "vmtests/policies",
        "vmtests/policies/invalid",
    ] {
        for path in files(&root.join(dir), "toml")? {
            policies.push(fs::read_to_string(&path)?);
        }
    }
    for path in files(&root.join("policy/tests"), "rs")? {
        // Literals with a `=` are the tests' policies (or pieces of them, fine seeds too).
        policies.extend(
            string_literals(&fs::read_to_string(&path)?)
                .into_iter()
                .filter(|text| text.contains('=')),
        );
    }
    let seeds: BTreeSet<String> = if target == "policy" {
        policies.into_iter().collect()
    } else {
        let allow = fs::read_to_string(root.join("policy/src/allow.rs"))?;
        let tests = allow.split_once("mod tests").map_or("", |(_, tests)| tests);
        policies
            .iter()
            .flat_map(|text| entries(text))
            .chain(string_literals(tests))
            .collect()
    };
    for (i, seed) in seeds.iter().enumerate() {
        fs::write(corpus.join(format!("seed-{i:04}")), seed)?;
    }
    eprintln!(
        "fuzz: {} seeds for `{target}` in {}",
        seeds.len(),
        corpus.display()
    );
    Ok(corpus)
}

fn files(dir: &Path, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The string literals of Rust source, unescaped: the tests' policies and entries. Knows
/// `r#"…"#`, the common escapes, `'"'` and `//` comments, which is all the tests use.
fn string_literals(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(['"', '/', '\'']) {
        let (before, from) = rest.split_at(at);
        if from.starts_with("//") {
            rest = from.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(next) = from.strip_prefix("'\"'") {
            rest = next;
        } else if let Some(literal) = from.strip_prefix('"') {
            if before.ends_with("r#") {
                let Some((text, next)) = literal.split_once("\"#") else {
                    break;
                };
                out.push(text.to_owned());
                rest = next;
            } else {
                let (text, next) = unescape(literal);
                out.push(text);
                rest = next;
            }
        } else {
            rest = &from[1..];
        }
    }
    out
}

/// The literal up to its closing quote, unescaped, and what follows it.
fn unescape(literal: &str) -> (String, &str) {
    let mut text = String::new();
    let mut chars = literal.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (text, &literal[i + 1..]),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('0') => text.push('\0'),
                // A line continuation: the newline and the next line's indent go.
                Some('\n') => {
                    let rest = chars.as_str();
                    let skipped = rest.len() - rest.trim_start().len();
                    for _ in 0..skipped {
                        chars.next();
                    }
                }
                Some(other) => text.push(other),
                None => break,
            },
            c => text.push(c),
        }
    }
    (text, "")
}

/// The quoted strings of the `allow = […]` and `listen = […]` lines of a policy.
fn entries(policy: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_list = false;
    for line in policy.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("allow") || trimmed.starts_with("listen") {
            in_list = true;
        }
        if in_list {
            let code = line.split_once('#').map_or(line, |(code, _)| code);
            out.extend(code.split('"').skip(1).step_by(2).map(str::to_owned));
            if code.contains(']') {
                in_list = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_literals_are_unescaped() {
        let source = r##"let a = "user = \"x\"\n"; // "not one
            let b = r#"[network]"#; let c = '"'; f("a\
                b");"##;
        assert_eq!(
            string_literals(source),
            ["user = \"x\"\n", "[network]", "ab"]
        );
        let policy = "allow = [\"10.0.0.0/8\",  # \"no\"\n  \"a.example\"]\nlisten = [\"::1\"]";
        assert_eq!(entries(policy), ["10.0.0.0/8", "a.example", "::1"]);
    }
}
