//! Two hub instances on one Mosquitto 2.0 and one PostgreSQL (issue 23, D-73): they split the
//! things by partition leases, and when one is killed with SIGKILL the other takes its things
//! over. Real Mosquitto (dynamic security, as docs/running-at-scale.md sets it up), real
//! PostgreSQL, two real hub processes, SDK devices connected to Mosquitto only.
//!
//! Needs `/usr/sbin/mosquitto`, `mosquitto_ctrl` and PostgreSQL's server binaries (Debian's
//! `mosquitto` and `postgresql` packages; `scripts/test` installs them).

#[allow(unused_imports)]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use support::mosquitto::{HubOnBroker, Mosquitto};
use support::{Hub, Proto, STEP, eventually, postgres, unique};

const THINGS: usize = 200;
/// Time between one device's updates.
const PERIOD: Duration = Duration::from_millis(250);

/// One instance of a cluster on `m` and the database `db`.
fn instance(m: &Mosquitto, db: &str, name: &str) -> Hub {
    m.hub_with(&["--database-url", db, "--instance-id", name])
}

/// `(partitions held, leader)` from `/healthz`.
async fn partitions(hub: &Hub) -> (u64, bool) {
    let (status, _, text) = hub.get_text("/healthz").await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).expect("healthz json");
    (
        body["data"]["partitions"].as_u64().expect("partitions"),
        body["data"]["leader"].as_bool().expect("leader"),
    )
}

/// Waits until `a` and `b` hold half of the partitions each (D-73).
async fn split_evenly(a: &Hub, b: &Hub) {
    let split = eventually(STEP, || async {
        (partitions(a).await.0 == 32 && partitions(b).await.0 == 32).then_some(())
    })
    .await;
    assert!(split.is_some(), "{}\n{}", a.stderr(), b.stderr());
}

