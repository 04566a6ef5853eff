//! The run's time series: one point per second from the start of the ramp (updates sent and
//! accepted, connections, the update latency's p50 and p99 within that second, errors), kept in
//! the report and drawn by its HTML page. The live progress line shows the latest point.
//!
//! One point per second of the run, whatever the fleet's size; a run longer than [`MAX_POINTS`]
//! seconds keeps its first day and counts the points dropped.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::fleet::{Fleet, Phase};

/// Points kept at most (a day of seconds).
pub const MAX_POINTS: usize = 86_400;

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the ramp began, at the end of this second.
    pub t_s: f64,
    /// The phase: `ramp`, `measure` or `stop`.
    pub phase: String,
    /// Things connected at the end of the second.
    pub connected: u64,
    /// Connections made within the second (first ones and reconnects).
    pub connects: u64,
    /// Shadow updates sent within the second.
    pub sent: u64,
    /// Shadow updates accepted within the second.
    pub accepted: u64,
    /// Errors within the second ([`crate::stats::Stats::errors`]).
    pub errors: u64,
    /// Median update latency of the updates answered within the second, ms (`None`: none
    /// answered). In a merged report: the slowest shard's.
    pub update_p50_ms: Option<f64>,
    /// 99th percentile of the same, ms. In a merged report: the slowest shard's.
    pub update_p99_ms: Option<f64>,
}

/// Cumulative counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    connects: u64,
    sent: u64,
    accepted: u64,
    errors: u64,
}

impl Totals {
    fn of(fleet: &Fleet) -> Totals {
        let s = &fleet.stats;
        Totals {
            connects: s.connections(),
            sent: s.updates_sent.get(),
            accepted: s.updates_accepted.get(),
            errors: s.errors(),
        }
    }
}

/// The name of a phase in the series and on the progress line.
pub fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Ramp => "ramp",
        Phase::Measure { .. } => "measure",
        Phase::Stop => "stop",
    }
}

/// Appends one point to the fleet's series every second from `began` until aborted.
pub async fn run(fleet: Arc<Fleet>, began: Instant) {
    let mut tick = tokio::time::interval_at(began + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = Totals::of(&fleet);
    loop {
        tick.tick().await;
        sample(&fleet, began, &mut last);
    }
}

/// Takes one point (the samples since the previous one).
fn sample(fleet: &Fleet, began: Instant, last: &mut Totals) {
    let now = Totals::of(fleet);
    let window = fleet.stats.update.take_window();
    let q = |q: f64| (!window.is_empty()).then(|| window.value_at_quantile(q) as f64 / 1000.0);
    let point = Point {
        t_s: (began.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        phase: phase_name(&fleet.phase.borrow()).to_owned(),
        connected: fleet.stats.connected.get(),
        connects: now.connects.saturating_sub(last.connects),
        sent: now.sent.saturating_sub(last.sent),
        accepted: now.accepted.saturating_sub(last.accepted),
        errors: now.errors.saturating_sub(last.errors),
        update_p50_ms: q(0.5),
        update_p99_ms: q(0.99),
    };
    *last = now;
    if let Ok(mut series) = fleet.stats.series.lock()
        && series.len() < MAX_POINTS
    {
        series.push(point);
    }
}

/// The latest point, if any.
pub fn latest(fleet: &Fleet) -> Option<Point> {
    fleet.stats.series.lock().ok()?.last().cloned()
}

/// The series of several shards as one: points of the same second added (counts), the
/// percentiles the slowest shard's (the windows' histograms are not kept).
pub fn merge(shards: &[&[Point]]) -> Vec<Point> {
    let len = shards.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..len)
        .map(|k| {
            let points: Vec<&Point> = shards.iter().filter_map(|s| s.get(k)).collect();
            let max =
                |f: fn(&Point) -> Option<f64>| points.iter().filter_map(|p| f(p)).reduce(f64::max);
            // The phase most shards are in; ramp while any shard still ramps.
            let phase = if points.iter().any(|p| p.phase == "ramp") {
                "ramp"
            } else if points.iter().any(|p| p.phase == "measure") {
                "measure"
            } else {
                "stop"
            };
            Point {
                t_s: points.iter().map(|p| p.t_s).fold(0.0, f64::max),
                phase: phase.to_owned(),
                connected: points.iter().map(|p| p.connected).sum(),
                connects: points.iter().map(|p| p.connects).sum(),
                sent: points.iter().map(|p| p.sent).sum(),
                accepted: points.iter().map(|p| p.accepted).sum(),
                errors: points.iter().map(|p| p.errors).sum(),
                update_p50_ms: max(|p| p.update_p50_ms),
                update_p99_ms: max(|p| p.update_p99_ms),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, sent: u64, p99: Option<f64>) -> Point {
        Point {
            t_s: t,
            phase: "measure".into(),
            connected: 10,
            connects: 1,
            sent,
            accepted: sent,
            errors: 0,
            update_p50_ms: p99.map(|p| p / 2.0),
            update_p99_ms: p99,
        }
    }

    #[test]
    fn merge_adds_counts_second_by_second() {
        let a = [point(1.0, 5, Some(2.0)), point(2.0, 6, None)];
        let b = [point(1.1, 7, Some(3.0))];
        let m = merge(&[&a, &b]);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].sent, m[0].connected, m[0].connects), (12, 20, 2));
        assert_eq!(m[0].update_p99_ms, Some(3.0));
        assert_eq!(
            (m[1].sent, m[1].connected, m[1].update_p99_ms),
            (6, 10, None)
        );
    }
}
