//! Refused connections summarized: one log line per window with the count, the reasons and
//! the busiest addresses, instead of one line per refusal (a flood would fill the disk and
//! cost more than the refusals themselves).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::metrics::Metrics;

/// Most distinct addresses counted per window; later ones count under "others".
const MAX_ADDRS: usize = 1024;
/// Addresses named in a summary line.
const TOP_ADDRS: usize = 5;

/// Counts refusals of one listener between two summary lines, and in the hub's metrics.
pub struct RefusalLog {
    what: &'static str,
    /// The `listener` label and the metrics every refusal is counted in.
    metrics: Option<(&'static str, Arc<Metrics>)>,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    total: u64,
    reasons: BTreeMap<&'static str, u64>,
    addrs: HashMap<IpAddr, u64>,
}

/// One window's counts, ready to log.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// Refusals in the window.
    pub total: u64,
    /// Refusals per reason.
    pub reasons: Vec<(&'static str, u64)>,
    /// The busiest addresses, most refusals first.
    pub top: Vec<(IpAddr, u64)>,
}

impl RefusalLog {
    /// A log for refusals of `what` (e.g. "MQTT connections").
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(RefusalLog {
            what,
            metrics: None,
            window: Mutex::new(Window::default()),
        })
    }

    /// Like [`RefusalLog::new`], also counting each refusal in `metrics`
    /// (`iothub_connections_refused_total{listener, reason}`).
    pub fn counted(what: &'static str, listener: &'static str, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(RefusalLog {
            what,
            metrics: Some((listener, metrics)),
            window: Mutex::new(Window::default()),
        })
    }

    /// Counts one refusal.
    pub fn record(&self, addr: Option<IpAddr>, reason: &'static str) {
        if let Some((listener, metrics)) = &self.metrics {
            metrics.inc_connection_refused(listener, reason);
        }
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.total += 1;
        *w.reasons.entry(reason).or_insert(0) += 1;
        if let Some(addr) = addr {
            let addr = addr.to_canonical();
            if w.addrs.len() < MAX_ADDRS || w.addrs.contains_key(&addr) {
                *w.addrs.entry(addr).or_insert(0) += 1;
            }
        }
    }

    /// Ends the window: its counts, or `None` when nothing was refused.
    pub fn take(&self) -> Option<Summary> {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner));
        if w.total == 0 {
            return None;
        }
        let mut top: Vec<(IpAddr, u64)> = w.addrs.into_iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(TOP_ADDRS);
        Some(Summary {
            total: w.total,
            reasons: w.reasons.into_iter().collect(),
            top,
        })
    }

    /// Logs one summary line every `every` while there are refusals to report.
    pub fn spawn_reporter(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Some(s) = self.take() {
                    tracing::warn!(
                        "refused {} {} in the last {} s ({}); top addresses: {}",
                        s.total,
                        self.what,
                        every.as_secs(),
                        join(&s.reasons),
                        join(&s.top)
                    );
                }
            }
        })
    }
}

fn join<K: std::fmt::Display>(items: &[(K, u64)]) -> String {
    let mut out = String::new();
    for (i, (k, n)) in items.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{k} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_sums_reasons_and_ranks_addresses() {
        let log = RefusalLog::new("MQTT connections");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            log.record(Some(a), "bad credentials");
        }
        log.record(Some(b), "per-address cap");
        log.record(None, "bad credentials");
        let s = log.take().expect("refusals");
        assert_eq!(s.total, 5);
        assert_eq!(
            s.reasons,
            vec![("bad credentials", 4), ("per-address cap", 1)]
        );
        assert_eq!(s.top, vec![(a, 3), (b, 1)]);
        assert_eq!(log.take(), None, "a new window starts empty");
    }

    #[test]
    fn distinct_addresses_are_bounded() {
        let log = RefusalLog::new("x");
        for i in 0..5_000u32 {
            log.record(Some(IpAddr::from(i.to_be_bytes())), "r");
        }
        assert_eq!(log.window.lock().map_or(0, |w| w.addrs.len()), MAX_ADDRS);
        let s = log.take().expect("refusals");
        assert_eq!(s.total, 5_000);
        assert_eq!(s.top.len(), TOP_ADDRS);
    }
}