/// What one device saw: every accepted update as (value, version), and when the last came.
#[derive(Default)]
struct Seen {
    accepted: Vec<(u64, u64)>,
    failed: u64,
    last_accepted: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_things_and_survive_a_sigkill() {
    let m = Mosquitto::start();
    let db = postgres::shared().fresh_database();
    let mut a = instance(&m, &db, "a");
    let (held, leader) = partitions(&a).await;
    assert_eq!(
        (held, leader),
        (64, true),
        "a lone instance holds everything"
    );
    let b = instance(&m, &db, "b");
    // `a` gives back half at its next rounds; `b` takes them.
    let split = eventually(STEP, || async {
        let (pa, la) = partitions(&a).await;
        let (pb, lb) = partitions(&b).await;
        (pa == 32 && pb == 32).then_some((la, lb))
    })
    .await;
    assert_eq!(
        split,
        Some((true, false)),
        "a keeps partition 0 (the leader), b takes the other half\n{}\n{}",
        a.stderr(),
        b.stderr()
    );

    let mut devices = Vec::new();
    let ids: Vec<(String, Value)> = (0..THINGS)
        .map(|_| (unique("cl"), json!({"fleet": "cluster"})))
        .collect();
    let secrets = a.create_tagged_things(&ids).await;
    for (id, secret) in &secrets {
        let options = iothub_sdk::ThingOptions::with_addr(id, secret, &m.addr.to_string())
            .expect("options")
            .request_timeout(Duration::from_secs(2))
            .on_method("ping", |req| async move { Ok(json!({ "pong": req.data })) })
            .expect("method handler");
        let thing = iothub_sdk::Thing::connect(options)
            .await
            .unwrap_or_else(|e| panic!("{id} connects: {e}\n{}", m.log()));
        devices.push((id.clone(), thing));
    }

    // Every device reports a counter in a loop and keeps what came back.
    let seen: Arc<Mutex<BTreeMap<String, Seen>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for (id, thing) in &devices {
        let shadow = thing.shadow("default");
        let (id, seen, stop) = (id.clone(), seen.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let result = shadow.report(&json!({ "n": n })).await;
                {
                    let mut seen = seen.lock().expect("lock");
                    let entry = seen.entry(id.clone()).or_default();
                    match result {
                        Ok(version) => {
                            entry.accepted.push((n, version));
                            entry.last_accepted = Some(Instant::now());
                        }
                        Err(_) => entry.failed += 1,
                    }
                }
                tokio::time::sleep(PERIOD).await;
            }
        }));
    }
    // A fleet job created through b, which is not the leader, is run by a's engine.
    let targets: Vec<&String> = devices.iter().take(20).map(|(id, _)| id).collect();
    let (status, body) = b
        .post(
            "/jobs",
            json!({"things": targets, "maxPerMinute": 60000,
                "operation": {"type": "method", "name": "ping", "payload": 2, "timeoutS": 5}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let job = body["data"]["jobId"].as_str().expect("job id").to_owned();
    let done = eventually(STEP, || async {
        let (_, j) = b.get(&format!("/jobs/{job}")).await;
        (j["data"]["status"] == "completed").then_some(j)
    })
    .await
    .unwrap_or_else(|| panic!("the job ends\n{}\n{}", a.stderr(), b.stderr()));
    assert_eq!(done["data"]["counts"]["succeeded"], 20, "{done}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_kill = count_accepted(&seen);
    assert!(
        before_kill >= THINGS as u64 * 5,
        "{before_kill} accepted before the kill"
    );

    // The leader dies without a word; b must take its partitions and the leadership.
    a.kill();
    let killed = Instant::now();
    let took_over = eventually(Duration::from_secs(20), || async {
        (partitions(&b).await == (64, true)).then_some(())
    })
    .await;
    assert!(took_over.is_some(), "b takes over\n{}", b.stderr());
    let failover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let recovered = Instant::now() - Duration::from_secs(5);

    // Direct methods through the survivor reach things of both former halves.
    for (id, _) in devices.iter().take(20) {
        let (status, body) = b
            .post(
                &format!("/things/{id}/methods/ping"),
                json!({"data": 1, "timeout": 5}),
            )
            .await;
        assert_eq!(status, 200, "{id}: {body}\n{}", b.stderr());
        assert_eq!(body["data"]["data"], json!({"pong": 1}), "{id}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        l.await.expect("device loop");
    }

    let pool = sqlx::PgPool::connect(&db).await.expect("postgres");
    let rows = sqlx::query("SELECT thing_id, version, body FROM shadows WHERE name = 'default'")
        .fetch_all(&pool)
        .await
        .expect("shadows");
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    let stored: BTreeMap<String, (u64, u64)> = rows
        .iter()
        .map(|r| {
            let body: Value =
                serde_json::from_str(&r.get::<String, _>("body")).expect("stored body");
            let n = body["state"]["reported"]["n"].as_u64().expect("n");
            let version = u64::try_from(r.get::<i64, _>("version")).expect("version");
            (r.get::<String, _>("thing_id"), (version, n))
        })
        .collect();
    let mut failed = 0;
    for (id, _) in &devices {
        let s = &seen[id];
        failed += s.failed;
        // No version accepted twice: each accepted update got a version of its own, in order.
        assert!(
            s.accepted.windows(2).all(|w| w[0].1 < w[1].1),
            "{id}: versions accepted twice or out of order: {:?}",
            s.accepted
        );
        // What was accepted last is in PostgreSQL, or something newer the device sent after
        // it (an update applied by the killed instance that never answered).
        let &(n, version) = s.accepted.last().expect("some update accepted");
        let (stored_version, stored_n) = stored[id];
        assert!(
            stored_version >= version && stored_n >= n,
            "{id}: accepted ({n}, v{version}) but PostgreSQL has ({stored_n}, v{stored_version})"
        );
        // The device kept working through the survivor.
        assert!(
            s.last_accepted.is_some_and(|t| t > recovered),
            "{id}: no update accepted after the failover"
        );
    }
    let total = count_accepted_in(&seen);
    eprintln!(
        "{THINGS} things: {total} updates accepted ({before_kill} before the kill), {failed} \
         timed out or refused; b held every partition {failover:?} after the SIGKILL"
    );
}

fn count_accepted(seen: &Mutex<BTreeMap<String, Seen>>) -> u64 {
    count_accepted_in(&seen.lock().expect("lock"))
}

fn count_accepted_in(seen: &BTreeMap<String, Seen>) -> u64 {
    seen.values().map(|s| s.accepted.len() as u64).sum()
}

/// The partition of a thing as docs/spec.md D-73 defines it, written from the text: FNV-1a
/// (64-bit) of the id's bytes, the high half XORed into the low half, modulo 64.
fn partition_of(thing: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in thing.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h >> 32) ^ (h & 0xffff_ffff)) % 64
}

/// Issue 23 (D-73, D-85): unversioned writes of one shadow, some by the device over MQTT (handled
/// by the instance owning the thing) and some over REST through the instance that does not own
/// it, all at the same time. S-3.4 allows 409 only for a stale `version`; none is sent, so every
/// write must be accepted, land in the document, and get a version of its own; each writer's
/// versions increase in the order it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unversioned_writes_through_both_instances_are_all_accepted() {
    const REST_WRITERS: usize = 6;
    const ROUNDS: usize = 15;
    const PIPELINE: usize = 8;
    let m = Mosquitto::start();
    let db = postgres::shared().fresh_database();
    let limits = [
        "--shadow-requests-per-sec",
        "10000",
        "--max-in-flight",
        "64",
    ];
    let with = |name: &'static str| {
        let mut args = vec!["--database-url", db.as_str(), "--instance-id", name];
        args.extend_from_slice(&limits);
        m.hub_with(&args)
    };
    let a = with("a");
    let b = with("b");
    split_evenly(&a, &b).await;
    // `a` keeps the lower half of the partitions (it gives back the highest first, D-73): a
    // thing of the lower half is a's, and REST calls through `b` reach its non-owner.
    let id = loop {
        let id = unique("race");
        if partition_of(&id) < 32 {
            break id;
        }
    };
    let secret = a.create_thing(&id).await;
    let mut device = a.connect_thing(Proto::V311, &id, &secret).await;
    let rc = device
        .subscribe(&format!("{}/#", support::thing_topic(&id)))
        .await
        .expect("subscribe");
    assert!(rc < 0x80);
    let b = Arc::new(b);

    // REST writers through b, each writing its own desired keys one after the other.
    let mut rest = Vec::new();
    for w in 0..REST_WRITERS {
        let (b, id) = (b.clone(), id.clone());
        rest.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for k in 0..ROUNDS * 2 {
                let (status, body) = b
                    .put(
                        &format!("/things/{id}/shadows/default/state/desired"),
                        json!({"state": {"desired": {format!("w{w}k{k}"): k}}}),
                    )
                    .await;
                assert_eq!(status, 200, "REST writer {w}, write {k}: {body}");
                versions.push(body["data"]["version"].as_u64().expect("version"));
            }
            versions
        }));
    }
    // The device pipelines its reports to the owner, a round at a time.
    let update = support::shadow_topic(&id, "default", "update");
    let mut device_versions = Vec::new();
    for r in 0..ROUNDS {
        for p in 0..PIPELINE {
            let body = json!({"state": {"reported": {format!("r{r}p{p}"): p}},
                "clientToken": format!("t{r}-{p}")});
            device
                .publish_nowait(&update, body.to_string())
                .await
                .expect("publish");
        }
        for p in 0..PIPELINE {
            let (accepted, reply) = device
                .shadow_reply(&id, "default", "update", &format!("t{r}-{p}"))
                .await;
            assert!(accepted, "device update {r}-{p} refused: {reply}");
            device_versions.push(reply["version"].as_u64().expect("version"));
        }
    }
    let mut all = device_versions.clone();
    assert!(
        device_versions.windows(2).all(|w| w[0] < w[1]),
        "the device's versions do not increase: {device_versions:?}"
    );
    for (w, task) in rest.into_iter().enumerate() {
        let versions = task.await.expect("REST writer");
        assert!(
            versions.windows(2).all(|v| v[0] < v[1]),
            "REST writer {w}'s versions do not increase: {versions:?}"
        );
        all.extend(versions);
    }
    let total = all.len();
    assert_eq!(total, ROUNDS * PIPELINE + REST_WRITERS * ROUNDS * 2);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), total, "a version was accepted twice");

    // The writes did meet in the store: some lost and were applied again (D-85).
    let mut retried = Vec::new();
    for hub in [&a, &*b] {
        let (status, _, text) = hub.get_text("/metrics").await;
        assert_eq!(status, 200);
        let n: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("iothub_shadow_updates_retried_total "))
            .expect("iothub_shadow_updates_retried_total")
            .trim()
            .parse()
            .expect("a number");
        retried.push(n);
    }
    eprintln!(
        "{total} unversioned writes accepted; applied again: a {}, b {}",
        retried[0], retried[1]
    );
    assert!(
        retried.iter().sum::<f64>() > 0.0,
        "no write lost against the other instance: the test does not exercise D-85"
    );

    // Both instances show every write, at the version that counts them all.
    for hub in [&a, &*b] {
        let (status, doc) = hub.rest_shadow(&id, "default").await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["version"], json!(total), "{doc}");
        for r in 0..ROUNDS {
            for p in 0..PIPELINE {
                assert_eq!(
                    doc["state"]["reported"][format!("r{r}p{p}")],
                    json!(p),
                    "{doc}"
                );
            }
        }
        for w in 0..REST_WRITERS {
            for k in 0..ROUNDS * 2 {
                assert_eq!(
                    doc["state"]["desired"][format!("w{w}k{k}")],
                    json!(k),
                    "{doc}"
                );
            }
        }
    }
}

