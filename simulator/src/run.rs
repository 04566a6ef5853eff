//! One run: provision the things, ramp them up, measure, stop, report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fleet::{Fleet, Phase};
use crate::provision::Api;
use crate::report::Report;
use crate::scenario::Scenario;
use crate::{business, progress, thing};

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
}

/// How to run, besides the scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Show the live progress line.
    pub progress: bool,
    /// Keep the things on the hub afterwards.
    pub keep: bool,
}

/// Runs `scenario` against `target` and returns the report.
pub async fn run(scenario: Scenario, target: Target, options: Options) -> anyhow::Result<Report> {
    scenario.validate()?;
    let api = Arc::new(Api::new(&target.api, &target.token)?);
    let count = scenario.population.count;
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let duration = Duration::from_secs_f64(scenario.duration_s);
    let settle = Duration::from_secs_f64(scenario.ramp.settle_s);
    let max_wait = Duration::from_secs_f64(scenario.ramp.max_wait_s);
    let mut fleet = Arc::new(Fleet::new(scenario, target.mqtt, phase_rx));

    eprintln!("provisioning {count} things ...");
    let ids: Vec<String> = (0..count).map(|i| fleet.thing_id(i)).collect();
    let secrets = api.create_things(&ids).await?;
    drop(ids);

    let ramp_began = Instant::now();
    // Re-base the connect schedule on now (provisioning took a while); no thing runs yet.
    match Arc::get_mut(&mut fleet) {
        Some(f) => {
            f.epoch = ramp_began;
            f.secrets = secrets;
        }
        None => bail!("the fleet is shared before its things start"),
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        fleet.stats.running.inc();
        tasks.spawn(thing::run(fleet.clone(), i));
    }
    let progress = options
        .progress
        .then(|| tokio::spawn(progress::run(fleet.clone())));

    // Measure only once every thing has connected (or given up), so that connect work never
    // overlaps the measured period.
    let deadline = ramp_began + max_wait;
    while fleet.stats.first_done.get() < count as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = fleet.stats.ever_connected.get();
    eprintln!(
        "{connected} of {count} things connected in {:.1} s; measuring for {:.0} s",
        ramp_began.elapsed().as_secs_f64(),
        duration.as_secs_f64()
    );
    let start = Instant::now() + settle;
    let end = start + duration;
    let _ = phase_tx.send(Phase::Measure { start, end });
    business::run(fleet.clone(), api.clone(), start, end).await;
    tokio::time::sleep_until(end).await;
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
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
    }
    let report = Report::build(&fleet, duration.as_secs_f64());
    if !options.keep {
        let ids: Vec<String> = (0..count).map(|i| fleet.thing_id(i)).collect();
        api.delete_things(&ids).await?;
    }
    Ok(report)
}
