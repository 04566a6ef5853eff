//! The end-of-run report: a human table, JSON, CSV and an HTML page ([`html`]) with the same
//! figures. The JSON carries every latency histogram's buckets, so the reports of a run's shards
//! merge exactly ([`merge`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::fleet::Fleet;
use crate::fleet_ops::{MethodJob, Rollout};
use crate::resources::{ProcessUsage, Resources};
use crate::scenario::Scenario;
use crate::series::Point;
use crate::shard::Shard;
use crate::threshold::Checked;

pub mod html;
pub mod merge;
mod text;

/// Shown for a figure that has no sample.
pub const EMPTY: &str = "—";

/// A histogram's buckets as `[value_us, count]` pairs (the highest value of each non-empty
/// bucket): recording them again into [`crate::stats::histogram`] gives the same histogram.
pub type Buckets = Vec<[u64; 2]>;

/// The buckets of `h`.
pub fn buckets(h: &Histogram<u64>) -> Buckets {
    h.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

/// The histogram of `buckets`.
pub fn histogram_of(buckets: &[[u64; 2]]) -> Histogram<u64> {
    let mut h = crate::stats::histogram();
    for &[v, n] in buckets {
        // Values beyond the bounds saturate at the top bucket rather than being lost.
        let _ = h.record_n(v.min(h.high()), n);
    }
    h
}

/// Versions of the tools and the hub of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// This simulator.
    pub simulator: String,
    /// The hub, as its OpenAPI document states it (`None`: not known).
    pub hub: Option<String>,
}

impl Versions {
    /// One line for the table.
    pub fn describe(&self) -> String {
        format!(
            "iothub-sim {}, hub {}",
            self.simulator,
            self.hub.as_deref().unwrap_or("unknown")
        )
    }

    /// This simulator's version, the hub's unknown.
    pub fn this() -> Versions {
        Versions {
            simulator: env!("CARGO_PKG_VERSION").to_owned(),
            hub: None,
        }
    }
}

/// One shard's part of a (merged) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPart {
    /// Which shard.
    pub shard: Shard,
    /// Its things.
    pub things: usize,
    /// ... connected at least once.
    pub connected: u64,
    /// Updates it sent.
    pub sent: u64,
    /// ... accepted.
    pub accepted: u64,
    /// Its simulator process.
    pub simulator: Option<ProcessUsage>,
}

/// Percentiles of one interaction, in milliseconds (all 0 without samples).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean (for tools that report only a mean, such as Tsung).
    pub mean_ms: f64,
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
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency of every measured interaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latencies {
    /// TCP connect to the last SUBACK (every connection, reconnects included).
    pub connect: Percentiles,
    /// Shadow update publish to `update/accepted`.
    pub update_to_accepted: Percentiles,
    /// QoS 1 telemetry PUBLISH to its PUBACK.
    pub telemetry_ack: Percentiles,
    /// REST desired PUT to the thing's matching reported state accepted.
    pub convergence: Percentiles,
    /// REST method call to REST reply.
    pub method_rtt: Percentiles,
    /// NTP request to answer.
    pub ntp_rtt: Percentiles,
    /// OTA job creation to every task ended.
    pub ota_job: Percentiles,
    /// Connection lost (not churned) to the shadow resynced after the reconnect.
    pub lost_to_resync: Percentiles,
    /// First boot: the first claim CONNECT to `accepted` (retries included). Absent from the
    /// reports of simulators before it.
    #[serde(default)]
    pub provision: Percentiles,
    /// First boot: the first claim CONNECT to the thing's first accepted shadow update.
    #[serde(default)]
    pub first_report: Percentiles,
    /// Configuration rollout: its creation to the thing's report of the value accepted. Absent
    /// from the reports of simulators before fleet operations (as are the two below).
    #[serde(default)]
    pub rollout: Percentiles,
    /// Method job: the job's start to the thing's record `succeeded` (hub timestamps).
    #[serde(default)]
    pub job_thing: Percentiles,
    /// Method job: a thing's first attempt to its record's end, answered calls only.
    #[serde(default)]
    pub job_call: Percentiles,
}

