//! The audit trail: every blocked attempt becomes a structured journald record
//! (`ISOLATE_INSTANCE`, `ISOLATE_DEST`, … — `journalctl ISOLATE_INSTANCE=NAME`), or, where
//! journald is absent, one line on stderr. Records are rate-limited per instance by the policy's
//! `log.rate`; what the limit turns away is counted and reported when logging resumes, or once
//! the instance has been quiet for a second. So are the events the kernel did not send (each
//! instance's event budget there), so that records and suppressed counts together account for
//! every refusal the eBPF layer counted.

mod fix;
mod journal;
mod limit;
mod record;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isolate_policy::Rate;

use crate::bpf::BlockedAttempt;
pub use fix::Fix;
use journal::Journal;
use limit::{Admit, Suppressed, TokenBucket};
use record::Entry;

/// How long an instance offers no record before what was left out of its trail is reported.
const QUIET: Duration = Duration::from_secs(1);

/// The one-line form of the record of `attempt` (as on stderr, with its fix), for the status
/// and `isolate log`.
pub fn record_line(instance: &str, attempt: &BlockedAttempt, policy_file: &Path) -> String {
    record::blocked(instance, attempt, &Fix::of(attempt, policy_file)).line
}

/// Where audit records go: journald, or the fallback writer (stderr unless replaced).
pub struct AuditSink {
    journal: Journal,
    fallback: Box<dyn Write + Send>,
    buckets: HashMap<String, TokenBucket>,
}

impl AuditSink {
    /// Records to journald at [`JOURNAL_SOCKET`](crate::paths::JOURNAL_SOCKET), else to stderr.
    pub fn new() -> Self {
        Self::with_journal_socket(crate::paths::JOURNAL_SOCKET)
    }

    /// Records to journald listening at `socket` (a unix datagram socket), else to stderr.
    pub fn with_journal_socket(socket: impl Into<PathBuf>) -> Self {
        Self {
            journal: Journal::new(socket.into()),
            fallback: Box::new(std::io::stderr()),
            buckets: HashMap::new(),
        }
    }

    /// Writes the records that journald cannot take to `writer` instead of stderr.
    #[must_use]
    pub fn with_fallback(mut self, writer: impl Write + Send + 'static) -> Self {
        self.fallback = Box::new(writer);
        self
    }

    /// Records one blocked attempt of `instance`, with the entry of its `policy_file` that
    /// would allow it, unless `rate` (the instance's `log.rate`) is exhausted; then it is only
    /// counted. Never fails: an audit sink that cannot write says so through `tracing` and
    /// carries on.
    pub fn record(
        &mut self,
        instance: &str,
        rate: &Rate,
        policy_file: &Path,
        attempt: &BlockedAttempt,
    ) {
        let now = Instant::now();
        match self.bucket(instance, *rate, now).admit(now) {
            Admit::No => {}
            Admit::Yes { suppressed } => {
                if suppressed.total() > 0 {
                    self.emit(&record::suppressed(instance, suppressed, *rate));
                }
                let fix = Fix::of(attempt, policy_file);
                self.emit(&record::blocked(instance, attempt, &fix));
            }
        }
    }

    /// Counts `count` refusals of `instance` whose events the kernel did not send (its event
    /// budget there was spent): reported with the records it suppressed.
    pub fn unsent(&mut self, instance: &str, rate: &Rate, count: u64) {
        if count > 0 {
            self.bucket(instance, *rate, Instant::now())
                .add_unsent(count);
        }
    }

    /// Reports what was left out of the trail of each instance that has been quiet for a
    /// second, so that a flood that stopped is accounted for without waiting for its next
    /// record.
    pub fn flush_quiet(&mut self) {
        let now = Instant::now();
        self.flush_where(|bucket| bucket.quiet_since(now, QUIET));
    }

    /// Reports the records still being suppressed (e.g. when an instance stops), so that none
    /// goes uncounted.
    pub fn flush_suppressed(&mut self) {
        self.flush_where(|_| true);
    }

    fn flush_where(&mut self, due: impl Fn(&TokenBucket) -> bool) {
        let mut pending: Vec<(String, Suppressed, Rate)> = self
            .buckets
            .iter_mut()
            .filter(|(_, bucket)| due(bucket))
            .map(|(instance, bucket)| (instance.clone(), bucket.take_suppressed(), bucket.rate()))
            .filter(|(_, suppressed, _)| suppressed.total() > 0)
            .collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        for (instance, suppressed, rate) in pending {
            self.emit(&record::suppressed(&instance, suppressed, rate));
        }
    }

    /// The bucket of `instance`; a reloaded policy with another rate starts a fresh one
    /// (keeping what was left out of the trail so far).
    fn bucket(&mut self, instance: &str, rate: Rate, now: Instant) -> &mut TokenBucket {
        let bucket = self
            .buckets
            .entry(instance.to_owned())
            .or_insert_with(|| TokenBucket::new(rate, now));
        if bucket.rate() != rate {
            let left_out = bucket.take_suppressed();
            *bucket = TokenBucket::new(rate, now);
            bucket.restore(left_out);
        }
        bucket
    }

    fn emit(&mut self, entry: &Entry) {
        let fields: Vec<(&str, &str)> =
            entry.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if self.journal.send(&journal::encode(&fields)).is_ok() {
            return;
        }
        // No journald (or it refused): the same record, as one line.
        let written =
            writeln!(self.fallback, "{}", entry.line).and_then(|()| self.fallback.flush());
        if let Err(error) = written {
            tracing::warn!(%error, record = %entry.line, "cannot write an audit record");
        }
    }
}

impl Default for AuditSink {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("journal", &self.journal)
            .field("instances", &self.buckets.len())
            .finish_non_exhaustive()
    }
}
