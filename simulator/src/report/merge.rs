//! Merging the reports of a run's shards into the report of the whole run: counts added, latency
//! histograms added bucket by bucket (so the merged percentiles are exactly those of all samples
//! together, never an average of percentiles), rates added (the shards ran side by side), the
//! time series added second by second.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::{Latencies, Report, buckets, histogram_of};
use crate::fleet_ops::{MethodJob, Rollout};
use crate::resources::{ProcessUsage, Resources};
use crate::series;

/// Why reports cannot be merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    /// Nothing to merge.
    #[error("no reports to merge")]
    Empty,
    /// The reports come from different scenarios (not shards of one run).
    #[error("report {0} ran another scenario than the first one: not shards of one run")]
    OtherScenario(usize),
    /// Two reports cover the same shard.
    #[error("shard {0} appears twice")]
    Duplicate(String),
    /// Shards of different splits (`1/3` and `1/4`).
    #[error("report {0} is of another split ({1} shards, the first has {2})")]
    OtherSplit(usize, usize, usize),
}

/// Adds `b` into `a` (counts by kind).
fn add_kinds(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// The report of the whole run from its shards' reports (in any order).
pub fn merge(parts: &[Report]) -> Result<Report, MergeError> {
    let first = parts.first().ok_or(MergeError::Empty)?;
    let split = first.shards.first().map_or(1, |p| p.shard.count);
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in parts.iter().enumerate() {
        if r.scenario != first.scenario {
            return Err(MergeError::OtherScenario(i + 1));
        }
        for p in &r.shards {
            if p.shard.count != split {
                return Err(MergeError::OtherSplit(i + 1, p.shard.count, split));
            }
            if !seen.insert(p.shard.index) {
                return Err(MergeError::Duplicate(p.shard.to_string()));
            }
        }
    }
    let mut m = first.clone();
    for r in &parts[1..] {
        m.things += r.things;
        m.connected += r.connected;
        m.connect_failures += r.connect_failures;
        m.reconnects += r.reconnects;
        m.churned += r.churned;
        m.lost += r.lost;
        m.duration_s = m.duration_s.max(r.duration_s);
        m.sent += r.sent;
        m.accepted += r.accepted;
        m.accepted_per_sec += r.accepted_per_sec;
        add_kinds(&mut m.rejected, &r.rejected);
        m.unanswered += r.unanswered;
        m.aborted += r.aborted;
        m.out_of_order += r.out_of_order;
        m.throttled += r.throttled;
        m.deltas += r.deltas;
        m.desired_sent += r.desired_sent;
        m.converged += r.converged;
        m.unconverged += r.unconverged;
        add_kinds(&mut m.desired_errors, &r.desired_errors);
        m.method_calls += r.method_calls;
        m.method_ok += r.method_ok;
        add_kinds(&mut m.method_device_codes, &r.method_device_codes);
        add_kinds(&mut m.method_errors, &r.method_errors);
        m.method_calls_received += r.method_calls_received;
        m.method_answers_sent += r.method_answers_sent;
        m.ntp_started += r.ntp_started;
        m.ntp_done += r.ntp_done;
        m.ntp_timed_out += r.ntp_timed_out;
        m.telemetry_sent += r.telemetry_sent;
        m.telemetry_acked += r.telemetry_acked;
        m.telemetry_unacked += r.telemetry_unacked;
        m.ota_tasks += r.ota_tasks;
        add_kinds(&mut m.ota_results, &r.ota_results);
        m.ota_jobs += r.ota_jobs;
        m.ota_jobs_ended += r.ota_jobs_ended;
        add_kinds(&mut m.ota_task_states, &r.ota_task_states);
        add_kinds(&mut m.ota_job_errors, &r.ota_job_errors);
        m.business_skipped += r.business_skipped;
        let (mp, rp) = (&mut m.provisioning, &r.provisioning);
        mp.things += rp.things;
        mp.attempts += rp.attempts;
        mp.accepted += rp.accepted;
        add_kinds(&mut mp.rejected, &rp.rejected);
        add_kinds(&mut mp.errors, &rp.errors);
        mp.retries += rp.retries;
        add_kinds(&mut mp.failed, &rp.failed);
        mp.first_reports += rp.first_reports;
        add_kinds(&mut mp.first_report_errors, &rp.first_report_errors);
        m.rollout = merge_rollout(m.rollout.take(), r.rollout.as_ref());
        m.method_job = merge_method_job(m.method_job.take(), r.method_job.as_ref());
        add_kinds(&mut m.connect_errors, &r.connect_errors);
        add_kinds(&mut m.protocol_errors, &r.protocol_errors);
        add_kinds(&mut m.ignored, &r.ignored);
        m.churn |= r.churn;
        m.shards.extend(r.shards.iter().cloned());
        if m.versions.hub.is_none() {
            m.versions.hub.clone_from(&r.versions.hub);
        }
    }
    m.shards.sort_by_key(|p| p.shard.index);
    // Each shard's simulator process is in its part; the hub is one process seen by every
    // shard: keep the reading taken last (the most CPU seconds).
    m.resources = Resources {
        simulator: None,
        hub: parts
            .iter()
            .filter_map(|r| r.resources.hub.clone())
            .max_by(|a: &ProcessUsage, b| a.cpu_s.total_cmp(&b.cpu_s)),
    };
    let mut histograms: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for r in parts {
        for (name, b) in &r.histograms {
            let h = histogram_of(b);
            match histograms.get_mut(name) {
                Some(sum) => {
                    // Same bounds on both sides: adding cannot fail.
                    let _ = sum.add(&h);
                }
                None => {
                    histograms.insert(name.clone(), h);
                }
            }
        }
    }
    m.latency = Latencies::of(&histograms);
    m.histograms = histograms
        .iter()
        .map(|(k, h)| (k.clone(), buckets(h)))
        .collect();
    let sorted_parts = sorted(parts);
    let series: Vec<&[series::Point]> = sorted_parts.iter().map(|r| &r.series[..]).collect();
    m.series = series::merge(&series);
    // Thresholds are checked again on the merged figures by the caller.
    m.thresholds.clear();
    Ok(m)
}

/// The later of two times, `None` when either is (the whole fleet reached it only when every
/// shard did).
fn later(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a?.max(b?))
}

