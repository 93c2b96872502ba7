//! A token bucket per instance, so that a flood of blocked attempts cannot fill the journal.

use std::time::Instant;

use isolate_policy::{Rate, RateUnit};

/// Admits up to `rate.count` records at once, then `rate.count` per unit of time, and counts
/// what it turns away.
#[derive(Debug, Clone)]
pub(super) struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// The verdict on one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Log it; `suppressed` records were turned away since the last one admitted.
    Yes {
        suppressed: u64,
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
            suppressed: 0,
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
            self.suppressed += 1;
            Admit::No
        }
    }

    /// Hands over the count of records turned away (for a final report).
    pub(super) fn take_suppressed(&mut self) -> u64 {
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
        assert_eq!(bucket.admit(later), Admit::Yes { suppressed: 90 });
        assert_eq!(bucket.admit(later), Admit::No);
        assert_eq!(bucket.take_suppressed(), 1);
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