/// D-89: on one Mosquitto, every instance gets a thing's method responses, and only the thing's
/// owner puts them in the routes' outboxes: a method-results route shared by two instances gets
/// each response once (one outbox row, one `seq`), whichever instance owns the thing and
/// whichever one the call went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_put_a_method_response_in_the_routes_once() {
    const THINGS_HERE: usize = 12;
    let m = Mosquitto::start();
    let db = postgres::shared().fresh_database();
    let a = instance(&m, &db, "a");
    let b = instance(&m, &db, "b");
    split_evenly(&a, &b).await;

    let (url, got) = webhook_receiver().await;
    // The route as each instance knows it (a route lives in each instance's table, D-79).
    let route = json!({"id": "results", "sources": ["method-results"],
                       "sink": {"type": "webhook", "url": url}, "batchDelayMs": 0});
    let (status, body) = a.post("/routes", route.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = b.post("/routes", route).await;
    assert_eq!(status, 201, "{body}");

    let ids: Vec<(String, Value)> = (0..THINGS_HERE)
        .map(|_| (unique("mr"), json!({})))
        .collect();
    let secrets = a.create_tagged_things(&ids).await;
    let mut devices = Vec::new();
    for (id, secret) in &secrets {
        let options = iothub_sdk::ThingOptions::with_addr(id, secret, &m.addr.to_string())
            .expect("options")
            .on_method("ping", |req| async move { Ok(json!({ "pong": req.data })) })
            .expect("method handler");
        let thing = iothub_sdk::Thing::connect(options)
            .await
            .unwrap_or_else(|e| panic!("{id} connects: {e}\n{}", m.log()));
        devices.push(thing);
    }
    // Calls through both instances, so that each takes calls for things it owns and for
    // things the other owns.
    for (i, (id, _)) in secrets.iter().enumerate() {
        let via = if i % 2 == 0 { &a } else { &b };
        let (status, body) = via
            .post(
                &format!("/things/{id}/methods/ping"),
                json!({"data": i, "timeout": 5}),
            )
            .await;
        assert_eq!(status, 200, "{id}: {body}");
    }
    let distinct = || {
        let got = got.lock().expect("lock");
        let seqs: std::collections::BTreeSet<u64> =
            got.iter().filter_map(|m| m["seq"].as_u64()).collect();
        let things: std::collections::BTreeSet<String> = got
            .iter()
            .filter_map(|m| m["thingId"].as_str().map(str::to_owned))
            .collect();
        (seqs.len(), things.len(), got.len())
    };
    let all = eventually(STEP, || async {
        let (_, things, _) = distinct();
        (things == THINGS_HERE).then_some(())
    })
    .await;
    assert!(all.is_some(), "{:?}", distinct());
    // Whatever else would come (a second copy from the other instance) has had time to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seqs, things, received) = distinct();
    assert_eq!(
        (seqs, things),
        (THINGS_HERE, THINGS_HERE),
        "one outbox row per response ({received} deliveries)"
    );
    let pool = sqlx::PgPool::connect(&db).await.expect("postgres");
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM route_outbox")
        .fetch_one(&pool)
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "the outbox is drained");
    for d in devices {
        d.close().await;
    }
}

