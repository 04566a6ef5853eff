//! Starts the real `iothub` binary on loopback for the SDK's integration tests, and talks to
//! it as a business system would: REST with the admin token, MQTT as a service user.
//!
//! Nothing sleeps to synchronize: waits poll with a deadline.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::zombie_processes
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iothub_launch::{HubCommand, HubProcess, ReadyLine};
use iothub_sdk::{Backoff, ThingOptions};
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "sdk-test-token";
pub const SVC_USER: &str = "$svc";
pub const SVC_SECRET: &str = "secret";
/// How long to wait for something that must happen.
pub const STEP: Duration = Duration::from_secs(10);

/// A process-unique thing id.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A running hub with its own data directory.
pub struct Hub {
    process: Option<HubProcess>,
    dir: tempfile::TempDir,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// Every listener the hub announced (its TLS listener with `start_with`).
    pub ready: ReadyLine,
    extra: Vec<String>,
    http_client: reqwest::Client,
}

fn spawn(dir: &Path, mqtt: &str, http: &str, extra: &[String]) -> (HubProcess, ReadyLine) {
    let bin = iothub_launch::hub_binary().expect("iothub binary");
    let process = HubCommand::new(bin)
        .args(extra)
        .args(["--mqtt-addr", mqtt, "--http-addr", http, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--admin-token", ADMIN_TOKEN, "--service-user"])
        .arg(format!("{SVC_USER}:{SVC_SECRET}"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        )
        .stderr_to(dir.join("hub.log"))
        .spawn()
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
            panic!("hub did not start: {e}\n{log}")
        });
    let ready = process.ready();
    (process, ready)
}

impl Hub {
    /// Starts a hub on free loopback ports.
    pub fn start() -> Hub {
        Hub::start_with(&[])
    }

    /// Starts a hub on free loopback ports with extra flags (e.g. its TLS listener).
    pub fn start_with(extra: &[&str]) -> Hub {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (process, ready) = spawn(dir.path(), "127.0.0.1:0", "127.0.0.1:0", &extra);
        Hub {
            process: Some(process),
            dir,
            mqtt: ready.mqtt,
            http: ready.http,
            ready,
            extra,
            http_client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        }
    }

    /// Kills the hub (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Freezes the hub (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        let pid = self.process.as_ref().expect("running").pid();
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill -STOP");
        assert!(ok.success());
    }

    /// Starts the hub again on the same data directory and the same ports.
    pub fn start_again(&mut self) {
        self.kill();
        let (process, ready) = spawn(
            self.dir.path(),
            &self.mqtt.to_string(),
            &self.http.to_string(),
            &self.extra,
        );
        assert_eq!((ready.mqtt, ready.http), (self.mqtt, self.http));
        self.process = Some(process);
    }

    /// The hub's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// A REST call under `/api/v1` with the admin token: status and parsed body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("http://{}/api/v1{path}", self.http);
        let mut req = self
            .http_client
            .request(method, url)
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("http body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a thing and returns its secret.
    pub async fn create_thing(&self, id: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/things",
                Some(json!({"thingId": id})),
            )
            .await;
        assert!((200..300).contains(&status), "create {id}: {status} {body}");
        body["data"]["password"]
            .as_str()
            .expect("password")
            .to_owned()
    }

    /// Sets desired state through REST (S-9.3); returns status and body.
    pub async fn set_desired(&self, id: &str, shadow: &str, desired: Value) -> (u16, Value) {
        let path = format!("/things/{id}/shadows/{shadow}/state/desired");
        self.call(
            reqwest::Method::PUT,
            &path,
            Some(json!({"state": {"desired": desired}})),
        )
        .await
    }

    /// The shadow document through REST (`data`).
    pub async fn shadow(&self, id: &str, shadow: &str) -> (u16, Value) {
        let (s, b) = self
            .call(
                reqwest::Method::GET,
                &format!("/things/{id}/shadows/{shadow}"),
                None,
            )
            .await;
        (s, b["data"].clone())
    }

    /// Invokes a direct method through REST (S-9.5).
    pub async fn invoke(&self, id: &str, method: &str, data: Value) -> (u16, Value) {
        let path = format!("/things/{id}/methods/{method}");
        self.call(
            reqwest::Method::POST,
            &path,
            Some(json!({"data": data, "timeout": 10})),
        )
        .await
    }

    /// Options for a thing of this hub, with a short backoff so tests reconnect quickly.
    pub fn options(&self, id: &str, secret: &str) -> ThingOptions {
        ThingOptions::new(id, secret, "127.0.0.1", self.mqtt.port())
            .request_timeout(Duration::from_secs(5))
            .backoff(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(500),
                jitter: 0.5,
            })
    }

    /// A new thing and its options.
    pub async fn new_thing(&self, prefix: &str) -> (String, ThingOptions) {
        let id = unique(prefix);
        let secret = self.create_thing(&id).await;
        let opts = self.options(&id, &secret);
        (id, opts)
    }

    /// An MQTT 3.1.1 client logged in as the service user, with its event loop running; every
    /// PUBLISH it receives goes to the returned channel.
    pub async fn service(
        &self,
        filters: &[String],
    ) -> (
        rumqttc::AsyncClient,
        tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
    ) {
        let mut o = rumqttc::MqttOptions::new(unique("svc"), "127.0.0.1", self.mqtt.port());
        o.set_credentials(SVC_USER, SVC_SECRET);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 64);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let mut subs = filters.len();
        for f in filters {
            client
                .subscribe(f.as_str(), rumqttc::QoS::AtLeastOnce)
                .await
                .expect("subscribe");
        }
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        subs = subs.saturating_sub(1);
                        if subs == 0
                            && let Some(r) = ready_tx.take()
                        {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(&p.payload).into())
                        });
                        if tx.send((p.topic, v)).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        if !filters.is_empty() {
            tokio::time::timeout(STEP, ready_rx)
                .await
                .expect("suback")
                .expect("suback");
        }
        (client, rx)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the next item of `stream`, at most [`STEP`].
pub async fn next<S: iothub_sdk::Stream + Unpin>(stream: &mut S) -> S::Item {
    use iothub_sdk::StreamExt as _;
    tokio::time::timeout(STEP, stream.next())
        .await
        .expect("timed out waiting for a stream item")
        .expect("stream ended")
}

/// Waits for a message on `topic` from a service client's channel, at most [`STEP`].
pub async fn recv_on(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
    topic: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (t, v) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing on {topic}"))
            .expect("service client ended");
        if t == topic {
            return v;
        }
    }
}
