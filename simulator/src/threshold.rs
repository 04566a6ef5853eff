//! Pass criteria of a run, as in k6: `update.p99<10ms`, `errors==0`, `accepted_per_sec>=4500`.
//!
//! A threshold is `METRIC[.STAT] OP VALUE[UNIT]`, given with `--threshold` (repeatable) or in the
//! scenario's `thresholds` list. Latency metrics are the report's interactions (`connect`,
//! `update`, `telemetry_ack`, `convergence`, `method_rtt`, `ntp_rtt`, `ota_job`,
//! `lost_to_resync`, on first boot `provision`, `first_report`, and of the fleet operations
//! `rollout`, `job_thing`, `job_call`) with a statistic (`p50`, `p90`, `p99`, `p999`, `max`,
//! `mean`, `count`) and a value in `us`, `ms` (the default) or `s`; counters (see [`COUNTERS`])
//! take a plain number.
//! Every threshold is checked on the final (merged) report and listed in it; one that fails
//! makes the exit status [`EXIT_THRESHOLDS`]. A latency threshold on an interaction without a
//! single sample fails: a criterion that measured nothing has not been met.

use std::fmt;

use serde::Serialize;

use crate::report::{Percentiles, Report};

/// Exit status of a run whose thresholds failed (k6 uses the same).
pub const EXIT_THRESHOLDS: u8 = 99;

/// Why a threshold expression is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    /// No comparison operator.
    #[error("threshold {0:?}: no operator (one of < <= > >= == !=)")]
    NoOperator(String),
    /// The metric is not one the report has.
    #[error("threshold {0:?}: unknown metric (latencies: {lat}; counters: {cnt})", lat = latency_names(), cnt = COUNTERS.join(", "))]
    UnknownMetric(String),
    /// A latency metric without a statistic, or with an unknown one.
    #[error(
        "threshold {0:?}: a latency needs a statistic: p50, p90, p99, p999, max, mean or count"
    )]
    BadStat(String),
    /// A counter with a statistic or a unit.
    #[error("threshold {0:?}: a counter takes no statistic and no unit")]
    CounterQualified(String),
    /// The value is not a finite number with an optional unit.
    #[error("threshold {0:?}: the value must be a number, for latencies with us, ms or s")]
    BadValue(String),
}

/// Latency interactions: the name in a threshold and the report's field
/// ([`Report::latency_fields`]).
const LATENCIES: [(&str, &str); 13] = [
    ("connect", "connect"),
    ("update", "update_to_accepted"),
    ("telemetry_ack", "telemetry_ack"),
    ("convergence", "convergence"),
    ("method_rtt", "method_rtt"),
    ("ntp_rtt", "ntp_rtt"),
    ("ota_job", "ota_job"),
    ("lost_to_resync", "lost_to_resync"),
    ("provision", "provision"),
    ("first_report", "first_report"),
    ("rollout", "rollout"),
    ("job_thing", "job_thing"),
    ("job_call", "job_call"),
];

/// Counter metrics a threshold can name.
pub const COUNTERS: [&str; 16] = [
    "errors",
    "connected",
    "connect_failures",
    "sent",
    "accepted",
    "accepted_per_sec",
    "rejected",
    "unanswered",
    "out_of_order",
    "unconverged",
    "lost",
    "reconnects",
    "provisioned",
    "provision_rejected",
    "provision_retries",
    "provision_failures",
];

fn latency_names() -> String {
    LATENCIES.map(|(n, _)| n).join(", ")
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    /// Operators, longest first so that `<=` is not read as `<`.
    const ALL: [(&'static str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

/// What a threshold looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    /// A latency statistic: index into [`LATENCIES`] and the statistic.
    Latency(usize, Stat),
    /// A counter: index into [`COUNTERS`].
    Counter(usize),
}

/// A statistic of a latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stat {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
    Count,
}

/// One parsed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    text: String,
    metric: Metric,
    op: Op,
    /// In milliseconds for latencies.
    value: f64,
}

