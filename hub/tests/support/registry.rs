//! A stand-in external registry for the registry sync tests (docs/spec.md S-13.1): a real HTTP
//! server on 127.0.0.1 with its own devices, written from the spec's table by hand. It checks
//! each operation's own header, can answer 503 to the next N writes, and can go away (its
//! listener closed, its connections ended) and come back on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Map, Value, json};

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
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    let from: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut all: Vec<Value> = data
        .devices
        .lock()
        .expect("lock")
        .iter()
        .map(|(id, tags)| json!({"id": id, "tags": tags}))
        .collect();
    all.extend(data.junk.lock().expect("lock").iter().cloned());
    let page: Vec<Value> = all.iter().skip(from).take(limit).cloned().collect();
    let next = (from + limit < all.len()).then(|| (from + limit).to_string());
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