/// The hub's CPU over shards' overlapping spans of one hub process: the largest reading.
fn largest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The rollouts of two sets of shards (each shard rolls out its own configuration to its own
/// things): things and counts added, times the latest.
fn merge_rollout(a: Option<Rollout>, b: Option<&Rollout>) -> Option<Rollout> {
    let (mut a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (a, b) => return a.or_else(|| b.cloned()),
    };
    a.things += b.things;
    a.converged += b.converged;
    a.all_applied_s = later(a.all_applied_s, b.all_applied_s);
    a.all_succeeded_s = later(a.all_succeeded_s, b.all_succeeded_s);
    add_kinds(&mut a.counts, &b.counts);
    a.elapsed_s = a.elapsed_s.max(b.elapsed_s);
    a.hub_cpu_s = largest(a.hub_cpu_s, b.hub_cpu_s);
    add_kinds(&mut a.errors, &b.errors);
    Some(a)
}

/// The method jobs of two sets of shards (each shard runs its own job over its own things, at
/// its share of the rate): things, counts, records and rates added, times the latest.
fn merge_method_job(a: Option<MethodJob>, b: Option<&MethodJob>) -> Option<MethodJob> {
    let (mut a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (a, b) => return a.or_else(|| b.cloned()),
    };
    a.max_per_minute += b.max_per_minute;
    a.things += b.things;
    if b.status != "completed" {
        // One shard's job did not complete: the whole did not either.
        a.status.clone_from(&b.status);
    }
    a.duration_s = later(a.duration_s, b.duration_s);
    a.nominal_s = a.nominal_s.max(b.nominal_s);
    a.achieved_per_minute = a
        .achieved_per_minute
        .zip(b.achieved_per_minute)
        .map(|(x, y)| x + y);
    add_kinds(&mut a.counts, &b.counts);
    a.records += b.records;
    a.elapsed_s = a.elapsed_s.max(b.elapsed_s);
    a.hub_cpu_s = largest(a.hub_cpu_s, b.hub_cpu_s);
    add_kinds(&mut a.errors, &b.errors);
    Some(a)
}

/// The parts ordered by their (first) shard index.
fn sorted(parts: &[Report]) -> Vec<&Report> {
    let mut v: Vec<&Report> = parts.iter().collect();
    v.sort_by_key(|r| r.shards.first().map_or(0, |p| p.shard.index));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;
    use crate::scenario::Scenario;
    use crate::shard::Shard;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    /// A report of shard `index` of 3 with `samples` recorded as update latencies (µs).
    fn shard_report(index: usize, samples: &[u64]) -> Report {
        let (tx, rx) = tokio::sync::watch::channel(crate::fleet::Phase::Ramp);
        drop(tx);
        let mut scenario = Scenario::default();
        scenario.population.count = 30;
        let (part, first) = Shard { index, count: 3 }.apply(&scenario).expect("fits");
        let mut fleet = Fleet::new(part, "127.0.0.1:1".parse().expect("addr"), rx);
        fleet.shard = Shard { index, count: 3 };
        fleet.first = first;
        for &us in samples {
            fleet.stats.update.record(Duration::from_micros(us));
            fleet.stats.updates_sent.inc();
            fleet.stats.updates_accepted.inc();
        }
        fleet.stats.protocol_errors.add("x");
        let mut r = Report::build(&fleet, 10.0);
        // Every shard echoes the whole scenario.
        r.scenario = scenario;
        r
    }

    #[test]
    fn merged_histogram_is_the_histogram_of_the_union() {
        let mut rng = SmallRng::seed_from_u64(7);
        // Three shards with different latency shapes (fast, slow, heavy-tailed).
        let samples: Vec<Vec<u64>> = vec![
            (0..5000).map(|_| rng.gen_range(100..2_000)).collect(),
            (0..3000).map(|_| rng.gen_range(1_000..50_000)).collect(),
            (0..2000)
                .map(|_| {
                    if rng.gen_bool(0.02) {
                        rng.gen_range(100_000..9_000_000)
                    } else {
                        rng.gen_range(200..900)
                    }
                })
                .collect(),
        ];
        let parts: Vec<Report> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| shard_report(i, s))
            .collect();
        // Through JSON, as `iothub-sim merge` reads them.
        let parts: Vec<Report> = parts
            .iter()
            .map(|r| {
                let json = serde_json::to_string(r).expect("serialises");
                serde_json::from_str(&json).expect("parses")
            })
            .collect();
        // Merged in another order than the shards'.
        let merged =
            merge(&[parts[2].clone(), parts[0].clone(), parts[1].clone()]).expect("merges");

        let mut union = crate::stats::histogram();
        for &us in samples.iter().flatten() {
            union.record(us).expect("in bounds");
        }
        let expected = super::super::Percentiles::of(&union);
        let got = &merged.latency.update_to_accepted;
        assert_eq!(got.count, 10_000);
        for (a, b) in [
            (got.p50_ms, expected.p50_ms),
            (got.p90_ms, expected.p90_ms),
            (got.p99_ms, expected.p99_ms),
            (got.p999_ms, expected.p999_ms),
            (got.max_ms, expected.max_ms),
            (got.mean_ms, expected.mean_ms),
        ] {
            assert_eq!(a, b, "merged {got:?} vs union {expected:?}");
        }
        assert_eq!(merged.histograms["update_to_accepted"], buckets(&union));
        // Counts are sums, shards listed in order.
        assert_eq!(
            (merged.sent, merged.accepted, merged.things),
            (10_000, 10_000, 30)
        );
        assert_eq!(merged.protocol_errors["x"], 3);
        let order: Vec<usize> = merged.shards.iter().map(|p| p.shard.index).collect();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn first_boot_figures_add_up_and_old_reports_still_merge() {
        let parts: Vec<Report> = (0..3)
            .map(|i| {
                let mut r = shard_report(i, &[1000]);
                r.scenario.population.first_boot = true;
                let p = &mut r.provisioning;
                p.things = 10;
                p.attempts = 12 + i as u64;
                p.accepted = 10;
                p.rejected.insert("429".into(), 2 + i as u64);
                p.retries = 2 + i as u64;
                p.first_reports = 10;
                r.histograms.insert("provision".into(), vec![[5_000, 10]]);
                r
            })
            .collect();
        let merged = merge(&parts).expect("merges");
        let p = &merged.provisioning;
        assert_eq!((p.things, p.attempts, p.accepted), (30, 39, 30));
        assert_eq!((p.rejected["429"], p.retries, p.first_reports), (9, 9, 30));
        assert_eq!(merged.latency.provision.count, 30);
        assert_eq!(merged.latency.first_report.count, 0);

        // A report of a simulator before first boot: no `provisioning`, no such latencies.
        let mut old = serde_json::to_value(shard_report(0, &[1000])).expect("serialises");
        let object = old.as_object_mut().expect("object");
        object.remove("provisioning");
        for name in ["provision", "first_report"] {
            object["latency"]
                .as_object_mut()
                .expect("latency object")
                .remove(name);
        }
        let old: Report = serde_json::from_value(old).expect("an old report still parses");
        assert_eq!(old.provisioning, super::super::Provisioning::default());
        assert_eq!(old.latency.provision.count, 0);
        let new = shard_report(1, &[1000]);
        assert_eq!(merge(&[old, new]).expect("merges").provisioning.things, 0);
    }

    #[test]
    fn fleet_operations_add_up_across_shards() {
        let parts: Vec<Report> = (0..3u64)
            .map(|i| {
                let mut r = shard_report(i as usize, &[1000]);
                r.rollout = Some(Rollout {
                    configuration: format!("sim-rollout-{i}"),
                    value: 15,
                    things: 10,
                    converged: 10,
                    all_applied_s: Some(1.0 + i as f64),
                    all_succeeded_s: (i != 1).then_some(2.0 + i as f64),
                    counts: [("targeted".to_owned(), 10), ("succeeded".to_owned(), 10)].into(),
                    elapsed_s: 3.0,
                    hub_cpu_s: Some(0.5 * i as f64),
                    errors: BTreeMap::new(),
                });
                r.method_job = Some(MethodJob {
                    job_id: format!("j{i}"),
                    method: "echo".into(),
                    max_per_minute: 2000,
                    things: 10,
                    status: "completed".into(),
                    duration_s: Some(1.0 + i as f64),
                    nominal_s: 0.3,
                    achieved_per_minute: Some(1900.0),
                    counts: [("succeeded".to_owned(), 9), ("failed".to_owned(), 1)].into(),
                    records: 10,
                    ..MethodJob::default()
                });
                r
            })
            .collect();
        let merged = merge(&parts).expect("merges");
        let r = merged.rollout.as_ref().expect("rollout");
        assert_eq!((r.things, r.converged, r.counts["targeted"]), (30, 30, 30));
        assert_eq!(r.all_applied_s, Some(3.0));
        assert_eq!(r.all_succeeded_s, None, "shard 1 never saw all succeeded");
        assert_eq!(r.hub_cpu_s, Some(1.0));
        let j = merged.method_job.as_ref().expect("method job");
        assert_eq!((j.things, j.records, j.max_per_minute), (30, 30, 6000));
        assert_eq!((j.count("succeeded"), j.count("failed")), (27, 3));
        assert_eq!(
            (j.duration_s, j.achieved_per_minute),
            (Some(3.0), Some(5700.0))
        );
        assert!(merged.errors() > 0, "the shards' protocol errors");

        // Reports of simulators before fleet operations have neither.
        let mut old = serde_json::to_value(shard_report(0, &[1000])).expect("serialises");
        let object = old.as_object_mut().expect("object");
        object.remove("rollout");
        object.remove("method_job");
        let old: Report = serde_json::from_value(old).expect("an old report still parses");
        assert_eq!((old.rollout, old.method_job), (None, None));
    }

    #[test]
    fn refuses_what_is_not_one_run() {
        let a = shard_report(0, &[1000]);
        assert_eq!(
            merge(&[a.clone(), a.clone()]).map(|_| ()),
            Err(MergeError::Duplicate("0/3".into()))
        );
        let mut b = shard_report(1, &[1000]);
        b.scenario.seed = 99;
        assert_eq!(
            merge(&[a.clone(), b]).map(|_| ()),
            Err(MergeError::OtherScenario(2))
        );
        let mut c = shard_report(1, &[1000]);
        c.shards[0].shard = Shard { index: 1, count: 4 };
        assert_eq!(
            merge(&[a, c]).map(|_| ()),
            Err(MergeError::OtherSplit(2, 4, 3))
        );
        assert_eq!(merge(&[]).map(|_| ()), Err(MergeError::Empty));
    }
}
