//! One run: create the things (or, on first boot, their enrollment), ramp them up, measure,
//! stop, report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fleet::{ClaimCredential, Fleet, Phase};
use crate::metrics::Exporter;
use crate::provision::Api;
use crate::report::Report;
use crate::report::Versions;
use crate::resources::{self, ProcessUsage, Readings, Resources, Sample};
use crate::scenario::Scenario;
use crate::shard::Shard;
use crate::{business, progress, series, thing};

/// The tag on every thing of a run: its value is `population.tag` (with `-{I}` in shard I) on
/// things created over REST; a first-boot run's enrollment puts the enrollment's id there,
/// besides the hub's own `serial` and `enrollment` tags (S-10.4). Fleet operations target it.
pub const SIMULATOR_TAG: &str = "simulator";

/// Longest wait, after the measured period, for desired changes still converging.
const CONVERGE_GRACE: Duration = Duration::from_secs(10);

/// Where the hub is.
#[derive(Debug, Clone)]
pub struct Target {
    /// MQTT address.
    pub mqtt: SocketAddr,
    /// REST API base URL.
    pub api: String,
    /// Admin token.
    pub token: String,
    /// TLS to the MQTT address (`--tls`), when the run uses it.
    pub tls: Option<TlsTarget>,
}

/// How the things reach the hub's MQTT over TLS listener.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// PEM file with the CA that signed the hub's certificate (workers read it again).
    pub ca_file: std::path::PathBuf,
    /// The name the hub's certificate must carry.
    pub server_name: String,
}

/// How to run, besides the scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// How to show progress.
    pub progress: progress::Mode,
    /// Interval of the plain progress lines.
    pub progress_every: Duration,
    /// The slice of the scenario's fleet this process runs.
    pub shard: Shard,
    /// Keep the things on the hub afterwards.
    pub keep: bool,
    /// The hub's process id when it runs on this machine (the embedded hub, or `--hub-pid`):
    /// its CPU and memory go into the report, the progress line and the metrics.
    pub hub_pid: Option<u32>,
    /// Serve Prometheus metrics on this address while running (port 0 picks one; the bound
    /// address is printed on stderr).
    pub metrics_addr: Option<SocketAddr>,
}

/// Aborts a background task when the run ends, however it ends (an interrupted run drops the
/// run's future).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    /// Aborts the task and waits until it has ended (and run its drop guards).
    async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Samples of the simulator's and the hub's processes at one point of the run.
fn sample_processes(hub_pid: Option<u32>) -> (Option<Sample>, Option<Sample>) {
    (
        resources::sample(None),
        hub_pid.and_then(|pid| resources::sample(Some(pid))),
    )
}