impl Latencies {
    /// The percentiles of `histograms` (keyed by the field names; a missing one is empty).
    pub fn of(histograms: &BTreeMap<String, Histogram<u64>>) -> Latencies {
        let empty = crate::stats::histogram();
        let p = |name: &str| Percentiles::of(histograms.get(name).unwrap_or(&empty));
        Latencies {
            connect: p("connect"),
            update_to_accepted: p("update_to_accepted"),
            telemetry_ack: p("telemetry_ack"),
            convergence: p("convergence"),
            method_rtt: p("method_rtt"),
            ntp_rtt: p("ntp_rtt"),
            ota_job: p("ota_job"),
            lost_to_resync: p("lost_to_resync"),
            provision: p("provision"),
            first_report: p("first_report"),
            rollout: p("rollout"),
            job_thing: p("job_thing"),
            job_call: p("job_call"),
        }
    }
}

/// Provisioning on first boot (S-10): what the claim connections of a first-boot run gave.
/// In a clean run `accepted == things`, `attempts == accepted + Σ rejected + Σ errors`,
/// `retries == attempts - things` and `first_reports == accepted`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provisioning {
    /// Things that started with only the claim credential (0: the things were created over REST).
    pub things: u64,
    /// Claim connections attempted, retries included.
    pub attempts: u64,
    /// Things provisioned.
    pub accepted: u64,
    /// `rejected` answers by code (429 and 503 are retried).
    pub rejected: BTreeMap<String, u64>,
    /// Attempts that ended without an answer, by kind (retried unless final).
    pub errors: BTreeMap<String, u64>,
    /// Attempts made again after a retryable outcome.
    pub retries: u64,
    /// Things that gave up, by reason (they are also `connect_failures`).
    pub failed: BTreeMap<String, u64>,
    /// First reports accepted.
    pub first_reports: u64,
    /// Provisioned things whose first report failed, by kind.
    pub first_report_errors: BTreeMap<String, u64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Things in the run.
    pub things: usize,
    /// Things that connected (and subscribed) at least once.
    pub connected: u64,
    /// Things that never connected.
    pub connect_failures: u64,
    /// Connections made again after a thing's first.
    pub reconnects: u64,
    /// Connections dropped on purpose (churn).
    pub churned: u64,
    /// Connections lost otherwise.
    pub lost: u64,
    /// Seconds of the measured period.
    pub duration_s: f64,
    /// Shadow updates sent (load reports and delta applies).
    pub sent: u64,
    /// Updates accepted.
    pub accepted: u64,
    /// Accepted updates per second over the measured period.
    pub accepted_per_sec: f64,
    /// Rejections by code.
    pub rejected: BTreeMap<String, u64>,
    /// Updates unanswered on a live connection (timed out, or still open at the end).
    pub unanswered: u64,
    /// Updates whose connection ended before the answer (churn, loss): outcome unknown.
    pub aborted: u64,
    /// Accepted versions not above the last one the thing saw.
    pub out_of_order: u64,
    /// Update ticks skipped because a thing had `max_in_flight` unanswered.
    pub throttled: u64,
    /// Deltas received by things.
    pub deltas: u64,
    /// Desired changes sent by the business side.
    pub desired_sent: u64,
    /// ... converged (reported matched).
    pub converged: u64,
    /// ... still waiting for the thing's reported state at the end.
    pub unconverged: u64,
    /// ... failed at the REST level, by kind.
    pub desired_errors: BTreeMap<String, u64>,
    /// Method calls made by the business side.
    pub method_calls: u64,
    /// ... answered 200 by the device.
    pub method_ok: u64,
    /// ... answered with another device code (e.g. injected failures), by code.
    pub method_device_codes: BTreeMap<String, u64>,
    /// ... failed at the REST level (409 offline, 504 timeout, transport), by kind.
    pub method_errors: BTreeMap<String, u64>,
    /// Method calls the things received and answered.
    pub method_calls_received: u64,
    /// Method answers the things sent.
    pub method_answers_sent: u64,
    /// NTP exchanges started / finished / timed out.
    pub ntp_started: u64,
    /// NTP exchanges finished.
    pub ntp_done: u64,
    /// NTP exchanges that timed out.
    pub ntp_timed_out: u64,
    /// Telemetry messages sent.
    pub telemetry_sent: u64,
    /// QoS 1 telemetry messages acknowledged by the hub.
    pub telemetry_acked: u64,
    /// QoS 1 telemetry messages never acknowledged (lost with a connection, open at the end).
    pub telemetry_unacked: u64,
    /// OTA tasks received by things.
    pub ota_tasks: u64,
    /// OTA results sent by things, by status.
    pub ota_results: BTreeMap<String, u64>,
    /// OTA jobs created by the business side.
    pub ota_jobs: u64,
    /// ... whose every task ended.
    pub ota_jobs_ended: u64,
    /// Final task states of the ended jobs.
    pub ota_task_states: BTreeMap<String, u64>,
    /// OTA job errors by kind.
    pub ota_job_errors: BTreeMap<String, u64>,
    /// Business ticks skipped (concurrency bound reached or no free connected thing).
    pub business_skipped: u64,
    /// Provisioning on first boot (all zero in a run that created its things over REST; absent
    /// from the reports of simulators before it).
    #[serde(default)]
    pub provisioning: Provisioning,
    /// The configuration rollout (`None` when not part of the scenario; absent from the reports
    /// of simulators before it).
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// The method job (as `rollout`).
    #[serde(default)]
    pub method_job: Option<MethodJob>,
    /// Failed connection attempts and lost connections, by kind.
    pub connect_errors: BTreeMap<String, u64>,
    /// Protocol errors by kind (never expected).
    pub protocol_errors: BTreeMap<String, u64>,
    /// Messages the device core dropped as late or stale, by kind (expected around reconnects).
    pub ignored: BTreeMap<String, u64>,
    /// Latencies.
    pub latency: Latencies,
    /// Whether churn was part of the scenario (aborted requests and 409s are then expected).
    pub churn: bool,
    /// CPU and memory of the simulator's and the hub's processes (filled in by the run; a
    /// merged report has the hub's only, each shard's simulator is in `shards`).
    pub resources: Resources,
    /// The scenario as given (the whole fleet's, flags applied), also in a shard's report.
    pub scenario: Scenario,
    /// Versions of the simulator and the hub.
    pub versions: Versions,
    /// The shards this report covers: one for a single process, each of them when merged.
    pub shards: Vec<ShardPart>,
    /// The thresholds checked on this report (see [`crate::threshold`]).
    pub thresholds: Vec<Checked>,
    /// Per second of the run: sent, accepted, connected, update p50/p99, errors.
    pub series: Vec<Point>,
    /// Every latency histogram's buckets by interaction (the `latency` field names), the exact
    /// data the percentiles come from: [`merge`] adds them.
    pub histograms: BTreeMap<String, Buckets>,
}

