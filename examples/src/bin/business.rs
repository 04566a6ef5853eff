//! A business-side client: sets the thermostat's desired setpoint over REST, invokes its
//! `reboot` method, shows the shadow, and optionally rolls out a firmware version to it as an OTA
//! job over REST (S-9.6) and follows the job until it ends. See `examples/README.md`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use iothub_sdk::spec::code::OtaTaskState;
use iothub_sdk::spec::payload::{self, field};
use serde_json::{Value, json};

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "Drive a thing from the business side")]
struct Args {
    /// The hub's REST base URL.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    http: String,
    /// Admin token of the hub.
    #[arg(long, env = "IOTHUB_ADMIN_TOKEN", default_value = "dev-token")]
    admin_token: String,
    /// The thing id.
    #[arg(long, default_value = "thermostat-1")]
    thing: String,
    /// The desired setpoint to set.
    #[arg(long, default_value_t = 22.5)]
    setpoint: f64,
    /// Also roll out this firmware version to the thing as an OTA job (S-9.6).
    #[arg(long)]
    ota_version: Option<String>,
    /// The job's `fileUrl` (default `https://files.example/thermostat-VERSION.bin`).
    #[arg(long)]
    file_url: Option<String>,
    /// The file's hex MD5, sent in the task's `meta`.
    #[arg(long)]
    md5: Option<String>,
    /// The file's hex SHA-256, sent in the task's `meta`.
    #[arg(long)]
    sha256: Option<String>,
    /// The file's size in bytes, sent as `content-length`.
    #[arg(long)]
    content_length: Option<u64>,
    /// Seconds the device may take for the task before the hub times it out.
    #[arg(long, default_value_t = 60)]
    ota_timeout: u64,
}

async fn call(
    http: &reqwest::Client,
    args: &Args,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1{path}", args.http.trim_end_matches('/'));
    let mut req = http.request(method, url).bearer_auth(&args.admin_token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {body}");
    }
    Ok(body["data"].clone())
}

/// Creates an OTA job (S-9.6) for the thing and polls it until it ends; prints each change of
/// the job's counts and the thing's final task with its transitions.
async fn ota(http: &reqwest::Client, args: &Args, version: &str) -> anyhow::Result<()> {
    let thing = args.thing.as_str();
    let file_url = args
        .file_url
        .clone()
        .unwrap_or_else(|| format!("https://files.example/thermostat-{version}.bin"));
    let meta = payload::OtaMeta {
        version,
        md5: args.md5.as_deref(),
        sha256: args.sha256.as_deref(),
        content_type: None,
        content_length: args.content_length,
    };
    let body = json!({
        "targets": { "thingIds": [thing] },
        "task": { field::TYPE: "app", field::META: meta, field::FILE_URL: file_url },
        "maxPerMinute": 60,
        "timeoutMinutes": args.ota_timeout as f64 / 60.0,
    });
    let job = call(http, args, reqwest::Method::POST, "/ota/jobs", Some(body)).await?;
    let id = job["jobId"]
        .as_str()
        .context("the created job has no jobId")?
        .to_owned();
    println!("OTA job {id} created for {thing}: {}", job["task"]);
    // The hub times the task out after `--ota-timeout`; poll a little longer than that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.ota_timeout + 10);
    let mut last = Value::Null;
    let job = loop {
        let job = call(
            http,
            args,
            reqwest::Method::GET,
            &format!("/ota/jobs/{id}"),
            None,
        )
        .await?;
        if job["counts"] != last {
            println!(
                "OTA job {id}: {} ({}% ended)",
                job["counts"], job["progress"]
            );
            last = job["counts"].clone();
        }
        if job["status"] != "running" {
            break job;
        }
        if tokio::time::Instant::now() >= deadline {
            call(
                http,
                args,
                reqwest::Method::POST,
                &format!("/ota/jobs/{id}/cancel"),
                None,
            )
            .await?;
            bail!(
                "OTA job {id} still running after {} s; canceled",
                args.ota_timeout + 10
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let task = call(
        http,
        args,
        reqwest::Method::GET,
        &format!("/ota/jobs/{id}/tasks/{thing}"),
        None,
    )
    .await?;
    println!(
        "OTA task of {thing}: {}",
        serde_json::to_string_pretty(&task)?
    );
    let state: OtaTaskState = serde_json::from_value(task[field::STATUS].clone())
        .context("the task has no known status")?;
    if state != OtaTaskState::Done {
        bail!(
            "OTA job {id} ended {}: task {}",
            job["status"],
            state.as_str()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let thing = &args.thing;
    let doc = call(
        &http,
        &args,
        reqwest::Method::PUT,
        &format!("/things/{thing}/shadows/default/state/desired"),
        Some(json!({ "state": { "desired": { "setpoint": args.setpoint } } })),
    )
    .await?;
    println!("desired setpoint {} accepted: {doc}", args.setpoint);

    let resp = call(
        &http,
        &args,
        reqwest::Method::POST,
        &format!("/things/{thing}/methods/reboot"),
        Some(json!({ "data": { "delay": 5 }, "timeout": 10 })),
    )
    .await?;
    println!("reboot answered: {resp}");

    if let Some(version) = &args.ota_version {
        ota(&http, &args, version).await?;
    }

    // The device applies the setpoint and reports it back: wait for the delta to clear.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let doc = call(
            &http,
            &args,
            reqwest::Method::GET,
            &format!("/things/{thing}/shadows/default"),
            None,
        )
        .await?;
        if doc["state"].get("delta").is_none() || tokio::time::Instant::now() >= deadline {
            println!("shadow: {}", serde_json::to_string_pretty(&doc)?);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
