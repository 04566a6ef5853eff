//! The rollout rate of one job (S-7.3 `maxPerMinute`). Pure: time is a parameter (ms).
//!
//! Sends are spaced `60 s / maxPerMinute` apart, and never more than `maxPerMinute` fall in
//! any 60 s. A late timer is made up for (the next send may follow sooner), but only by one
//! interval: after an idle spell the spacing starts afresh instead of bursting.

use std::collections::VecDeque;

/// The rate window.
const MINUTE_MS: u64 = 60_000;

/// Pacing state of one job.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    per_minute: usize,
    interval_us: u64,
    /// Earliest time of the next send, µs.
    next_us: u64,
    /// Send times (ms) within the last minute.
    window: VecDeque<u64>,
}

impl Rate {
    /// At most `per_minute` sends per minute (at least 1).
    pub(crate) fn new(per_minute: u32) -> Rate {
        let per_minute = per_minute.max(1);
        Rate {
            per_minute: per_minute as usize,
            interval_us: 60_000_000 / u64::from(per_minute),
            next_us: 0,
            window: VecDeque::new(),
        }
    }

    /// Whether a send may happen at `now`.
    pub(crate) fn may_send(&mut self, now: u64) -> bool {
        while self.window.front().is_some_and(|t| *t + MINUTE_MS <= now) {
            self.window.pop_front();
        }
        now.saturating_mul(1000) >= self.next_us && self.window.len() < self.per_minute
    }

    /// Records a send at `now` (after [`Rate::may_send`] said yes).
    pub(crate) fn sent(&mut self, now: u64) {
        let now_us = now.saturating_mul(1000);
        if self.next_us + self.interval_us < now_us {
            self.next_us = now_us;
        }
        self.next_us += self.interval_us;
        self.window.push_back(now);
    }

    /// When the next send may happen, ms (not before `now`).
    pub(crate) fn next_at(&self, now: u64) -> u64 {
        if self.window.len() >= self.per_minute {
            self.window.front().map_or(now, |t| t + MINUTE_MS).max(now)
        } else {
            self.next_us.div_ceil(1000).max(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as often as allowed, checking at the given times; returns the send times.
    fn run(per_minute: u32, ticks: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut rate = Rate::new(per_minute);
        let mut sent = Vec::new();
        for now in ticks {
            while rate.may_send(now) {
                rate.sent(now);
                sent.push(now);
            }
        }
        sent
    }

    #[test]
    fn evenly_spaced_without_a_first_burst() {
        let sent = run(120, (0..=2_000).step_by(1));
        assert_eq!(sent, [0, 500, 1000, 1500, 2000]);
        let mut rate = Rate::new(120);
        assert!(rate.may_send(1_000_000));
        rate.sent(1_000_000);
        assert_eq!(rate.next_at(1_000_000), 1_000_500);
    }

    #[test]
    fn late_ticks_are_made_up_by_one_interval_at_most() {
        // 120/min: slots every 500 ms. A send 400 ms late keeps the slots: the next follows
        // 100 ms later.
        assert_eq!(run(120, [0, 900, 1000, 1499, 1500]), [0, 900, 1000, 1500]);
        // More than an interval late (an idle spell): the spacing starts afresh, no burst.
        assert_eq!(run(120, [0, 1600, 1700, 2099, 2100]), [0, 1600, 2100]);
    }

    #[test]
    fn never_more_than_per_minute_in_any_minute() {
        for per_minute in [1u32, 7, 60, 600, 6000] {
            // Irregular ticks over three minutes.
            let ticks = (0..180_000u64).filter(|t| (t * 7919) % 13 < 3 || t % 997 == 0);
            let sent = run(per_minute, ticks);
            assert!(!sent.is_empty());
            let n = per_minute as usize;
            for (i, t) in sent.iter().enumerate() {
                let in_minute = sent.partition_point(|s| *s < t + MINUTE_MS) - i;
                assert!(
                    in_minute <= n,
                    "{per_minute}/min: {in_minute} sends from {t}"
                );
            }
        }
    }

    #[test]
    fn full_window_waits_for_its_oldest_send() {
        let mut rate = Rate::new(1);
        assert!(rate.may_send(100));
        rate.sent(100);
        assert!(!rate.may_send(60_099));
        assert_eq!(rate.next_at(1_000), 60_100);
        assert!(rate.may_send(60_100));
    }
}
