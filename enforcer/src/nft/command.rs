//! Runs the `nft` program. The `nftables` crate's `helper::apply_ruleset` (0.6.3) does not capture
//! nft's stderr (it inherits it, so its error carries an empty `stderr`); errors must quote it,
//! hence this small runner. The crate's schema still writes the JSON.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use nftables::schema::Nftables;

use super::NftError;

/// Found through `PATH`, like the crate does.
const NFT: &str = "nft";

/// Why a run of `nft` failed, before it is tied to an instance.
#[derive(Debug)]
pub(super) enum RunError {
    Missing,
    Spawn(io::Error),
    /// nft ran and refused: its stderr.
    Failed(String),
}

impl RunError {
    /// The error for `instance`; `action` completes "cannot run nft to …".
    pub(super) fn for_instance(self, instance: &str, action: &'static str) -> NftError {
        let instance = instance.to_owned();
        match self {
            RunError::Missing => NftError::NftMissing { instance },
            RunError::Spawn(source) => NftError::Run {
                instance,
                action,
                source,
            },
            RunError::Failed(stderr) => NftError::Failed {
                instance,
                action,
                stderr,
            },
        }
    }
}

/// Applies `batch` as one transaction: `nft -j -f -`.
pub(super) fn apply(batch: &Nftables) -> Result<(), RunError> {
    run(NFT, &["-j", "-f", "-"], Some(&to_json(batch))).map(drop)
}

/// Checks `batch` without committing anything: `nft -c -j -f -`. The kernel sees the batch
/// (and its errors) but the transaction is aborted.
pub(super) fn check(batch: &Nftables) -> Result<(), RunError> {
    run(NFT, &["-c", "-j", "-f", "-"], Some(&to_json(batch))).map(drop)
}

/// `nft -j ARGS…` and its stdout.
pub(super) fn list(args: &[&str]) -> Result<String, RunError> {
    let args: Vec<&str> = ["-j"].iter().chain(args).copied().collect();
    run(NFT, &args, None)
}

fn to_json(batch: &Nftables) -> String {
    serde_json::to_string(batch).expect("nftables JSON has only string keys")
}

pub(super) fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RunError::Missing,
            _ => RunError::Spawn(e),
        })?;
    if let Some(input) = input {
        // nft reads its whole input before it writes anything, so this cannot deadlock.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(input.as_bytes()).map_err(RunError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(RunError::Spawn)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr)
        // Errors in JSON input have no position; nft prints a meaningless one.
        .replace("internal:0:0-0: ", "")
        .trim()
        .to_owned();
    Err(RunError::Failed(if stderr.is_empty() {
        format!("nft exited with {}", output.status)
    } else {
        stderr
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_so() {
        let error = run("/nonexistent/nft", &["list", "tables"], None).unwrap_err();
        assert!(matches!(error, RunError::Missing), "{error:?}");
        let message = error.for_instance("demo", "list tables").to_string();
        assert!(message.contains("instance demo"), "{message}");
        assert!(
            message.contains("install the `nftables` package"),
            "{message}"
        );
    }

    #[test]
    fn a_failing_program_reports_its_stderr() {
        let error = run("sh", &["-c", "echo 'Error: no' >&2; exit 1"], None).unwrap_err();
        assert!(
            matches!(&error, RunError::Failed(s) if s == "Error: no"),
            "{error:?}"
        );
    }
}
