//! Routes (S-14) end to end: the real `iothub` binary, things publishing QoS 1 over loopback
//! (rumqttc, MQTT 3.1.1 and 5), and a real HTTP receiver (axum on 127.0.0.1:0) in the test.
//!
//! What is shown: signed webhook batches; a receiver that answers 503 and then disappears gets
//! everything later, in order per thing; what was acknowledged survives a SIGKILL; full outboxes
//! drop the oldest (counted) or refuse with PUBACK 0x97; failures become dead letters and a
//! replay delivers them; the history API with from/to/limit and its retention; a store fault
//! while writing the outbox refuses the PUBACK.
//!
//! - [`delivery`]: signed batches, an outage, SIGKILL;
//! - [`at_size`]: 100 things' QoS 1 streams through a 20 s receiver outage;
//! - [`outbox`]: full outboxes, dead letters, an injected store fault;
//! - [`history`]: the history sink and a query filter;
//! - [`sources`]: hub sources to a file, route management;
//! - [`bridge`]: the MQTT bridge sink, plain and over mutual TLS, and to a Mosquitto killed
//!   mid-stream;
//! - [`bench`]: the throughput figure (ignored).

#[path = "../support/mod.rs"]
mod support;

mod at_size;
mod bench;
mod bridge;
mod delivery;
mod history;
mod outbox;
mod sources;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::*;
use tokio::sync::oneshot;

/// Waits for deliveries, retries included.
pub(crate) const SLACK: Duration = Duration::from_secs(30);
pub(crate) const SECRET: &str = "route-secret";

/// One POST the receiver took.
#[derive(Clone)]
pub(crate) struct Post {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

#[derive(Clone, Default)]
pub(crate) struct Shared {
    posts: Arc<Mutex<Vec<Post>>>,
    /// The status the receiver answers with.
    status: Arc<AtomicU16>,
    /// POSTs refused (401) because their `X-Iothub-Signature` was missing or wrong.
    bad_signatures: Arc<AtomicU64>,
}

/// An HTTP receiver on a fixed loopback port that can be stopped (listener closed) and started
/// again on the same port.
pub(crate) struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
}

/// `sha256=<hex>` of `body` under [`SECRET`], computed here (not with the hub's code).
pub(crate) fn expected_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The receiver's handler: checks the signature of every POST before anything else (a bad one
/// is answered 401 and counted), then answers the configured status.
pub(crate) async fn take(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signed = headers
        .get("x-iothub-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected_signature(&body));
    if !signed {
        shared.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let status = StatusCode::from_u16(shared.status.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_success() {
        shared
            .posts
            .lock()
            .expect("posts")
            .push(Post { headers, body });
    }
    status
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let shared = Shared::default();
        shared.status.store(200, Ordering::Relaxed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut r = Receiver {
            addr,
            shared,
            stop: None,
        };
        r.serve(listener);
        r
    }

    /// A receiver whose port is reserved but which does not listen yet.
    pub(crate) async fn not_listening() -> Receiver {
        let mut r = Receiver::start().await;
        r.stop();
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(take))
            .with_state(self.shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
    }

    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub(crate) async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STEP;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::Relaxed);
    }

    /// POSTs refused for a missing or wrong signature.
    pub(crate) fn bad_signatures(&self) -> u64 {
        self.shared.bad_signatures.load(Ordering::Relaxed)
    }

    /// Whether a TCP connection to the receiver's port is refused now.
    pub(crate) async fn refuses_connections(&self) -> bool {
        tokio::net::TcpStream::connect(self.addr).await.is_err()
    }

    pub(crate) fn posts(&self) -> Vec<Post> {
        self.shared.posts.lock().expect("posts").clone()
    }

    /// Every message received, in arrival order (repeats included), each checked against its
    /// batch's signature.
    pub(crate) fn messages(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for post in self.posts() {
            let signature = post
                .headers
                .get("x-iothub-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(signature, expected_signature(&post.body), "bad signature");
            let batch: Value = serde_json::from_slice(&post.body).expect("batch is JSON");
            all.extend(
                batch["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .cloned(),
            );
        }
        all
    }

    /// Waits until `n` distinct messages (by route and seq) have arrived; returns them in order
    /// of first arrival.
    pub(crate) async fn wait_distinct(&self, n: usize, within: Duration) -> Vec<Value> {
        let got = eventually(within, || async {
            let distinct = distinct(self.messages());
            (distinct.len() >= n).then_some(distinct)
        })
        .await;
        got.unwrap_or_else(|| {
            panic!(
                "wanted {n} messages, got {}",
                distinct(self.messages()).len()
            )
        })
    }
}

/// First arrival of each (route, seq).
pub(crate) fn distinct(messages: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    messages
        .into_iter()
        .filter(|m| seen.insert((m["route"].to_string(), m["seq"].as_u64())))
        .collect()
}

/// The telemetry topic of S-2, written from the spec by hand.
pub(crate) fn telemetry(thing: &str) -> String {
    format!("$iothub/things/{thing}/messages/property")
}

pub(crate) fn webhook_route(id: &str, url: &str, extra: Value) -> Value {
    let mut route = json!({
        "id": id,
        "sources": ["telemetry"],
        "sink": {"type": "webhook", "url": url, "secret": SECRET,
                 "headers": {"X-Custom": "yes"}, "timeoutMs": 2000},
        "batchMax": 10,
        "batchDelayMs": 20,
        "retryInitialMs": 50,
        "retryMaxMs": 400,
        "maxAttempts": 1000,
    });
    if let (Some(r), Some(e)) = (route.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            r.insert(k.clone(), v.clone());
        }
    }
    route
}

pub(crate) async fn create_route(hub: &Hub, route: Value) -> Value {
    let (status, body) = hub.post("/routes", route).await;
    assert_eq!(status, 201, "{body}");
    body["data"].clone()
}

pub(crate) async fn route_status(hub: &Hub, id: &str) -> Value {
    let (status, body) = hub.get(&format!("/routes/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// The `n` values a thing's messages carry, in delivery order.
pub(crate) fn ns_of(messages: &[Value], thing: &str) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["thingId"] == thing)
        .filter_map(|m| m["payload"]["n"].as_u64())
        .collect()
}

pub(crate) async fn publish_range(client: &mut Client, topic: &str, range: std::ops::Range<u64>) {
    for n in range {
        client.publish_json(topic, &json!({ "n": n })).await;
    }
}