/// A threshold checked on a report.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Checked {
    /// The threshold as written.
    pub threshold: String,
    /// The measured value (milliseconds for latencies); `None` when nothing was measured.
    pub actual: Option<f64>,
    /// Whether it holds.
    pub passed: bool,
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "passed" } else { "FAILED" };
        match self.actual {
            Some(v) => write!(f, "{verdict}: {} (actual {v:.3})", self.threshold),
            None => write!(f, "{verdict}: {} (no samples)", self.threshold),
        }
    }
}

impl Threshold {
    /// Parses `METRIC[.STAT] OP VALUE[UNIT]` (spaces allowed around the operator).
    pub fn parse(text: &str) -> Result<Threshold, ThresholdError> {
        let t = text.trim();
        let (at, sym, op) = Op::ALL
            .iter()
            .filter_map(|&(sym, op)| t.find(sym).map(|at| (at, sym, op)))
            .min_by_key(|&(at, sym, _)| (at, std::cmp::Reverse(sym.len())))
            .ok_or_else(|| ThresholdError::NoOperator(text.to_owned()))?;
        let lhs = t[..at].trim();
        let rhs = t[at + sym.len()..].trim();
        let (name, stat) = match lhs.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (lhs, None),
        };
        let bad_value = || ThresholdError::BadValue(text.to_owned());
        let metric = if let Some(i) = LATENCIES.iter().position(|(n, _)| *n == name) {
            let stat = match stat {
                Some("p50") => Stat::P50,
                Some("p90") => Stat::P90,
                Some("p99") => Stat::P99,
                Some("p999" | "p99.9") => Stat::P999,
                Some("max") => Stat::Max,
                Some("mean" | "avg") => Stat::Mean,
                Some("count") => Stat::Count,
                _ => return Err(ThresholdError::BadStat(text.to_owned())),
            };
            Metric::Latency(i, stat)
        } else if let Some(i) = COUNTERS.iter().position(|n| *n == name) {
            if stat.is_some() {
                return Err(ThresholdError::CounterQualified(text.to_owned()));
            }
            Metric::Counter(i)
        } else {
            return Err(ThresholdError::UnknownMetric(text.to_owned()));
        };
        let timed = matches!(metric, Metric::Latency(_, s) if s != Stat::Count);
        let (number, scale) = match ["us", "ms", "s"]
            .iter()
            .find_map(|u| rhs.strip_suffix(u).map(|n| (n, *u)))
        {
            Some(_) if !timed => return Err(ThresholdError::CounterQualified(text.to_owned())),
            Some((n, "us")) => (n, 0.001),
            Some((n, "s")) => (n, 1000.0),
            Some((n, _)) => (n, 1.0),
            None => (rhs, 1.0),
        };
        let value: f64 = number.trim().parse().map_err(|_| bad_value())?;
        if !value.is_finite() {
            return Err(bad_value());
        }
        Ok(Threshold {
            text: t.to_owned(),
            metric,
            op,
            value: value * scale,
        })
    }

    /// Checks the threshold on `report`.
    pub fn check(&self, report: &Report) -> Checked {
        let actual = match self.metric {
            Metric::Latency(i, stat) => {
                let field = LATENCIES[i].1;
                let empty = Percentiles::of(&crate::stats::histogram());
                let p = report
                    .latency_fields()
                    .into_iter()
                    .find(|(n, _)| *n == field)
                    .map_or(empty, |(_, p)| p.clone());
                match stat {
                    Stat::Count => Some(p.count as f64),
                    _ if p.count == 0 => None,
                    Stat::P50 => Some(p.p50_ms),
                    Stat::P90 => Some(p.p90_ms),
                    Stat::P99 => Some(p.p99_ms),
                    Stat::P999 => Some(p.p999_ms),
                    Stat::Max => Some(p.max_ms),
                    Stat::Mean => Some(p.mean_ms),
                }
            }
            Metric::Counter(i) => Some(counter(report, COUNTERS[i])),
        };
        Checked {
            threshold: self.text.clone(),
            actual,
            passed: actual.is_some_and(|a| self.op.holds(a, self.value)),
        }
    }
}

