//! What a run measures, shared by every virtual thing and the business side: counters read live
//! by the progress line, and one HdrHistogram per interaction (behind a mutex: a few thousand
//! samples per second, so contention is negligible, and no thing holds a histogram of its own).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency histogram in µs: 1 µs .. 10 min at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// A histogram to record into from many tasks, with a second one for the current window of the
/// time series (taken and reset every second by [`crate::series`]).
#[derive(Debug)]
pub struct Latency(Mutex<[Histogram<u64>; 2]>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Mutex::new([histogram(), histogram()]))
    }
}

impl Latency {
    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Ok(mut h) = self.0.lock() {
            for h in h.iter_mut() {
                let _ = h.record(us);
            }
        }
    }

    /// A copy of the histogram of the whole run.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.0
            .lock()
            .map(|h| h[0].clone())
            .unwrap_or_else(|_| histogram())
    }

    /// The samples since the last call (or the start), and a fresh window.
    pub fn take_window(&self) -> Histogram<u64> {
        self.0
            .lock()
            .map(|mut h| std::mem::replace(&mut h[1], histogram()))
            .unwrap_or_else(|_| histogram())
    }
}

/// Counts by a textual kind (error kinds, rejection codes, HTTP statuses).
#[derive(Debug, Default)]
pub struct Kinds(Mutex<BTreeMap<String, u64>>);

impl Kinds {
    /// Adds one of `kind`.
    pub fn add(&self, kind: impl Into<String>) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(kind.into()).or_default() += 1;
        }
    }

    /// Adds `n` of `kind`.
    pub fn add_n(&self, kind: impl Into<String>, n: u64) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(kind.into()).or_default() += n;
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

/// A counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything counted during a run.
#[derive(Debug, Default)]
pub struct Stats {
    /// Things connected (CONNACK accepted and every SUBACK received) right now.
    pub connected: Counter,
    /// Things that connected at least once.
    pub ever_connected: Counter,
    /// Things whose first connection attempt sequence ended (connected or gave up).
    pub first_done: Counter,
    /// Successful connections after the first one of a thing.
    pub reconnects: Counter,
    /// Connections dropped on purpose (churn).
    pub churned: Counter,
    /// Connections lost without being asked to (errors, hub closed them).
    pub lost: Counter,
    /// Failed connection attempts by kind.
    pub connect_errors: Kinds,
    /// Protocol errors by kind (malformed packets, unexpected packets, refused subscriptions,
    /// MQTT 5 PUBACK failures): always a defect of the hub or the simulator.
    pub protocol_errors: Kinds,
    /// Messages the device core dropped (its `Ignored` reasons), by kind.
    pub ignored: Kinds,
    /// Reported-state updates sent.
    pub updates_sent: Counter,
    /// ... accepted.
    pub updates_accepted: Counter,
    /// ... rejected, by code.
    pub updates_rejected: Kinds,
    /// ... timed out while the connection stayed up.
    pub updates_timed_out: Counter,
    /// ... lost with a connection (churn or error), outcome unknown.
    pub updates_aborted: Counter,
    /// Accepted versions not greater than the last version the thing saw.
    pub out_of_order: Counter,
    /// Update (or QoS 1 telemetry) ticks skipped because the thing had `max_in_flight`
    /// unanswered.
    pub throttled: Counter,
    /// Deltas received (the core hands over only newer ones).
    pub deltas: Counter,
    /// Method calls received by things.
    pub method_calls: Counter,
    /// Method calls answered by things.
    pub method_answers: Counter,
    /// NTP exchanges started, finished, timed out.
    pub ntp_started: Counter,
    /// NTP exchanges finished.
    pub ntp_done: Counter,
    /// NTP exchanges that timed out.
    pub ntp_timed_out: Counter,
    /// Telemetry messages sent.
    pub telemetry_sent: Counter,
    /// QoS 1 telemetry messages the hub acknowledged (PUBACK, success).
    pub telemetry_acked: Counter,
    /// QoS 1 telemetry messages without a successful PUBACK: lost with their connection, still
    /// open when the thing stopped, or refused (MQTT 5 reason >= 0x80, also a protocol error).
    pub telemetry_unacked: Counter,
    /// OTA tasks received by things.
    pub ota_tasks: Counter,
    /// OTA results sent by things, by status.
    pub ota_results: Kinds,
    /// Business: OTA jobs created.
    pub ota_jobs: Counter,
    /// Business: OTA jobs whose every task ended.
    pub ota_jobs_ended: Counter,
    /// Business: final states of the tasks of ended jobs, by state.
    pub ota_task_states: Kinds,
    /// Business: OTA job errors (REST, or not ended in time), by kind.
    pub ota_job_errors: Kinds,
    /// Business: desired changes sent (REST PUT).
    pub desired_sent: Counter,
    /// Business: desired changes whose reported state matched (converged).
    pub converged: Counter,
    /// Business: REST errors of desired changes, by kind.
    pub desired_errors: Kinds,
    /// Business: method calls made (REST).
    pub rest_calls: Counter,
    /// Business: method calls answered 200 by the device.
    pub rest_call_ok: Counter,
    /// Business: method calls answered with another device code (e.g. injected 500s), by code.
    pub rest_call_device_codes: Kinds,
    /// Business: method calls that failed at the REST level (504, 409, transport), by kind.
    pub rest_call_errors: Kinds,
    /// Business: things whose report of the configuration rollout's value was accepted.
    pub rollout_converged: Counter,
    /// Business: configuration rollout errors (REST, not converged in time), by kind.
    pub rollout_errors: Kinds,
    /// Business: method job errors (REST, not completed in time, counts not adding up), by kind.
    pub method_job_errors: Kinds,
    /// Business: what the fleet operations found (filled in when each ends).
    pub fleet_ops: Mutex<crate::fleet_ops::FleetOps>,
    /// Business: ticks skipped because `business.concurrency` requests were in flight.
    pub business_skipped: Counter,
    /// First boot: claim connections attempted (every retry included).
    pub provision_attempts: Counter,
    /// First boot: things provisioned (`accepted` received).
    pub provision_accepted: Counter,
    /// First boot: `rejected` answers by code (429 and 503 are retried).
    pub provision_rejected: Kinds,
    /// First boot: attempts that ended without an answer (connect, handshake, timeout), by kind.
    pub provision_errors: Kinds,
    /// First boot: attempts made again after a retryable outcome.
    pub provision_retries: Counter,
    /// First boot: things that gave up (a final refusal, or the deadline), by reason.
    pub provision_failed: Kinds,
    /// First boot: first reports accepted (one per provisioned thing).
    pub first_reports: Counter,
    /// First boot: first reports that failed (rejected, unanswered), by kind.
    pub first_report_errors: Kinds,
    /// Connect + subscribe time (TCP connect to the last SUBACK).
    pub connect: Latency,
    /// Update publish to `update/accepted`.
    pub update: Latency,
    /// QoS 1 telemetry PUBLISH written to its PUBACK read.
    pub telemetry_ack: Latency,
    /// REST desired PUT to the thing's matching reported state accepted.
    pub convergence: Latency,
    /// REST method call to REST reply.
    pub method_rtt: Latency,
    /// NTP request to the device core's result (one sample).
    pub ntp_rtt: Latency,
    /// A lost connection (not churn) to the shadow document after the reconnect.
    pub resync: Latency,
    /// OTA job creation (REST) to every task ended.
    pub ota_job: Latency,
    /// First boot: the first claim CONNECT to `accepted` (retries and their backoff included).
    pub provision: Latency,
    /// First boot: the first claim CONNECT to the thing's first accepted shadow update.
    pub first_report: Latency,
    /// Configuration rollout: the configuration's creation to the thing's report of its value
    /// accepted (one sample per thing).
    pub rollout: Latency,
    /// Method job: the job's start to the thing's record ended `succeeded` (hub timestamps, one
    /// sample per thing).
    pub job_thing: Latency,
    /// Method job: a thing's first attempt to its record's end, for calls the device answered
    /// (`succeeded` or `failed`; hub timestamps).
    pub job_call: Latency,
    /// Things still to finish (for the end of the run).
    pub running: Counter,
    /// Set when the measured period has begun.
    pub measuring: AtomicBool,
    /// The per-second time series of the run (see [`crate::series`]).
    pub series: Mutex<Vec<crate::series::Point>>,
}

