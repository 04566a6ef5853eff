//! Harness shared by the hub's end-to-end tests: starts the real `iothub` binary on loopback and
//! drives it over TCP with rumqttc (MQTT 3.1.1 and MQTT 5) and reqwest (REST).
//!
//! Nothing here sleeps to synchronize: every wait polls with a deadline. Topics and payloads are
//! written from SPEC.md by hand (never taken from the hub's or the spec crate's code), so the
//! tests are an independent check of the wire contract.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iothub_launch::{HubCommand, HubProcess};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Bearer token every test hub is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The service user every test hub is configured with (S-1.5).
pub const SVC_USER: &str = "$svc";
/// Its secret.
pub const SVC_SECRET: &str = "svc-secret";
/// How long to wait for something that must happen (a reply, an event).
pub const STEP: Duration = Duration::from_secs(10);
/// How long to watch for something that must NOT happen.
pub const QUIET: Duration = Duration::from_millis(700);
/// How long the hub may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Milliseconds since the Unix epoch, as the hub stamps its documents.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process-unique suffix for thing ids and client tokens.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// `$iothub/things/{thing}`.
pub fn thing_topic(thing: &str) -> String {
    format!("$iothub/things/{thing}")
}

/// `$iothub/things/{thing}/shadows/name/{shadow}/{suffix}` (S-2).
pub fn shadow_topic(thing: &str, shadow: &str, suffix: &str) -> String {
    format!("$iothub/things/{thing}/shadows/name/{shadow}/{suffix}")
}

/// A running `iothub` process with its own data directory.
pub struct Hub {
    process: Option<HubProcess>,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// The MQTT listener.
    pub mqtt: SocketAddr,
    /// The HTTP listener.
    pub http: SocketAddr,
    http_client: reqwest::Client,
}

impl Hub {
    /// Starts a hub with default limits on a fresh temporary data directory.
    pub fn start() -> Hub {
        Hub::start_args(&[])
    }

    /// Starts a hub on a fresh temporary data directory with extra flags.
    pub fn start_args(extra: &[&str]) -> Hub {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut hub = Hub::start_with(tmp.path(), extra);
        hub._tmp = Some(tmp);
        hub
    }

