//! Deterministic virtual-time harness: the sans-IO `Device`, a simulated MQTT broker and a
//! simulated hub (written from SPEC.md, not from the hub's code), connected by a network with
//! latency, loss, duplicate delivery and disconnects. Nothing sleeps: the loop jumps to the
//! earliest of the next delivery, the device's timer and the next scripted action.
//!
//! Invariants checked on every run:
//! - deltas reach the application in strictly increasing version order, documents never older;
//! - every request gets exactly one answer, within its timeout after it was sent;
//! - after a calm phase (clean network, one reconnect), the application's applied state equals the
//!   hub's desired state, the hub's reported state equals it too, and nothing is in flight;
//! - calls of unregistered methods are answered 404, registered ones 200, with the call's token;
//! - NTP estimates are within half the round trip of the hub's clock;
//! - OTA results name a task the hub sent, with its token.

// A failed unwrap in the harness is a failed test.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::collections::{BinaryHeap, HashMap, HashSet};

use iothub_sdk_nostd::spec::code::OtaStatus;
use iothub_sdk_nostd::spec::payload::{self, field};
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{Config, Device, Event, Instant, OtaReport, QoS, RequestId, Transmit};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

const THING: &str = "dev-1";
const SHADOWS: [&str; 2] = ["default", "cfg:net"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
const TIMEOUT: u64 = 2_000;
const HUB_CLOCK_OFFSET: u64 = 1_700_000_000_000;

/// splitmix64: deterministic, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn permille(&mut self, p: u32) -> bool {
        self.below(1000) < u64::from(p)
    }
}

#[derive(Debug, Clone)]
struct Knobs {
    seed: u64,
    latency: (u64, u64),
    loss: u32,
    dup: u32,
    disconnect: u32,
    resume: u32,
    reject: u32,
    chaos_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToHub,
    ToDevice,
}

#[derive(Debug)]
struct Msg {
    at: u64,
    seq: u64,
    epoch: u64,
    dir: Dir,
    topic: String,
    payload: Vec<u8>,
}

