//! Tests of the shadow pipeline against the real SQLite store (optionally wrapped to block or
//! fail writes) and a recording bus.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tempfile::TempDir;
use tokio::sync::Semaphore;

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::payload::field;
use iothub_spec::topic::Topic;

use super::ShadowService;
use crate::bus::Bus;
use crate::shadow::ShadowOp;
use crate::store::commit::GroupCommitter;
use crate::store::{
    NewThing, ShadowWrite, SharedStore, Store, StoreError, StoredShadow, ThingRecord,
};

mod conflicts;
mod shards;
mod writers;

// ---- fakes ------------------------------------------------------------------------------------

/// Records every publish in order.
#[derive(Default)]
struct RecordingBus {
    messages: Mutex<Vec<(String, Value, bool)>>,
}

#[async_trait]
impl Bus for RecordingBus {
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        let value = serde_json::from_slice(&payload).unwrap();
        self.messages
            .lock()
            .unwrap()
            .push((topic.to_owned(), value, retain));
    }
    async fn disconnect(&self, _client_id: &str) {}
    fn is_connected(&self, _client_id: &str) -> bool {
        true
    }
}

impl RecordingBus {
    fn all(&self) -> Vec<(String, Value, bool)> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (real time, at most 10 s) until at least `n` messages were published.
    async fn wait_for(&self, n: usize) -> Vec<(String, Value, bool)> {
        for _ in 0..2000 {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("expected {n} messages, got {:#?}", self.all());
    }

    /// Messages on `topic`.
    fn on(&self, topic: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, v, _)| v)
            .collect()
    }
}

/// The real store, with switches: hold `write_shadows` until permits are added, fail the next
/// `fail_next` calls of it as a whole transaction, or answer every write of the next
/// `conflict_next` calls with a version conflict (as if another instance had written first).
struct Switchable {
    inner: SharedStore,
    hold: AtomicBool,
    permits: Semaphore,
    fail_next: AtomicUsize,
    conflict_next: AtomicUsize,
}