    /// Starts a hub on `dir` (kept by the caller) with extra flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Hub {
        Hub::start_with_env(dir, extra, &[])
    }

    /// Starts a hub on `dir` with extra flags and environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Hub {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (process, mqtt, http) = spawn_hub(dir, &extra, &env);
        let http_client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("reqwest client");
        Hub {
            process: Some(process),
            _tmp: None,
            dir: dir.to_path_buf(),
            extra,
            env,
            mqtt,
            http,
            http_client,
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of the running hub.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("hub is running").pid()
    }

    /// SIGKILL: the hub gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM, then waits (at most `within`) for the process to exit and returns its status.
    /// Panics (after a SIGKILL) when it does not exit in time.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut process = self.process.take().expect("hub is running");
        process.terminate(within).unwrap_or_else(|e| {
            panic!("{e}\n--- hub stderr (tail) ---\n{}", stderr_tail(&self.dir))
        })
    }

    /// Starts the hub again on the same data directory and flags (killing it first if it still
    /// runs). Ports change.
    pub fn restart(&mut self) {
        self.kill();
        let (process, mqtt, http) = spawn_hub(&self.dir, &self.extra, &self.env);
        self.process = Some(process);
        self.mqtt = mqtt;
        self.http = http;
    }

    /// The last part of the hub's stderr (its logs), for failure messages.
    pub fn stderr(&self) -> String {
        stderr_tail(&self.dir)
    }

    /// Whether the process is still alive (it must survive every bad input).
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(HubProcess::is_running)
    }

    // ---------- REST ----------

    /// The base URL of the HTTP listener.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A REST call under `/api/v1` (`path` starts with `/`), with the admin token and an
    /// optional JSON body. Returns the status and the parsed body (`Null` when empty, a JSON
    /// string holding the text when it is not JSON).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(ADMIN_TOKEN), method, path, body).await
    }

    /// Like [`Hub::call`] with a chosen bearer token (or none).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let raw = body.map(|b| serde_json::to_vec(&b).expect("serialize body"));
        self.call_raw(token, method, path, raw, "application/json")
            .await
    }

    /// A REST call under `/api/v1` with raw body bytes.
    pub async fn call_raw(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> (u16, Value) {
        let url = format!("{}/api/v1{path}", self.base_url());
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("http method");
        let mut req = self.http_client.request(method, url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", content_type).body(body);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("HTTP body");
        (status, parse_body(&text))
    }

    /// A GET of any path (e.g. `/healthz`, `/metrics`), no token: status, content type, text.
    pub async fn get_text(&self, path: &str) -> (u16, String, String) {
        let resp = self
            .http_client
            .get(format!("{}{path}", self.base_url()))
            .send()
            .await
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await.expect("HTTP body");
        (status, ctype, text)
    }

    /// GET under `/api/v1`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// POST under `/api/v1`.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// PUT under `/api/v1`.
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(body)).await
    }

    /// PATCH under `/api/v1`.
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PATCH", path, Some(body)).await
    }

    /// DELETE under `/api/v1`.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None).await
    }

    /// Registers a thing (S-9.2) and returns its secret (shown once, in `data.password`).
    pub async fn create_thing(&self, id: &str) -> String {
        let (status, body) = self.post("/things", json!({ "thingId": id })).await;
        assert!(
            (200..300).contains(&status),
            "create thing {id}: HTTP {status} {body}"
        );
        body["data"]["password"]
            .as_str()
            .unwrap_or_else(|| panic!("create thing {id}: no data.password in {body}"))
            .to_string()
    }

    /// `GET /things/{id}/shadows/{name}`: status and the body's `data`.
    pub async fn rest_shadow(&self, thing: &str, shadow: &str) -> (u16, Value) {
        let (status, body) = self.get(&format!("/things/{thing}/shadows/{shadow}")).await;
        (status, body["data"].clone())
    }

    /// `GET /things/{id}`: status and the body's `data`.
    pub async fn rest_thing(&self, thing: &str) -> (u16, Value) {
        let (status, body) = self.get(&format!("/things/{thing}")).await;
        (status, body["data"].clone())
    }

    // ---------- MQTT ----------

    /// Connects as a thing (client id = username = thing id), panicking if refused.
    pub async fn connect_thing(&self, proto: Proto, thing: &str, secret: &str) -> Client {
        Client::connect(proto, self.mqtt, thing, thing, secret)
            .await
            .unwrap_or_else(|e| panic!("connect {thing} ({proto:?}): {e:?}\n{}", self.stderr()))
    }

    /// Creates a thing and connects it, subscribed to its own `T/#`.
    pub async fn new_thing(&self, proto: Proto, prefix: &str) -> (String, String, Client) {
        let id = unique(prefix);
        let secret = self.create_thing(&id).await;
        let mut client = self.connect_thing(proto, &id, &secret).await;
        let rc = client
            .subscribe(&format!("{}/#", thing_topic(&id)))
            .await
            .expect("subscribe own topics");
        assert!(rc < 0x80, "own T/# refused: {rc:#x}");
        (id, secret, client)
    }

    /// Connects as the configured service user with a unique client id.
    pub async fn connect_service(&self, proto: Proto) -> Client {
        let id = unique("svc");
        Client::connect(proto, self.mqtt, &id, SVC_USER, SVC_SECRET)
            .await
            .unwrap_or_else(|e| panic!("connect service user: {e:?}\n{}", self.stderr()))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_body(text: &str) -> Value {
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
    }
}

fn stderr_path(dir: &Path) -> PathBuf {
    dir.join("hub-stderr.log")
}

