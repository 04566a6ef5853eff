//! Durability (S-3.5: an accepted update survives a hub crash) and graceful shutdown.
//!
//! Several things stream pipelined QoS 1 updates with distinct clientTokens while the test kills
//! (SIGKILL) or stops (SIGTERM) the hub; every `update/accepted` seen is recorded, and after a
//! restart on the same data directory each shadow must hold at least the last accepted version
//! and state.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Things streaming at once.
const THINGS: usize = 4;
/// Updates in flight per thing (below the hub's in-flight limit, raised for this test).
const WINDOW: u64 = 8;
/// Accepted updates (all things) to wait for before stopping the hub.
const TARGET: u64 = 1000;
/// Flags that keep the hub's per-thing rate limit out of the way.
const FLAGS: &[&str] = &[
    "--shadow-requests-per-sec",
    "100000",
    "--max-in-flight",
    "64",
];

/// What one thing saw accepted.
#[derive(Debug, Default)]
struct Seen {
    thing: String,
    accepted: u64,
    rejected: HashMap<u64, u64>,
    /// seq → version of every accepted update.
    versions: HashMap<u64, u64>,
    /// (version, seq) of the highest accepted version.
    last: Option<(u64, u64)>,
}

/// Streams updates `{"reported":{"seq":n}}` until the connection closes.
async fn stream(mut c: Client, thing: String, total: Arc<AtomicU64>) -> Seen {
    let topic = shadow_topic(&thing, "default", "update");
    let accepted = shadow_topic(&thing, "default", "update/accepted");
    let rejected = shadow_topic(&thing, "default", "update/rejected");
    let mut seen = Seen {
        thing: thing.clone(),
        ..Seen::default()
    };
    let pad = "p".repeat(100);
    let mut next = 0u64;
    let mut outstanding = 0u64;
    loop {
        while outstanding < WINDOW {
            let req = json!({
                "state": {"reported": {"seq": next, "pad": pad}},
                "clientToken": format!("c-{next}"),
            });
            let bytes = serde_json::to_vec(&req).expect("json");
            if c.publish_nowait(&topic, bytes).await.is_err() {
                return seen;
            }
            next += 1;
            outstanding += 1;
        }
        let Some(m) = c
            .wait_message(STEP, |m| m.topic == accepted || m.topic == rejected)
            .await
        else {
            return seen;
        };
        outstanding -= 1;
        let v = m.json();
        if m.topic == accepted {
            let version = v["version"].as_u64().expect("version in update/accepted");
            let seq = v["state"]["reported"]["seq"]
                .as_u64()
                .expect("S-3.5: accepted echoes the request's state");
            let token = v["clientToken"].as_str().expect("clientToken");
            assert_eq!(token, format!("c-{seq}"), "S-4.1 token matches its request");
            seen.accepted += 1;
            seen.versions.insert(seq, version);
            if seen.last.is_none_or(|(v0, _)| version > v0) {
                seen.last = Some((version, seq));
            }
            total.fetch_add(1, Ordering::Relaxed);
        } else {
            *seen
                .rejected
                .entry(v["code"].as_u64().unwrap_or(0))
                .or_default() += 1;
        }
    }
}

/// Starts the streams: one client per thing, alternating MQTT 3.1.1 and 5.
async fn start_streams(hub: &Hub) -> (Vec<tokio::task::JoinHandle<Seen>>, Arc<AtomicU64>) {
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..THINGS {
        let proto = if i % 2 == 0 { Proto::V311 } else { Proto::V5 };
        let id = unique("crash");
        let secret = hub.create_thing(&id).await;
        let mut c = hub.connect_thing(proto, &id, &secret).await;
        for suffix in ["update/accepted", "update/rejected"] {
            let rc = c
                .subscribe(&shadow_topic(&id, "default", suffix))
                .await
                .expect("subscribe");
            assert!(rc < 0x80);
        }
        tasks.push(tokio::spawn(stream(c, id, total.clone())));
    }
    (tasks, total)
}

async fn wait_for_target(hub: &Hub, total: &AtomicU64) -> u64 {
    let reached = eventually(Duration::from_secs(90), || async {
        let n = total.load(Ordering::Relaxed);
        (n >= TARGET).then_some(n)
    })
    .await;
    reached.unwrap_or_else(|| {
        panic!(
            "only {} updates accepted in 90 s\n{}",
            total.load(Ordering::Relaxed),
            hub.stderr()
        )
    })
}

/// After the restart: each shadow holds at least the last accepted version, and its state is
/// the one of that version or later.
async fn check_durable(hub: &Hub, seen: &[Seen]) {
    for s in seen {
        let Some((version, seq)) = s.last else {
            panic!("{}: nothing accepted", s.thing);
        };
        let (status, doc) = hub.rest_shadow(&s.thing, "default").await;
        assert_eq!(status, 200, "S-3.5: {} lost its shadow: {doc}", s.thing);
        let stored_version = doc["version"].as_u64().expect("version");
        let stored_seq = doc["state"]["reported"]["seq"].as_u64().expect("seq");
        assert!(
            stored_version >= version,
            "S-3.5: {} stored version {stored_version} < last accepted {version} (accepted {}, rejected {:?})",
            s.thing,
            s.accepted,
            s.rejected
        );
        assert!(
            stored_seq >= seq,
            "S-3.5: {} stored seq {stored_seq} older than last accepted seq {seq}",
            s.thing
        );
        if let Some(v) = s.versions.get(&stored_seq) {
            assert_eq!(
                *v, stored_version,
                "{}: stored state of seq {stored_seq} was accepted at another version",
                s.thing
            );
        }
        if stored_version == version {
            assert_eq!(stored_seq, seq, "{}: same version, other state", s.thing);
        }
    }
}

/// S-3.5: SIGKILL mid-stream loses no acknowledged update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5_sigkill_loses_no_accepted_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start_with(dir.path(), FLAGS);
    let (tasks, total) = start_streams(&hub).await;
    let before = wait_for_target(&hub, &total).await;
    tokio::task::block_in_place(|| hub.kill());
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("stream task"));
    }
    let after = total.load(Ordering::Relaxed);
    assert!(
        before > 50,
        "a non-trivial stream before the kill: {before}"
    );
    for s in &seen {
        assert!(s.accepted > 10, "{}: only {} accepted", s.thing, s.accepted);
    }
    eprintln!(
        "accepted {after} updates ({before} when the kill was decided); rejected {:?}",
        seen.iter().map(|s| &s.rejected).collect::<Vec<_>>()
    );
    tokio::task::block_in_place(|| hub.restart());
    check_durable(&hub, &seen).await;
    drop(dir);
}

/// Graceful shutdown: SIGTERM while updates are in flight → exit 0 within a few seconds, and
/// every accepted update is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_sigterm_exits_0_and_keeps_accepted_updates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start_with(dir.path(), FLAGS);
    let (tasks, total) = start_streams(&hub).await;
    let before = wait_for_target(&hub, &total).await;
    assert!(before > 50);
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| hub.terminate(Duration::from_secs(15)));
    let took = started.elapsed();
    assert!(
        status.success(),
        "graceful shutdown must exit 0, got {status:?}\n{}",
        hub.stderr()
    );
    assert!(
        took < Duration::from_secs(5),
        "graceful shutdown took {took:?} (in-flight updates should drain quickly)"
    );
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("stream task"));
    }
    tokio::task::block_in_place(|| hub.restart());
    check_durable(&hub, &seen).await;
    drop(dir);
}
