//! `--workers N`: one scenario run by N local processes, one shard each, merged into one report.
//!
//! Every process has its own descriptor limit (each connection is one descriptor), so N workers
//! reach N times the fleet of one. The parent writes the scenario as given (flags applied) to a
//! temporary file and starts this executable N times with `run --scenario FILE --shard I/N`
//! against the same hub (the token passes in the environment, never on a command line), each
//! writing its JSON report; it then merges them ([`crate::report::merge`]). For many machines,
//! run the shards with an orchestrator instead (docs/simulator-distributed.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::progress::Mode;
use crate::report::Report;
use crate::report::merge::merge;
use crate::run::Target;
use crate::scenario::Scenario;
use crate::shard::Shard;

/// Exit statuses of a worker that still wrote its report: clean, not clean, thresholds failed
/// (the parent checks the thresholds on the merged report).
const REPORTED: [i32; 3] = [0, 1, crate::threshold::EXIT_THRESHOLDS as i32];

/// How the workers run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Worker processes (shards).
    pub workers: usize,
    /// The whole scenario.
    pub scenario: Scenario,
    /// The hub.
    pub target: Target,
    /// Keep the things afterwards.
    pub keep: bool,
    /// The hub's process on this machine, for its CPU and memory.
    pub hub_pid: Option<u32>,
    /// Progress of each worker: plain lines (labelled by shard) or none.
    pub progress: Mode,
    /// Interval of the plain lines.
    pub progress_every: Duration,
    /// Base metrics address: worker `I` serves on port + I (port 0: each picks a free one).
    pub metrics_addr: Option<SocketAddr>,
}

/// Runs the plan's workers to the end and returns their merged report.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    // Refuse an impossible split before starting anything.
    Shard {
        index: 0,
        count: plan.workers,
    }
    .apply(&plan.scenario)?;
    let dir = tempfile::Builder::new()
        .prefix("iothub-sim-workers-")
        .tempdir()
        .context("cannot create the workers' directory")?;
    let scenario_path = dir.path().join("scenario.toml");
    std::fs::write(&scenario_path, toml::to_string(&plan.scenario)?)
        .with_context(|| format!("cannot write {}", scenario_path.display()))?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let progress = match plan.progress.resolve() {
        Mode::None => "none",
        _ => "plain",
    };
    let mut children = Vec::with_capacity(plan.workers);
    let mut reports: Vec<PathBuf> = Vec::with_capacity(plan.workers);
    for index in 0..plan.workers {
        let shard = Shard {
            index,
            count: plan.workers,
        };
        let report = dir.path().join(format!("shard-{index}.json"));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("run")
            .arg("--scenario")
            .arg(&scenario_path)
            .arg("--shard")
            .arg(shard.to_string())
            .arg("--mqtt")
            .arg(plan.target.mqtt.to_string())
            .arg("--api")
            .arg(&plan.target.api)
            .arg("--report-json")
            .arg(&report)
            .arg("--progress")
            .arg(progress)
            .arg("--progress-interval")
            .arg(format!("{}s", plan.progress_every.as_secs().max(1)))
            .env("IOTHUB_ADMIN_TOKEN", &plan.target.token)
            .stdin(Stdio::null())
            // Each worker's table is replaced by the merged one; its stderr (progress,
            // warnings) goes through, labelled by shard.
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // An interrupted parent takes its workers with it.
            .kill_on_drop(true);
        if plan.keep {
            cmd.arg("--keep");
        }
        if let Some(tls) = &plan.target.tls {
            cmd.arg("--tls-ca")
                .arg(&tls.ca_file)
                .arg("--tls-server-name")
                .arg(&tls.server_name);
        }
        if let Some(pid) = plan.hub_pid {
            cmd.arg("--hub-pid").arg(pid.to_string());
        }
        if let Some(addr) = plan.metrics_addr {
            let port = match addr.port() {
                0 => 0,
                p => p
                    .checked_add(u16::try_from(index).unwrap_or(u16::MAX))
                    .context("metrics ports beyond 65535")?,
            };
            cmd.arg("--metrics-addr")
                .arg(SocketAddr::new(addr.ip(), port).to_string());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start worker {shard}"))?;
        eprintln!(
            "worker {shard}: pid {}",
            child.id().map_or("?".to_owned(), |p| p.to_string())
        );
        children.push((shard, child));
        reports.push(report);
    }
    let mut failed = Vec::new();
    for (shard, child) in &mut children {
        let status = child.wait().await?;
        match status.code() {
            Some(c) if REPORTED.contains(&c) => {}
            _ => failed.push(format!("worker {shard} ended with {status}")),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    let mut parts = Vec::with_capacity(reports.len());
    for path in &reports {
        let bytes =
            std::fs::read(path).with_context(|| format!("worker report {}", path.display()))?;
        parts.push(
            serde_json::from_slice::<Report>(&bytes)
                .with_context(|| format!("worker report {}", path.display()))?,
        );
    }
    Ok(merge(&parts)?)
}
