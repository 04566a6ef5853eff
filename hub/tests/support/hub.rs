//! The hub under test: a real `iothub` process on loopback ports with its own data directory,
//! restarted or killed at will, and REST calls against it with the admin token.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use iothub_launch::{HubCommand, HubProcess};
use serde_json::{Value, json};

use super::{ADMIN_TOKEN, Client, Proto, SVC_SECRET, SVC_USER, thing_topic, unique};

/// How long the hub may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `iothub` process with its own data directory.
pub struct Hub {
    process: Option<HubProcess>,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    bin: PathBuf,
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
        Hub::start_full(&[], None, dir, extra, env)
    }

    /// Starts `bin` (another build of `iothub`, e.g. a release build for a load tool) on a
    /// fresh temporary data directory with extra flags.
    pub fn start_bin(bin: &Path, extra: &[&str]) -> Hub {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut hub = Hub::start_full(&[], Some(bin), tmp.path(), extra, &[]);
        hub._tmp = Some(tmp);
        hub
    }

    /// Starts a hub on a fresh temporary data directory through `wrapper`, a command that sets
    /// something up and then execs its arguments in the same process (e.g. `prlimit
    /// --nofile=1024:1024 --`), so the hub runs under it from its first instruction.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Hub {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut hub = Hub::start_full(wrapper, None, tmp.path(), extra, &[]);
        hub._tmp = Some(tmp);
        hub
    }

    fn start_full(
        wrapper: &[&str],
        bin: Option<&Path>,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Hub {
        let wrapper: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bin = bin.map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_iothub")),
            Path::to_path_buf,
        );
        let (process, mqtt, http) = spawn_hub(&wrapper, &bin, dir, &extra, &env);
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
            wrapper,
            bin,
            mqtt,
            http,
            http_client,
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ready line the running hub printed (its TLS and WebSocket listeners too).
    pub fn ready(&self) -> iothub_launch::ReadyLine {
        self.process.as_ref().expect("hub is running").ready()
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
        let (process, mqtt, http) =
            spawn_hub(&self.wrapper, &self.bin, &self.dir, &self.extra, &self.env);
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

    /// Registers things with the given tags through the batch API (S-9.2), 1,000 per request;
    /// returns id -> secret.
    pub async fn create_tagged_things(
        &self,
        things: &[(String, Value)],
    ) -> std::collections::BTreeMap<String, String> {
        let mut secrets = std::collections::BTreeMap::new();
        for chunk in things.chunks(1000) {
            let items: Vec<Value> = chunk
                .iter()
                .map(|(id, tags)| json!({"thingId": id, "tags": tags}))
                .collect();
            let (status, body) = self.post("/things/batch", json!({ "things": items })).await;
            assert_eq!(status, 200, "{body}");
            for item in body["data"].as_array().expect("batch results") {
                assert_eq!(item["code"], 201, "{item}");
                secrets.insert(
                    item["thingId"].as_str().expect("thingId").to_owned(),
                    item["data"]["password"]
                        .as_str()
                        .expect("password")
                        .to_owned(),
                );
            }
        }
        secrets
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
    wrapper: &[String],
    bin: &Path,
    dir: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> (HubProcess, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(dir).expect("create data dir");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = HubCommand::new(program);
            cmd.args(args).arg(bin);
            cmd
        }
        None => HubCommand::new(bin),
    };
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
