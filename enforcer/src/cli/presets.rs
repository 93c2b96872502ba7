//! `isolate presets`: the shipped policy fragments a policy can merge, and what each adds.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use isolate_policy::{PRESETS, PresetKind};

#[derive(Args)]
pub struct PresetsArgs {
    /// Print this preset's file as shipped (to read, or to copy into a policy).
    name: Option<String>,
}

pub fn run(args: &PresetsArgs) -> anyhow::Result<ExitCode> {
    if let Some(name) = &args.name {
        let Some(preset) = isolate_policy::preset(name) else {
            let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            bail!(
                "no preset is called `{name}`: the presets are {}",
                known.join(", ")
            );
        };
        return output(preset.text);
    }
    let mut out = String::from(
        "Presets a policy merges with `presets = [\"opencode\", \"anthropic\"]` (one agent, any \
         destination groups); `isolate presets NAME` prints one, `isolate check` shows which \
         entry came from which.\n\n",
    );
    for preset in &PRESETS {
        let grants = preset
            .grants()
            .map_err(|_| anyhow::anyhow!("the shipped {} does not parse", preset.file()))?;
        let kind = match preset.kind {
            PresetKind::Agent => "agent",
            PresetKind::Destinations => "destinations",
        };
        let _ = writeln!(out, "{:<12} {kind:<12} {}", preset.name, grants.description);
        for (field, entry) in grants.entries() {
            let _ = writeln!(out, "{:<25} {field} += \"{entry}\"", "");
        }
    }
    output(&out)
}

/// Writes `text` to stdout; a reader that stopped early (`| head`) is no failure.
fn output(text: &str) -> anyhow::Result<ExitCode> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
