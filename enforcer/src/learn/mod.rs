//! Learn mode (`isolate exec --learn FILE`): the instance runs observed instead of confined,
//! and what it did beyond its policy becomes a proposed policy.

pub mod files;
pub mod proposal;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use isolate_policy::Policy;
use thiserror::Error;

pub use proposal::Proposal;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("cannot write the learned policy to {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bug: what was learned does not make a valid policy. The text is left at `path`,
    /// beside the file it was meant for, for the report.
    #[error("the learned policy {} does not check (this is a bug in isolate; please report it): {errors}", .path.display())]
    Invalid {
        path: PathBuf,
        errors: isolate_policy::Errors,
    },
}

/// How much of the command the header quotes.
const COMMAND_IN_HEADER: usize = 120;

/// What [`write`] wrote.
#[derive(Debug)]
pub struct Written {
    /// Entries added to the policy.
    pub learned: usize,
}

/// Writes `policy` with what `proposal` adds to `file` (replacing it whole, or leaving it as
/// it was on failure), headed by a comment on where it comes from, and checks that it reads
/// back as a policy.
pub fn write(
    policy: &Policy,
    proposal: &Proposal,
    command: &str,
    file: &Path,
) -> Result<Written, WriteError> {
    let additions = proposal.additions();
    // One comment line, whatever the command's arguments hold, and a short one.
    let mut command = command.replace(['\n', '\r'], " ");
    if let Some((cut, _)) = command.char_indices().nth(COMMAND_IN_HEADER) {
        command.truncate(cut);
        command.push_str(" …");
    }
    let mut text = format!(
        "# Learned by `isolate exec --learn` ({}) from a run of `{command}`\n\
         # under {}, during which nothing was enforced: that policy, plus each thing the run\n\
         # did beyond it, marked `learned` with when and by which program it was first seen.\n\
         # Review every learned line (narrow or remove what the program should not need), then\n\
         # enforce it: isolate exec --policy {} -- {command}\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        policy.source.display(),
        file.display(),
    );
    for line in proposal.unlearnable() {
        let _ = writeln!(text, "# not learnable, stays refused: {line}");
    }
    text.push('\n');
    text.push_str(&policy.to_toml_with_additions(&additions));
    let io = |source| WriteError::Io {
        path: file.to_path_buf(),
        source,
    };
    // Written aside, checked, then renamed over: a failed write or check leaves the old file
    // whole (a text that does not check stays aside, for the report).
    let aside = file.with_extension("toml.learning");
    let mut out = std::fs::File::create(&aside).map_err(io)?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| {
            let _ = std::fs::remove_file(&aside);
            io(e)
        })?;
    isolate_policy::parse_str(&text, &aside).map_err(|errors| WriteError::Invalid {
        path: aside.clone(),
        errors,
    })?;
    std::fs::rename(&aside, file).map_err(|e| {
        let _ = std::fs::remove_file(&aside);
        io(e)
    })?;
    Ok(Written {
        learned: additions.len(),
    })
}
