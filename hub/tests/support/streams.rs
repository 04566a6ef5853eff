//! Streams of shadow updates (and REST writes) that record every answer, tagged with the phase
//! of the test in which the request was sent, and the checks made after a restart: shared by the
//! crash tests (`tests/crash.rs`, SIGKILL and SIGTERM mid-stream) and the fault-injection suite
//! (`tests/faults/`, disk full and injected store errors).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::{ADMIN_TOKEN, Client, Hub, Proto, STEP, assert_envelope, shadow_topic, unique};

/// Flags that keep the per-thing rate limits out of the way.
pub const FLAGS: &[&str] = &[
    "--shadow-requests-per-sec",
    "100000",
    "--max-in-flight",
    "64",
];

/// The streams of the fault tests: 4 updates in flight, 10 ms apart, leaving the CPU to the
/// hub.
pub const PACED: (u64, Duration) = (4, Duration::from_millis(10));

/// The phase of a test, shared with the streams (each request remembers the phase it was sent
/// in).
#[derive(Clone, Default)]
pub struct Phase {
    now: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
}

impl Phase {
    /// Requests sent from now on belong to `phase`.
    pub fn set(&self, phase: u8) {
        self.now.store(phase, Ordering::SeqCst);
    }

    fn get(&self) -> u8 {
        self.now.load(Ordering::SeqCst)
    }

    /// Streams stop sending, collect their outstanding answers and end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Updates accepted so far by every stream of this phase.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// What one shadow stream saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub thing: String,
    /// seq → (phase sent, version) of every accepted update.
    pub accepted: BTreeMap<u64, (u8, u64)>,
    /// seq → (phase sent, code) of every rejected update.
    pub rejected: BTreeMap<u64, (u8, u64)>,
    /// Requests still unanswered at the end (none unless the hub went away).
    pub unanswered: u64,
}

impl Seen {
    /// (version, seq) of the highest accepted version.
    pub fn last(&self) -> Option<(u64, u64)> {
        self.accepted.iter().map(|(seq, (_, v))| (*v, *seq)).max()
    }

    /// Answers to requests sent in `phase`: (accepted, rejected by code).
    pub fn in_phase(&self, phase: u8) -> (usize, BTreeMap<u64, usize>) {
        let accepted = self.accepted.values().filter(|(p, _)| *p == phase).count();
        let mut rejected = BTreeMap::new();
        for (p, code) in self.rejected.values() {
            if *p == phase {
                *rejected.entry(*code).or_default() += 1;
            }
        }
        (accepted, rejected)
    }
}

/// Creates a thing, connects it and streams `{"reported":{"seq":n,..}}` updates, at most
/// `window` in flight, `pace` apart, until [`Phase::stop`]; then waits for every outstanding
/// answer. A stream whose hub goes away (killed) ends there, its open requests `unanswered`.
pub async fn spawn_stream(
    hub: &Hub,
    proto: Proto,
    phase: Phase,
    (window, pace): (u64, Duration),
) -> tokio::task::JoinHandle<Seen> {
    let id = unique("full");
    let secret = hub.create_thing(&id).await;
    let mut c = hub.connect_thing(proto, &id, &secret).await;
    for suffix in ["update/accepted", "update/rejected"] {
        let rc = c
            .subscribe(&shadow_topic(&id, "default", suffix))
            .await
            .expect("subscribe");
        assert!(rc < 0x80);
    }
    tokio::spawn(stream(c, id, phase, window, pace))
}