impl PartialEq for Msg {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Msg {}
impl PartialOrd for Msg {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Msg {
    // Min-heap on (at, seq).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The network and the broker: one connection at a time (`epoch`), the device's subscriptions.
struct Net {
    heap: BinaryHeap<Msg>,
    seq: u64,
    epoch: u64,
    up: bool,
    subs: Vec<String>,
    /// Chaos knobs in force (zeroed in the calm phase).
    loss: u32,
    dup: u32,
    latency: (u64, u64),
}

fn mqtt_match(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Net {
    fn send(&mut self, rng: &mut Rng, now: u64, dir: Dir, topic: &str, payload: &[u8]) {
        if !self.up || rng.permille(self.loss) {
            return;
        }
        if dir == Dir::ToDevice && !self.subs.iter().any(|f| mqtt_match(f, topic)) {
            return;
        }
        let copies = if rng.permille(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            self.seq += 1;
            let at = now + rng.range(self.latency.0, self.latency.1);
            self.heap.push(Msg {
                at,
                seq: self.seq,
                epoch: self.epoch,
                dir,
                topic: topic.to_owned(),
                payload: payload.to_vec(),
            });
        }
    }
}

#[derive(Default)]
struct HubShadow {
    exists: bool,
    version: u64,
    desired: Map<String, Value>,
    reported: Map<String, Value>,
}

impl HubShadow {
    fn delta(&self) -> Map<String, Value> {
        self.desired
            .iter()
            .filter(|(k, v)| self.reported.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn merge(into: &mut Map<String, Value>, patch: &Value) -> bool {
    let mut changed = false;
    if let Value::Object(p) = patch {
        for (k, v) in p {
            if v.is_null() {
                changed |= into.remove(k).is_some();
            } else if into.get(k) != Some(v) {
                into.insert(k.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}

/// The simulated hub (S-3, S-5, S-6, S-7).
#[derive(Default)]
struct Hub {
    shadows: HashMap<String, HubShadow>,
    method_calls: HashMap<String, bool>,
    method_answers: u32,
    ota_tasks: HashMap<String, String>,
    ota_results: u32,
    next_token: u64,
    reject: u32,
}

impl Hub {
    fn token(&mut self, prefix: &str) -> String {
        self.next_token += 1;
        format!("{prefix}{}", self.next_token)
    }

    fn now(&self, now: u64) -> u64 {
        HUB_CLOCK_OFFSET + now
    }

    /// Handles one message from the device; returns the publishes to send back.
    fn receive(
        &mut self,
        rng: &mut Rng,
        now: u64,
        topic: &str,
        body: &[u8],
    ) -> Vec<(String, Vec<u8>)> {
        let t = Topic::parse(topic).expect("device published a valid topic");
        assert!(t.thing_may_publish(THING), "S-2.1 forbids {topic}");
        let v: Value = serde_json::from_slice(body).expect("device sent JSON");
        let ts = self.now(now);
        let mut out = Vec::new();
        let tok = v.get(field::CLIENT_TOKEN).cloned().unwrap_or(Value::Null);
        match t {
            Topic::ShadowGet { thing, shadow } => {
                let s = self.shadows.entry(shadow.to_owned()).or_default();
                if rng.permille(self.reject) {
                    let rej = Topic::ShadowGetRejected { thing, shadow };
                    out.push((rej.to_string(), err(503, ts, &tok)));
                } else if !s.exists {
                    let rej = Topic::ShadowGetRejected { thing, shadow };
                    out.push((rej.to_string(), err(404, ts, &tok)));
                } else {
                    let mut state = Map::new();
                    for (k, m) in [
                        (field::DESIRED, &s.desired),
                        (field::REPORTED, &s.reported),
                        (field::DELTA, &s.delta()),
                    ] {
                        if !m.is_empty() {
                            state.insert(k.to_owned(), Value::Object(m.clone()));
                        }
                    }
                    let doc = json!({
                        field::STATE: state, field::METADATA: {}, field::VERSION: s.version,
                        field::TIMESTAMP: ts, field::CLIENT_TOKEN: tok,
                    });
                    let acc = Topic::ShadowGetAccepted { thing, shadow };
                    out.push((acc.to_string(), serde_json::to_vec(&doc).unwrap()));
                }
            }
            Topic::ShadowUpdate { thing, shadow } => {
                let s = self.shadows.entry(shadow.to_owned()).or_default();
                if rng.permille(self.reject) {
                    let rej = Topic::ShadowUpdateRejected { thing, shadow };
                    out.push((rej.to_string(), err(503, ts, &tok)));
                    return out;
                }
                let state = &v[field::STATE];
                assert!(state.is_object(), "update without state: {v}");
                if let Some(expected) = v.get(field::VERSION).and_then(Value::as_u64)
                    && expected != s.version
                {
                    let rej = Topic::ShadowUpdateRejected { thing, shadow };
                    out.push((rej.to_string(), err(409, ts, &tok)));
                    return out;
                }
                let desired_changed = merge(&mut s.desired, &state[field::DESIRED]);
                merge(&mut s.reported, &state[field::REPORTED]);
                s.exists = true;
                s.version += 1;
                let acc = json!({
                    field::STATE: state, field::METADATA: {}, field::VERSION: s.version,
                    field::TIMESTAMP: ts, field::CLIENT_TOKEN: tok,
                });
                let docs = json!({
                    field::CURRENT: {field::STATE: {field::DESIRED: s.desired, field::REPORTED: s.reported}, field::METADATA: {}, field::VERSION: s.version},
                    field::TIMESTAMP: ts, field::CLIENT_TOKEN: tok,
                });
                out.push((
                    Topic::ShadowUpdateAccepted { thing, shadow }.to_string(),
                    serde_json::to_vec(&acc).unwrap(),
                ));
                out.push((
                    Topic::ShadowUpdateDocuments { thing, shadow }.to_string(),
                    serde_json::to_vec(&docs).unwrap(),
                ));
                let delta = s.delta();
                if desired_changed && !delta.is_empty() {
                    let d = json!({
                        field::STATE: delta, field::METADATA: {}, field::VERSION: s.version,
                        field::TIMESTAMP: ts, field::CLIENT_TOKEN: tok,
                    });
                    out.push((
                        Topic::ShadowUpdateDelta { thing, shadow }.to_string(),
                        serde_json::to_vec(&d).unwrap(),
                    ));
                }
            }
            Topic::MethodResponse { method, .. } => {
                let r: payload::MethodResponse<Value> = serde_json::from_slice(body).unwrap();
                let registered = *self
                    .method_calls
                    .get(r.client_token)
                    .unwrap_or_else(|| panic!("answer to an unknown call {}", r.client_token));
                let expected = if registered { 200 } else { 404 };
                assert_eq!(r.code, expected, "method {method}");
                self.method_answers += 1;
            }
            Topic::NtpRequest { thing } => {
                let q: payload::NtpRequest = serde_json::from_slice(body).unwrap();
                let r = payload::NtpResponse {
                    client_send_time: q.client_send_time,
                    server_recv_time: ts,
                    server_send_time: ts + 1,
                };
                out.push((
                    Topic::NtpResponse { thing }.to_string(),
                    serde_json::to_vec(&r).unwrap(),
                ));
            }
            Topic::OtaTaskResult { .. } => {
                let r: payload::OtaResult = serde_json::from_slice(body).unwrap();
                let tok = self
                    .ota_tasks
                    .get(r.task_id)
                    .unwrap_or_else(|| panic!("result of unknown task {}", r.task_id));
                assert_eq!(tok, r.client_token);
                if r.status == OtaStatus::Ongoing {
                    assert!(r.progress.is_some_and(|p| p <= 100));
                }
                self.ota_results += 1;
            }
            Topic::Property { .. } => {}
            other => panic!("device published on {other:?}"),
        }
        out
    }

    /// The operator (REST) changes a desired key; returns the delta to publish, if any.
    fn operator(&mut self, rng: &mut Rng, now: u64) -> Option<(String, Vec<u8>)> {
        let shadow = SHADOWS[rng.below(2) as usize];
        let key = KEYS[rng.below(4) as usize];
        let val = rng.below(50) as i64;
        let tok = self.token("op-");
        let ts = self.now(now);
        let s = self.shadows.entry(shadow.to_owned()).or_default();
        let changed = merge(&mut s.desired, &json!({ key: val }));
        s.exists = true;
        s.version += 1;
        let delta = s.delta();
        if changed && !delta.is_empty() {
            let d = json!({
                field::STATE: delta, field::METADATA: {}, field::VERSION: s.version,
                field::TIMESTAMP: ts, field::CLIENT_TOKEN: tok,
            });
            return Some((
                Topic::ShadowUpdateDelta {
                    thing: THING,
                    shadow,
                }
                .to_string(),
                serde_json::to_vec(&d).unwrap(),
            ));
        }
        None
    }
}

fn err(code: u16, ts: u64, tok: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        field::CODE: code, field::MESSAGE: "x", field::TIMESTAMP: ts, field::CLIENT_TOKEN: tok,
    }))
    .unwrap()
}

/// The application's typed view of a shadow state (serde-json-core, no heap).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Keys {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k0: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k1: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k2: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k3: Option<i64>,
}

impl Keys {
    fn apply(&mut self, d: Keys) {
        self.k0 = d.k0.or(self.k0);
        self.k1 = d.k1.or(self.k1);
        self.k2 = d.k2.or(self.k2);
        self.k3 = d.k3.or(self.k3);
    }
    fn get(&self, k: &str) -> Option<i64> {
        match k {
            "k0" => self.k0,
            "k1" => self.k1,
            "k2" => self.k2,
            "k3" => self.k3,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pending {
    Report(usize),
    Get,
    Ntp,
}

/// The application on the device, with the invariant bookkeeping.
#[derive(Default)]
struct App {
    state: [Keys; 2],
    /// Last version applied per shadow (delta or document).
    last_version: [Option<u64>; 2],
    dirty: [bool; 2],
    report_in_flight: [bool; 2],
    pending: HashMap<RequestId, (u64, Pending)>,
    resolved: HashSet<RequestId>,
    ntp_busy: bool,
    ntp_results: u32,
    deltas: u32,
    documents: u32,
    timeouts: u32,
}

type Dev<'a> = Device<'a, 2, 10, 8>;

impl App {
    fn resolve(&mut self, now: u64, id: RequestId, timeout_bound: u64) -> Pending {
        assert!(self.resolved.insert(id), "{id:?} answered twice");
        let (issued, kind) = self
            .pending
            .remove(&id)
            .unwrap_or_else(|| panic!("answer to unknown {id:?}"));
        assert!(
            now - issued <= timeout_bound,
            "{id:?} ({kind:?}) waited {} ms",
            now - issued
        );
        match kind {
            Pending::Report(s) => self.report_in_flight[s] = false,
            Pending::Ntp => self.ntp_busy = false,
            Pending::Get => {}
        }
        kind
    }

    fn on_event(&mut self, dev: &mut Dev<'_>, hub: &mut Hub, now: u64, ev: Event<'_>) {
        match ev {
            Event::Delta(d) => {
                let s = d.shadow.index();
                assert!(
                    self.last_version[s].is_none_or(|v| d.version > v),
                    "delta {} after {:?}",
                    d.version,
                    self.last_version[s]
                );
                self.last_version[s] = Some(d.version);
                let keys: Keys = d.state.parse().expect("typed delta");
                self.state[s].apply(keys);
                self.dirty[s] = true;
                self.deltas += 1;
            }
            Event::Shadow(doc) => {
                let s = doc.shadow.index();
                assert!(
                    self.last_version[s].is_none_or(|v| doc.version >= v),
                    "document {} after {:?}",
                    doc.version,
                    self.last_version[s]
                );
                self.last_version[s] = Some(doc.version);
                let desired: Keys = doc.desired.map(|d| d.parse().unwrap()).unwrap_or_default();
                self.state[s].apply(desired);
                self.dirty[s] = true;
                self.documents += 1;
                if let Some(id) = doc.request {
                    self.resolve(now, id, TIMEOUT);
                }
            }
            Event::Accepted { request, .. } => {
                self.resolve(now, request, TIMEOUT);
            }
            Event::Rejected { request, code, .. } => {
                assert!(matches!(code, 503 | 409), "unexpected rejection {code}");
                if let Pending::Report(s) = self.resolve(now, request, TIMEOUT) {
                    self.dirty[s] = true;
                }
            }
            Event::TimedOut { request } => {
                self.timeouts += 1;
                if let Pending::Report(s) = self.resolve(now, request, 3 * TIMEOUT) {
                    self.dirty[s] = true;
                }
            }
            Event::Ntp { request, sample } => {
                self.resolve(now, request, 3 * TIMEOUT);
                let truth = HUB_CLOCK_OFFSET + now;
                let est = sample.unix_time_ms(Instant::from_millis(now));
                assert!(
                    est.abs_diff(truth) <= sample.round_trip_ms / 2 + 2,
                    "ntp estimate {est} vs {truth}, rtt {}",
                    sample.round_trip_ms
                );
                self.ntp_results += 1;
            }
            Event::MethodCall(call) => {
                let _ = hub;
                let _ = dev.respond::<()>(
                    Instant::from_millis(now),
                    call.method,
                    call.client_token,
                    200,
                    Some("ok"),
                    None,
                );
            }
            Event::OtaTask(task) => {
                assert_eq!(dev.ota_task_id(), Some(task.task_id));
                let t = Instant::from_millis(now);
                let _ = dev.report_ota(t, OtaReport::Ongoing { progress: 50 });
                let _ = dev.report_ota(t, OtaReport::Done);
            }
            Event::SubscribeFailed { .. } => panic!("broker refused a subscription"),
            _ => {}
        }
    }

    /// Reports dirty shadows (retry-later: a failed report leaves the shadow dirty).
    fn tick(&mut self, dev: &mut Dev<'_>, now: u64) {
        for s in 0..2 {
            if self.dirty[s] && !self.report_in_flight[s] {
                let shadow = dev.shadow_id(SHADOWS[s]).unwrap();
                if let Ok(id) = dev.report(Instant::from_millis(now), shadow, &self.state[s]) {
                    self.pending.insert(id, (now, Pending::Report(s)));
                    self.dirty[s] = false;
                    self.report_in_flight[s] = true;
                }
            }
        }
    }
}

struct World<'a> {
    rng: Rng,
    net: Net,
    hub: Hub,
    app: App,
    dev: Dev<'a>,
    now: u64,
    /// Chance (per mille) that a reconnect resumes the MQTT session.
    knobs_resume: u32,
}

impl World<'_> {
    /// Step 5 of the driving contract: drain transmits and events.
    fn drain(&mut self) {
        let mut buf = [0u8; 1024];
        loop {
            self.app.tick(&mut self.dev, self.now);
            let now = Instant::from_millis(self.now);
            match self.dev.poll_transmit(now, &mut buf).expect("transmit") {
                Some(Transmit::Subscribe { id, filter, qos }) => {
                    assert_eq!(qos, QoS::AtLeastOnce);
                    assert!(iothub_sdk_nostd::spec::topic::thing_may_subscribe(
                        filter, THING
                    ));
                    if !self.net.subs.iter().any(|f| f == filter) {
                        self.net.subs.push(filter.to_owned());
                    }
                    self.dev.handle_suback(now, id, true);
                }
                Some(Transmit::Publish { topic, payload, .. }) => {
                    let (topic, payload) = (topic.to_owned(), payload.to_vec());
                    self.net
                        .send(&mut self.rng, self.now, Dir::ToHub, &topic, &payload);
                }
                Some(_) => unreachable!(),
                None => break,
            }
        }
        while let Some(ev) = self.dev.poll_event() {
            self.app
                .on_event(&mut self.dev, &mut self.hub, self.now, ev);
        }
        // Events may have queued answers.
        let now = Instant::from_millis(self.now);
        while let Some(t) = self.dev.poll_transmit(now, &mut buf).expect("transmit") {
            if let Transmit::Publish { topic, payload, .. } = t {
                let (topic, payload) = (topic.to_owned(), payload.to_vec());
                self.net
                    .send(&mut self.rng, self.now, Dir::ToHub, &topic, &payload);
            }
        }
    }

    fn connect(&mut self) {
        let resume = self.rng.permille(self.knobs_resume) && !self.net.subs.is_empty();
        self.net.epoch += 1;
        self.net.up = true;
        if !resume {
            self.net.subs.clear();
        }
        self.dev
            .handle_connected(Instant::from_millis(self.now), resume);
        self.drain();
    }

    fn disconnect(&mut self) {
        self.net.up = false;
        self.dev.handle_disconnected(Instant::from_millis(self.now));
        self.drain();
    }

    fn deliver(&mut self, m: Msg) {
        if m.epoch != self.net.epoch || !self.net.up {
            return;
        }
        match m.dir {
            Dir::ToHub => {
                let out = self.hub.receive(&mut self.rng, m.at, &m.topic, &m.payload);
                for (t, p) in out {
                    self.net
                        .send(&mut self.rng, self.now, Dir::ToDevice, &t, &p);
                }
            }
            Dir::ToDevice => {
                let now = Instant::from_millis(self.now);
                if let Ok(Some(ev)) = self.dev.handle_publish(now, &m.topic, &m.payload) {
                    self.app
                        .on_event(&mut self.dev, &mut self.hub, self.now, ev);
                }
                self.drain();
            }
        }
    }

    /// A random scripted action of the chaos phase.
    fn act(&mut self, knobs: &Knobs) {
        let r = self.rng.below(100);
        let now = Instant::from_millis(self.now);
        if r < 40 {
            if let Some((t, p)) = self.hub.operator(&mut self.rng, self.now) {
                self.net
                    .send(&mut self.rng, self.now, Dir::ToDevice, &t, &p);
            }
        } else if r < 50 {
            let registered = self.rng.below(2) == 0;
            let method = if registered { "blink" } else { "nope" };
            let tok = self.hub.token("m-");
            self.hub.method_calls.insert(tok.clone(), registered);
            let body = json!({ field::CLIENT_TOKEN: tok, field::DATA: {"n": 1} });
            let topic = Topic::MethodRequest {
                thing: THING,
                method,
            }
            .to_string();
            self.net.send(
                &mut self.rng,
                self.now,
                Dir::ToDevice,
                &topic,
                &serde_json::to_vec(&body).unwrap(),
            );
        } else if r < 55 {
            if !self.app.ntp_busy
                && let Ok(id) = self.dev.request_ntp(now, 3)
            {
                self.app.ntp_busy = true;
                self.app.pending.insert(id, (self.now, Pending::Ntp));
            }
        } else if r < 60 {
            let id = self.rng.below(3);
            let task_id = format!("task-{id}");
            let tok = self
                .hub
                .ota_tasks
                .entry(task_id.clone())
                .or_insert_with(|| format!("ota-{id}"))
                .clone();
            let task = payload::OtaTask {
                client_token: &tok,
                task_id: &task_id,
                r#type: "app",
                meta: payload::OtaMeta {
                    version: "1.0",
                    md5: None,
                    sha256: None,
                    content_type: None,
                    content_length: Some(10),
                },
                file_url: "https://files.invalid/fw.bin",
            };
            let topic = Topic::OtaTask { thing: THING }.to_string();
            self.net.send(
                &mut self.rng,
                self.now,
                Dir::ToDevice,
                &topic,
                &serde_json::to_vec(&task).unwrap(),
            );
        } else if r < 65 {
            let s = self.rng.below(2) as usize;
            let shadow = self.dev.shadow_id(SHADOWS[s]).unwrap();
            if let Ok(id) = self.dev.get_shadow(now, shadow) {
                self.app.pending.insert(id, (self.now, Pending::Get));
            }
        } else if r < 70 {
            let _ = self
                .dev
                .publish_telemetry(now, &json!({"t": 21}), QoS::AtMostOnce);
        } else if r < 70 + u64::from(knobs.disconnect / 10).min(29) {
            if self.net.up {
                self.disconnect();
            }
        } else if !self.net.up {
            self.connect();
        }
        self.drain();
    }

    /// Runs until `until`, acting every so often when `chaos`.
    fn run(&mut self, knobs: &Knobs, until: u64, chaos: bool) {
        let mut next_action = self.now + self.rng.range(10, 200);
        while self.now < until {
            let t_msg = self.net.heap.peek().map(|m| m.at);
            let t_timer = self.dev.poll_timeout().map(Instant::as_millis);
            let t_act = if chaos { Some(next_action) } else { None };
            let next = [t_msg, t_timer, t_act, Some(until)]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            self.now = self.now.max(next);
            if t_timer.is_some_and(|t| t <= self.now) {
                self.dev.handle_timeout(Instant::from_millis(self.now));
                self.drain();
            }
            while self.net.heap.peek().is_some_and(|m| m.at <= self.now) {
                let m = self.net.heap.pop().unwrap();
                self.deliver(m);
            }
            if chaos && next_action <= self.now {
                self.act(knobs);
                next_action = self.now + self.rng.range(10, 200);
            }
        }
    }
}

fn simulate(knobs: &Knobs) -> (App, Hub) {
    let mut config = Config::new(THING, &SHADOWS);
    config.methods = &["blink"];
    config.token_seed = (knobs.seed >> 32) as u32;
    config.request_timeout_ms = TIMEOUT;
    config.retry_backoff_ms = 100;
    config.max_retry_backoff_ms = 1_000;
    let mut tx = vec![0u8; 4096];
    let dev = Dev::new(config, &mut tx).expect("config");
    let mut w = World {
        rng: Rng(knobs.seed),
        net: Net {
            heap: BinaryHeap::new(),
            seq: 0,
            epoch: 0,
            up: false,
            subs: Vec::new(),
            loss: knobs.loss,
            dup: knobs.dup,
            latency: knobs.latency,
        },
        hub: Hub {
            reject: knobs.reject,
            ..Hub::default()
        },
        app: App::default(),
        dev,
        now: 0,
        knobs_resume: knobs.resume,
    };
    w.connect();
    w.run(knobs, knobs.chaos_ms, true);

    // Calm phase: a clean network, the hub stops refusing, one clean reconnect.
    w.net.loss = 0;
    w.net.dup = 0;
    w.hub.reject = 0;
    w.knobs_resume = 0;
    if w.net.up {
        w.disconnect();
    }
    w.connect();
    let end = w.now + 20 * TIMEOUT;
    w.run(knobs, end, false);

    // Convergence.
    for (i, name) in SHADOWS.iter().enumerate() {
        let Some(hs) = w.hub.shadows.get(*name) else {
            continue;
        };
        for (k, v) in &hs.desired {
            assert_eq!(
                w.app.state[i].get(k),
                v.as_i64(),
                "shadow {name} key {k}: applied {:?}, desired {:?}",
                w.app.state[i],
                hs.desired
            );
            assert_eq!(hs.reported.get(k), Some(v), "shadow {name} reported {k}");
        }
    }
    assert!(w.app.pending.is_empty(), "unanswered: {:?}", w.app.pending);
    assert_eq!(w.dev.in_flight(), 0);
    assert_eq!(w.dev.poll_timeout(), None);
    (w.app, w.hub)
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        any::<u64>(),
        (1u64..50, 0u64..400),
        0u32..150,
        0u32..150,
        0u32..200,
        0u32..1000,
        0u32..150,
        5_000u64..40_000,
    )
        .prop_map(
            |(seed, (lo, spread), loss, dup, disconnect, resume, reject, chaos_ms)| Knobs {
                seed,
                latency: (lo, lo + spread),
                loss,
                dup,
                disconnect,
                resume,
                reject,
                chaos_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Long randomized runs under latency, loss, duplicates, disconnects and hub rejections.
    #[test]
    fn randomized_runs_keep_the_invariants(k in knobs()) {
        simulate(&k);
    }
}

/// A clean network: everything the harness can observe happens, and is counted.
#[test]
fn clean_network_exercises_every_feature() {
    let k = Knobs {
        seed: 7,
        latency: (5, 40),
        loss: 0,
        dup: 0,
        disconnect: 0,
        resume: 0,
        reject: 0,
        chaos_ms: 60_000,
    };
    let (app, hub) = simulate(&k);
    assert!(app.deltas > 10, "deltas {}", app.deltas);
    assert!(app.documents >= 2);
    assert!(app.ntp_results > 0);
    assert!(hub.method_answers > 0);
    assert!(hub.ota_results > 0);
    assert_eq!(app.timeouts, 0);
}

/// Heavy duplication and reordering without loss: still exactly-once answers and ordered deltas.
#[test]
fn duplicates_and_reordering() {
    for seed in 0..8 {
        let k = Knobs {
            seed,
            latency: (1, 800),
            loss: 0,
            dup: 500,
            disconnect: 0,
            resume: 0,
            reject: 100,
            chaos_ms: 30_000,
        };
        simulate(&k);
    }
}

/// Frequent disconnects, half of them resuming the session.
#[test]
fn flapping_connection() {
    for seed in 0..8 {
        let k = Knobs {
            seed,
            latency: (10, 100),
            loss: 50,
            dup: 50,
            disconnect: 290,
            resume: 500,
            reject: 50,
            chaos_ms: 30_000,
        };
        simulate(&k);
    }
}

#[test]
fn mqtt_matching_used_by_the_broker() {
    assert!(mqtt_match("a/+/c", "a/b/c"));
    assert!(mqtt_match("a/#", "a/b/c"));
    assert!(!mqtt_match("a/+", "a/b/c"));
    assert!(!mqtt_match("a/b", "a"));
}
