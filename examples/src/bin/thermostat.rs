//! A std device: a thermostat that keeps its state in sync with the `default` shadow (applies
//! the desired `setpoint` and `mode`, reports back), sends telemetry, answers a `reboot`
//! method, measures its clock against the hub's, and runs OTA tasks (download, install, then
//! `done`). See `examples/README.md`.
//!
//! The main loop is one `tokio::select!` over cancel-safe branches: `SyncedState::next`, the
//! OTA task stream, finished installs, and a telemetry timer. Long work (an OTA download) runs
//! in its own task, never as a raced future.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use iothub_sdk::{DownloadOptions, MethodError, OtaTask, StreamExt as _, Thing, ThingOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "A thermostat device for iothub")]
struct Args {
    /// The hub's MQTT listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// The hub's REST base URL (to provision the thing when no secret is given).
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    http: String,
    /// Admin token of the hub (to provision the thing).
    #[arg(long, env = "IOTHUB_ADMIN_TOKEN", default_value = "dev-token")]
    admin_token: String,
    /// The thing id.
    #[arg(long, default_value = "thermostat-1")]
    thing: String,
    /// The thing's secret; when absent the thing is (re)created through REST.
    #[arg(long, env = "IOTHUB_THING_SECRET")]
    secret: Option<String>,
    /// Use MQTT 5 instead of 3.1.1.
    #[arg(long)]
    mqtt5: bool,
    /// Seconds between telemetry messages.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// Download OTA files into this directory (verified against the task's checksums). Without
    /// it, downloads are simulated (progress only), as the business example's file URL is a
    /// placeholder.
    #[arg(long)]
    ota_dir: Option<std::path::PathBuf>,
}

/// The thermostat's state, as reported in the shadow.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    setpoint: f64,
    mode: String,
    firmware: String,
}

/// Deletes and creates the thing through REST, returning its new secret (shown only once).
async fn provision(args: &Args) -> anyhow::Result<String> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let base = format!("{}/api/v1/things", args.http.trim_end_matches('/'));
    let del = http
        .delete(format!("{base}/{}", args.thing))
        .bearer_auth(&args.admin_token)
        .send()
        .await?;
    tracing::debug!(status = %del.status(), "deleted any previous thing");
    let body: serde_json::Value = http
        .post(&base)
        .bearer_auth(&args.admin_token)
        .json(&json!({ "thingId": args.thing }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    body["data"]["password"]
        .as_str()
        .map(str::to_owned)
        .context("no password in the create response")
}

/// Fetches and "installs" an OTA task's file; the version comes back to the main loop, which
/// reports it and then the task's `done`.
async fn install(task: OtaTask, dir: Option<std::path::PathBuf>) -> anyhow::Result<OtaTask> {
    match dir {
        Some(dir) => {
            // Failures are reported to the hub (`failed` with the S-7.2 code) by `download`.
            let file = task.download(&DownloadOptions::new(dir)).await?;
            tracing::info!(path = %file.path.display(), size = file.size, "firmware verified; installing");
        }
        None => {
            for p in [0u8, 25, 50, 75] {
                task.progress(p).await?;
                tokio::time::sleep(Duration::from_millis(300)).await; // "downloading"
            }
        }
    }
    // A real device writes the image to its update slot here (and reports `done` after
    // rebooting into it).
    Ok(task)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The SDK logs through `tracing`: without a subscriber its warnings are invisible.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or("info".into()),
        )
        .init();
    let args = Args::parse();
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => provision(&args).await?,
    };
    let mut options = ThingOptions::with_addr(&args.thing, secret, &args.mqtt)?;
    if args.mqtt5 {
        options = options.mqtt5();
    }
    // Handlers are registered before connecting: a call right after CONNACK is answered.
    let options = options.on_method("reboot", |req| async move {
        let delay = req.data.get("delay").and_then(|d| d.as_u64()).unwrap_or(0);
        if delay > 60 {
            return Err(MethodError::bad_input("delay must be at most 60 s"));
        }
        tracing::warn!(delay, "reboot requested (simulated)");
        Ok(json!({ "rebootingIn": delay }))
    })?;
    let thing = Thing::connect(options).await?;
    tracing::info!(thing = thing.thing_id(), "connected");

    let clock = thing.ntp().measure().await?;
    tracing::info!(offset_ms = clock.offset_ms, round_trip = ?clock.round_trip, "clock measured");

    let initial = State {
        setpoint: 20.0,
        mode: "heat".into(),
        firmware: "1.0.0".into(),
    };
    let mut state = thing.shadow("default").synced_state(initial).await?;
    let mut ota = thing.ota().tasks();
    let mut installs = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(args.interval.max(1)));
    let mut temperature = 18.0_f64;

    loop {
        // Every raced future is cancel-safe: losing a race loses no delta and no task.
        tokio::select! {
            applied = state.next() => match applied {
                Some(Ok(a)) => {
                    let s = state.get();
                    tracing::info!(keys = ?a.keys, version = state.version(), setpoint = s.setpoint, mode = %s.mode, "applied desired state");
                    if let Err(e) = a.report {
                        tracing::warn!(error = %e, "report failed; resent after reconnecting");
                    }
                }
                // The error names the keys (unknown, or of the wrong type); nothing was applied.
                Some(Err(e)) => tracing::warn!(error = %e, "desired state not applied"),
                None => break,
            },
            Some(task) = ota.next() => {
                tracing::info!(task = %task.task_id, version = %task.version, url = %task.file_url, "OTA task");
                installs.spawn(install(task, args.ota_dir.clone()));
            }
            Some(done) = installs.join_next() => match done {
                Ok(Ok(task)) => {
                    let version = task.version.clone();
                    state.modify_and_report(|s| s.firmware = version).await?;
                    task.done().await?;
                    tracing::info!(task = %task.task_id, "OTA done");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "OTA task failed"),
                Err(e) => tracing::warn!(error = %e, "OTA install panicked"),
            },
            _ = tick.tick() => {
                let target = state.get().setpoint;
                temperature += (target - temperature) * 0.3;
                let t = (temperature * 10.0).round() / 10.0;
                if let Err(e) = thing.send_telemetry(&json!({ "temperature": t })).await {
                    tracing::warn!(error = %e, "telemetry not sent");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    thing.close().await;
    Ok(())
}
