//! End to end: the firmware-style thermostat (`no_std` application core, minimq adapter) runs as
//! the `firmware_host` binary against the real `iothub` binary over TCP on loopback. It must
//! apply a desired change set made over REST and report it back, answer a method invoked over
//! REST, sync its clock (NTP), download and verify OTA files served by a tiny test HTTP server
//! (right file `done` with rising progress; wrong checksum 1403, missing file 1400, too large
//! 1404), and converge again after the hub restarts (same data directory, new process).
//!
//! Nothing sleeps to synchronize: every wait polls with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iothub_launch::{HubCommand, HubProcess};
use iothub_sdk_nostd::spec::code::OtaErrorCode;
use iothub_sdk_nostd::spec::payload::{self, field};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "fw-test-token";
/// The service user the test hub is started with (S-1.5), to send an OTA task.
const SVC: (&str, &str) = ("$svc", "svc-secret");
/// How long something that must happen may take (connect, converge, answer).
const STEP: Duration = Duration::from_secs(20);

/// Kills the child when dropped (a failed assertion must not leave processes behind).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `iothub` on `dir` and the given addresses; returns it with its real addresses.
fn spawn_hub(dir: &Path, mqtt: &str, http: &str) -> (HubProcess, SocketAddr, SocketAddr) {
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

/// The test firmware file: 20,000 deterministic bytes.
fn firmware_file() -> Vec<u8> {
    (0..20_000u32).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}
/// Digests of [`firmware_file`], computed independently (Python's hashlib).
const FILE_MD5: &str = "4a6989f25338745123c5b2bc3b8fd0e0";
const FILE_SHA256: &str = "2f7c06c11ae8773025de62a6eee9c83c0638a2b80c2b47363227d4676f1a9eff";

/// A tiny HTTP/1.0 file server on an ephemeral port: `GET /fw.bin` answers [`firmware_file`]
/// (written in 1,000-byte pieces), any other path 404.
fn serve_files() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind file server");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut byte = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && req.len() < 8192 {
                    match conn.read(&mut byte) {
                        Ok(1) => req.push(byte[0]),
                        _ => return,
                    }
                }
                let req = String::from_utf8_lossy(&req);
                if req.split_whitespace().nth(1) != Some("/fw.bin") {
                    let _ = conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let file = firmware_file();
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", file.len());
                let _ = conn.write_all(head.as_bytes());
                for piece in file.chunks(1000) {
                    if conn.write_all(piece).and_then(|()| conn.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends an OTA task (S-7.1) for `url` to `thing` as the service user and returns every result
/// (S-7.2) up to the final one.
async fn ota(
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

/// The task's `meta` for the test file, with `md5` replaced.
fn meta(md5: &str, len: u64) -> payload::OtaMeta<'_> {
    payload::OtaMeta {
        version: "2.0.0",
        md5: Some(md5),
        sha256: Some(FILE_SHA256),
        content_type: Some("application/octet-stream"),
        content_length: Some(len),
    }
}

/// The final result's `errCode`.
fn err_code(results: &[Value]) -> Option<u64> {
    let last = results.last()?;
    (last[field::STATUS] == "failed")
        .then(|| last[field::ERR_CODE].as_u64())
        .flatten()
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

    // NTP answered (the device reports it), and an OTA task sent by a service user is
    // downloaded from the test file server, verified and reported `done` with rising progress.
    let deadline = Instant::now() + STEP;
    while rest.reported(&thing).await["time_synced"] != true {
        assert!(Instant::now() < deadline, "time never synced\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files = serve_files();
    let url = format!("http://{files}/fw.bin");
    let len = firmware_file().len() as u64;
    let results = ota(mqtt, &thing, "fw-task-1", &url, meta(FILE_MD5, len)).await;
    let progress: Vec<u64> = results
        .iter()
        .filter(|r| r[field::STATUS] == "ongoing")
        .filter_map(|r| r[field::PROGRESS].as_u64())
        .collect();
    assert!(progress.len() >= 3, "progress: {results:?}\n{}", log());
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&100), "{results:?}");
    let last = results.last().unwrap();
    assert_eq!(last[field::STATUS], "done", "{results:?}\n{}", log());

    // The same file against a wrong MD5 fails 1403; a missing file 1400; a file larger than
    // the firmware's update slot 1404 before any byte is read.
    let code = |c: OtaErrorCode| Some(u64::from(c.as_u16()));
    let wrong_md5 = "0".repeat(32);
    let results = ota(mqtt, &thing, "fw-task-2", &url, meta(&wrong_md5, len)).await;
    assert_eq!(
        err_code(&results),
        code(OtaErrorCode::FileContentWrong),
        "{results:?}"
    );
    let missing = format!("http://{files}/missing.bin");
    let results = ota(mqtt, &thing, "fw-task-3", &missing, meta(FILE_MD5, len)).await;
    assert_eq!(
        err_code(&results),
        code(OtaErrorCode::FileUrlUnusable),
        "{results:?}"
    );
    let huge = iothub_firmware_app::ota::OTA_CAPACITY + 1;
    let results = ota(mqtt, &thing, "fw-task-4", &url, meta(FILE_MD5, huge)).await;
    assert_eq!(
        err_code(&results),
        code(OtaErrorCode::NoSpace),
        "{results:?}"
    );

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
