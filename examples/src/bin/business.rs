//! A business-side client: sets the thermostat's desired setpoint over REST, invokes its
//! `reboot` method, shows the shadow, and optionally sends it an OTA task as a service user
//! (S-7.1; the hub has no OTA jobs yet) and follows the results. See `examples/README.md`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use iothub_sdk::spec::{payload, topic::Topic};
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
    /// Also send an OTA task for this firmware version (needs `--service-user` on the hub).
    #[arg(long)]
    ota_version: Option<String>,
    /// The hub's MQTT listener (for the OTA task).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Service user `$name:secret` configured in the hub (for the OTA task).
    #[arg(long, default_value = "$svc:secret")]
    service_user: String,
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

/// Publishes an S-7.1 task as the service user and prints results until a final one.
async fn ota(args: &Args, version: &str) -> anyhow::Result<()> {
    let (user, secret) = args
        .service_user
        .split_once(':')
        .context("--service-user must be name:secret")?;
    let (host, port) = args
        .mqtt
        .rsplit_once(':')
        .context("--mqtt must be host:port")?;
    let mut o = rumqttc::MqttOptions::new(format!("{user}-business"), host, port.parse()?);
    o.set_credentials(user, secret);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
    let thing = args.thing.as_str();
    let base = Topic::OtaTask { thing }.to_string();
    let result = Topic::OtaTaskResult { thing }.to_string();
    client.subscribe(result, rumqttc::QoS::AtLeastOnce).await?;
    let (token, task_id) = (format!("business-{version}"), format!("fw-{version}"));
    let url = format!("https://files.example/thermostat-{version}.bin");
    let task = serde_json::to_value(payload::OtaTask {
        client_token: &token,
        task_id: &task_id,
        r#type: "app",
        meta: payload::OtaMeta {
            version,
            md5: None,
            sha256: None,
            content_type: None,
            content_length: None,
        },
        file_url: &url,
    })?;
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline, el.poll())
            .await
            .context("no final OTA result within 60 s")??;
        match ev {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) if !sent => {
                client
                    .publish(
                        base.as_str(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        task.to_string(),
                    )
                    .await?;
                sent = true;
                println!("OTA task sent: {task}");
            }
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                let r: Value = serde_json::from_slice(&p.payload)?;
                println!("OTA result: {r}");
                if matches!(r["status"].as_str(), Some("done" | "failed" | "canceled")) {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
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
        ota(&args, version).await?;
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
