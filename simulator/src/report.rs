//! The end-of-run report: a human table, JSON and CSV with the same figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::fleet::Fleet;
use crate::resources::Resources;

/// Percentiles of one interaction, in milliseconds.
#[derive(Debug, Clone, Serialize)]
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
    fn of(h: &Histogram<u64>) -> Percentiles {
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
#[derive(Debug, Clone, Serialize)]
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
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
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
    /// CPU and memory of the simulator's and the hub's processes (filled in by the run).
    pub resources: Resources,
}

impl Report {
    /// The report of `fleet`'s run over a measured period of `duration_s`.
    pub fn build(fleet: &Fleet, duration_s: f64) -> Report {
        let s = &fleet.stats;
        let things = fleet.slots.len();
        let connected = s.ever_connected.get();
        let unconverged = fleet
            .slots
            .iter()
            .filter(|slot| slot.pending_setpoint.load(Ordering::Relaxed) != 0)
            .count() as u64;
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
            connect_errors: s.connect_errors.snapshot(),
            protocol_errors: s.protocol_errors.snapshot(),
            ignored: s.ignored.snapshot(),
            latency: Latencies {
                connect: Percentiles::of(&s.connect.snapshot()),
                update_to_accepted: Percentiles::of(&s.update.snapshot()),
                telemetry_ack: Percentiles::of(&s.telemetry_ack.snapshot()),
                convergence: Percentiles::of(&s.convergence.snapshot()),
                method_rtt: Percentiles::of(&s.method_rtt.snapshot()),
                ntp_rtt: Percentiles::of(&s.ntp_rtt.snapshot()),
                ota_job: Percentiles::of(&s.ota_job.snapshot()),
                lost_to_resync: Percentiles::of(&s.resync.snapshot()),
            },
            churn: fleet.scenario.profile.churn_per_s > 0.0,
            resources: Resources::default(),
        }
    }

    /// Whether the run met its contract: every thing connected; every update accepted, in order;
    /// every desired change converged; every method call answered by the device; every NTP
    /// exchange answered; every QoS 1 telemetry message acknowledged; no protocol error. With
    /// churn, requests cut by a dropped connection (and method calls meeting an offline thing)
    /// are allowed.
    pub fn is_clean(&self) -> bool {
        let cut_ok = self.churn;
        self.connect_failures == 0
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

    fn rows(&self) -> [(&'static str, &Percentiles); 8] {
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
        ]
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut line = |name: &str, value: String| {
            let _ = writeln!(s, "{name:<18}{value}");
        };
        line(
            "things",
            format!(
                "{} ({} connected, {} failed; {} reconnects, {} churned, {} lost)",
                self.things,
                self.connected,
                self.connect_failures,
                self.reconnects,
                self.churned,
                self.lost
            ),
        );
        line(
            "updates",
            format!(
                "{} sent, {} accepted ({:.0}/s over {:.1} s), {} unanswered, {} aborted",
                self.sent,
                self.accepted,
                self.accepted_per_sec,
                self.duration_s,
                self.unanswered,
                self.aborted
            ),
        );
        line("rejected", format!("{:?}", self.rejected));
        line("out of order", self.out_of_order.to_string());
        line("throttled ticks", self.throttled.to_string());
        line(
            "desired changes",
            format!(
                "{} sent, {} converged, {} unconverged, errors {:?}",
                self.desired_sent, self.converged, self.unconverged, self.desired_errors
            ),
        );
        line(
            "method calls",
            format!(
                "{} made, {} ok, device codes {:?}, errors {:?}",
                self.method_calls, self.method_ok, self.method_device_codes, self.method_errors
            ),
        );
        line(
            "ntp",
            format!(
                "{} started, {} done, {} timed out",
                self.ntp_started, self.ntp_done, self.ntp_timed_out
            ),
        );
        line(
            "telemetry",
            format!(
                "{} sent, {} acked (QoS 1), {} unacked",
                self.telemetry_sent, self.telemetry_acked, self.telemetry_unacked
            ),
        );
        line(
            "ota",
            format!(
                "{} jobs, {} ended, tasks {:?}, {} tasks received, results sent {:?}, errors {:?}",
                self.ota_jobs,
                self.ota_jobs_ended,
                self.ota_task_states,
                self.ota_tasks,
                self.ota_results,
                self.ota_job_errors
            ),
        );
        line("connect errors", format!("{:?}", self.connect_errors));
        line("protocol errors", format!("{:?}", self.protocol_errors));
        line("ignored", format!("{:?}", self.ignored));
        for (name, value) in self.resources.lines() {
            line(name, value);
        }
        let _ = writeln!(
            s,
            "{:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "interaction (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in self.rows() {
            let _ = writeln!(
                s,
                "{:<22}{:>9}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
                name, p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            );
        }
        s
    }

    /// The latency rows and counters as CSV: `metric,count,p50_ms,p90_ms,p99_ms,p999_ms,max_ms`
    /// (counters fill `count` only).
    pub fn csv(&self) -> String {
        let mut s = String::from("metric,count,p50_ms,p90_ms,p99_ms,p999_ms,max_ms\n");
        for (name, p) in self.rows() {
            let _ = writeln!(
                s,
                "{},{},{:.3},{:.3},{:.3},{:.3},{:.3}",
                name.replace(' ', "_"),
                p.count,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.p999_ms,
                p.max_ms
            );
        }
        let counters = [
            ("things", self.things as u64),
            ("connected", self.connected),
            ("connect_failures", self.connect_failures),
            ("reconnects", self.reconnects),
            ("churned", self.churned),
            ("lost", self.lost),
            ("updates_sent", self.sent),
            ("updates_accepted", self.accepted),
            ("updates_rejected", self.rejected.values().sum()),
            ("updates_unanswered", self.unanswered),
            ("updates_aborted", self.aborted),
            ("out_of_order", self.out_of_order),
            ("desired_sent", self.desired_sent),
            ("converged", self.converged),
            ("unconverged", self.unconverged),
            ("method_calls", self.method_calls),
            ("method_ok", self.method_ok),
            ("method_errors", self.method_errors.values().sum()),
            ("ntp_done", self.ntp_done),
            ("ntp_timed_out", self.ntp_timed_out),
            ("telemetry_sent", self.telemetry_sent),
            ("telemetry_acked", self.telemetry_acked),
            ("telemetry_unacked", self.telemetry_unacked),
            ("ota_jobs", self.ota_jobs),
            ("ota_jobs_ended", self.ota_jobs_ended),
            ("protocol_errors", self.protocol_errors.values().sum()),
        ];
        for (name, v) in counters {
            let _ = writeln!(s, "{name},{v},,,,,");
        }
        for (name, v) in self.resources.counters() {
            let _ = writeln!(s, "{name},{v},,,,,");
        }
        s
    }
}