/// Runs `scenario` against `target` and returns the report.
pub async fn run(whole: Scenario, target: Target, options: Options) -> anyhow::Result<Report> {
    whole.validate()?;
    let (scenario, first) = options.shard.apply(&whole)?;
    let api = Arc::new(Api::new(&target.api, &target.token)?);
    let hub_version = api.hub_version().await;
    let count = scenario.population.count;
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let duration = Duration::from_secs_f64(scenario.duration_s);
    let settle = Duration::from_secs_f64(scenario.ramp.settle_s);
    let max_wait = Duration::from_secs_f64(scenario.ramp.max_wait_s);
    let mut fleet = Fleet::new(scenario, target.mqtt, phase_rx);
    if let Some(tls) = &target.tls {
        let ca = std::fs::read(&tls.ca_file)
            .with_context(|| format!("cannot read {}", tls.ca_file.display()))?;
        fleet.tls = Some(crate::thing::link::TlsClient::new(&ca, &tls.server_name)?);
    }
    fleet.shard = options.shard;
    fleet.first = first;
    fleet.hub_pid = options.hub_pid;
    let mut fleet = Arc::new(fleet);
    let label = if options.shard.is_whole() {
        String::new()
    } else {
        format!("shard {}", options.shard)
    };
    let exporter = match options.metrics_addr {
        Some(addr) => {
            let e = Exporter::start(addr, options.hub_pid, options.shard).await?;
            eprintln!("metrics: http://{}/metrics", e.local_addr());
            Some(e)
        }
        None => None,
    };
    let (mut sim, mut hub) = (Readings::default(), Readings::default());
    (sim.before, hub.before) = sample_processes(options.hub_pid);

    let colon = if label.is_empty() { "" } else { ": " };
    let (secrets, claim) = if fleet.scenario.population.first_boot {
        let enrollment = enrollment_id(&fleet.scenario, options.shard);
        eprintln!(
            "{label}{colon}creating enrollment {enrollment} for {count} first-boot things ..."
        );
        let tags = json!({ SIMULATOR_TAG: enrollment });
        let secret = api
            .create_enrollment(&enrollment, fleet.scenario.id_prefix(), tags)
            .await?;
        (Vec::new(), Some(ClaimCredential { enrollment, secret }))
    } else {
        eprintln!("{label}{colon}provisioning {count} things ...");
        let ids: Vec<String> = (0..count).map(|i| fleet.thing_id(i)).collect();
        let tags = json!({ SIMULATOR_TAG: fleet.tag() });
        (api.create_things(&ids, &tags).await?, None)
    };

    let ramp_began = Instant::now();
    // Re-base the connect schedule on now (provisioning took a while); no thing runs yet.
    match Arc::get_mut(&mut fleet) {
        Some(f) => {
            f.epoch = ramp_began;
            f.secrets = secrets;
            f.claim = claim;
        }
        None => bail!("the fleet is shared before its things start"),
    }
    if let Some(e) = &exporter {
        e.attach(fleet.clone());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        fleet.stats.running.inc();
        tasks.spawn(thing::run(fleet.clone(), i));
    }
    let sampler = AbortOnDrop(Some(tokio::spawn(series::run(fleet.clone(), ramp_began))));
    let progress = AbortOnDrop(Some(tokio::spawn(progress::run(
        fleet.clone(),
        ramp_began,
        options.progress,
        options.progress_every,
        label.clone(),
        options.hub_pid,
    ))));

    // Measure only once every thing has connected (or given up), so that connect work never
    // overlaps the measured period.
    let deadline = ramp_began + max_wait;
    while fleet.stats.first_done.get() < count as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = fleet.stats.ever_connected.get();
    eprintln!(
        "{label}{}{connected} of {count} things connected in {:.1} s; measuring for {:.0} s",
        if label.is_empty() { "" } else { ": " },
        ramp_began.elapsed().as_secs_f64(),
        duration.as_secs_f64()
    );
    let start = Instant::now() + settle;
    let end = start + duration;
    let _ = phase_tx.send(Phase::Measure { start, end });
    let sample_at_start = async {
        tokio::time::sleep_until(start).await;
        sample_processes(options.hub_pid)
    };
    ((sim.measure_start, hub.measure_start), ()) = tokio::join!(
        sample_at_start,
        business::run(fleet.clone(), api.clone(), start, end)
    );
    tokio::time::sleep_until(end).await;
    (sim.measure_end, hub.measure_end) = sample_processes(options.hub_pid);
    // A delta can reach its thing after the REST reply: give the last desired changes a
    // bounded moment to converge before the things stop.
    let grace = Instant::now() + CONVERGE_GRACE;
    while Instant::now() < grace
        && fleet
            .slots
            .iter()
            .any(|s| s.pending_setpoint.load(Ordering::Relaxed) != 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = phase_tx.send(Phase::Stop);
    while let Some(r) = tasks.join_next().await {
        r.context("a virtual thing panicked")?;
    }
    progress.stop().await;
    sampler.stop().await;
    (sim.end, hub.end) = sample_processes(options.hub_pid);
    drop(exporter);
    let mut report = Report::build(&fleet, duration.as_secs_f64());
    report.scenario = whole;
    report.versions = Versions {
        hub: hub_version,
        ..Versions::this()
    };
    report.resources = Resources {
        simulator: ProcessUsage::from_readings(std::process::id(), &sim, count),
        hub: options
            .hub_pid
            .and_then(|pid| ProcessUsage::from_readings(pid, &hub, count)),
    };
    if let Some(part) = report.shards.first_mut() {
        part.simulator.clone_from(&report.resources.simulator);
    }
    if !options.keep {
        if fleet.scenario.business.configuration_rollout {
            let name = fleet.shard_name(&fleet.scenario.business.configuration_name);
            api.delete_configuration(&name).await?;
        }
        let ids: Vec<String> = (0..count).map(|i| fleet.thing_id(i)).collect();
        api.delete_things(&ids).await?;
        if let Some(claim) = &fleet.claim {
            api.delete_enrollment(&claim.enrollment).await?;
        }
    }
    Ok(report)
}

/// The enrollment of a first-boot run: `population.enrollment`, with `-{I}` for shard I of a
/// split run (each shard creates its own, on the same hub).
pub fn enrollment_id(scenario: &Scenario, shard: Shard) -> String {
    let base = &scenario.population.enrollment;
    if shard.is_whole() {
        base.clone()
    } else {
        format!("{base}-{}", shard.index)
    }
}
