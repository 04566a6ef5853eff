//! A stand-in external registry for the registry sync tests (docs/spec.md S-13.1): a real HTTP
//! server on 127.0.0.1 with its own devices, written from the spec's table by hand. It checks
//! each operation's own header, can answer 503 to the next N writes, and can go away (its
//! listener closed, its connections ended) and come back on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Map, Value, json};

use super::{ADMIN_TOKEN, Hub, eventually};

/// The header each operation must carry (name, value).
pub const LIST_HEADER: (&str, &str) = ("x-list-key", "list-secret");
/// Create's header.
pub const CREATE_HEADER: (&str, &str) = ("authorization", "Bearer create-secret");
/// Delete's header.
pub const DELETE_HEADER: (&str, &str) = ("x-delete-key", "delete-secret");

/// The registry's state, shared with the test.
#[derive(Default)]
pub struct Data {
    /// Devices by id: their tags.
    pub devices: Mutex<BTreeMap<String, Map<String, Value>>>,
    /// Entries listed besides the devices (invalid ones, to be refused by the hub).
    pub junk: Mutex<Vec<Value>>,
    /// Writes (create, delete) still to be answered 503.
    pub fail_writes: AtomicU64,
    /// Writes answered 503.
    pub refused: AtomicU64,
    /// Creates answered 201 or 409.
    pub creates: AtomicU64,
    /// Deletes answered 204 or 404.
    pub deletes: AtomicU64,
    /// Requests with a missing or wrong header.
    pub unauthorized: AtomicU64,
}

impl Data {
    /// Sorted device ids.
    pub fn ids(&self) -> Vec<String> {
        self.devices.lock().expect("lock").keys().cloned().collect()
    }
}

/// A running stand-in.
pub struct StandIn {
    /// Its state.
    pub data: Arc<Data>,
    /// Where it listens (kept across [`StandIn::stop`] and [`StandIn::start_again`]).
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StandIn {
    /// Starts on a free port.
    pub async fn start(data: Arc<Data>) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut s = StandIn {
            data,
            addr,
            stop: None,
            task: None,
        };
        s.serve(listener);
        s
    }

    /// A port with nothing listening yet (the registry is down), kept for [`StandIn::start_again`].
    pub async fn down(data: Arc<Data>) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        StandIn {
            data,
            addr,
            stop: None,
            task: None,
        }
    }

    /// The base URL of the contract.
    pub fn url(&self) -> String {
        format!("http://{}/registry", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/registry/devices", get(list).post(create))
            .route("/registry/devices/{id}", delete(remove))
            .with_state(self.data.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        }));
    }

    /// Goes away: the listener is closed and the open connections end.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }

    /// Comes back on the same port.
    pub async fn start_again(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the same port again");
        self.serve(listener);
    }
}