#[async_trait]
impl Store for Switchable {
    async fn create_thing(&self, t: &NewThing, now: u64) -> Result<ThingRecord, StoreError> {
        self.inner.create_thing(t, now).await
    }
    async fn create_things(
        &self,
        ts: &[NewThing],
        now: u64,
    ) -> Result<Vec<Result<ThingRecord, StoreError>>, StoreError> {
        self.inner.create_things(ts, now).await
    }
    async fn get_thing(&self, id: &str) -> Result<Option<ThingRecord>, StoreError> {
        self.inner.get_thing(id).await
    }
    async fn password_hash(&self, id: &str) -> Result<Option<(String, bool)>, StoreError> {
        self.inner.password_hash(id).await
    }
    async fn list_things(
        &self,
        page_index: u64,
        page_size: u64,
        enabled: Option<bool>,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError> {
        self.inner.list_things(page_index, page_size, enabled).await
    }
    async fn query_things(
        &self,
        q: &crate::query::ThingQuery,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError> {
        self.inner.query_things(q, page_index, page_size).await
    }
    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<ThingRecord, StoreError> {
        self.inner.set_enabled(id, enabled).await
    }
    async fn delete_thing(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete_thing(id).await
    }
    async fn replace_tags(
        &self,
        id: &str,
        tags: &Map<String, Value>,
        expected_version: u64,
    ) -> Result<u64, StoreError> {
        self.inner.replace_tags(id, tags, expected_version).await
    }
    async fn set_connected(&self, id: &str, connected: bool, at: u64) -> Result<(), StoreError> {
        self.inner.set_connected(id, connected, at).await
    }
    async fn mark_all_disconnected(&self, at: u64) -> Result<(), StoreError> {
        self.inner.mark_all_disconnected(at).await
    }
    async fn get_shadow(
        &self,
        thing: &str,
        name: &str,
    ) -> Result<Option<StoredShadow>, StoreError> {
        self.inner.get_shadow(thing, name).await
    }
    async fn shadow_names(&self, thing: &str) -> Result<Vec<String>, StoreError> {
        self.inner.shadow_names(thing).await
    }
    async fn delete_shadow(&self, thing: &str, name: &str) -> Result<(), StoreError> {
        self.inner.delete_shadow(thing, name).await
    }
    async fn write_shadows(
        &self,
        writes: &[ShadowWrite],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if self.hold.load(Ordering::SeqCst) {
            self.permits.acquire().await.unwrap().forget();
        }
        let fail = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(StoreError::Unavailable("injected failure".into()));
        }
        let conflict = self
            .conflict_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if conflict {
            return Ok(vec![Err(StoreError::VersionConflict); writes.len()]);
        }
        self.inner.write_shadows(writes).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

struct Hub {
    _dir: TempDir,
    store: Arc<Switchable>,
    bus: Arc<RecordingBus>,
    shadows: ShadowService,
}

const THING: &str = "t1";

/// Shards of the service under test: more than one, so every test also runs sharded.
const SHARDS: usize = 3;

async fn hub_with(limits: Limits) -> Hub {
    hub_with_things(limits, SHARDS, &[THING, "t2"]).await
}

async fn hub_with_things(limits: Limits, shards: usize, things: &[&str]) -> Hub {
    hub_owning(
        limits,
        shards,
        things,
        crate::cluster::Ownership::everything(),
    )
    .await
}

/// A hub whose store other instances write too (D-73): it handles every thing, but its cache
/// may fall behind the store.
async fn shared_hub() -> Hub {
    let limits = Limits {
        shadow_requests_per_sec: 10_000,
        max_in_flight: 10_000,
        ..Limits::default()
    };
    let ownership = crate::cluster::Ownership::everything_shared();
    hub_owning(limits, SHARDS, &[THING, "t2"], ownership).await
}

async fn hub_owning(
    limits: Limits,
    shards: usize,
    things: &[&str],
    ownership: Arc<crate::cluster::Ownership>,
) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let inner = crate::store::open(&url).await.unwrap();
    for &id in things {
        inner
            .create_thing(
                &NewThing {
                    thing_id: id.into(),
                    password_hash: "x".into(),
                    tags: Map::new(),
                    enabled: true,
                },
                1,
            )
            .await
            .unwrap();
    }
    let store = Arc::new(Switchable {
        inner,
        hold: AtomicBool::new(false),
        permits: Semaphore::new(0),
        fail_next: AtomicUsize::new(0),
        conflict_next: AtomicUsize::new(0),
    });
    let shared: SharedStore = store.clone();
    let committer = GroupCommitter::spawn(shared.clone(), 64, 256);
    let bus = Arc::new(RecordingBus::default());
    let shadows = ShadowService::spawn_for(
        shards,
        shared,
        committer,
        bus.clone(),
        limits,
        Default::default(),
        None,
        ownership,
    );
    Hub {
        _dir: dir,
        store,
        bus,
        shadows,
    }
}

async fn hub() -> Hub {
    hub_with(Limits {
        shadow_requests_per_sec: 10_000,
        max_in_flight: 10_000,
        ..Limits::default()
    })
    .await
}

fn topic(kind: &str, shadow: &str) -> String {
    let (thing, s) = (THING, shadow);
    match kind {
        "get/accepted" => Topic::ShadowGetAccepted { thing, shadow: s },
        "get/rejected" => Topic::ShadowGetRejected { thing, shadow: s },
        "update/accepted" => Topic::ShadowUpdateAccepted { thing, shadow: s },
        "update/rejected" => Topic::ShadowUpdateRejected { thing, shadow: s },
        "update/delta" => Topic::ShadowUpdateDelta { thing, shadow: s },
        "update/documents" => Topic::ShadowUpdateDocuments { thing, shadow: s },
        other => panic!("{other}"),
    }
    .to_string()
}

impl Hub {
    async fn update(&self, shadow: &str, payload: Value) {
        self.shadows
            .handle_mqtt(
                THING,
                shadow,
                ShadowOp::Update,
                Bytes::from(payload.to_string()),
            )
            .await;
    }

    async fn get(&self, shadow: &str, payload: &str) {
        self.shadows
            .handle_mqtt(
                THING,
                shadow,
                ShadowOp::Get,
                Bytes::from(payload.to_owned()),
            )
            .await;
    }

    async fn stored_version(&self, shadow: &str) -> Option<u64> {
        self.store
            .inner
            .get_shadow(THING, shadow)
            .await
            .unwrap()
            .map(|s| s.version)
    }
}

fn code(v: &Value) -> u64 {
    v[field::CODE].as_u64().unwrap()
}

// ---- tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn update_publishes_accepted_then_delta_then_documents_after_durability() {
    let h = hub().await;
    h.update(
        "default",
        json!({"state": {"desired": {"color": "red"}, "reported": {"color": "blue"}}, "clientToken": "c1"}),
    )
    .await;
    let msgs = h.bus.wait_for(3).await;
    let topics: Vec<&str> = msgs.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            topic("update/accepted", "default"),
            topic("update/delta", "default"),
            topic("update/documents", "default")
        ]
    );
    assert!(msgs.iter().all(|(_, _, retain)| !retain));
    let (accepted, delta, documents) = (&msgs[0].1, &msgs[1].1, &msgs[2].1);
    assert_eq!(accepted[field::VERSION], json!(1));
    assert_eq!(accepted[field::CLIENT_TOKEN], json!("c1"));
    assert_eq!(
        accepted[field::STATE],
        json!({"desired": {"color": "red"}, "reported": {"color": "blue"}})
    );
    assert!(accepted[field::METADATA][field::DESIRED]["color"][field::TIMESTAMP].is_u64());
    assert_eq!(delta[field::STATE], json!({"color": "red"}));
    assert_eq!(delta[field::VERSION], json!(1));
    assert_eq!(delta[field::CLIENT_TOKEN], json!("c1"));
    assert!(documents.get(field::PREVIOUS).is_none());
    assert_eq!(documents[field::CURRENT][field::VERSION], json!(1));
    // Published means durable (S-3.5).
    assert_eq!(h.stored_version("default").await, Some(1));

    // A reported-only update: accepted and documents, no delta.
    h.update("default", json!({"state": {"reported": {"x": 1}}}))
        .await;
    let msgs = h.bus.wait_for(5).await;
    assert_eq!(msgs[3].0, topic("update/accepted", "default"));
    assert_eq!(msgs[4].0, topic("update/documents", "default"));
    assert_eq!(msgs[4].1[field::PREVIOUS][field::VERSION], json!(1));
    assert_eq!(msgs[4].1[field::CURRENT][field::VERSION], json!(2));
    h.shadows.shutdown().await;
    assert_eq!(h.bus.all().len(), 5);
}

