//! Whether the store can write right now, for `/healthz` and `/metrics`.
//!
//! A full disk or a failing device does not stop the hub: reads keep working and every write is
//! answered 503 (S-3.8). Operators still need to know, so every write transaction reports its
//! outcome here; the first failure marks the store unhealthy with its reason, the first success
//! afterwards (a client's write or the store's own probe) marks it healthy again. Nothing here
//! decides anything about a request: callers get their own error from the write itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the store's write health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// `false` from the first failed write until the next successful one.
    pub healthy: bool,
    /// The error of the last failed write while unhealthy.
    pub reason: Option<String>,
    /// When writes started failing (ms since the Unix epoch), while unhealthy.
    pub failing_since: Option<u64>,
    /// Write transactions that failed since start-up.
    pub write_failures: u64,
}

impl HealthReport {
    /// The report of a store that has never failed (and of stores that do not track health).
    pub fn healthy() -> HealthReport {
        HealthReport {
            healthy: true,
            reason: None,
            failing_since: None,
            write_failures: 0,
        }
    }
}

struct Failing {
    reason: String,
    since: u64,
}

/// The write health of one store, updated by every write transaction.
#[derive(Default)]
pub struct StoreHealth {
    failing: Mutex<Option<Failing>>,
    write_failures: AtomicU64,
}

impl std::fmt::Debug for StoreHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreHealth").field(&self.report()).finish()
    }
}

impl StoreHealth {
    /// A write committed.
    pub fn write_ok(&self) {
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        if let Some(was) = failing.take() {
            tracing::warn!(
                failed_for_ms = crate::clock::now_ms().saturating_sub(was.since),
                "storage writes succeed again"
            );
        }
    }

    /// A write failed with `reason`; the first failure of a run is logged as an error, later ones
    /// only update the reason (each failed request is reported to its caller anyway).
    pub fn write_failed(&self, reason: &str) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        match failing.as_mut() {
            Some(f) => {
                if f.reason != reason {
                    f.reason = reason.to_owned();
                }
            }
            None => {
                tracing::error!(
                    %reason,
                    "storage writes are failing; writes are answered 503 until they succeed again"
                );
                *failing = Some(Failing {
                    reason: reason.to_owned(),
                    since: crate::clock::now_ms(),
                });
            }
        }
    }

    /// Whether the last write (or probe) succeeded.
    pub fn is_healthy(&self) -> bool {
        self.failing.lock().map(|f| f.is_none()).unwrap_or(false)
    }

    /// The current state.
    pub fn report(&self) -> HealthReport {
        let write_failures = self.write_failures.load(Ordering::Relaxed);
        match self.failing.lock() {
            Ok(f) => HealthReport {
                healthy: f.is_none(),
                reason: f.as_ref().map(|f| f.reason.clone()),
                failing_since: f.as_ref().map(|f| f.since),
                write_failures,
            },
            Err(_) => HealthReport {
                healthy: false,
                reason: Some("health state poisoned".into()),
                failing_since: None,
                write_failures,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_with_the_last_reason_and_recovers_on_success() {
        let h = StoreHealth::default();
        assert_eq!(h.report(), HealthReport::healthy());
        h.write_failed("database or disk is full");
        h.write_failed("disk I/O error");
        let r = h.report();
        assert!(!r.healthy && !h.is_healthy());
        assert_eq!(r.reason.as_deref(), Some("disk I/O error"));
        assert!(r.failing_since.is_some());
        assert_eq!(r.write_failures, 2);
        h.write_ok();
        let r = h.report();
        assert!(r.healthy && h.is_healthy());
        assert_eq!(
            (r.reason, r.failing_since, r.write_failures),
            (None, None, 2)
        );
    }
}
