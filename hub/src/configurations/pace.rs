//! The rate limit of applying configurations (`--configuration-rate`, D-50). Pure: the caller
//! passes `now` and sleeps for the delay it gets back.

use std::time::{Duration, Instant};

/// Spaces applications `1 s / rate` apart on average, in chunks.
#[derive(Debug, Clone)]
pub struct Pace {
    interval: Duration,
    /// The earliest start of the next chunk; `None` before the first.
    next: Option<Instant>,
}

impl Pace {
    /// At most `rate` things per second (at least 1).
    pub fn per_second(rate: u32) -> Pace {
        Pace {
            interval: Duration::from_secs(1) / rate.max(1),
            next: None,
        }
    }

    /// Reserves `n` applications starting no earlier than `now`; returns how long to wait
    /// before doing them. Idle time is not saved up: a pause never allows a burst later.
    pub fn reserve(&mut self, now: Instant, n: u32) -> Duration {
        let start = self.next.map_or(now, |next| next.max(now));
        self.next = Some(start + self.interval * n);
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_spaced_by_their_size() {
        let t0 = Instant::now();
        let mut pace = Pace::per_second(100);
        assert_eq!(pace.reserve(t0, 10), Duration::ZERO);
        // 10 at 100/s take 100 ms: the next chunk waits for them.
        assert_eq!(pace.reserve(t0, 10), Duration::from_millis(100));
        assert_eq!(
            pace.reserve(t0 + Duration::from_millis(50), 10),
            Duration::from_millis(150)
        );
    }

    #[test]
    fn idle_time_does_not_allow_a_burst() {
        let t0 = Instant::now();
        let mut pace = Pace::per_second(10);
        pace.reserve(t0, 1);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(pace.reserve(later, 5), Duration::ZERO);
        assert_eq!(pace.reserve(later, 1), Duration::from_millis(500));
    }
}
