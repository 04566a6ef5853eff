//! The end-of-run report: a human table and the same figures as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::shadow_load::{ThingOutcome, histogram};

/// Percentiles of one interaction, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Things in the run.
    pub things: usize,
    /// Things that connected and subscribed.
    pub connected: usize,
    /// Things that never connected.
    pub connect_failures: usize,
    /// First few connect errors.
    pub connect_errors: Vec<String>,
    /// Connect + subscribe time.
    pub connect: Percentiles,
    /// Seconds of reporting.
    pub duration_s: f64,
    /// Updates published.
    pub sent: u64,
    /// Updates accepted.
    pub accepted: u64,
    /// Accepted updates per second over the reporting period.
    pub accepted_per_sec: f64,
    /// Rejections by code.
    pub rejected: BTreeMap<u16, u64>,
    /// Updates never answered.
    pub unanswered: u64,
    /// Versions out of sequence.
    pub out_of_order: u64,
    /// Connections lost during the run.
    pub disconnects: u64,
    /// Ticks skipped because a thing had its in-flight limit unanswered.
    pub throttled: u64,
    /// Publish → `update/accepted` latency.
    pub update_to_accepted: Percentiles,
}

impl Report {
    /// Folds the outcomes of every thing into one report.
    pub fn build(outcomes: &[ThingOutcome], duration_s: f64, sent: u64, throttled: u64) -> Report {
        let mut latency = histogram();
        let mut connect = latency.clone();
        let mut rejected = BTreeMap::new();
        let (mut unanswered, mut out_of_order, mut disconnects) = (0, 0, 0);
        let mut connect_errors = Vec::new();
        for o in outcomes {
            let _ = latency.add(&o.latency_us);
            if let Some(us) = o.connect_us {
                let _ = connect.record(us.max(1));
            }
            for (code, n) in &o.rejected {
                *rejected.entry(*code).or_insert(0) += n;
            }
            unanswered += o.unanswered;
            out_of_order += o.out_of_order;
            disconnects += o.disconnects;
            if !o.connected && connect_errors.len() < 5 {
                connect_errors.push(o.error.clone().unwrap_or_default());
            }
        }
        let connected = outcomes.iter().filter(|o| o.connected).count();
        Report {
            things: outcomes.len(),
            connected,
            connect_failures: outcomes.len() - connected,
            connect_errors,
            connect: Percentiles::of(&connect),
            duration_s,
            sent,
            accepted: latency.len(),
            accepted_per_sec: latency.len() as f64 / duration_s.max(0.001),
            rejected,
            unanswered,
            out_of_order,
            disconnects,
            throttled,
            update_to_accepted: Percentiles::of(&latency),
        }
    }

    /// Whether the run met its contract: everyone connected, every update accepted in order.
    pub fn is_clean(&self) -> bool {
        self.connect_failures == 0
            && self.rejected.is_empty()
            && self.unanswered == 0
            && self.out_of_order == 0
            && self.disconnects == 0
            && self.accepted == self.sent
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "things            {} ({} connected, {} failed)",
            self.things, self.connected, self.connect_failures
        );
        let _ = writeln!(
            s,
            "updates           {} sent, {} accepted ({:.0}/s over {:.1} s)",
            self.sent, self.accepted, self.accepted_per_sec, self.duration_s
        );
        let _ = writeln!(s, "rejected          {:?}", self.rejected);
        let _ = writeln!(s, "unanswered        {}", self.unanswered);
        let _ = writeln!(s, "out of order      {}", self.out_of_order);
        let _ = writeln!(s, "disconnects       {}", self.disconnects);
        let _ = writeln!(s, "throttled ticks   {}", self.throttled);
        let _ = writeln!(
            s,
            "{:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "interaction (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in [
            ("connect+subscribe", &self.connect),
            ("update->accepted", &self.update_to_accepted),
        ] {
            let _ = writeln!(
                s,
                "{:<22}{:>9}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
                name, p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            );
        }
        for e in &self.connect_errors {
            let _ = writeln!(s, "connect error: {e}");
        }
        s
    }
}
