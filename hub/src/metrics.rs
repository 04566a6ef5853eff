//! Hub metrics: lock-free counters and gauges, rendered by hand in the Prometheus text
//! exposition format (version 0.0.4) at `GET /metrics` (S-9.7).
//!
//! Every service gets an `Arc<Metrics>` and calls the `inc_*`/`set_*`/`observe_*` methods on its
//! hot path; each is a few relaxed atomic operations (ordering between counters does not matter
//! for metrics).
//!
//! [`Metrics::render`] is the one list of the hub's metrics. Names follow Prometheus' conventions:
//! units in the name (`_seconds`, `_bytes`), `_total` on counters, `process_*` as client
//! libraries export them. `docs/grafana/iothub.json` is a dashboard built on them.

pub mod histogram;
pub mod process;
mod routes;

pub use routes::RouteCounters;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use iothub_spec::code::SyncEventKind;

use histogram::{FAST_SECONDS, Histogram, HistogramSample, ROUND_TRIP_SECONDS};

/// The `route` label of HTTP requests that matched no route (their paths are not labels: any
/// client could create unbounded label values with them).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Shadow error codes that get their own `code` label (S-3.8); any other code is counted as
/// `code="other"`.
/// The `outcome` labels of `iothub_provisioning_requests_total` (D-46).
pub const PROVISIONING_OUTCOMES: [&str; 6] = [
    "accepted",
    "bad_request",
    "forbidden",
    "conflict",
    "busy",
    "unavailable",
];

const SHADOW_CODES: [u16; 10] = [400, 403, 404, 409, 413, 415, 429, 500, 503, 504];

/// What the console's metrics page plots ([`Metrics::chart_sample`]); the page turns counters
/// into rates and bucket differences into percentiles between two samples.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChartSample {
    /// `iothub_connected_things`.
    pub connected_things: i64,
    /// `iothub_shadow_updates_accepted_total`.
    pub shadow_updates_accepted_total: u64,
    /// `iothub_mqtt_messages_in_total`.
    pub mqtt_messages_in_total: u64,
    /// `iothub_shadow_update_duration_seconds`.
    pub shadow_update_seconds: HistogramSample,
    /// `iothub_method_round_trip_seconds`.
    pub method_round_trip_seconds: HistogramSample,
}

