//! Message sizes against the real hub: a desired state at the hub's default `maxStateBytes`
//! (32 KiB, the worst case for metadata: thousands of small leaves) reaches the device whole;
//! a message over `ThingOptions::max_message_bytes` is an application-visible error with its
//! size, and the device resyncs once the desired state fits again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use iothub_sdk::spec::limits::Limits;
use iothub_sdk::{Error, Protocol, Thing};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use support::{Hub, next};

/// `n` leaves `"ab":0` with distinct two-letter keys: about 7 bytes of state each and 32 bytes
/// of metadata, the densest metadata a state can have in practice.
fn leaves(n: usize) -> Map<String, Value> {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..n)
        .map(|i| {
            let k = [
                A[i / A.len() % A.len()],
                A[i % A.len()],
                b'0' + (i / (A.len() * A.len())) as u8,
            ];
            (String::from_utf8_lossy(&k).into_owned(), json!(0))
        })
        .collect()
}

/// D-17's measure of a state with only `desired`.
fn state_size(desired: &Map<String, Value>) -> usize {
    serde_json::to_string(&json!({"desired": desired}))
        .unwrap()
        .len()
}

async fn full_size_state_reaches_the_device(protocol: Protocol) {
    let hub = Hub::start();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("iothub_sdk=debug")
        .with_test_writer()
        .try_init();
    let (id, opts) = hub.new_thing("full").await;
    let thing = Thing::connect(opts.protocol(protocol))
        .await
        .expect("connect");
    let shadow = thing.shadow("default");
    let mut deltas = shadow.deltas().expect("deltas");
    let max = Limits::DEFAULT.max_state_bytes;
    // The REST body is bounded too (maxRequestPayload, 8 KiB): fill the state in groups
    // `g0`, `g1`, ... of leaves, each request as large as it may be, the last one up to the
    // state limit.
    let payload = Limits::DEFAULT.max_request_payload;
    let mut desired = Map::new();
    for g in 0.. {
        let key = format!("g{g}");
        let fits = |m: usize| {
            let group = Value::Object(leaves(m));
            let body = json!({"state": {"desired": {&key: group.clone()}}});
            let mut all = desired.clone();
            all.insert(key.clone(), group);
            serde_json::to_string(&body).unwrap().len() <= payload && state_size(&all) <= max
        };
        let mut m = 0;
        while fits(m + 1) {
            m += 1;
        }
        if m == 0 {
            break;
        }
        let group = Value::Object(leaves(m));
        let (status, body) = hub
            .set_desired(&id, "default", json!({&key: group.clone()}))
            .await;
        assert_eq!(status, 200, "{body}");
        desired.insert(key, group);
    }
    assert!(max - state_size(&desired) < 16, "{}", state_size(&desired));
    let (status, body) = hub
        .set_desired(&id, "default", json!({"zz9": "x".repeat(32)}))
        .await;
    assert_eq!(status, 413, "more is over the hub's limit: {body}");

    // Deltas of the earlier groups may come first; the last one holds the whole state.
    while next(&mut deltas).await.state != desired {}
    let doc = shadow
        .get()
        .await
        .expect("the whole document reaches the device");
    assert_eq!(doc.desired, Some(Value::Object(desired)));
    // Nothing was over the limit: the connection never restarted (an `update/documents` of
    // the previous and the current document, 343,508 bytes here, once did).
    assert_eq!(thing.connection_state().connects, 1, "reconnected");
    thing.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_size_state_reaches_the_device_v311() {
    full_size_state_reaches_the_device(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_size_state_reaches_the_device_v5() {
    full_size_state_reaches_the_device(Protocol::V5).await;
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    #[serde(default)]
    label: Option<String>,
}

/// MQTT 3.1.1 (the default): rumqttc cannot skip a packet over its limit, so the connection
/// restarts; `SyncedState::next` says so with the size, and resyncs when the state fits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_an_error_with_its_size() {
    let hub = Hub::start();
    let (id, opts) = hub.new_thing("big").await;
    let thing = Thing::connect(opts.max_message_bytes(4096))
        .await
        .expect("connect");
    let mut state = thing
        .shadow("default")
        .synced_state(State::default())
        .await
        .expect("synced state");
    let (status, _) = hub
        .set_desired(&id, "default", json!({"label": "x".repeat(6000)}))
        .await;
    assert_eq!(status, 200);
    let step = Duration::from_secs(10);
    let err = tokio::time::timeout(step, state.next())
        .await
        .expect("an answer in time")
        .expect("not closed")
        .expect_err("the oversized delta is an error");
    match err {
        Error::TooLarge { needed, capacity } => {
            assert_eq!(capacity, 4096);
            assert!(needed > 6000, "needed {needed}");
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    // Shrink it: after reconnecting the device resyncs and applies the small state.
    let (status, _) = hub
        .set_desired(&id, "default", json!({"label": "ok"}))
        .await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = tokio::time::timeout_at(deadline, state.next())
            .await
            .expect("resynced in time")
            .expect("not closed");
        match r {
            Ok(_) if state.get().label.as_deref() == Some("ok") => break,
            // A document fetched before the shrink may still be over the limit.
            Ok(_) | Err(Error::TooLarge { .. } | Error::SyncLost { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    thing.close().await;
}

/// MQTT 5: the thing announces its limit as Maximum Packet Size and the hub discards a larger
/// message (D-40), so nothing arrives at all; the device's own `get` of a document over the
/// limit times out, and after three in a row `SyncedState::next` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_limit_is_sync_lost_over_mqtt5() {
    let hub = Hub::start();
    let (id, opts) = hub.new_thing("lost").await;
    let (status, _) = hub
        .set_desired(&id, "default", json!({"label": "x".repeat(6000)}))
        .await;
    assert_eq!(status, 200);
    let opts = opts
        .mqtt5()
        .max_message_bytes(4096)
        .request_timeout(Duration::from_secs(1));
    let thing = Thing::connect(opts).await.expect("connect");
    let mut state = thing
        .shadow("default")
        .synced_state(State::default())
        .await
        .expect("synced state");
    let err = tokio::time::timeout(Duration::from_secs(30), state.next())
        .await
        .expect("an answer in time")
        .expect("not closed")
        .expect_err("the document never arrives");
    assert!(
        matches!(err, Error::SyncLost { attempts: 3 }),
        "expected SyncLost after 3 attempts, got {err}"
    );
    assert_eq!(
        thing.connection_state().connects,
        1,
        "the connection stays up"
    );
    thing.close().await;
}
