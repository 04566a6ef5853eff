//! Deterministic virtual-time harness: the sans-IO `Device`, a simulated MQTT broker and a
//! simulated hub (written from docs/spec.md, not from the hub's code), connected by a network with
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

mod app;
mod hub;
mod net;

use std::collections::BinaryHeap;

use iothub_sdk_nostd::spec::payload::{self, field};
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{Config, Instant, QoS, Transmit};
use proptest::prelude::*;
use serde_json::json;

use app::{App, Dev, Pending};
use hub::Hub;
use net::{Dir, Msg, Net, Rng, mqtt_match};

const THING: &str = "dev-1";
const SHADOWS: [&str; 2] = ["default", "cfg:net"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
const TIMEOUT: u64 = 2_000;
const HUB_CLOCK_OFFSET: u64 = 1_700_000_000_000;

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
    // Persisted failures live next to this file, in `main.proptest-regressions`. The default
    // (`SourceParallel`) would find this directory's `main.rs` as a crate root and use
    // `tests/proptest-regressions/main.txt` instead.
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

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
