//! A token bucket per instance, so that a flood of blocked attempts cannot fill the journal.

use std::time::Instant;

use isolate_policy::{Rate, RateUnit};

/// Admits up to `rate.count` records at once, then `rate.count` per unit of time, and counts
/// what it turns away, and what never reached it (events the kernel did not send).
#[derive(Debug, Clone)]
pub(super) struct TokenBucket {
    rate: Rate,
    tokens: f64,
    /// The last record offered.
    last: Instant,
    suppressed: Suppressed,
}

/// Records left out since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Suppressed {
    /// Turned away by the bucket.
    pub by_rate: u64,
    /// Never sent by the kernel (the instance's event budget there).
    pub by_kernel: u64,
}

impl Suppressed {
    pub(super) fn total(self) -> u64 {
        self.by_rate + self.by_kernel
    }
}

/// The verdict on one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Log it; `suppressed` records were left out since the last one admitted.
    Yes {
        suppressed: Suppressed,
    },
    No,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.count),
            last: now,
            suppressed: Suppressed::default(),
        }
    }

    pub(super) fn rate(&self) -> Rate {
        self.rate
    }

    pub(super) fn admit(&mut self, now: Instant) -> Admit {
        let capacity = f64::from(self.rate.count);
        let per_second = capacity / unit_seconds(self.rate.per);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Yes {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed.by_rate += 1;
            Admit::No
        }
    }

    /// Counts records the kernel never sent, reported with the next one admitted.
    pub(super) fn add_unsent(&mut self, count: u64) {
        self.suppressed.by_kernel += count;
    }

    /// Takes over what another bucket of the same instance left out.
    pub(super) fn restore(&mut self, left_out: Suppressed) {
        self.suppressed.by_rate += left_out.by_rate;
        self.suppressed.by_kernel += left_out.by_kernel;
    }

    /// Whether no record was offered for `quiet` before `now`.
    pub(super) fn quiet_since(&self, now: Instant, quiet: std::time::Duration) -> bool {
        now.saturating_duration_since(self.last) >= quiet
    }

    /// Hands over the count of records left out (for a report of its own).
    pub(super) fn take_suppressed(&mut self) -> Suppressed {
        std::mem::take(&mut self.suppressed)
    }
}

fn unit_seconds(unit: RateUnit) -> f64 {
    match unit {
        RateUnit::Second => 1.0,
        RateUnit::Minute => 60.0,
        RateUnit::Hour => 3600.0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TEN_PER_SECOND: Rate = Rate {
        count: 10,
        per: RateUnit::Second,
    };

    #[test]
    fn a_burst_of_the_rate_then_one_per_interval() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(TEN_PER_SECOND, start);
        let admitted = (0..100)
            .filter(|_| bucket.admit(start) != Admit::No)
            .count();
        assert_eq!(admitted, 10);
        // 100 ms later one token is back, and the 90 turned away are reported once.
        let later = start + Duration::from_millis(100);
        let ninety = Suppressed {
            by_rate: 90,
            by_kernel: 0,
        };
        assert_eq!(bucket.admit(later), Admit::Yes { suppressed: ninety });
        assert_eq!(bucket.admit(later), Admit::No);
        bucket.add_unsent(5);
        assert_eq!(bucket.take_suppressed().total(), 6);
        assert!(!bucket.quiet_since(later, Duration::from_secs(1)));
        assert!(bucket.quiet_since(later + Duration::from_secs(1), Duration::from_secs(1)));
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_rate() {
        let start = Instant::now();
        let per_hour = Rate {
            count: 2,
            per: RateUnit::Hour,
        };
        let mut bucket = TokenBucket::new(per_hour, start);
        let much_later = start + Duration::from_hours(24);
        let admitted = (0..5)
            .filter(|_| bucket.admit(much_later) != Admit::No)
            .count();
        assert_eq!(admitted, 2);
    }
}
