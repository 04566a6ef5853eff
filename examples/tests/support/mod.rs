//! What the firmware host tests share: the real hub as a process, the device as a process,
//! and the business side over REST.
#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iothub_launch::{HubCommand, HubProcess};
use iothub_sdk_nostd::spec::payload::{self, field};
use serde_json::{Value, json};

/// The hub's admin token in these tests.
pub const ADMIN_TOKEN: &str = "fw-test-token";
/// The service user the test hub is started with (S-1.5), to send an OTA task.
pub const SVC: (&str, &str) = ("$svc", "svc-secret");
/// How long something that must happen may take (connect, converge, answer).
pub const STEP: Duration = Duration::from_secs(20);

/// Kills the child when dropped (a failed assertion must not leave processes behind).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `iothub` on `dir` and the given addresses; returns it with its real addresses.
pub fn spawn_hub(dir: &Path, mqtt: &str, http: &str) -> (HubProcess, SocketAddr, SocketAddr) {
    let hub = HubCommand::new(iothub_launch::hub_binary().expect("iothub binary"))
        .args(["--mqtt-addr", mqtt, "--http-addr", http, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--admin-token", ADMIN_TOKEN, "--service-user"])
        .arg(format!("{}:{}", SVC.0, SVC.1))
        .env("RUST_LOG", "warn")
        .stderr_to(dir.join("hub.log"))
        .spawn()
        .expect("start iothub");
    let ready = hub.ready();
    (hub, ready.mqtt, ready.http)
}

/// Runs `iothub dev-certs` into `dir` (server certificate for localhost and 127.0.0.1, a
/// client certificate per thing of `things`).
pub fn dev_certs(dir: &Path, things: &[&str]) {
    let mut cmd = Command::new(iothub_launch::hub_binary().expect("iothub binary"));
    cmd.arg("dev-certs").arg("--out").arg(dir);
    for t in things {
        cmd.args(["--thing", t]);
    }
    let out = cmd.output().expect("run iothub dev-certs");
    assert!(
        out.status.success(),
        "dev-certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A path as a command-line argument.
pub fn path_arg(p: std::path::PathBuf) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// The addresses of a hub with MQTT over TLS.
pub struct TlsHub {
    pub hub: HubProcess,
    pub mqtt: SocketAddr,
    pub mqtts: SocketAddr,
    pub http: SocketAddr,
}

/// Starts `iothub` on `dir` with plain MQTT and MQTT over TLS on ephemeral ports, its
/// certificate from `certs` (`dev_certs`), requiring client certificates from the same CA
/// when `client_ca`.
pub fn spawn_tls_hub(dir: &Path, certs: &Path, client_ca: bool) -> TlsHub {
    let mut cmd = HubCommand::new(iothub_launch::hub_binary().expect("iothub binary"));
    cmd.args(["--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--mqtts-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--tls-cert", &path_arg(certs.join("server.pem"))])
        .args(["--tls-key", &path_arg(certs.join("server.key"))])
        .args(["--admin-token", ADMIN_TOKEN, "--service-user"])
        .arg(format!("{}:{}", SVC.0, SVC.1));
    if client_ca {
        cmd.args(["--tls-client-ca", &path_arg(certs.join("ca.pem"))]);
    }
    let hub = cmd
        .env("RUST_LOG", "warn")
        .stderr_to(dir.join("hub.log"))
        .spawn()
        .expect("start iothub");
    let ready = hub.ready();
    TlsHub {
        mqtt: ready.mqtt,
        mqtts: ready.mqtts.expect("the hub serves mqtts"),
        http: ready.http,
        hub,
    }
}

/// The business side: the hub's REST API as the admin.
pub struct Rest {
    pub base: String,
    pub http: reqwest::Client,
}

impl Rest {
    /// One request; `(0, Null)` when the hub could not be reached.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let Ok(resp) = req.send().await else {
            return (0, Value::Null);
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The `default` shadow's reported state.
    pub async fn reported(&self, thing: &str) -> Value {
        let (_, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/things/{thing}/shadows/default"),
                None,
            )
            .await;
        body["data"]["state"]["reported"].clone()
    }

    /// Sets desired state and waits until the device reported every key of it.
    pub async fn converge(&self, thing: &str, desired: Value) -> Value {
        let path = format!("/things/{thing}/shadows/default/state/desired");
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &path,
                Some(json!({"state": {"desired": desired}})),
            )
            .await;
        assert!((200..300).contains(&status), "set desired: {status} {body}");
        let deadline = Instant::now() + STEP;
        loop {
            let reported = self.reported(thing).await;
            let done = desired
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| reported.get(k) == Some(v));
            if done {
                return reported;
            }
            assert!(
                Instant::now() < deadline,
                "reported {reported} never reached desired {desired}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Invokes a method, retrying while the device is offline (409) until `STEP` passes.
    pub async fn invoke(&self, thing: &str, method: &str) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    &format!("/things/{thing}/methods/{method}"),
                    Some(json!({"data": {}, "timeout": 5})),
                )
                .await;
            if status == 200 {
                return body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "invoke {method}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Rest {
    /// A client of the hub's REST API at `http`.
    pub fn new(http: SocketAddr) -> Self {
        Rest {
            base: format!("http://{http}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Creates `thing` and returns its secret.
    pub async fn create_thing(&self, thing: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/things",
                Some(json!({"thingId": thing})),
            )
            .await;
        assert!(
            (200..300).contains(&status),
            "create thing: {status} {body}"
        );
        body["data"]["password"]
            .as_str()
            .expect("password")
            .to_owned()
    }

    /// Sets desired state (merged, S-3.4) without waiting.
    pub async fn set_desired(&self, thing: &str, desired: Value) {
        let path = format!("/things/{thing}/shadows/default/state/desired");
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &path,
                Some(json!({"state": {"desired": desired}})),
            )
            .await;
        assert!((200..300).contains(&status), "set desired: {status} {body}");
    }
}

/// Starts `firmware_host` for `thing` against `mqtt` with `extra` flags, logging to
/// `dir/device.log`; killed when dropped.
pub fn spawn_device(
    dir: &Path,
    mqtt: SocketAddr,
    thing: &str,
    secret: &str,
    extra: &[&str],
) -> Proc {
    let device_log = std::fs::File::create(dir.join("device.log")).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_firmware_host"))
            .args(["--mqtt", &mqtt.to_string(), "--thing", thing])
            .args(extra)
            .env("IOTHUB_THING_SECRET", secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(device_log))
            .spawn()
            .expect("spawn firmware_host"),
    )
}

/// The device's log so far.
pub fn device_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("device.log")).unwrap_or_default()
}

/// Sends an OTA task (S-7.1) for `url` to `thing` as the service user and returns every result
/// (S-7.2) up to the final one.
pub async fn ota(
    mqtt: SocketAddr,
    thing: &str,
    task_id: &str,
    url: &str,
    meta: payload::OtaMeta<'_>,
) -> Vec<Value> {
    use iothub_sdk_nostd::spec::topic::Topic;
    let mut o =
        rumqttc::MqttOptions::new(format!("svc-{task_id}"), mqtt.ip().to_string(), mqtt.port());
    o.set_credentials(SVC.0, SVC.1);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
    let result_topic = Topic::OtaTaskResult { thing }.to_string();
    client
        .subscribe(result_topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let token = format!("svc-{task_id}");
    let task = serde_json::to_string(&payload::OtaTask {
        client_token: &token,
        task_id,
        r#type: "app",
        meta,
        file_url: url,
    })
    .unwrap();
    let mut results = Vec::new();
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let Ok(ev) = tokio::time::timeout_at(deadline, el.poll()).await else {
            panic!("no final OTA result in time: {results:?}");
        };
        let ev = ev.expect("service connection");
        match ev {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) if !sent => {
                let topic = Topic::OtaTask { thing }.to_string();
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, task.clone())
                    .await
                    .unwrap();
                sent = true;
            }
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                let r: Value = serde_json::from_slice(&p.payload).unwrap();
                if r[field::TASK_ID] != task_id {
                    continue;
                }
                let done = r[field::STATUS] != "ongoing";
                results.push(r);
                if done {
                    return results;
                }
            }
            _ => {}
        }
    }
}

/// Messages as `(topic, payload)`, shared with the task that receives them.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A service-user MQTT client that records every message on `filters`.
pub struct Watcher {
    /// What arrived so far.
    pub seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Connects as the service user, subscribes to `filters` and returns once every SUBACK
    /// arrived.
    pub async fn start(mqtt: SocketAddr, id: &str, filters: &[String]) -> Watcher {
        let mut o = rumqttc::MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
        o.set_credentials(SVC.0, SVC.1);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
        for f in filters {
            client
                .subscribe(f.as_str(), rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + STEP;
        while acked < filters.len() {
            let ev = tokio::time::timeout_at(deadline, el.poll())
                .await
                .expect("SUBACKs in time")
                .expect("watcher connection");
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = ev {
                acked += 1;
            }
        }
        let seen = Seen::default();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(ev) = el.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                    sink.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
            }
        });
        Watcher { seen, task }
    }

    /// The messages seen on `topic` so far.
    pub fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
