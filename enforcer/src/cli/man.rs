//! The manual pages: isolate(1) and isolate-SUBCOMMAND(1) generated from the same argument
//! definitions the binary parses (`clap_mangen`), and isolate.toml(5), the policy format,
//! written by hand.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The date the pages carry: when their text last changed.
const PAGE_DATE: &str = "2026-12-01";

/// isolate.toml(5): the policy file format.
const POLICY_FORMAT_PAGE: &str = include_str!("../../../dist/man/isolate.toml.5");

/// Writes every page into `dir` (created if need be); returns the files written.
pub fn write_all(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut command = command.disable_help_subcommand(true);
    // Gives each subcommand its full name (`isolate-exec`), as its page is called.
    command.build();
    generate(command, dir)
        .with_context(|| format!("write the manual pages into {}", dir.display()))?;
    let policy_page = dir.join("isolate.toml.5");
    std::fs::write(&policy_page, POLICY_FORMAT_PAGE)
        .with_context(|| format!("write {}", policy_page.display()))?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("isolate") && (n.ends_with(".1") || n.ends_with(".5"))
            })
        })
        .collect();
    written.sort();
    Ok(written)
}

/// The pages of `command` and of its visible subcommands, recursively.
fn generate(command: clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        generate(sub.clone(), dir)?;
    }
    clap_mangen::Man::new(command)
        .date(PAGE_DATE)
        .source(concat!("isolate ", env!("CARGO_PKG_VERSION")))
        .generate_to(dir)?;
    Ok(())
}