fn stderr_tail(dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(stderr_path(dir)) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

fn spawn_hub(
    dir: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> (HubProcess, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(dir).expect("create data dir");
    let mut cmd = HubCommand::new(env!("CARGO_BIN_EXE_iothub"));
    cmd.args(["--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--admin-token", ADMIN_TOKEN, "--service-user"])
        .arg(format!("{SVC_USER}:{SVC_SECRET}"))
        .args(extra)
        .stderr_to(stderr_path(dir))
        .ready_timeout(READY_TIMEOUT);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.spawn() {
        Ok(process) => {
            let ready = process.ready();
            (process, ready.mqtt, ready.http)
        }
        Err(e) => panic!(
            "hub did not start ({e}); args {extra:?}\n--- hub stderr (tail) ---\n{}",
            stderr_tail(dir)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT
// ---------------------------------------------------------------------------------------------

/// MQTT protocol version of a test client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// CONNACK with this return code (3.1.1) or reason code (5).
    Refused(u8),
    /// No CONNACK: the connection failed or was closed.
    Failed(String),
}

/// A request could not complete: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnected(pub String);

/// One received PUBLISH.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its retain flag.
    pub retain: bool,
    /// Its QoS (0, 1 or 2).
    pub qos: u8,
}

impl Msg {
    /// The payload as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

enum Ev {
    ConnAck,
    Refused(u8),
    Msg(Msg),
    PubAck(u16, u8),
    SubAck(u16, Vec<u8>),
    OutPublish(u16),
    OutSubscribe(u16),
    Closed(String),
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A test MQTT client over either protocol version. Its event loop runs in a task that forwards
/// events here; the client never reconnects (a closed connection stays closed).
pub struct Client {
    /// The client identifier.
    pub id: String,
    /// The protocol version.
    pub proto: Proto,
    handle: Handle,
    rx: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
    msgs: VecDeque<Msg>,
    closed: Option<String>,
    pub_issued: u64,
    pub_seen: u64,
    pub_pkid: HashMap<u64, u16>,
    puback: HashMap<u16, u8>,
    sub_issued: u64,
    sub_seen: u64,
    sub_pkid: HashMap<u64, u16>,
    suback: HashMap<u16, Vec<u8>>,
}

/// TCP_NODELAY: without it, Nagle's algorithm and delayed ACKs hold small packets back ~40 ms,
/// which skews round trips (S-6) and slows every request/reply exchange.
fn nodelay() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}

/// Largest packet the test clients send or accept.
const CLIENT_MAX_PACKET: usize = 4 * 1024 * 1024;

impl Client {
    /// Connects with clean session, keepalive 10 s; waits (at most 10 s) for CONNACK.
    pub async fn connect(
        proto: Proto,
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Client, ConnectError> {
        Client::connect_opts(proto, addr, client_id, username, password, true).await
    }

    /// Like [`Client::connect`], choosing clean session (3.1.1) / clean start (5).
    pub async fn connect_opts(
        proto: Proto,
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
        clean: bool,
    ) -> Result<Client, ConnectError> {
        Client::connect_with_will(proto, addr, client_id, username, password, clean, None).await
    }

    /// Like [`Client::connect_opts`], with an optional MQTT Will `(topic, payload)` at QoS 1.
    pub async fn connect_with_will(
        proto: Proto,
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
        clean: bool,
        will: Option<(&str, &[u8])>,
    ) -> Result<Client, ConnectError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let host = addr.ip().to_string();
        let (handle, task) = match proto {
            Proto::V311 => {
                let mut opts = rumqttc::MqttOptions::new(client_id, host, addr.port());
                opts.set_keep_alive(Duration::from_secs(10))
                    .set_clean_session(clean)
                    .set_credentials(username, password)
                    .set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET)
                    .set_inflight(200);
                if let Some((topic, payload)) = will {
                    opts.set_last_will(rumqttc::LastWill::new(
                        topic,
                        payload.to_vec(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                    ));
                }
                let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
                eventloop.set_network_options(nodelay());
                (Handle::V4(client), tokio::spawn(drive_v4(eventloop, tx)))
            }
            Proto::V5 => {
                let mut opts = rumqttc::v5::MqttOptions::new(client_id, host, addr.port());
                opts.set_keep_alive(Duration::from_secs(10))
                    .set_clean_start(clean)
                    .set_credentials(username, password)
                    .set_max_packet_size(Some(CLIENT_MAX_PACKET as u32))
                    .set_network_options(nodelay());
                if let Some((topic, payload)) = will {
                    opts.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                        topic,
                        payload.to_vec(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        None,
                    ));
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 1024);
                (Handle::V5(client), tokio::spawn(drive_v5(eventloop, tx)))
            }
        };
        let mut client = Client {
            id: client_id.to_string(),
            proto,
            handle,
            rx,
            task,
            msgs: VecDeque::new(),
            closed: None,
            pub_issued: 0,
            pub_seen: 0,
            pub_pkid: HashMap::new(),
            puback: HashMap::new(),
            sub_issued: 0,
            sub_seen: 0,
            sub_pkid: HashMap::new(),
            suback: HashMap::new(),
        };
        let first = tokio::time::timeout(Duration::from_secs(10), client.rx.recv()).await;
        match first {
            Ok(Some(Ev::ConnAck)) => Ok(client),
            Ok(Some(Ev::Refused(code))) => Err(ConnectError::Refused(code)),
            Ok(Some(Ev::Closed(e))) => Err(ConnectError::Failed(e)),
            Ok(Some(_)) => Err(ConnectError::Failed("event before CONNACK".into())),
            Ok(None) => Err(ConnectError::Failed("event loop ended".into())),
            Err(_) => Err(ConnectError::Failed("no CONNACK within 10 s".into())),
        }
    }

    /// Waits for one event (until `deadline`) and records it. False on timeout.
    async fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() && self.rx.is_empty() {
            // Nothing more will come; don't wait for the deadline.
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, self.rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                self.closed.get_or_insert_with(|| "event loop ended".into());
                return true;
            }
            Err(_) => return false,
        };
        match ev {
            Ev::ConnAck => {}
            Ev::Refused(code) => {
                self.closed = Some(format!("refused {code:#x}"));
            }
            Ev::Msg(m) => self.msgs.push_back(m),
            Ev::PubAck(pkid, rc) => {
                self.puback.insert(pkid, rc);
            }
            Ev::SubAck(pkid, codes) => {
                self.suback.insert(pkid, codes);
            }
            Ev::OutPublish(pkid) => {
                // A reused packet id makes any old acknowledgement of it stale.
                self.puback.remove(&pkid);
                self.pub_pkid.insert(self.pub_seen, pkid);
                self.pub_seen += 1;
            }
            Ev::OutSubscribe(pkid) => {
                self.suback.remove(&pkid);
                self.sub_pkid.insert(self.sub_seen, pkid);
                self.sub_seen += 1;
            }
            Ev::Closed(e) => {
                self.closed = Some(e);
            }
        }
        true
    }

    /// Whether the connection is known to be closed (without waiting).
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Subscribes at QoS 1 and returns the SUBACK return/reason code (0x80 / 0x87 = failure).
    pub async fn subscribe(&mut self, filter: &str) -> Result<u8, Disconnected> {
        self.check_open()?;
        let seq = self.sub_issued;
        self.sub_issued += 1;
        let sent = match &self.handle {
            Handle::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.is_ok(),
            Handle::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .is_ok(),
        };
        if !sent {
            return Err(Disconnected(format!("subscribe {filter}: client refused")));
        }
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(pkid) = self.sub_pkid.get(&seq).copied()
                && let Some(codes) = self.suback.remove(&pkid)
            {
                self.sub_pkid.remove(&seq);
                return Ok(codes.first().copied().unwrap_or(0x80));
            }
            if let Some(e) = &self.closed {
                return Err(Disconnected(e.clone()));
            }
            if !self.pump(deadline).await {
                panic!("{}: no SUBACK for {filter} within {STEP:?}", self.id);
            }
        }
    }

    fn check_open(&self) -> Result<(), Disconnected> {
        match &self.closed {
            Some(e) => Err(Disconnected(e.clone())),
            None => Ok(()),
        }
    }

    /// Publishes at QoS 1 without waiting for the PUBACK (for pipelining).
    pub async fn publish_nowait(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), Disconnected> {
        self.check_open()?;
        let payload: Vec<u8> = payload.into();
        let ok = match &self.handle {
            Handle::V4(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .is_ok(),
            Handle::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .is_ok(),
        };
        if !ok {
            return Err(Disconnected(format!("publish {topic}: client refused")));
        }
        self.pub_issued += 1;
        Ok(())
    }

    /// Publishes at QoS 1 and waits for the PUBACK: `Ok(reason)` (always 0 in 3.1.1; MQTT 5
    /// reason code, 0x87 = not authorized), or `Err` when the connection is closed first.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<u8, Disconnected> {
        let seq = self.pub_issued;
        self.publish_nowait(topic, payload).await?;
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(pkid) = self.pub_pkid.get(&seq).copied()
                && let Some(rc) = self.puback.remove(&pkid)
            {
                self.pub_pkid.remove(&seq);
                return Ok(rc);
            }
            if let Some(e) = &self.closed {
                return Err(Disconnected(e.clone()));
            }
            if !self.pump(deadline).await {
                panic!("{}: no PUBACK for {topic} within {STEP:?}", self.id);
            }
        }
    }

    /// Publishes JSON at QoS 1 and asserts a successful PUBACK.
    pub async fn publish_json(&mut self, topic: &str, payload: &Value) {
        let rc = self
            .publish(topic, serde_json::to_vec(payload).expect("json"))
            .await
            .unwrap_or_else(|e| panic!("{}: publish {topic}: {e:?}", self.id));
        assert!(rc < 0x80, "{}: PUBACK {rc:#x} for {topic}", self.id);
    }

    /// The next received message (buffered first), or None after `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Msg> {
        self.wait_message(timeout, |_| true).await
    }

    /// The first received message matching `pred` (buffered ones first; non-matching messages
    /// stay buffered), or None after `timeout` or when the connection closed.
    pub async fn wait_message(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            while checked < self.msgs.len() {
                if pred(&self.msgs[checked]) {
                    return self.msgs.remove(checked);
                }
                checked += 1;
            }
            if !self.pump(deadline).await {
                return None;
            }
        }
    }

    /// The JSON payload of the next message on `topic`; panics after `timeout`.
    pub async fn expect_message(&mut self, topic: &str, timeout: Duration) -> Value {
        match self.wait_message(timeout, |m| m.topic == topic).await {
            Some(m) => m.json(),
            None => panic!(
                "{}: no message on {topic} within {timeout:?} (closed: {:?}; buffered: {:?})",
                self.id,
                self.closed,
                self.msgs.iter().map(|m| &m.topic).collect::<Vec<_>>()
            ),
        }
    }

    /// The first message on `topic` whose JSON payload satisfies `pred`; panics after `timeout`.
    pub async fn expect_json(
        &mut self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = self
            .wait_message(timeout, |m| {
                m.topic == topic
                    && serde_json::from_slice::<Value>(&m.payload)
                        .map(|v| pred(&v))
                        .unwrap_or(false)
            })
            .await;
        match found {
            Some(m) => m.json(),
            None => panic!(
                "{}: no matching message on {topic} within {timeout:?} (closed: {:?}; buffered: {:?})",
                self.id,
                self.closed,
                self.msgs
                    .iter()
                    .map(|m| (
                        m.topic.clone(),
                        String::from_utf8_lossy(&m.payload).into_owned()
                    ))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Whether a message on `topic` arrives within `timeout` (used to assert silence).
    pub async fn sees(&mut self, topic: &str, timeout: Duration) -> bool {
        self.wait_message(timeout, |m| m.topic == topic)
            .await
            .is_some()
    }

    /// Forgets every buffered message.
    pub fn clear(&mut self) {
        self.msgs.clear();
    }

    /// True once the connection is closed (waiting at most `timeout`).
    pub async fn is_disconnected(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.closed.is_none() {
            if !self.pump(deadline).await {
                break;
            }
        }
        self.closed.is_some()
    }

    /// Sends DISCONNECT and waits (briefly) for the event loop to end.
    pub async fn disconnect(mut self) {
        let _ = match &self.handle {
            Handle::V4(c) => c.disconnect().await.is_ok(),
            Handle::V5(c) => c.disconnect().await.is_ok(),
        };
        let _ = self.is_disconnected(Duration::from_secs(3)).await;
    }

    /// Sends a shadow request on `S/{op}` and waits for the matching `S/{op}/accepted` or
    /// `S/{op}/rejected` carrying `token`. The client must be subscribed to them (e.g. `T/#`).
    /// Returns `(accepted, payload)`.
    pub async fn shadow_request(
        &mut self,
        thing: &str,
        shadow: &str,
        op: &str,
        payload: impl Into<Vec<u8>>,
        token: &str,
    ) -> (bool, Value) {
        let topic = shadow_topic(thing, shadow, op);
        self.publish(&topic, payload)
            .await
            .unwrap_or_else(|e| panic!("{}: publish {topic}: {e:?}", self.id));
        self.shadow_reply(thing, shadow, op, token).await
    }

    /// Waits for `S/{op}/accepted|rejected` with `clientToken == token`.
    pub async fn shadow_reply(
        &mut self,
        thing: &str,
        shadow: &str,
        op: &str,
        token: &str,
    ) -> (bool, Value) {
        let accepted = shadow_topic(thing, shadow, &format!("{op}/accepted"));
        let rejected = shadow_topic(thing, shadow, &format!("{op}/rejected"));
        let found = self
            .wait_message(STEP, |m| {
                (m.topic == accepted || m.topic == rejected)
                    && serde_json::from_slice::<Value>(&m.payload)
                        .map(|v| v["clientToken"] == token)
                        .unwrap_or(false)
            })
            .await;
        match found {
            Some(m) => (m.topic == accepted, m.json()),
            None => panic!(
                "{}: no {op} reply with clientToken {token:?} within {STEP:?} (closed: {:?})",
                self.id, self.closed
            ),
        }
    }

    /// Sends an update with `clientToken` and returns `(accepted, reply)`.
    pub async fn update(&mut self, thing: &str, shadow: &str, mut request: Value) -> (bool, Value) {
        let token = unique("tok");
        request["clientToken"] = json!(token);
        let bytes = serde_json::to_vec(&request).expect("json");
        self.shadow_request(thing, shadow, "update", bytes, &token)
            .await
    }

    /// Sends a get with `clientToken` and returns `(accepted, reply)`.
    pub async fn get(&mut self, thing: &str, shadow: &str) -> (bool, Value) {
        let token = unique("tok");
        let bytes = serde_json::to_vec(&json!({ "clientToken": token })).expect("json");
        self.shadow_request(thing, shadow, "get", bytes, &token)
            .await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Ev>) {
    use rumqttc::{ConnectionError, Event, Outgoing, Packet, SubscribeReasonCode};
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
            Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(Msg {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                qos: p.qos as u8,
            }),
            Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck(a.pkid, 0),
            Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                s.pkid,
                s.return_codes
                    .iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => *q as u8,
                        SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect(),
            ),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::OutPublish(pkid),
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => Ev::OutSubscribe(pkid),
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let _ = tx.send(Ev::Refused(code as u8));
                return;
            }
            Err(e) => {
                let _ = tx.send(Ev::Closed(e.to_string()));
                return;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

async fn drive_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::UnboundedSender<Ev>) {
    use rumqttc::Outgoing;
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode as C, Packet, PubAckReason, SubscribeReasonCode as S,
    };
    use rumqttc::v5::{ConnectionError, Event};
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
            Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(Msg {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                qos: p.qos as u8,
            }),
            Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck(
                a.pkid,
                match a.reason {
                    PubAckReason::Success => 0x00,
                    PubAckReason::NoMatchingSubscribers => 0x10,
                    PubAckReason::UnspecifiedError => 0x80,
                    PubAckReason::ImplementationSpecificError => 0x83,
                    PubAckReason::NotAuthorized => 0x87,
                    PubAckReason::TopicNameInvalid => 0x90,
                    PubAckReason::PacketIdentifierInUse => 0x91,
                    PubAckReason::QuotaExceeded => 0x97,
                    PubAckReason::PayloadFormatInvalid => 0x99,
                },
            ),
            Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                s.pkid,
                s.return_codes
                    .iter()
                    .map(|c| match c {
                        S::Success(q) => *q as u8,
                        S::Failure | S::Unspecified => 0x80,
                        S::ImplementationSpecific => 0x83,
                        S::NotAuthorized => 0x87,
                        S::TopicFilterInvalid => 0x8F,
                        S::PkidInUse => 0x91,
                        S::QuotaExceeded => 0x97,
                        S::SharedSubscriptionsNotSupported => 0x9E,
                        S::SubscriptionIdNotSupported => 0xA1,
                        S::WildcardSubscriptionsNotSupported => 0xA2,
                    })
                    .collect(),
            ),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::OutPublish(pkid),
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => Ev::OutSubscribe(pkid),
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let code = match code {
                    C::Success => 0x00,
                    C::UnspecifiedError => 0x80,
                    C::MalformedPacket => 0x81,
                    C::ProtocolError => 0x82,
                    C::ImplementationSpecificError => 0x83,
                    C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 0x84,
                    C::ClientIdentifierNotValid | C::BadClientId => 0x85,
                    C::BadUserNamePassword => 0x86,
                    C::NotAuthorized => 0x87,
                    C::ServerUnavailable | C::ServiceUnavailable => 0x88,
                    C::ServerBusy => 0x89,
                    C::Banned => 0x8A,
                    C::BadAuthenticationMethod => 0x8C,
                    C::TopicNameInvalid => 0x90,
                    C::PacketTooLarge => 0x95,
                    C::QuotaExceeded => 0x97,
                    C::PayloadFormatInvalid => 0x99,
                    C::RetainNotSupported => 0x9A,
                    C::QoSNotSupported => 0x9B,
                    C::UseAnotherServer => 0x9C,
                    C::ServerMoved => 0x9D,
                    C::ConnectionRateExceeded => 0x9F,
                };
                let _ = tx.send(Ev::Refused(code));
                return;
            }
            Err(e) => {
                let _ = tx.send(Ev::Closed(e.to_string()));
                return;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

/// Asserts the S-9.1 envelope: `{"code":C,"message":"..","data":..}` with `code` == status.
pub fn assert_envelope(status: u16, body: &Value) {
    assert!(
        body.is_object(),
        "HTTP {status}: body is not a JSON object: {body}"
    );
    assert_eq!(
        body["code"].as_u64(),
        Some(u64::from(status)),
        "HTTP {status}: envelope code differs: {body}"
    );
    assert!(
        body["message"].is_string(),
        "HTTP {status}: no message: {body}"
    );
    assert!(
        body.as_object().is_some_and(|o| o.contains_key("data")),
        "HTTP {status}: no data: {body}"
    );
}

/// Polls `probe` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
