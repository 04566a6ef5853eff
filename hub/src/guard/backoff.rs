//! Growing delays before refusing a failed CONNECT, per source address and per thing.
//!
//! A refusal is held back by `base * 2^(failures - free - 1)`, capped, where `failures` counts
//! the recent failures of the address or of the thing, whichever has more; the first `free`
//! failures of a thing (`addr_free` of an address) are not delayed (a device with a stale
//! secret, a test suite checking refusals). A correct secret is
//! never delayed: the delay only comes before a *refusing* CONNACK, so an attacker guessing a
//! thing's secret cannot lock the real device out. Together with the cap on unauthenticated
//! connections per address this bounds how fast one address can guess: it holds a pending
//! slot for the whole delay.
//!
//! Memory is bounded: at most `capacity` keys; when full, expired keys go first, else the key
//! idle the longest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Settings of [`FailureBackoff`].
#[derive(Debug, Clone, Copy)]
pub struct BackoffConfig {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay. Kept below the usual 5 s CONNACK wait of clients, so a delayed refusal
    /// still reads as a refusal rather than as a dead hub.
    pub cap: Duration,
    /// Failures of a thing not delayed at all.
    pub free: u32,
    /// Failures of an address not delayed at all. Higher than `free`: many devices (or a test
    /// suite) share an address, and one address's parallel guessing is already bounded by its
    /// cap on unauthenticated connections.
    pub addr_free: u32,
    /// A key without a failure for this long starts again from zero.
    pub forget_after: Duration,
    /// Most keys (addresses plus things) remembered.
    pub capacity: usize,
}

impl BackoffConfig {
    /// 3 free failures, then 100 ms doubling to 2 s; forgotten after 60 s without a failure;
    /// 10,000 keys (~1 MB).
    pub const DEFAULT: BackoffConfig = BackoffConfig {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
        free: 3,
        addr_free: 50,
        forget_after: Duration::from_secs(60),
        capacity: 10_000,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Thing(Box<str>),
}

#[derive(Debug, Clone, Copy)]
enum KeyKind {
    Addr,
    Thing,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Failure counts per address and per thing (see the module docs).
pub struct FailureBackoff {
    config: BackoffConfig,
    table: Mutex<HashMap<Key, Entry>>,
}

impl FailureBackoff {
    /// An empty table.
    pub fn new(config: BackoffConfig) -> Self {
        FailureBackoff {
            config,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failed CONNECT from `addr` for `thing` at `now`; returns how long to wait
    /// before sending the refusal.
    pub fn failed(&self, addr: Option<IpAddr>, thing: &str, now: Instant) -> Duration {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut worst = 0;
        let keys = addr
            .map(|a| Key::Addr(a.to_canonical()))
            .into_iter()
            .chain(Some(Key::Thing(thing.into())));
        for key in keys {
            let key_kind = match key {
                Key::Addr(_) => KeyKind::Addr,
                Key::Thing(_) => KeyKind::Thing,
            };
            if !table.contains_key(&key) && table.len() >= self.config.capacity {
                self.evict_one(&mut table, now);
            }
            let entry = table.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
            });
            if now.saturating_duration_since(entry.last) > self.config.forget_after {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last = now;
            let free = match key_kind {
                KeyKind::Addr => self.config.addr_free,
                KeyKind::Thing => self.config.free,
            };
            worst = worst.max(entry.failures.saturating_sub(free));
        }
        self.delay(worst)
    }

    /// A successful CONNECT of `thing` clears its failures (its address keeps its own).
    pub fn succeeded(&self, thing: &str) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.remove(&Key::Thing(thing.into()));
    }

    fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(20);
        self.config
            .base
            .saturating_mul(1u32 << doublings)
            .min(self.config.cap)
    }

    fn evict_one(&self, table: &mut HashMap<Key, Entry>, now: Instant) {
        let forget_after = self.config.forget_after;
        table.retain(|_, e| now.saturating_duration_since(e.last) <= forget_after);
        if table.len() < self.config.capacity {
            return;
        }
        if let Some(oldest) = table
            .iter()
            .min_by_key(|(_, e)| e.last)
            .map(|(k, _)| k.clone())
        {
            table.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map_or(0, |t| t.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BackoffConfig = BackoffConfig {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
        free: 0,
        addr_free: 0,
        forget_after: Duration::from_secs(60),
        capacity: 8,
    };

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn delay_doubles_per_failure_and_is_capped() {
        let b = FailureBackoff::new(CONFIG);
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..8)
            .map(|i| {
                b.failed(ip(1), "t1", t0 + Duration::from_secs(i))
                    .as_millis() as u64
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn the_first_free_failures_are_not_delayed() {
        let b = FailureBackoff::new(BackoffConfig {
            free: 2,
            addr_free: 3,
            ..CONFIG
        });
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..4)
            .map(|_| b.failed(ip(1), "t1", t0).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 0, 100, 200]);
        // Many things from one address: the address's own count starts after addr_free.
        let b = FailureBackoff::new(BackoffConfig {
            free: 2,
            addr_free: 3,
            ..CONFIG
        });
        let delays: Vec<u64> = (0..5)
            .map(|i| b.failed(ip(1), &format!("t{i}"), t0).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 0, 0, 100, 200]);
    }

    #[test]
    fn thing_failures_count_across_addresses_and_addresses_across_things() {
        let b = FailureBackoff::new(CONFIG);
        let t0 = Instant::now();
        for i in 0..4 {
            b.failed(ip(i), "victim", t0);
        }
        // A fifth address guessing the same thing gets the thing's (longer) delay.
        assert_eq!(b.failed(ip(9), "victim", t0), Duration::from_millis(1600));
        let b = FailureBackoff::new(CONFIG);
        for i in 0..4 {
            b.failed(ip(1), &format!("t{i}"), t0);
        }
        assert_eq!(b.failed(ip(1), "fresh", t0), Duration::from_millis(1600));
    }

    #[test]
    fn success_clears_the_thing_and_quiet_time_clears_everything() {
        let b = FailureBackoff::new(CONFIG);
        let t0 = Instant::now();
        b.failed(None, "t1", t0);
        b.failed(None, "t1", t0);
        b.succeeded("t1");
        assert_eq!(b.failed(None, "t1", t0), Duration::from_millis(100));
        b.failed(ip(1), "t2", t0);
        let later = t0 + CONFIG.forget_after + Duration::from_secs(1);
        assert_eq!(b.failed(ip(1), "t2", later), Duration::from_millis(100));
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let b = FailureBackoff::new(CONFIG);
        let t0 = Instant::now();
        for i in 0..1_000u32 {
            b.failed(
                Some(IpAddr::from(i.to_be_bytes())),
                &format!("thing{i}"),
                t0 + Duration::from_millis(u64::from(i)),
            );
            assert!(b.len() <= CONFIG.capacity, "{} keys", b.len());
        }
        // The newest keys survived the eviction of the oldest.
        assert_eq!(
            b.failed(None, "thing999", t0 + Duration::from_secs(2)),
            Duration::from_millis(200)
        );
    }
}