/// A webhook receiver on a free loopback port: its URL, and every message of every batch POSTed
/// to it, in arrival order.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::extract::State;
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    async fn take(State(got): State<Arc<Mutex<Vec<Value>>>>, body: String) -> &'static str {
        let batch: Value = serde_json::from_str(&body).expect("a JSON batch");
        let messages = batch["messages"].as_array().cloned().unwrap_or_default();
        got.lock().expect("lock").extend(messages);
        "ok"
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(take))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

/// D-92: a route created through one instance runs on the other within a follow round; its
/// common outbox is delivered by one instance only, so the shadow documents of writes made
/// through both instances (each puts its own in the outbox) arrive once each and in `seq`
/// order, and both report the outbox drained; a pause and a delete through one instance reach
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_made_through_one_instance_is_delivered_once() {
    const THINGS_HERE: usize = 10;
    const WRITES: usize = 20;
    let m = Mosquitto::start();
    let db = postgres::shared().fresh_database();
    let a = instance(&m, &db, "a");
    let b = instance(&m, &db, "b");
    split_evenly(&a, &b).await;
    let (url, got) = webhook_receiver().await;
    let (status, body) = a
        .post(
            "/routes",
            json!({"id": "docs", "sources": ["shadow"],
                   "sink": {"type": "webhook", "url": url}, "batchDelayMs": 0}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let followed = eventually(STEP, || async {
        (b.get("/routes/docs").await.0 == 200).then_some(())
    })
    .await;
    assert!(followed.is_some(), "b never ran the route\n{}", b.stderr());

    let ids: Vec<(String, Value)> = (0..THINGS_HERE)
        .map(|_| (unique("rd"), json!({})))
        .collect();
    a.create_tagged_things(&ids).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut writers = Vec::new();
    for (i, (id, _)) in ids.iter().enumerate() {
        let (a, b, id) = (a.clone(), b.clone(), id.clone());
        writers.push(tokio::spawn(async move {
            for k in 0..WRITES {
                let via = if (i + k) % 2 == 0 { &a } else { &b };
                let (status, body) = via
                    .put(
                        &format!("/things/{id}/shadows/default/state/desired"),
                        json!({"state": {"desired": {"k": k}}}),
                    )
                    .await;
                assert_eq!(status, 200, "{id} write {k}: {body}");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let mine: std::collections::BTreeSet<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    let documents = || -> Vec<Value> {
        got.lock()
            .expect("lock")
            .iter()
            .filter(|m| m["thingId"].as_str().is_some_and(|t| mine.contains(t)))
            .cloned()
            .collect()
    };
    let distinct = |docs: &[Value]| -> usize {
        docs.iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let all = eventually(STEP, || async {
        (distinct(&documents()) >= THINGS_HERE * WRITES).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "{} of {} documents",
        distinct(&documents()),
        THINGS_HERE * WRITES
    );
    // Whatever a second delivery would send has had time to come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let docs = documents();
    let seqs: Vec<u64> = docs.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(
        seqs.len(),
        distinct(&docs),
        "each document delivered once ({} deliveries of {} documents)",
        seqs.len(),
        distinct(&docs)
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in seq order: {seqs:?}"
    );
    // Both report the common outbox's depth, not their own count of what they added.
    let drained = eventually(STEP, || async {
        let (_, on_a) = a.get("/routes/docs").await;
        let (_, on_b) = b.get("/routes/docs").await;
        (on_a["data"]["outbox"] == json!(0) && on_b["data"]["outbox"] == json!(0)).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "a: {}\nb: {}",
        a.get("/routes/docs").await.1,
        b.get("/routes/docs").await.1
    );

    let (status, body) = a.post("/routes/docs/pause", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let paused = eventually(STEP, || async {
        (b.get("/routes/docs").await.1["data"]["paused"] == json!(true)).then_some(())
    })
    .await;
    assert!(paused.is_some(), "{}", b.get("/routes/docs").await.1);
    let (status, body) = a.delete("/routes/docs").await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let gone = eventually(STEP, || async {
        (b.get("/routes/docs").await.0 == 404).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "b still runs the deleted route\n{}",
        b.stderr()
    );
}
