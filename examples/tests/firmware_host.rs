//! End to end: the firmware-style thermostat (`no_std` application core, minimq adapter) runs as
//! the `firmware_host` binary against the real `iothub` binary over TCP on loopback. It must
//! apply a desired change set made over REST and report it back, answer a method invoked over
//! REST, sync its clock (NTP), run an OTA task sent by a service user to `done`, and converge
//! again after the hub restarts (same data directory, new process).
//!
//! Nothing sleeps to synchronize: every wait polls with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "fw-test-token";
/// The service user the test hub is started with (S-1.5), to send an OTA task.
const SVC: (&str, &str) = ("$svc", "svc-secret");
/// How long something that must happen may take (connect, converge, answer).
const STEP: Duration = Duration::from_secs(20);

/// The `iothub` binary: `$IOTHUB_BIN`, else `target/<profile>/iothub` beside this test's
/// executable, built with cargo when missing.
fn hub_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IOTHUB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("iothub");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "iothub-hub", "--bin", "iothub"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the hub");
        assert!(status.success(), "building the iothub binary failed");
    }
    bin
}

/// Kills the child when dropped (a failed assertion must not leave processes behind).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `iothub` on `dir` and the given addresses; returns it with its real addresses.
fn spawn_hub(dir: &Path, mqtt: &str, http: &str) -> (Proc, SocketAddr, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hub.log"))
        .expect("hub log");
    let mut child = Command::new(hub_bin())
        .args(["--mqtt-addr", mqtt, "--http-addr", http, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--admin-token", ADMIN_TOKEN, "--service-user"])
        .arg(format!("{}:{}", SVC.0, SVC.1))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn iothub");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("hub ready line");
        if let Some(rest) = line.strip_prefix("iothub ready ") {
            let mut it = rest.split_whitespace();
            let mqtt = it.next().and_then(|a| a.strip_prefix("mqtt=")).unwrap();
            let http = it.next().and_then(|a| a.strip_prefix("http=")).unwrap();
            return (
                Proc(child),
                mqtt.parse().expect("mqtt addr"),
                http.parse().expect("http addr"),
            );
        }
    }
}

struct Rest {
    base: String,
    http: reqwest::Client,
}

impl Rest {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
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

    async fn reported(&self, thing: &str) -> Value {
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
    async fn converge(&self, thing: &str, desired: Value) -> Value {
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
    async fn invoke(&self, thing: &str, method: &str) -> Value {
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

/// Sends an OTA task (S-7.1) to `thing` as the service user and returns every result
/// (S-7.2) up to the final one.
async fn ota(mqtt: SocketAddr, thing: &str) -> Vec<Value> {
    use iothub_sdk_nostd::spec::{payload, topic::Topic};
    let mut o = rumqttc::MqttOptions::new("svc-fw-test", mqtt.ip().to_string(), mqtt.port());
    o.set_credentials(SVC.0, SVC.1);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
    let result_topic = Topic::OtaTaskResult { thing }.to_string();
    client
        .subscribe(result_topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let task = serde_json::to_string(&payload::OtaTask {
        client_token: "svc-ota-1",
        task_id: "fw-task-1",
        r#type: "app",
        meta: payload::OtaMeta {
            version: "2.0.0",
            md5: None,
            sha256: None,
            content_type: None,
            content_length: None,
        },
        file_url: "https://files.example/thermostat-2.0.0.bin",
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
                let done = r["status"] != "ongoing";
                results.push(r);
                if done {
                    return results;
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_host_syncs_answers_and_survives_a_hub_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hub, mqtt, http) = spawn_hub(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let rest = Rest {
        base: format!("http://{http}"),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    let thing = format!("fw-{}", std::process::id());
    let (status, body) = rest
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
    let secret = body["data"]["password"]
        .as_str()
        .expect("password")
        .to_owned();

    let device_log = std::fs::File::create(dir.path().join("device.log")).unwrap();
    let _device = Proc(
        Command::new(env!("CARGO_BIN_EXE_firmware_host"))
            .args([
                "--mqtt",
                &mqtt.to_string(),
                "--thing",
                &thing,
                "--tick-ms",
                "200",
            ])
            .env("IOTHUB_THING_SECRET", &secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(device_log))
            .spawn()
            .expect("spawn firmware_host"),
    );
    let log = || std::fs::read_to_string(dir.path().join("device.log")).unwrap_or_default();

    // A desired change set made over REST is applied and reported back.
    let reported = rest
        .converge(&thing, json!({"setpoint": 23, "mode": "cool"}))
        .await;
    assert_eq!(reported["boots"], 1, "{reported}\n{}", log());
    assert_eq!(reported["firmware"], env!("CARGO_PKG_VERSION"));

    // The method the firmware registered is answered; any other one gets 404 from the core.
    let reply = rest.invoke(&thing, "reboot").await;
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["data"], json!({"boots": 2}));
    let reply = rest.invoke(&thing, "selfdestruct").await;
    assert_eq!(reply["code"], 404, "{reply}");
    // The reboot is reported too.
    rest.converge(&thing, json!({"setpoint": 23})).await;
    let deadline = Instant::now() + STEP;
    while rest.reported(&thing).await["boots"] != 2 {
        assert!(Instant::now() < deadline, "boots never reported\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // NTP answered (the device reports it), and an OTA task sent by a service user is run
    // to `done` with progress reports in between.
    let deadline = Instant::now() + STEP;
    while rest.reported(&thing).await["time_synced"] != true {
        assert!(Instant::now() < deadline, "time never synced\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = ota(mqtt, &thing).await;
    let progress: Vec<u64> = results
        .iter()
        .filter(|r| r["status"] == "ongoing")
        .filter_map(|r| r["progress"].as_u64())
        .collect();
    assert!(!progress.is_empty(), "no progress reported: {results:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    let last = results.last().unwrap();
    assert_eq!(last["status"], "done", "{results:?}");
    assert_eq!(last["taskId"], "fw-task-1");

    // The hub restarts on the same data directory and ports; the device reconnects, resyncs
    // and applies what is desired after the restart.
    drop(hub);
    let (_hub, mqtt2, http2) = spawn_hub(dir.path(), &mqtt.to_string(), &http.to_string());
    assert_eq!((mqtt2, http2), (mqtt, http));
    let reported = rest
        .converge(&thing, json!({"setpoint": 17, "mode": "heat"}))
        .await;
    assert_eq!(reported["boots"], 2, "{reported}");
    let reply = rest.invoke(&thing, "reboot").await;
    assert_eq!(reply["data"], json!({"boots": 3}), "{}", log());
}