impl Report {
    /// The report of `fleet`'s run over a measured period of `duration_s`.
    pub fn build(fleet: &Fleet, duration_s: f64) -> Report {
        let s = &fleet.stats;
        let histograms: BTreeMap<String, Histogram<u64>> = s
            .latencies()
            .iter()
            .map(|(name, l)| ((*name).to_owned(), l.snapshot()))
            .collect();
        let things = fleet.slots.len();
        let connected = s.ever_connected.get();
        let unconverged = fleet
            .slots
            .iter()
            .filter(|slot| slot.pending_setpoint.load(Ordering::Relaxed) != 0)
            .count() as u64;
        let ops = s.fleet_ops.lock().map(|o| o.clone()).unwrap_or_default();
        Report {
            things,
            connected,
            connect_failures: (things as u64).saturating_sub(connected),
            reconnects: s.reconnects.get(),
            churned: s.churned.get(),
            lost: s.lost.get(),
            duration_s,
            sent: s.updates_sent.get(),
            accepted: s.updates_accepted.get(),
            accepted_per_sec: s.updates_accepted.get() as f64 / duration_s.max(0.001),
            rejected: s.updates_rejected.snapshot(),
            unanswered: s.updates_timed_out.get(),
            aborted: s.updates_aborted.get(),
            out_of_order: s.out_of_order.get(),
            throttled: s.throttled.get(),
            deltas: s.deltas.get(),
            desired_sent: s.desired_sent.get(),
            converged: s.converged.get(),
            unconverged,
            desired_errors: s.desired_errors.snapshot(),
            method_calls: s.rest_calls.get(),
            method_ok: s.rest_call_ok.get(),
            method_device_codes: s.rest_call_device_codes.snapshot(),
            method_errors: s.rest_call_errors.snapshot(),
            method_calls_received: s.method_calls.get(),
            method_answers_sent: s.method_answers.get(),
            ntp_started: s.ntp_started.get(),
            ntp_done: s.ntp_done.get(),
            ntp_timed_out: s.ntp_timed_out.get(),
            telemetry_sent: s.telemetry_sent.get(),
            telemetry_acked: s.telemetry_acked.get(),
            telemetry_unacked: s.telemetry_unacked.get(),
            ota_tasks: s.ota_tasks.get(),
            ota_results: s.ota_results.snapshot(),
            ota_jobs: s.ota_jobs.get(),
            ota_jobs_ended: s.ota_jobs_ended.get(),
            ota_task_states: s.ota_task_states.snapshot(),
            ota_job_errors: s.ota_job_errors.snapshot(),
            business_skipped: s.business_skipped.get(),
            provisioning: Provisioning {
                things: if fleet.scenario.population.first_boot {
                    things as u64
                } else {
                    0
                },
                attempts: s.provision_attempts.get(),
                accepted: s.provision_accepted.get(),
                rejected: s.provision_rejected.snapshot(),
                errors: s.provision_errors.snapshot(),
                retries: s.provision_retries.get(),
                failed: s.provision_failed.snapshot(),
                first_reports: s.first_reports.get(),
                first_report_errors: s.first_report_errors.snapshot(),
            },
            rollout: ops.rollout.map(|mut r| {
                r.converged = s.rollout_converged.get();
                r.errors = s.rollout_errors.snapshot();
                r
            }),
            method_job: ops.method_job.map(|mut j| {
                j.errors = s.method_job_errors.snapshot();
                j
            }),
            connect_errors: s.connect_errors.snapshot(),
            protocol_errors: s.protocol_errors.snapshot(),
            ignored: s.ignored.snapshot(),
            latency: Latencies::of(&histograms),
            churn: fleet.scenario.profile.churn_per_s > 0.0,
            resources: Resources::default(),
            scenario: fleet.scenario.clone(),
            versions: Versions::this(),
            shards: vec![ShardPart {
                shard: fleet.shard,
                things,
                connected,
                sent: s.updates_sent.get(),
                accepted: s.updates_accepted.get(),
                simulator: None,
            }],
            thresholds: Vec::new(),
            series: s.series.lock().map(|v| v.clone()).unwrap_or_default(),
            histograms: histograms
                .iter()
                .map(|(k, h)| (k.clone(), buckets(h)))
                .collect(),
        }
    }