#[tokio::test]
async fn get_is_404_when_missing_and_sees_an_update_sent_just_before() {
    let h = hub().await;
    h.get("default", r#"{"clientToken":"g1"}"#).await;
    let msgs = h.bus.wait_for(1).await;
    assert_eq!(msgs[0].0, topic("get/rejected", "default"));
    assert_eq!(code(&msgs[0].1), 404);
    assert_eq!(msgs[0].1[field::CLIENT_TOKEN], json!("g1"));

    // No waiting in between: the get is queued behind the update.
    h.update("default", json!({"state": {"desired": {"a": 1}}}))
        .await;
    h.get("default", "").await;
    let msgs = h.bus.wait_for(5).await;
    let get = &msgs[4];
    assert_eq!(get.0, topic("get/accepted", "default"));
    assert_eq!(get.1[field::VERSION], json!(1));
    assert_eq!(
        get.1[field::STATE],
        json!({"desired": {"a": 1}, "delta": {"a": 1}})
    );
    assert!(get.1.get(field::CLIENT_TOKEN).is_none());
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn version_conflict_is_409_and_changes_nothing() {
    let h = hub().await;
    h.update("default", json!({"state": {"reported": {"a": 1}}}))
        .await;
    h.update(
        "default",
        json!({"state": {"reported": {"a": 2}}, "version": 0, "clientToken": "v"}),
    )
    .await;
    let msgs = h.bus.wait_for(3).await;
    assert_eq!(msgs[2].0, topic("update/rejected", "default"));
    assert_eq!(code(&msgs[2].1), 409);
    assert_eq!(msgs[2].1[field::CLIENT_TOKEN], json!("v"));
    let doc = h.shadows.get(THING, "default").await.unwrap();
    assert_eq!(doc[field::STATE], json!({"reported": {"a": 1}}));
    assert_eq!(doc[field::VERSION], json!(1));
    h.update(
        "default",
        json!({"state": {"reported": {"a": 2}}, "version": 1}),
    )
    .await;
    let msgs = h.bus.wait_for(5).await;
    assert_eq!(msgs[3].0, topic("update/accepted", "default"));
    assert_eq!(msgs[3].1[field::VERSION], json!(2));
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_answered_never_silent() {
    let h = hub().await;
    for payload in [
        "",
        "{",
        r#"{"state":5,"clientToken":"m"}"#,
        r#"{"state":{}}"#,
    ] {
        h.shadows
            .handle_mqtt(
                THING,
                "default",
                ShadowOp::Update,
                Bytes::from(payload.to_owned()),
            )
            .await;
    }
    let msgs = h.bus.wait_for(4).await;
    assert!(
        msgs.iter()
            .all(|(t, v, _)| *t == topic("update/rejected", "default") && code(v) == 400)
    );
    assert_eq!(msgs[2].1[field::CLIENT_TOKEN], json!("m"));
    h.shadows
        .handle_mqtt(
            THING,
            "default",
            ShadowOp::Update,
            Bytes::from_static(b"{\"state\":{\"reported\":{\"a\":\"\xff\"}}}"),
        )
        .await;
    let msgs = h.bus.wait_for(5).await;
    assert_eq!(code(&msgs[4].1), 415);
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn rate_limit_per_thing_is_429() {
    let h = hub_with(Limits {
        shadow_requests_per_sec: 3,
        max_in_flight: 100,
        ..Limits::default()
    })
    .await;
    // The bucket holds 3; a burst of 5 well within a second gets two 429s.
    for i in 0..5 {
        h.get("default", &format!(r#"{{"clientToken":"r{i}"}}"#))
            .await;
    }
    let msgs = h.bus.wait_for(5).await;
    let limited: Vec<&Value> = msgs
        .iter()
        .filter(|(_, v, _)| v.get(field::CODE) == Some(&json!(429)))
        .map(|(_, v, _)| v)
        .collect();
    assert_eq!(limited.len(), 2, "{msgs:#?}");
    assert!(limited.iter().all(|v| v[field::CLIENT_TOKEN].is_string()));
    // Another thing has its own bucket.
    h.shadows
        .handle_mqtt("t2", "default", ShadowOp::Get, Bytes::new())
        .await;
    let msgs = h.bus.wait_for(6).await;
    assert_eq!(code(&msgs[5].1), 404);
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn in_flight_limit_per_thing_is_429() {
    let h = hub_with(Limits {
        shadow_requests_per_sec: 1000,
        max_in_flight: 2,
        ..Limits::default()
    })
    .await;
    h.store.hold.store(true, Ordering::SeqCst);
    for i in 0..3 {
        h.update(
            "default",
            json!({"state": {"reported": {"i": i}}, "clientToken": format!("f{i}")}),
        )
        .await;
    }
    let msgs = h.bus.wait_for(1).await;
    assert_eq!(msgs[0].0, topic("update/rejected", "default"));
    assert_eq!(code(&msgs[0].1), 429);
    assert_eq!(msgs[0].1[field::CLIENT_TOKEN], json!("f2"));
    h.store.hold.store(false, Ordering::SeqCst);
    h.store.permits.add_permits(100);
    let msgs = h.bus.wait_for(5).await;
    assert_eq!(
        h.bus.on(&topic("update/accepted", "default")).len(),
        2,
        "{msgs:#?}"
    );
    // Slots are free again.
    h.update("default", json!({"state": {"reported": {"i": 9}}}))
        .await;
    h.bus.wait_for(7).await;
    assert_eq!(h.bus.on(&topic("update/accepted", "default")).len(), 3);
    h.shadows.shutdown().await;
}