/// The hub's counters, gauges and histograms.
#[derive(Debug)]
pub struct Metrics {
    connected_things: AtomicI64,
    mqtt_messages_in: AtomicU64,
    mqtt_messages_out: AtomicU64,
    mqtt_oversized_dropped: AtomicU64,
    mqtt_queue_full_dropped: AtomicU64,
    shadow_updates_retried: AtomicU64,
    shadow_updates_accepted: AtomicU64,
    shadow_updates_rejected: [AtomicU64; SHADOW_CODES.len()],
    shadow_updates_rejected_other: AtomicU64,
    group_commit_batches: AtomicU64,
    group_commit_writes: AtomicU64,
    method_invocations: AtomicU64,
    lifecycle_events: AtomicU64,
    /// Per [`PROVISIONING_OUTCOMES`].
    provisioning_requests: [AtomicU64; PROVISIONING_OUTCOMES.len()],
    /// Index 0 = 1xx … 4 = 5xx.
    rest_requests: [AtomicU64; 5],
    /// 1 while storage writes succeed (starts healthy).
    store_unhealthy: AtomicI64,
    store_write_failures: AtomicU64,
    /// (listener, reason) → connections refused. Bounded: both are static strings of the hub's
    /// own code (`crate::guard::refusals`), never taken from the network.
    connections_refused: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// MQTT shadow update: arrival at the shadow service to `update/accepted` (durable).
    shadow_update_seconds: Histogram,
    /// REST direct method call: request published to the device's answer.
    method_round_trip_seconds: Histogram,
    /// By route template (axum's `MatchedPath`): bounded by the router's table.
    http_request_seconds: DashMap<String, Histogram>,
    /// Configuration → counts of its things (S-11.2). Bounded by `MAX_CONFIGURATIONS`.
    configuration_things: Mutex<BTreeMap<String, crate::configurations::Counts>>,
    /// Job → things per state (S-12.3), for the jobs that have not ended.
    job_things: Mutex<BTreeMap<String, Vec<(iothub_spec::code::JobThingState, u64)>>>,
    /// Registry sync events (S-13.5), per [`SyncEventKind::ALL`].
    sync_events: [AtomicU64; SyncEventKind::ALL.len()],
    /// Registry sync tasks not yet done (S-13.4); -1 until first counted.
    sync_tasks_pending: AtomicI64,
    /// Route → its counters (S-14.5). Bounded by `routes::config::MAX_ROUTES`.
    routes: DashMap<String, Arc<RouteCounters>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connected_things: AtomicI64::default(),
            mqtt_messages_in: AtomicU64::default(),
            mqtt_messages_out: AtomicU64::default(),
            mqtt_oversized_dropped: AtomicU64::default(),
            mqtt_queue_full_dropped: AtomicU64::default(),
            shadow_updates_retried: AtomicU64::default(),
            shadow_updates_accepted: AtomicU64::default(),
            shadow_updates_rejected: Default::default(),
            shadow_updates_rejected_other: AtomicU64::default(),
            group_commit_batches: AtomicU64::default(),
            group_commit_writes: AtomicU64::default(),
            method_invocations: AtomicU64::default(),
            lifecycle_events: AtomicU64::default(),
            provisioning_requests: Default::default(),
            rest_requests: Default::default(),
            store_unhealthy: AtomicI64::default(),
            store_write_failures: AtomicU64::default(),
            shadow_update_seconds: Histogram::new(FAST_SECONDS),
            method_round_trip_seconds: Histogram::new(ROUND_TRIP_SECONDS),
            http_request_seconds: DashMap::new(),
            connections_refused: Mutex::default(),
            configuration_things: Mutex::default(),
            job_things: Mutex::default(),
            sync_events: Default::default(),
            sync_tasks_pending: AtomicI64::new(-1),
            routes: DashMap::new(),
        }
    }
}

impl Metrics {
    /// A fresh set of zeroed metrics, shared by the whole hub.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// A thing connected (presence).
    pub fn inc_connected(&self) {
        self.connected_things.fetch_add(1, Ordering::Relaxed);
    }

