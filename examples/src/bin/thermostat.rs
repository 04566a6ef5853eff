//! A std device: a thermostat that keeps its state in sync with the `default` shadow (applies
//! the desired `setpoint` and `mode`, reports back), sends telemetry, answers a `reboot`
//! method, syncs its clock with the hub, and runs OTA tasks. See `examples/README.md`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use iothub_sdk::{MethodError, StreamExt as _, Thing, ThingOptions};
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    let thing = Thing::connect(options).await?;
    tracing::info!(thing = thing.thing_id(), "connected");

    let clock = thing.ntp().sync().await?;
    tracing::info!(offset_ms = clock.offset_ms, round_trip = ?clock.round_trip, "clock synced");

    thing.on_method("reboot", |req| async move {
        let delay = req.data.get("delay").and_then(|d| d.as_u64()).unwrap_or(0);
        if delay > 60 {
            return Err(MethodError::bad_input("delay must be at most 60 s"));
        }
        tracing::warn!(delay, "reboot requested (simulated)");
        Ok(json!({ "rebootingIn": delay }))
    })?;

    let initial = State {
        setpoint: 20.0,
        mode: "heat".into(),
        firmware: "1.0.0".into(),
    };
    let mut state = thing.shadow("default").sync(initial).await?;
    let mut ota = thing.ota().tasks();
    let mut tick = tokio::time::interval(Duration::from_secs(args.interval.max(1)));
    let mut temperature = 18.0_f64;

    loop {
        tokio::select! {
            changed = state.next() => match changed {
                Some(Ok(s)) => tracing::info!(setpoint = s.setpoint, mode = %s.mode, "applied desired state"),
                Some(Err(e)) => tracing::warn!(error = %e, "could not apply a delta"),
                None => break,
            },
            Some(task) = ota.next() => {
                tracing::info!(task = %task.task_id, version = %task.version, url = %task.file_url, "OTA task");
                for p in [0u8, 25, 50, 75, 100] {
                    task.progress(p).await?;
                    tokio::time::sleep(Duration::from_millis(300)).await; // "downloading"
                }
                let version = task.version.clone();
                state.update(|s| s.firmware = version).await?;
                task.done().await?;
                tracing::info!(task = %task.task_id, "OTA done");
            }
            _ = tick.tick() => {
                let target = state.get().setpoint;
                temperature += (target - temperature) * 0.3;
                let t = (temperature * 10.0).round() / 10.0;
                if let Err(e) = thing.publish_property(&json!({ "temperature": t })).await {
                    tracing::warn!(error = %e, "telemetry not sent");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    thing.close().await;
    Ok(())
}
