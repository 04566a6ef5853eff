//! The simulated hub (written from docs/spec.md, not from the hub's code): shadows, method
//! calls, NTP answers and OTA tasks, with random rejections.

use std::collections::HashMap;

use iothub_sdk_nostd::spec::code::OtaStatus;
use iothub_sdk_nostd::spec::payload::{self, field};
use iothub_sdk_nostd::spec::topic::Topic;
use serde_json::{Map, Value, json};

use crate::net::Rng;
use crate::{HUB_CLOCK_OFFSET, KEYS, SHADOWS, THING};

#[derive(Default)]
pub(crate) struct HubShadow {
    exists: bool,
    version: u64,
    pub(crate) desired: Map<String, Value>,
    pub(crate) reported: Map<String, Value>,
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
pub(crate) struct Hub {
    pub(crate) shadows: HashMap<String, HubShadow>,
    pub(crate) method_calls: HashMap<String, bool>,
    pub(crate) method_answers: u32,
    pub(crate) ota_tasks: HashMap<String, String>,
    pub(crate) ota_results: u32,
    pub(crate) next_token: u64,
    pub(crate) reject: u32,
}

impl Hub {
    pub(crate) fn token(&mut self, prefix: &str) -> String {
        self.next_token += 1;
        format!("{prefix}{}", self.next_token)
    }

    fn now(&self, now: u64) -> u64 {
        HUB_CLOCK_OFFSET + now
    }

    /// Handles one message from the device; returns the publishes to send back.
    pub(crate) fn receive(
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
    pub(crate) fn operator(&mut self, rng: &mut Rng, now: u64) -> Option<(String, Vec<u8>)> {
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
