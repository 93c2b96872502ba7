//! The event pump: moves the kernel's block events and the resolvers' refusals to the audit
//! trail, the recent list and the followers of `isolate log -f`, and counts the events the kernel did not send (each instance's
//! event budget there), so that for every instance the records and the suppressed counts
//! together account for every refusal the eBPF layer counted.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Refusal, Shared, View};
use crate::audit::{self, AuditSink};
use crate::bpf::{self, PinDir};

/// How often events move from the ring buffer to the audit trail.
const PERIOD: Duration = Duration::from_millis(200);
/// How many recent blocked destinations `status` shows per instance.
const RECENT_BLOCKS: usize = 10;
/// How long after its last event an instance's unsent count is still read at every period:
/// the kernel counts unsent events only in a second in which it sent that instance's budget,
/// so this covers the rest of that second and a period to spare.
const ACTIVE: Duration = Duration::from_secs(3);
/// How often every instance's unsent count is read (a full ring buffer loses the events of
/// instances that sent nothing else).
const SWEEP: Duration = Duration::from_secs(5);

/// Every period, or when asked (`status` wants current records), pumps once; returns when
/// the queue closes, after a last pump.
pub(super) fn run(
    pins: Option<&PinDir>,
    queue: &mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    refused: &mpsc::Receiver<bpf::BlockedAttempt>,
    shared: &Shared,
) {
    let reader = match pins.map(bpf::EventReader::open).transpose() {
        Ok(reader) => reader,
        Err(e) => {
            tracing::error!("block events cannot be read, so none is recorded: {e}");
            return;
        }
    };
    let mut pump = Pump {
        reader,
        audit: AuditSink::new(),
        active: HashMap::new(),
        last_sweep: Instant::now(),
    };
    loop {
        let asked = match queue.recv_timeout(PERIOD) {
            Ok(asked) => Some(asked),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                pump.once(refused, shared);
                pump.audit.flush_suppressed();
                return;
            }
        };
        pump.once(refused, shared);
        if let Some(asked) = asked {
            let _ = asked.send(());
        }
    }
}

struct Pump {
    reader: Option<bpf::EventReader>,
    audit: AuditSink,
    /// UIDs whose events arrived lately, and when.
    active: HashMap<u32, Instant>,
    last_sweep: Instant,
}

impl Pump {
    fn once(&mut self, refused: &mpsc::Receiver<bpf::BlockedAttempt>, shared: &Shared) {
        let now = Instant::now();
        // The kernel's refusals, then the resolvers' (DNS questions).
        let mut events = self
            .reader
            .as_mut()
            .map(bpf::EventReader::read)
            .unwrap_or_default();
        for event in &events {
            self.active.insert(event.uid, now);
        }
        self.active
            .retain(|_, seen| now.saturating_duration_since(*seen) < ACTIVE);
        events.extend(refused.try_iter());
        let sweep = now.saturating_duration_since(self.last_sweep) >= SWEEP;
        if !events.is_empty() || !self.active.is_empty() || sweep {
            let view = shared.view();
            self.record(events, &view, shared);
            self.count_unsent(&view, shared, sweep);
            if sweep {
                self.last_sweep = now;
            }
        }
        self.audit.flush_quiet();
    }

    fn record(&mut self, events: Vec<bpf::BlockedAttempt>, view: &View, shared: &Shared) {
        if events.is_empty() {
            return;
        }
        let resolvers = shared
            .resolvers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut recent = shared.recent.lock().unwrap_or_else(PoisonError::into_inner);
        for mut event in events {
            shared.events_received.fetch_add(1, Ordering::Relaxed);
            let Some(instance) = view.instances.iter().find(|i| i.id.uid == event.uid) else {
                continue;
            };
            // A refused connect to an address an answer admitted names the host.
            if event.host.is_none()
                && let Some(resolver) = resolvers.get(&instance.id.name)
            {
                event.host = resolver.name_of(event.destination);
            }
            self.audit.record(
                &instance.id.name,
                &instance.rate,
                &instance.policy_file,
                &event,
            );
            let list = recent.entry(event.uid).or_default();
            if list.len() == RECENT_BLOCKS {
                list.pop_front();
            }
            let record = audit::record_line(&instance.id.name, &event, &instance.policy_file);
            list.push_back(record.clone());
            // No follower listening is no failure.
            let _ = shared.refusals.send(Refusal {
                instance: instance.id.name.clone(),
                record,
            });
        }
    }

    /// Reads the unsent counts of the active instances (of all of them on a sweep) into the
    /// audit trail and the status.
    fn count_unsent(&mut self, view: &View, shared: &Shared, sweep: bool) {
        let Some(reader) = self.reader.as_mut() else {
            return;
        };
        let mut unsent = shared.unsent.lock().unwrap_or_else(PoisonError::into_inner);
        for instance in &view.instances {
            let uid = instance.id.uid;
            if !sweep && !self.active.contains_key(&uid) {
                continue;
            }
            match reader.unsent_since(uid) {
                Ok(0) => {}
                Ok(count) => {
                    self.audit.unsent(&instance.id.name, &instance.rate, count);
                    *unsent.entry(uid).or_default() += count;
                }
                Err(e) => tracing::warn!(instance = %instance.id.name, "{e}"),
            }
        }
    }
}
