//! The optional Prometheus endpoint of a run (`--metrics-addr`): `GET /metrics` in the
//! Prometheus text exposition format (version 0.0.4), with the live counters of the progress
//! line and more (errors by kind, rejections by code), a summary per interaction (quantiles
//! from the run's HdrHistograms), the run's phase, and the CPU and memory of the simulator's and
//! the hub's processes.
//!
//! Rendered by hand like the hub's own `/metrics` (`hub/src/metrics.rs`): the format is a few
//! lines of text and every figure already lives in [`crate::stats::Stats`], so a metrics
//! registry would only copy them. Served by axum, the hub's HTTP stack.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;

use crate::fleet::{Fleet, Phase};
use crate::resources;
use crate::shard::Shard;

mod text;

use text::Writer;

/// Content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Quantiles of every latency summary.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

struct Shared {
    fleet: OnceLock<Arc<Fleet>>,
    hub_pid: Option<u32>,
    shard: Shard,
}

/// A running `/metrics` endpoint; it stops when dropped.
pub struct Exporter {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Binds `addr` (port 0 picks a free one) and serves at once: until [`Exporter::attach`]
    /// the run is shown as provisioning. `hub_pid` adds the hub process's CPU and memory; every
    /// sample of a sharded run is labelled `shard="I/N"`.
    pub async fn start(
        addr: SocketAddr,
        hub_pid: Option<u32>,
        shard: Shard,
    ) -> anyhow::Result<Exporter> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fleet: OnceLock::new(),
            hub_pid,
            shard,
        });
        let app = Router::new()
            .route("/metrics", get(scrape))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("metrics endpoint: {e}");
            }
        });
        Ok(Exporter { addr, shared, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shows `fleet`'s figures from now on (once its things are about to start).
    pub fn attach(&self, fleet: Arc<Fleet>) {
        let _ = self.shared.fleet.set(fleet);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scrape(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = render(
        shared.fleet.get().map(|f| &**f),
        shared.hub_pid,
        shared.shard,
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}

/// Every metric as Prometheus text: the phase and processes always, the fleet's figures once
/// there is a fleet.
pub fn render(fleet: Option<&Fleet>, hub_pid: Option<u32>, shard: Shard) -> String {
    let mut w = Writer {
        out: String::with_capacity(8 * 1024),
        shard: if shard.is_whole() {
            String::new()
        } else {
            shard.to_string()
        },
    };
    let phase = match fleet.map(|f| *f.phase.borrow()) {
        None => "provisioning",
        Some(Phase::Ramp) => "ramp",
        Some(Phase::Measure { .. }) => "measure",
        Some(Phase::Stop) => "stop",
    };
    w.header(
        "iothub_sim_phase",
        "The run's phase: 1 for the current one.",
        "gauge",
    );
    for p in ["provisioning", "ramp", "measure", "stop"] {
        w.sample("iothub_sim_phase", &[("phase", p)], u64::from(p == phase));
    }
    processes(&mut w, hub_pid);
    if let Some(fleet) = fleet {
        fleet_metrics(&mut w, fleet);
    }
    w.out
}

/// A per-process metric: name, help, type, and its value in a sample.
type ProcessFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&resources::Sample) -> f64,
);

fn processes(w: &mut Writer, hub_pid: Option<u32>) {
    let mut procs = vec![("simulator", resources::sample(None))];
    if let Some(pid) = hub_pid {
        procs.push(("hub", resources::sample(Some(pid))));
    }
    let procs: Vec<_> = procs
        .into_iter()
        .filter_map(|(name, s)| Some((name, s?)))
        .collect();
    let families: [ProcessFamily; 3] = [
        (
            "iothub_sim_process_cpu_seconds_total",
            "User and system CPU seconds of the process.",
            "counter",
            |s| s.cpu_s,
        ),
        (
            "iothub_sim_process_resident_memory_bytes",
            "Resident memory of the process (VmRSS).",
            "gauge",
            |s| s.rss_bytes as f64,
        ),
        (
            "iothub_sim_process_peak_resident_memory_bytes",
            "Peak resident memory of the process (VmHWM).",
            "gauge",
            |s| s.peak_rss_bytes as f64,
        ),
    ];
    for (name, help, kind, value) in families {
        w.header(name, help, kind);
        for (process, s) in &procs {
            w.sample(name, &[("process", process)], value(s));
        }
    }
}

fn fleet_metrics(w: &mut Writer, fleet: &Fleet) {
    let s = &fleet.stats;
    w.gauge(
        "iothub_sim_things",
        "Virtual things in the run.",
        fleet.slots.len() as u64,
    );
    w.gauge(
        "iothub_sim_connected_things",
        "Things connected and subscribed now.",
        s.connected.get(),
    );
    w.gauge(
        "iothub_sim_ever_connected_things",
        "Things that connected at least once.",
        s.ever_connected.get(),
    );
    let counters = [
        (
            "iothub_sim_reconnects_total",
            "Connections made again after a thing's first.",
            s.reconnects.get(),
        ),
        (
            "iothub_sim_churned_total",
            "Connections dropped on purpose (churn).",
            s.churned.get(),
        ),
        (
            "iothub_sim_connections_lost_total",
            "Connections lost without being asked to.",
            s.lost.get(),
        ),
        (
            "iothub_sim_updates_sent_total",
            "Shadow updates sent.",
            s.updates_sent.get(),
        ),
        (
            "iothub_sim_updates_accepted_total",
            "Shadow updates accepted.",
            s.updates_accepted.get(),
        ),
        (
            "iothub_sim_updates_timed_out_total",
            "Shadow updates unanswered on a live connection.",
            s.updates_timed_out.get(),
        ),
        (
            "iothub_sim_updates_aborted_total",
            "Shadow updates whose connection ended before the answer.",
            s.updates_aborted.get(),
        ),
        (
            "iothub_sim_out_of_order_total",
            "Accepted versions not above the last one the thing saw.",
            s.out_of_order.get(),
        ),
        (
            "iothub_sim_throttled_total",
            "Update ticks skipped at max_in_flight.",
            s.throttled.get(),
        ),
        (
            "iothub_sim_deltas_total",
            "Deltas received by things.",
            s.deltas.get(),
        ),
        (
            "iothub_sim_desired_sent_total",
            "Desired changes sent over REST.",
            s.desired_sent.get(),
        ),
        (
            "iothub_sim_desired_converged_total",
            "Desired changes whose reported state matched.",
            s.converged.get(),
        ),
        (
            "iothub_sim_method_calls_total",
            "Method calls made over REST.",
            s.rest_calls.get(),
        ),
        (
            "iothub_sim_method_calls_ok_total",
            "Method calls answered 200 by the device.",
            s.rest_call_ok.get(),
        ),
        (
            "iothub_sim_method_calls_received_total",
            "Method calls the things received.",
            s.method_calls.get(),
        ),
        (
            "iothub_sim_method_answers_sent_total",
            "Method answers the things sent.",
            s.method_answers.get(),
        ),
        (
            "iothub_sim_ntp_started_total",
            "NTP exchanges started.",
            s.ntp_started.get(),
        ),
        (
            "iothub_sim_ntp_done_total",
            "NTP exchanges finished.",
            s.ntp_done.get(),
        ),
        (
            "iothub_sim_ntp_timed_out_total",
            "NTP exchanges that timed out.",
            s.ntp_timed_out.get(),
        ),
        (
            "iothub_sim_telemetry_sent_total",
            "Telemetry messages sent.",
            s.telemetry_sent.get(),
        ),
        (
            "iothub_sim_ota_tasks_received_total",
            "OTA tasks received by things.",
            s.ota_tasks.get(),
        ),
        (
            "iothub_sim_ota_jobs_total",
            "OTA jobs created over REST.",
            s.ota_jobs.get(),
        ),
        (
            "iothub_sim_ota_jobs_ended_total",
            "OTA jobs whose every task ended.",
            s.ota_jobs_ended.get(),
        ),
        (
            "iothub_sim_business_skipped_total",
            "Business ticks skipped (concurrency bound or no free thing).",
            s.business_skipped.get(),
        ),
        (
            "iothub_sim_provision_attempts_total",
            "First boot: claim connections attempted, retries included.",
            s.provision_attempts.get(),
        ),
        (
            "iothub_sim_provisioned_total",
            "First boot: things provisioned.",
            s.provision_accepted.get(),
        ),
        (
            "iothub_sim_provision_retries_total",
            "First boot: attempts made again after a retryable outcome.",
            s.provision_retries.get(),
        ),
        (
            "iothub_sim_first_reports_total",
            "First boot: first reports accepted.",
            s.first_reports.get(),
        ),
    ];
    for (name, help, v) in counters {
        w.counter(name, help, v);
    }
    let kinds = [
        (
            "iothub_sim_connect_errors_total",
            "Failed connection attempts and lost connections, by kind.",
            "kind",
            &s.connect_errors,
        ),
        (
            "iothub_sim_protocol_errors_total",
            "Protocol errors, by kind (never expected).",
            "kind",
            &s.protocol_errors,
        ),
        (
            "iothub_sim_ignored_total",
            "Messages the device core dropped as late or stale, by kind.",
            "kind",
            &s.ignored,
        ),
        (
            "iothub_sim_updates_rejected_total",
            "Shadow updates rejected, by code.",
            "code",
            &s.updates_rejected,
        ),
        (
            "iothub_sim_desired_errors_total",
            "Desired changes that failed at the REST level, by kind.",
            "kind",
            &s.desired_errors,
        ),
        (
            "iothub_sim_method_call_errors_total",
            "Method calls that failed at the REST level, by kind.",
            "kind",
            &s.rest_call_errors,
        ),
        (
            "iothub_sim_method_call_device_codes_total",
            "Method calls answered with a device code other than 200, by code.",
            "code",
            &s.rest_call_device_codes,
        ),
        (
            "iothub_sim_ota_results_total",
            "OTA results sent by things, by status.",
            "status",
            &s.ota_results,
        ),
        (
            "iothub_sim_ota_job_errors_total",
            "OTA job errors, by kind.",
            "kind",
            &s.ota_job_errors,
        ),
        (
            "iothub_sim_provision_rejected_total",
            "First boot: provisioning answers `rejected`, by code (429 and 503 are retried).",
            "code",
            &s.provision_rejected,
        ),
        (
            "iothub_sim_provision_errors_total",
            "First boot: claim connections that ended without an answer, by kind.",
            "kind",
            &s.provision_errors,
        ),
        (
            "iothub_sim_provision_failed_total",
            "First boot: things that gave up provisioning, by reason.",
            "reason",
            &s.provision_failed,
        ),
    ];
    for (name, help, label, k) in kinds {
        w.kinds(name, help, label, &k.snapshot());
    }
    let name = "iothub_sim_latency_seconds";
    w.header(
        name,
        "Latency per interaction (HdrHistogram; _sum is count x mean).",
        "summary",
    );
    for (interaction, l) in s.latencies() {
        w.summary(name, interaction, &l.snapshot());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    use super::*;
    use crate::scenario::Scenario;

    fn fleet() -> (Arc<Fleet>, watch::Sender<Phase>) {
        let mut scenario = Scenario::default();
        scenario.population.count = 10;
        let (tx, rx) = watch::channel(Phase::Ramp);
        let addr = "127.0.0.1:1883".parse().expect("addr");
        (Arc::new(Fleet::new(scenario, addr, rx)), tx)
    }

    /// The value of the sample line that starts with `series ` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn assert_well_formed(text: &str) {
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, v) = line.rsplit_once(' ').expect("name and value");
            assert!(v.parse::<f64>().is_ok(), "value of {line:?}");
            assert!(series.starts_with("iothub_sim_"), "{line:?}");
            assert_eq!(series.contains('{'), series.ends_with('}'), "{line:?}");
        }
    }

    #[test]
    fn renders_live_counters_kinds_and_summaries() {
        let (fleet, phase) = fleet();
        let s = &fleet.stats;
        s.connected.inc();
        s.connected.inc();
        s.updates_sent.inc();
        s.updates_accepted.inc();
        s.updates_rejected.add("429");
        s.connect_errors.add("refused \"bad\" \\ x");
        for ms in 1..=100 {
            s.update.record(Duration::from_millis(ms));
        }
        let _ = phase.send(Phase::Stop);
        let text = render(Some(&fleet), None, Shard::default());
        assert_well_formed(&text);
        assert_eq!(value(&text, "iothub_sim_things"), Some(10.0));
        assert_eq!(value(&text, "iothub_sim_connected_things"), Some(2.0));
        assert_eq!(value(&text, "iothub_sim_updates_accepted_total"), Some(1.0));
        assert_eq!(
            value(&text, "iothub_sim_updates_rejected_total{code=\"429\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "iothub_sim_connect_errors_total{kind=\"refused \\\"bad\\\" \\\\ x\"}"
            ),
            Some(1.0)
        );
        assert_eq!(value(&text, "iothub_sim_phase{phase=\"stop\"}"), Some(1.0));
        assert_eq!(value(&text, "iothub_sim_phase{phase=\"ramp\"}"), Some(0.0));
        let p50 = value(
            &text,
            "iothub_sim_latency_seconds{interaction=\"update_to_accepted\",quantile=\"0.5\"}",
        )
        .expect("p50");
        assert!((0.049..=0.051).contains(&p50), "{p50}");
        assert_eq!(
            value(
                &text,
                "iothub_sim_latency_seconds_count{interaction=\"update_to_accepted\"}"
            ),
            Some(100.0)
        );
        // An empty summary has NaN quantiles.
        assert!(text.contains(
            "iothub_sim_latency_seconds{interaction=\"ota_job\",quantile=\"0.99\"} NaN\n"
        ));
        // Every histogram of the stats is exported, QoS 1 telemetry included.
        for (interaction, _) in crate::stats::Stats::default().latencies() {
            assert!(
                text.contains(&format!(
                    "iothub_sim_latency_seconds_count{{interaction=\"{interaction}\"}}"
                )),
                "{interaction} missing"
            );
        }
        #[cfg(target_os = "linux")]
        assert!(
            value(
                &text,
                "iothub_sim_process_resident_memory_bytes{process=\"simulator\"}"
            )
            .is_some_and(|b| b > 0.0)
        );
    }

    #[test]
    fn labels_every_sample_with_the_shard() {
        let (fleet, _phase) = fleet();
        fleet.stats.updates_accepted.inc();
        let text = render(Some(&fleet), None, Shard { index: 1, count: 3 });
        assert_well_formed(&text);
        assert_eq!(
            value(&text, "iothub_sim_updates_accepted_total{shard=\"1/3\"}"),
            Some(1.0)
        );
        assert!(
            value(&text, "iothub_sim_phase{phase=\"ramp\",shard=\"1/3\"}").is_some(),
            "{text}"
        );
        let samples = text.lines().filter(|l| !l.starts_with('#'));
        for line in samples {
            assert!(line.contains("shard=\"1/3\""), "{line}");
        }
    }

    #[tokio::test]
    async fn serves_the_text_over_http() {
        let exporter =
            Exporter::start("127.0.0.1:0".parse().expect("addr"), None, Shard::default())
                .await
                .expect("bind");
        let get = || async {
            let mut conn = tokio::net::TcpStream::connect(exporter.local_addr())
                .await
                .expect("connect");
            conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut text))
                .await
                .expect("answered in time")
                .expect("read");
            text
        };
        let before = get().await;
        assert!(before.starts_with("HTTP/1.1 200"), "{before}");
        assert!(before.contains("text/plain; version=0.0.4"), "{before}");
        assert!(before.contains("iothub_sim_phase{phase=\"provisioning\"} 1\n"));
        assert!(!before.contains("iothub_sim_connected_things"));
        let (fleet, _phase) = fleet();
        fleet.stats.connected.inc();
        exporter.attach(fleet);
        let after = get().await;
        assert!(
            after.contains("iothub_sim_phase{phase=\"ramp\"} 1\n"),
            "{after}"
        );
        assert!(after.contains("iothub_sim_connected_things 1\n"), "{after}");
    }
}