/// The value of counter `name` in `report`.
fn counter(r: &Report, name: &str) -> f64 {
    let n = match name {
        "errors" => r.errors(),
        "connected" => r.connected,
        "connect_failures" => r.connect_failures,
        "sent" => r.sent,
        "accepted" => r.accepted,
        "accepted_per_sec" => return r.accepted_per_sec,
        "rejected" => r.rejected.values().sum(),
        "unanswered" => r.unanswered,
        "out_of_order" => r.out_of_order,
        "unconverged" => r.unconverged,
        "lost" => r.lost,
        "reconnects" => r.reconnects,
        "provisioned" => r.provisioning.accepted,
        "provision_rejected" => r.provisioning.rejected.values().sum(),
        "provision_retries" => r.provisioning.retries,
        "provision_failures" => r.provisioning.failed.values().sum(),
        _ => 0,
    };
    n as f64
}

/// Parses every threshold, the first error refusing the lot.
pub fn parse_all(texts: &[String]) -> Result<Vec<Threshold>, ThresholdError> {
    texts.iter().map(|t| Threshold::parse(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latencies_with_units() {
        let t = Threshold::parse("update.p99<10ms").expect("parses");
        assert_eq!(
            (t.metric, t.op, t.value),
            (Metric::Latency(1, Stat::P99), Op::Lt, 10.0)
        );
        let t = Threshold::parse(" connect.max <= 2s ").expect("parses");
        assert_eq!((t.op, t.value), (Op::Le, 2000.0));
        let t = Threshold::parse("ntp_rtt.p99.9>=500us").expect("parses");
        assert_eq!((t.metric, t.value), (Metric::Latency(5, Stat::P999), 0.5));
        let t = Threshold::parse("update.count>0").expect("parses");
        assert_eq!((t.metric, t.op), (Metric::Latency(1, Stat::Count), Op::Gt));
    }

    #[test]
    fn parses_counters() {
        let t = Threshold::parse("errors==0").expect("parses");
        assert_eq!((t.metric, t.op, t.value), (Metric::Counter(0), Op::Eq, 0.0));
        let t = Threshold::parse("accepted_per_sec >= 4500").expect("parses");
        assert_eq!((t.op, t.value), (Op::Ge, 4500.0));
        assert_eq!(Threshold::parse("lost!=3").map(|t| t.op), Ok(Op::Ne));
        let t = Threshold::parse("provision_failures==0").expect("parses");
        assert_eq!(t.metric, Metric::Counter(15));
        let t = Threshold::parse("first_report.p99<2s").expect("parses");
        assert_eq!((t.metric, t.value), (Metric::Latency(9, Stat::P99), 2000.0));
    }

    #[test]
    fn refuses_with_typed_errors() {
        use ThresholdError::*;
        let e = |s: &str| Threshold::parse(s).expect_err(s);
        assert_eq!(e("update.p99 10ms"), NoOperator("update.p99 10ms".into()));
        assert_eq!(e("updates.p99<1"), UnknownMetric("updates.p99<1".into()));
        assert_eq!(e("update<1"), BadStat("update<1".into()));
        assert_eq!(e("update.p42<1"), BadStat("update.p42<1".into()));
        assert_eq!(e("errors.p99==0"), CounterQualified("errors.p99==0".into()));
        assert_eq!(e("errors<1ms"), CounterQualified("errors<1ms".into()));
        assert_eq!(e("update.p99<fast"), BadValue("update.p99<fast".into()));
        assert_eq!(e("update.p99<inf"), BadValue("update.p99<inf".into()));
        assert!(e("nothing").to_string().contains("no operator"));
    }

    #[test]
    fn operators_compare() {
        for (op, a, b, holds) in [
            (Op::Lt, 1.0, 2.0, true),
            (Op::Lt, 2.0, 2.0, false),
            (Op::Le, 2.0, 2.0, true),
            (Op::Gt, 2.0, 2.0, false),
            (Op::Ge, 2.0, 2.0, true),
            (Op::Eq, 0.0, 0.0, true),
            (Op::Ne, 0.0, 0.0, false),
        ] {
            assert_eq!(op.holds(a, b), holds, "{op:?} {a} {b}");
        }
    }
}