fn authorized(data: &Data, headers: &HeaderMap, (name, value): (&str, &str)) -> bool {
    let ok = headers.get(name).and_then(|v| v.to_str().ok()) == Some(value);
    if !ok {
        data.unauthorized.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

/// One more write to refuse with 503?
fn refuse(data: &Data) -> bool {
    let refused = data
        .fail_writes
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refused {
        data.refused.fetch_add(1, Ordering::SeqCst);
    }
    refused
}

async fn list(
    State(data): State<Arc<Data>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if !authorized(&data, &headers, LIST_HEADER) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Keyset paging, as S-13.1 asks: the cursor is the last id of the page, so devices added or
    // removed between pages make no other device skipped. The junk entries come last.
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    let after = q.get("cursor").cloned();
    if after.as_deref() == Some("~junk") {
        let junk = data.junk.lock().expect("lock").clone();
        return Json(json!({"devices": junk, "next": null})).into_response();
    }
    let devices = data.devices.lock().expect("lock");
    let mut page: Vec<Value> = Vec::new();
    let mut last = None;
    for (id, tags) in devices
        .iter()
        .filter(|(id, _)| after.as_ref().is_none_or(|a| *id > a))
        .take(limit)
    {
        page.push(json!({"id": id, "tags": tags}));
        last = Some(id.clone());
    }
    let more = last
        .as_ref()
        .is_some_and(|l| devices.keys().any(|id| id > l));
    let next = match (more, last) {
        (true, Some(l)) => Some(l),
        _ => Some("~junk".to_owned()),
    };
    Json(json!({"devices": page, "next": next})).into_response()
}

async fn create(
    State(data): State<Arc<Data>>,
    headers: HeaderMap,
    Json(device): Json<Value>,
) -> Response {
    if !authorized(&data, &headers, CREATE_HEADER) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if refuse(&data) {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    let Some(id) = device.get("id").and_then(Value::as_str) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let tags = device
        .get("tags")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    data.creates.fetch_add(1, Ordering::SeqCst);
    let mut devices = data.devices.lock().expect("lock");
    if devices.contains_key(id) {
        return StatusCode::CONFLICT.into_response();
    }
    devices.insert(id.to_owned(), tags);
    (StatusCode::CREATED, Json(device.clone())).into_response()
}

async fn remove(
    State(data): State<Arc<Data>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&data, &headers, DELETE_HEADER) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if refuse(&data) {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    data.deletes.fetch_add(1, Ordering::SeqCst);
    match data.devices.lock().expect("lock").remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The `[registry_sync]` head of a config file for `url`, with the three headers.
pub fn config_head(url: &str) -> String {
    format!(
        "[registry_sync]\nurl = \"{url}\"\ntimeout = \"2s\"\npage_size = 40\n\
         [registry_sync.auth.list]\nname = \"{}\"\nvalue = \"{}\"\n\
         [registry_sync.auth.create]\nname = \"{}\"\nvalue = \"{}\"\n\
         [registry_sync.auth.delete]\nname = \"{}\"\nvalue = \"{}\"\n",
        LIST_HEADER.0,
        LIST_HEADER.1,
        CREATE_HEADER.0,
        CREATE_HEADER.1,
        DELETE_HEADER.0,
        DELETE_HEADER.1
    )
}

// ---------- helpers of the registry sync tests ----------

/// How long a sync may take to converge.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Writes `text` as a config file in `dir` and returns the flags that read it.
pub fn config_flags(dir: &std::path::Path, text: &str) -> Vec<String> {
    let path = dir.join("iothub.toml");
    std::fs::write(&path, text).expect("write config");
    vec!["--config".into(), path.display().to_string()]
}

pub fn start(data_dir: &std::path::Path, flags: &[String]) -> Hub {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| Hub::start_with(data_dir, &flags))
}

/// The number of things, all or only `enabled=`.
pub async fn thing_count(hub: &Hub, enabled: Option<bool>) -> u64 {
    let filter = enabled.map_or(String::new(), |e| format!("&enabled={e}"));
    let (s, body) = hub
        .call("GET", &format!("/things?pageSize=1{filter}"), None)
        .await;
    assert_eq!(s, 200, "{body}");
    body["data"]["total"].as_u64().expect("total")
}

/// Every thing id of the hub.
pub async fn hub_ids(hub: &Hub) -> Vec<String> {
    let mut ids = Vec::new();
    for page in 0.. {
        let (s, body) = hub
            .call(
                "GET",
                &format!("/things?pageSize=1000&pageIndex={page}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let content = body["data"]["content"].as_array().expect("content").clone();
        ids.extend(
            content
                .iter()
                .map(|t| t["thingId"].as_str().expect("id").to_owned()),
        );
        if content.len() < 1000 {
            return ids;
        }
    }
    ids
}

/// `GET /sync/events?QUERY` as the admin: the events.
pub async fn events(hub: &Hub, query: &str) -> Vec<Value> {
    let (s, body) = hub
        .call("GET", &format!("/sync/events?{query}"), None)
        .await;
    assert_eq!(s, 200, "{body}");
    body["data"].as_array().expect("events").clone()
}

/// How many events of `kind` (all of them, up to 1000).
pub async fn count(hub: &Hub, kind: &str) -> usize {
    events(hub, &format!("kind={kind}&limit=1000")).await.len()
}

/// The value of `iothub_registry_sync_events_total{kind="KIND"}` in `/metrics`.
pub async fn metric(hub: &Hub, kind: &str) -> u64 {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/metrics", hub.base_url()))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    let needle = format!("iothub_registry_sync_events_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in /metrics"))
}

/// Waits for a scheduled round that started after this call and changed nothing (so every
/// earlier round's events are stored) and returns its report from `GET /sync`.
pub async fn quiet_round(hub: &Hub) -> Value {
    // Only a round that started from now on: the last one reported may predate the changes
    // just made (or be still running them).
    let since = super::now_ms();
    eventually(CONVERGE, || async {
        let (s, status) = hub.call("GET", "/sync", None).await;
        assert_eq!(s, 200, "{status}");
        assert_eq!(status["data"]["schedule"], true, "{status}");
        let r = &status["data"]["lastRound"];
        let quiet = r.is_object()
            && r["startedAt"].as_u64().is_some_and(|t| t >= since)
            && r["error"].is_null()
            && r["created"] == 0
            && r["deleted"] == 0
            && r["disabled"] == 0;
        quiet.then(|| r.clone())
    })
    .await
    .unwrap_or_else(|| panic!("no quiet round\n{}", hub.stderr()))
}

/// The hub's whole log (its `stderr` is only the tail).
pub fn full_log(hub: &Hub) -> String {
    std::fs::read_to_string(hub.dir().join("hub-stderr.log")).expect("the hub's log")
}

pub fn devices(data: &Data, ids: impl IntoIterator<Item = String>) {
    let mut devices = data.devices.lock().expect("lock");
    for id in ids {
        devices.insert(id, Map::from_iter([("model".into(), json!("x1"))]));
    }
}

/// A console page's HTML, signed in with the admin token.
pub async fn console_page(hub: &Hub, path: &str) -> String {
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = http
        .post(format!("{}/console/login", hub.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("sign in");
    assert_eq!(resp.status(), 303, "signed in");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let resp = http
        .get(format!("{}{path}", hub.base_url()))
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET page");
    assert_eq!(resp.status(), 200, "{path}");
    resp.text().await.expect("html")
}

/// The `[registry_sync.push]` section of the real-time tests.
pub fn push_config(url: &str, retry: &str) -> String {
    format!(
        "{}[registry_sync.push]\n{retry}poll = \"100ms\"\n",
        config_head(url)
    )
}