    /// Errors of every kind that [`Report::is_clean`] refuses (the `errors` threshold): things
    /// that never connected (a thing that gave up provisioning is one), protocol errors,
    /// rejected, unanswered and reordered updates, failed first reports, REST errors,
    /// unconverged desired changes, NTP timeouts, OTA job errors, fleet operation errors and
    /// things a rollout did not converge; without churn also lost connections, aborted updates,
    /// failed method calls, unacknowledged telemetry and method job things `timed_out` or
    /// `canceled`. The 429 and 503 answers of provisioning are the hub's back-pressure, retried:
    /// not errors; a method job's `failed` things are the device's answer (as a method call's
    /// device codes are).
    pub fn errors(&self) -> u64 {
        let sum = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let mut n = self.connect_failures
            + sum(&self.provisioning.first_report_errors)
            + sum(&self.protocol_errors)
            + sum(&self.rejected)
            + self.unanswered
            + self.out_of_order
            + sum(&self.desired_errors)
            + self.unconverged
            + self.ntp_timed_out
            + sum(&self.ota_job_errors)
            + (self.ota_jobs - self.ota_jobs_ended.min(self.ota_jobs));
        if let Some(r) = &self.rollout {
            n += r.unconverged() + sum(&r.errors);
        }
        if let Some(j) = &self.method_job {
            n += sum(&j.errors);
        }
        if !self.churn {
            n += self.lost + self.aborted + sum(&self.method_errors) + self.telemetry_unacked;
            if let Some(j) = &self.method_job {
                n += j.count("timed_out") + j.count("canceled");
            }
        }
        n
    }