async fn stream(mut c: Client, thing: String, phase: Phase, window: u64, pace: Duration) -> Seen {
    let topic = shadow_topic(&thing, "default", "update");
    let accepted = shadow_topic(&thing, "default", "update/accepted");
    let rejected = shadow_topic(&thing, "default", "update/rejected");
    let mut seen = Seen {
        thing: thing.clone(),
        ..Seen::default()
    };
    let mut sent: BTreeMap<u64, u8> = BTreeMap::new();
    let pad = "p".repeat(200);
    let mut next = 0u64;
    loop {
        while !phase.stopped() && (sent.len() as u64) < window {
            let req = json!({
                "state": {"reported": {"seq": next, "pad": pad}},
                "clientToken": format!("c-{next}"),
            });
            let bytes = serde_json::to_vec(&req).expect("json");
            if c.publish_nowait(&topic, bytes).await.is_err() {
                seen.unanswered = sent.len() as u64;
                return seen;
            }
            sent.insert(next, phase.get());
            next += 1;
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
        if sent.is_empty() {
            return seen;
        }
        let Some(m) = c
            .wait_message(STEP, |m| m.topic == accepted || m.topic == rejected)
            .await
        else {
            seen.unanswered = sent.len() as u64;
            return seen;
        };
        let v = m.json();
        let token = v["clientToken"]
            .as_str()
            .expect("S-4.1: clientToken echoed");
        let seq: u64 = token
            .strip_prefix("c-")
            .and_then(|s| s.parse().ok())
            .expect("our token");
        let sent_in = sent.remove(&seq).expect("an answer to a request in flight");
        if m.topic == accepted {
            let version = v["version"].as_u64().expect("version");
            assert_eq!(
                v["state"]["reported"]["seq"].as_u64(),
                Some(seq),
                "S-3.5: update/accepted echoes its request's state; S-4.1: and its token"
            );
            seen.accepted.insert(seq, (sent_in, version));
            phase.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            let code = v["code"].as_u64().expect("S-3.8 code");
            seen.rejected.insert(seq, (sent_in, code));
        }
    }
}

/// What a REST writer saw: thing creations and desired-state writes.
#[derive(Debug, Default)]
pub struct RestSeen {
    /// thingId → (phase, HTTP status) of each `POST /things`.
    pub created: BTreeMap<String, (u8, u16)>,
    /// (phase, HTTP status, version when 200) of each desired write to `thing`.
    pub desired: Vec<(u8, u16, Option<u64>)>,
    /// The thing whose desired state is written.
    pub thing: String,
}

/// Creates things and writes the desired state of `thing` over REST until [`Phase::stop`].
pub fn spawn_rest(hub: &Hub, thing: String, phase: Phase) -> tokio::task::JoinHandle<RestSeen> {
    let base = HubRef {
        http: hub.http,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .expect("client"),
    };
    tokio::spawn(async move {
        let mut seen = RestSeen {
            thing: thing.clone(),
            ..RestSeen::default()
        };
        let mut n = 0u64;
        while !phase.stopped() {
            let p = phase.get();
            let id = unique("rest");
            let (status, _) = base.call("POST", "/things", json!({ "thingId": id })).await;
            seen.created.insert(id, (p, status));
            let p = phase.get();
            let (status, body) = base
                .call(
                    "PUT",
                    &format!("/things/{thing}/shadows/default/state/desired"),
                    json!({"state": {"desired": {"n": n}}}),
                )
                .await;
            seen.desired
                .push((p, status, body["data"]["version"].as_u64()));
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

/// A minimal REST caller that can move into a task.
struct HubRef {
    http: std::net::SocketAddr,
    client: reqwest::Client,
}

impl HubRef {
    async fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .client
            .request(method, format!("http://{}/api/v1{path}", self.http))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        if status >= 500 {
            assert_envelope(status, &body);
        }
        (status, body)
    }
}

/// `/healthz`: status and body.
pub async fn healthz(hub: &Hub) -> (u16, Value) {
    let (status, _, text) = hub.get_text("/healthz").await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Every accepted write took its own version and no refused one took any: the accepted
/// versions of one shadow with one writer are exactly 1..=n.
fn assert_consecutive(what: &str, mut versions: Vec<u64>) {
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(
        versions, expected,
        "{what}: accepted versions are not 1..=n (a gap or a repeat is an acknowledged write \
         that was lost, or a refused one that took a version)"
    );
}

/// After a restart: each shadow is exactly at its last accepted version and state, and its
/// accepted versions are 1..=n. Together: every acknowledged update is durable (a lost one
/// leaves a repeat or a gap), and every refused one was reported and not stored (every answer
/// was received; a refused update that was stored anyway would have taken a version, making
/// the stored version higher than the last accepted one).
pub async fn check_shadows(hub: &Hub, seen: &[Seen]) {
    for s in seen {
        assert_eq!(s.unanswered, 0, "{}: requests left unanswered", s.thing);
        assert_consecutive(&s.thing, s.accepted.values().map(|(_, v)| *v).collect());
    }
    check_shadows_after_crash(hub, seen).await;
    for s in seen {
        let (_, doc) = hub.rest_shadow(&s.thing, "default").await;
        let last = s.last().map(|(v, _)| v);
        assert_eq!(
            doc["version"].as_u64(),
            last,
            "{}: a refused or unanswered update was stored",
            s.thing
        );
    }
}

/// After a crash that left requests unanswered: each shadow holds at least its last accepted
/// version and state (S-3.5); what the crash cut off may or may not be stored, but a stored
/// state that was answered carries the version it was accepted at.
pub async fn check_shadows_after_crash(hub: &Hub, seen: &[Seen]) {
    for s in seen {
        let (status, doc) = hub.rest_shadow(&s.thing, "default").await;
        let Some((version, seq)) = s.last() else {
            if s.unanswered == 0 {
                assert_eq!(
                    status, 404,
                    "{}: nothing accepted but stored: {doc}",
                    s.thing
                );
            }
            continue;
        };
        assert_eq!(status, 200, "S-3.5: {} lost its shadow: {doc}", s.thing);
        let stored_version = doc["version"].as_u64().expect("version");
        let stored_seq = doc["state"]["reported"]["seq"].as_u64().expect("seq");
        assert!(
            stored_version >= version && stored_seq >= seq,
            "S-3.5: {} stored version {stored_version} (seq {stored_seq}) is older than the \
             last accepted {version} (seq {seq})",
            s.thing
        );
        if let Some((_, v)) = s.accepted.get(&stored_seq) {
            assert_eq!(
                *v, stored_version,
                "{}: stored state of seq {stored_seq} was accepted at another version",
                s.thing
            );
        }
    }
}

/// After a restart: every created thing (201) exists, every refused one (503) does not; the
/// desired state is at the last accepted version, and the accepted versions are 1..=n.
pub async fn check_rest(hub: &Hub, seen: &RestSeen) {
    for (_, status, _) in &seen.desired {
        assert!(
            [200, 503].contains(status),
            "desired write answered {status}: neither stored nor reported unavailable"
        );
    }
    assert_consecutive(
        "desired writes",
        seen.desired
            .iter()
            .filter(|(_, status, _)| *status == 200)
            .map(|(_, _, v)| v.expect("a 200 carries the version"))
            .collect(),
    );
    for (id, (_, status)) in &seen.created {
        let (now, body) = hub.rest_thing(id).await;
        match status {
            201 => assert_eq!(now, 200, "{id} was created (201) but is gone: {body}"),
            503 => assert_eq!(now, 404, "{id} was refused (503) but exists: {body}"),
            other => panic!("POST /things {id}: unexpected {other}"),
        }
    }
    let last = seen
        .desired
        .iter()
        .filter_map(|(_, status, v)| (*status == 200).then_some(*v).flatten())
        .max();
    let (status, doc) = hub.rest_shadow(&seen.thing, "default").await;
    match last {
        Some(v) => {
            assert_eq!(status, 200, "{doc}");
            assert_eq!(doc["version"].as_u64(), Some(v), "desired writes: {doc}");
        }
        None => assert_eq!(status, 404, "{doc}"),
    }
}
