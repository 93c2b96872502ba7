//! A learning run's part of the supervisor (`isolate exec --learn FILE`): the file watch the
//! child's mount namespace is marked for, the proposal the attempts and accesses feed, and
//! the policy file written at the end.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use isolate_policy::Policy;

use super::{ExecError, ExecPlan};
use crate::bpf::BlockedAttempt;
use crate::learn::Proposal;
use crate::learn::files::{FileWatch, FileWatchError};

pub struct Learning {
    watch: FileWatch,
    proposal: Proposal,
    file: PathBuf,
}

impl Learning {
    /// Starts watching (the namespace the child will join) before anything of the run starts.
    pub fn start(plan: &ExecPlan, file: &Path) -> Result<Self, FileWatchError> {
        let watch = FileWatch::start()?;
        for (mount, why) in watch.unmarked() {
            tracing::debug!(instance = %plan.policy.name, "learn mode: {} is not watched: {why}", mount.display());
        }
        tracing::warn!(
            instance = %plan.policy.name,
            "LEARN MODE: nothing is enforced; what the command does beyond the policy is recorded"
        );
        Ok(Self {
            watch,
            proposal: Proposal::new(&plan.policy.source, &plan.landlock, &plan.user.home),
            file: file.to_path_buf(),
        })
    }

    /// The mount namespace for the child to join.
    pub fn namespace(&self) -> std::io::Result<OwnedFd> {
        self.watch.namespace().try_clone_to_owned()
    }

    /// Takes an attempt the policy would have refused into the proposal, saying so the first
    /// time.
    pub fn attempt(&mut self, instance: &str, attempt: &BlockedAttempt) {
        if let Some(entry) = self.proposal.attempt(attempt) {
            let program = if attempt.comm.is_empty() {
                "?"
            } else {
                &attempt.comm
            };
            tracing::info!(
                instance,
                "learn: {} by {program} would be refused ({}); learned {entry}",
                attempt.hook,
                attempt.destination,
            );
        }
    }

    /// Takes the file accesses seen since the last call.
    pub fn take_files(&mut self) {
        for access in self.watch.read() {
            self.proposal.file(&access);
        }
    }

    /// Writes the proposed policy.
    pub fn finish(&self, policy: &Policy, command: &str) -> Result<(), ExecError> {
        let written = crate::learn::write(policy, &self.proposal, command, &self.file)?;
        tracing::warn!(
            instance = %policy.name,
            "LEARN MODE: nothing was enforced. {} entries learned; the proposed policy is {}: \
             review it, then run the command under it with --policy {}",
            written.learned,
            self.file.display(),
            self.file.display()
        );
        Ok(())
    }
}