    /// Whether every threshold held (true without thresholds).
    pub fn thresholds_passed(&self) -> bool {
        self.thresholds.iter().all(|c| c.passed)
    }

    /// Whether the run met its contract: every thing provisioned (on first boot), connected and
    /// its first report accepted; every update accepted, in order;
    /// every desired change converged; every method call answered by the device; every NTP
    /// exchange answered; every QoS 1 telemetry message acknowledged; no protocol error; a
    /// rollout converged on every thing, a method job completed with every thing answered and
    /// its counts adding up (both without errors). With churn, requests cut by a dropped
    /// connection (and method calls meeting an offline thing, method job calls timing out) are
    /// allowed.
    pub fn is_clean(&self) -> bool {
        let cut_ok = self.churn;
        let rollout_ok = self
            .rollout
            .as_ref()
            .is_none_or(|r| r.errors.is_empty() && r.unconverged() == 0);
        let job_ok = self.method_job.as_ref().is_none_or(|j| {
            j.errors.is_empty()
                && j.status == "completed"
                && (cut_ok || j.count("timed_out") + j.count("canceled") == 0)
        });
        rollout_ok
            && job_ok
            && self.connect_failures == 0
            && self.provisioning.failed.is_empty()
            && self.provisioning.first_report_errors.is_empty()
            && self.protocol_errors.is_empty()
            && self.rejected.is_empty()
            && self.unanswered == 0
            && self.out_of_order == 0
            && (cut_ok || (self.aborted == 0 && self.lost == 0))
            && self.accepted + self.aborted == self.sent
            && self.desired_errors.is_empty()
            && self.unconverged == 0
            && (cut_ok || self.method_errors.is_empty())
            && self.ntp_timed_out == 0
            && (cut_ok || self.telemetry_unacked == 0)
            && self.ota_job_errors.is_empty()
            && self.ota_jobs_ended == self.ota_jobs
            && !self.ota_task_states.contains_key("timed_out")
    }

    /// The latency rows with their JSON (and CSV, metrics) names.
    pub fn latency_fields(&self) -> [(&'static str, &Percentiles); 13] {
        let l = &self.latency;
        [
            ("connect", &l.connect),
            ("update_to_accepted", &l.update_to_accepted),
            ("telemetry_ack", &l.telemetry_ack),
            ("convergence", &l.convergence),
            ("method_rtt", &l.method_rtt),
            ("ntp_rtt", &l.ntp_rtt),
            ("ota_job", &l.ota_job),
            ("lost_to_resync", &l.lost_to_resync),
            ("provision", &l.provision),
            ("first_report", &l.first_report),
            ("rollout", &l.rollout),
            ("job_thing", &l.job_thing),
            ("job_call", &l.job_call),
        ]
    }

    /// The latency rows with their table names.
    pub fn rows(&self) -> [(&'static str, &Percentiles); 13] {
        let l = &self.latency;
        [
            ("connect+subscribe", &l.connect),
            ("update->accepted", &l.update_to_accepted),
            ("telemetry->puback", &l.telemetry_ack),
            ("desired->reported", &l.convergence),
            ("method round trip", &l.method_rtt),
            ("ntp round trip", &l.ntp_rtt),
            ("ota job", &l.ota_job),
            ("lost->resynced", &l.lost_to_resync),
            ("claim->accepted", &l.provision),
            ("claim->first report", &l.first_report),
            ("rollout->reported", &l.rollout),
            ("job start->succeeded", &l.job_thing),
            ("job call", &l.job_call),
        ]
    }
}