    /// A thing disconnected (presence).
    pub fn dec_connected(&self) {
        self.connected_things.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the connected-things gauge outright (e.g. 0 at start-up).
    pub fn set_connected(&self, n: u64) {
        self.connected_things
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// An MQTT PUBLISH from a thing or service user reached the hub.
    pub fn inc_mqtt_messages_in(&self) {
        self.mqtt_messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// The hub published a message (through the bus).
    pub fn inc_mqtt_messages_out(&self) {
        self.mqtt_messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery was discarded because it was larger than the MQTT 5 client's Maximum Packet
    /// Size (D-40).
    pub fn inc_mqtt_oversized_dropped(&self) {
        self.mqtt_oversized_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery was dropped because the receiving session's message queue was full; returns
    /// the count so far.
    pub fn inc_mqtt_queue_full_dropped(&self) -> u64 {
        self.mqtt_queue_full_dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A shadow update lost against another writer in the store and is applied again (D-85).
    pub fn inc_shadow_updates_retried(&self) {
        self.shadow_updates_retried.fetch_add(1, Ordering::Relaxed);
    }

    /// A shadow update was accepted (and durably stored).
    pub fn inc_shadow_update_accepted(&self) {
        self.shadow_updates_accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A shadow update was rejected with the S-3.8 `code`.
    pub fn inc_shadow_update_rejected(&self, code: u16) {
        match SHADOW_CODES.iter().position(|c| *c == code) {
            Some(i) => self.shadow_updates_rejected[i].fetch_add(1, Ordering::Relaxed),
            None => self
                .shadow_updates_rejected_other
                .fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The group committer committed one transaction holding `writes` shadow writes.
    pub fn inc_group_commit_batch(&self, writes: usize) {
        self.group_commit_batches.fetch_add(1, Ordering::Relaxed);
        self.group_commit_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
    }

    /// A direct method was invoked over REST.
    pub fn inc_method_invocation(&self) {
        self.method_invocations.fetch_add(1, Ordering::Relaxed);
    }

    /// A lifecycle event (S-8.3) was published.
    pub fn inc_lifecycle_event(&self) {
        self.lifecycle_events.fetch_add(1, Ordering::Relaxed);
    }

    /// A registry sync event was recorded (S-13.5).
    pub fn inc_sync_event(&self, kind: SyncEventKind) {
        if let Some(i) = SyncEventKind::ALL.iter().position(|k| *k == kind) {
            self.sync_events[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The registry sync tasks pending (S-13.4), as last counted.
    pub fn set_sync_tasks_pending(&self, n: u64) {
        self.sync_tasks_pending
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// A provisioning request (S-10) ended with `outcome`, one of [`PROVISIONING_OUTCOMES`]
    /// (anything else is not counted).
    pub fn inc_provisioning_request(&self, outcome: &str) {
        if let Some(i) = PROVISIONING_OUTCOMES.iter().position(|o| *o == outcome) {
            self.provisioning_requests[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A REST request was answered with HTTP `status`.
    pub fn inc_rest_request(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.rest_requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// An MQTT shadow update was accepted `elapsed` after it reached the shadow service.
    pub fn observe_shadow_update(&self, elapsed: Duration) {
        self.shadow_update_seconds.observe(elapsed);
    }

    /// A direct method's device answered `elapsed` after the call was published.
    pub fn observe_method_round_trip(&self, elapsed: Duration) {
        self.method_round_trip_seconds.observe(elapsed);
    }

    /// An HTTP request on `route` (a route template such as `/api/v1/things/:id`, or
    /// [`UNMATCHED_ROUTE`]) was answered after `elapsed`.
    pub fn observe_http_request(&self, route: &str, elapsed: Duration) {
        if let Some(h) = self.http_request_seconds.get(route) {
            h.observe(elapsed);
            return;
        }
        self.http_request_seconds
            .entry(route.to_owned())
            .or_insert_with(|| Histogram::new(FAST_SECONDS))
            .observe(elapsed);
    }

    /// Mirrors the store's write health (sampled when metrics are scraped).
    pub fn set_store_health(&self, report: &crate::store::health::HealthReport) {
        self.store_unhealthy
            .store(i64::from(!report.healthy), Ordering::Relaxed);
        self.store_write_failures
            .store(report.write_failures, Ordering::Relaxed);
    }

    /// A connection to `listener` (`mqtt`, `http`) was refused for `reason` (a cap, failed
    /// authentication); see `crate::guard::refusals::RefusalLog`.
    pub fn inc_connection_refused(&self, listener: &'static str, reason: &'static str) {
        *self
            .connections_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((listener, reason))
            .or_insert(0) += 1;
    }

    /// The current connected-things gauge.
    pub fn connected(&self) -> i64 {
        self.connected_things.load(Ordering::Relaxed)
    }

    /// The figures the console's metrics page plots, read now.
    pub fn chart_sample(&self) -> ChartSample {
        ChartSample {
            connected_things: self.connected().max(0),
            shadow_updates_accepted_total: self.shadow_updates_accepted.load(Ordering::Relaxed),
            mqtt_messages_in_total: self.mqtt_messages_in.load(Ordering::Relaxed),
            shadow_update_seconds: self.shadow_update_seconds.sample(),
            method_round_trip_seconds: self.method_round_trip_seconds.sample(),
        }
    }

    /// Replaces the per-configuration counts (after each configuration sweep).
    pub fn set_configuration_things(
        &self,
        counts: &BTreeMap<String, crate::configurations::Counts>,
    ) {
        *self
            .configuration_things
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = counts.clone();
    }

    /// Replaces the per-job counts (by the jobs engine, for the jobs that have not ended).
    pub fn set_job_things(
        &self,
        counts: BTreeMap<String, Vec<(iothub_spec::code::JobThingState, u64)>>,
    ) {
        *self
            .job_things
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = counts;
    }

    /// The counters of route `id`, created at zero on first use.
    pub fn route(&self, id: &str) -> Arc<RouteCounters> {
        self.routes.entry(id.to_owned()).or_default().clone()
    }

    /// Forgets route `id`'s counters (the route was deleted).
    pub fn remove_route(&self, id: &str) {
        self.routes.remove(id);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "iothub_connected_things",
            "Things with a live MQTT connection.",
            self.connected_things.load(Ordering::Relaxed).max(0),
        );
        counter(
            &mut out,
            "iothub_mqtt_messages_in_total",
            "MQTT PUBLISH packets received by the hub.",
            get(&self.mqtt_messages_in),
        );
        counter(
            &mut out,
            "iothub_mqtt_messages_out_total",
            "Messages published by the hub.",
            get(&self.mqtt_messages_out),
        );
        counter(
            &mut out,
            "iothub_mqtt_oversized_dropped_total",
            "Deliveries discarded as larger than the client's MQTT 5 Maximum Packet Size (D-40).",
            get(&self.mqtt_oversized_dropped),
        );
        counter(
            &mut out,
            "iothub_mqtt_queue_full_dropped_total",
            "Deliveries dropped because the receiving session's message queue was full (D-84).",
            get(&self.mqtt_queue_full_dropped),
        );
        counter(
            &mut out,
            "iothub_shadow_updates_retried_total",
            "Shadow updates applied again after losing against another writer in the store (D-85).",
            get(&self.shadow_updates_retried),
        );
        counter(
            &mut out,
            "iothub_shadow_updates_accepted_total",
            "Shadow updates accepted and durably stored.",
            get(&self.shadow_updates_accepted),
        );
        header(
            &mut out,
            "iothub_shadow_updates_rejected_total",
            "Shadow updates rejected, by S-3.8 code.",
            "counter",
        );
        for (code, n) in SHADOW_CODES.iter().zip(&self.shadow_updates_rejected) {
            let _ = writeln!(
                out,
                "iothub_shadow_updates_rejected_total{{code=\"{code}\"}} {}",
                get(n)
            );
        }
        let _ = writeln!(
            out,
            "iothub_shadow_updates_rejected_total{{code=\"other\"}} {}",
            get(&self.shadow_updates_rejected_other)
        );
        counter(
            &mut out,
            "iothub_group_commit_batches_total",
            "Shadow write transactions committed by the group committer.",
            get(&self.group_commit_batches),
        );
        counter(
            &mut out,
            "iothub_group_commit_writes_total",
            "Shadow writes committed by the group committer.",
            get(&self.group_commit_writes),
        );
        counter(
            &mut out,
            "iothub_method_invocations_total",
            "Direct methods invoked over REST.",
            get(&self.method_invocations),
        );
        counter(
            &mut out,
            "iothub_lifecycle_events_total",
            "Thing lifecycle events published (S-8.3).",
            get(&self.lifecycle_events),
        );
        header(
            &mut out,
            "iothub_provisioning_requests_total",
            "Provisioning requests over MQTT (S-10), by outcome (D-46).",
            "counter",
        );
        for (outcome, n) in PROVISIONING_OUTCOMES
            .iter()
            .zip(&self.provisioning_requests)
        {
            let _ = writeln!(
                out,
                "iothub_provisioning_requests_total{{outcome=\"{outcome}\"}} {}",
                get(n)
            );
        }
        gauge(
            &mut out,
            "iothub_store_healthy",
            "1 while storage writes succeed, 0 while they fail (see /healthz for why).",
            1 - self.store_unhealthy.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iothub_store_write_failures_total",
            "Storage write transactions that failed (each answered 503 to its callers).",
            get(&self.store_write_failures),
        );
        header(
            &mut out,
            "iothub_connections_refused_total",
            "Connections refused before being served (caps at accept, failed CONNECT \
             authentication), by listener and reason; the log has one summary line per 10 s.",
            "counter",
        );
        let refused = self
            .connections_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for ((listener, reason), n) in refused {
            // The log's reasons are prose ("bad credentials"); labels are snake_case.
            let reason = reason.replace([' ', '-'], "_");
            let _ = writeln!(
                out,
                "iothub_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} {n}"
            );
        }
        header(
            &mut out,
            "iothub_rest_requests_total",
            "REST requests answered, by status class.",
            "counter",
        );
        for (i, n) in self.rest_requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "iothub_rest_requests_total{{class=\"{}xx\"}} {}",
                i + 1,
                get(n)
            );
        }
        header(
            &mut out,
            "iothub_configuration_things",
            "Things of each configuration by status: targeted, applied, succeeded, failed, pending.",
            "gauge",
        );
        let configurations = self
            .configuration_things
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, n) in configurations {
            let name = escape_label(&name);
            for (status, v) in [
                ("targeted", n.targeted),
                ("applied", n.applied),
                ("succeeded", n.succeeded),
                ("failed", n.failed),
                ("pending", n.pending),
            ] {
                let _ = writeln!(
                    out,
                    "iothub_configuration_things{{configuration=\"{name}\",status=\"{status}\"}} {v}"
                );
            }
        }
        header(
            &mut out,
            "iothub_jobs_things",
            "Things of each job not yet ended, by state: queued, in_progress, succeeded, failed, timed_out, canceled.",
            "gauge",
        );
        let jobs = self
            .job_things
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (job, counts) in jobs {
            let job = escape_label(&job);
            for state in iothub_spec::code::JobThingState::ALL {
                let v = counts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                let _ = writeln!(
                    out,
                    "iothub_jobs_things{{job=\"{job}\",status=\"{}\"}} {v}",
                    state.as_str()
                );
            }
        }
        header(
            &mut out,
            "iothub_registry_sync_events_total",
            "Registry sync events recorded by this process (S-13.5), by kind.",
            "counter",
        );
        for (kind, n) in SyncEventKind::ALL.iter().zip(&self.sync_events) {
            let _ = writeln!(
                out,
                "iothub_registry_sync_events_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                get(n)
            );
        }
        let pending = self.sync_tasks_pending.load(Ordering::Relaxed);
        if pending >= 0 {
            gauge(
                &mut out,
                "iothub_registry_sync_tasks_pending",
                "Registry sync tasks waiting to reach the external registry (S-13.4).",
                pending,
            );
        }
        header(
            &mut out,
            "iothub_shadow_update_duration_seconds",
            "MQTT shadow updates from arrival to update/accepted (stored durably), in seconds.",
            "histogram",
        );
        self.shadow_update_seconds
            .render(&mut out, "iothub_shadow_update_duration_seconds", "");
        header(
            &mut out,
            "iothub_method_round_trip_seconds",
            "REST direct method calls until the device answered (any wait to connect included), in seconds.",
            "histogram",
        );
        self.method_round_trip_seconds
            .render(&mut out, "iothub_method_round_trip_seconds", "");
        header(
            &mut out,
            "iothub_http_request_duration_seconds",
            "HTTP requests by route template, from arrival to the response head, in seconds.",
            "histogram",
        );
        let mut routes: Vec<_> = self
            .http_request_seconds
            .iter()
            .map(|e| e.key().clone())
            .collect();
        routes.sort();
        for route in routes {
            if let Some(h) = self.http_request_seconds.get(&route) {
                let label = format!("route=\"{}\"", escape_label(&route));
                h.render(&mut out, "iothub_http_request_duration_seconds", &label);
            }
        }
        header(
            &mut out,
            "iothub_build_info",
            "Always 1; the labels say which build of the hub is running.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "iothub_build_info{{version=\"{}\",profile=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        );
        routes::render(&self.routes, &mut out);
        process::render(&mut out);
        out
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {v}");
}

#[cfg(test)]
mod tests;