impl Stats {
    /// Errors so far, as the progress line and the time series count them: protocol errors,
    /// rejected and unanswered updates, failed connection attempts, REST errors of the business
    /// side (fleet operations too), things that gave up provisioning and failed first reports
    /// (429 and 503 answers to a provisioning are back-pressure, retried, not errors).
    pub fn errors(&self) -> u64 {
        self.provision_failed.total()
            + self.first_report_errors.total()
            + self.protocol_errors.total()
            + self.updates_rejected.total()
            + self.updates_timed_out.get()
            + self.connect_errors.total()
            + self.desired_errors.total()
            + self.rest_call_errors.total()
            + self.ota_job_errors.total()
            + self.rollout_errors.total()
            + self.method_job_errors.total()
    }

    /// Connections made so far (first ones and reconnects).
    pub fn connections(&self) -> u64 {
        self.ever_connected.get() + self.reconnects.get()
    }

    /// Every latency histogram with its interaction id (`snake_case`, as the metrics endpoint
    /// labels it): one list, so an interaction added here is exported everywhere.
    pub fn latencies(&self) -> [(&'static str, &Latency); 13] {
        [
            ("connect", &self.connect),
            ("update_to_accepted", &self.update),
            ("telemetry_ack", &self.telemetry_ack),
            ("convergence", &self.convergence),
            ("method_rtt", &self.method_rtt),
            ("ntp_rtt", &self.ntp_rtt),
            ("ota_job", &self.ota_job),
            ("lost_to_resync", &self.resync),
            ("provision", &self.provision),
            ("first_report", &self.first_report),
            ("rollout", &self.rollout),
            ("job_thing", &self.job_thing),
            ("job_call", &self.job_call),
        ]
    }
}
