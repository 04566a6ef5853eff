//! The scripted hub's behaviour, without I/O: what it records about the device (the
//! observation log the cases judge) and how it answers the device's requests (shadow get and
//! update, NTP), written from docs/spec.md with the payload types of `spec/`.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use iothub_spec::code::ErrorCode;
use iothub_spec::payload::{self, field};
use iothub_spec::topic::Topic;
use serde_json::{Map, Value, json};

use crate::check::json_eq;
use crate::mqtt::Proto;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One thing the scripted hub saw or did, in order.
#[derive(Debug, Clone)]
pub struct Obs {
    /// When.
    pub at: Instant,
    /// Which TCP connection (1, 2, ... in accept order; 0 for hub actions without one).
    pub conn: u32,
    /// What.
    pub ev: ObsEv,
}

/// What the scripted hub observed.
#[derive(Debug, Clone)]
pub enum ObsEv {
    /// A TCP connection was accepted.
    Accepted,
    /// The hub closed it at once (a scripted outage).
    Refused,
    /// CONNECT, with what the hub answered.
    Connect {
        /// The version the device speaks.
        proto: Proto,
        /// Client identifier.
        client_id: String,
        /// User name.
        username: Option<String>,
        /// Whether the password was the thing's secret.
        password_ok: bool,
        /// Whether the hub accepted it.
        accepted: bool,
    },
    /// A SUBSCRIBE filter and whether the hub granted it (S-2.1).
    Subscribe {
        /// The filter.
        filter: String,
        /// Granted (else SUBACK failure).
        granted: bool,
    },
    /// A PUBLISH from the device.
    Publish {
        /// Topic name (alias resolved).
        topic: String,
        /// Payload.
        payload: Bytes,
        /// QoS.
        qos: u8,
        /// RETAIN flag.
        retain: bool,
    },
    /// A PUBLISH from the hub to the device, and whether a subscription of the device matched.
    Sent {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
        /// Whether it was delivered.
        delivered: bool,
    },
    /// The connection ended; why.
    Closed(String),
    /// The device broke MQTT itself (malformed packet, packet before CONNECT, ...).
    Protocol(String),
}

impl Obs {
    /// The device's PUBLISH, when this is one: `(topic, payload as JSON or Null)`.
    pub fn publish(&self) -> Option<(&str, Value)> {
        match &self.ev {
            ObsEv::Publish { topic, payload, .. } => Some((
                topic,
                serde_json::from_slice(payload).unwrap_or(Value::Null),
            )),
            _ => None,
        }
    }

    /// The device's PUBLISH parsed as an S-2 topic.
    pub fn publish_topic(&self) -> Option<(Topic<'_>, Value)> {
        let (t, v) = self.publish()?;
        Topic::parse(t).ok().map(|t| (t, v))
    }
}

/// One shadow as the scripted hub keeps it (S-3.1, without metadata history).
#[derive(Debug, Clone, Default)]
pub struct HubShadow {
    /// `state.desired`.
    pub desired: Map<String, Value>,
    /// `state.reported`.
    pub reported: Map<String, Value>,
    /// Version; 0 = never written (S-3.2: `get` answers 404).
    pub version: u64,
}

/// S-3.4 merge of `patch` into `target`: `null` deletes, objects merge recursively, anything
/// else replaces; objects left empty are removed.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let mut cur = match target.remove(k) {
                    Some(Value::Object(o)) => o,
                    _ => Map::new(),
                };
                merge(&mut cur, p);
                if !cur.is_empty() {
                    target.insert(k.clone(), Value::Object(cur));
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// S-3.6 delta: desired keys whose value differs from reported (objects compared recursively,
/// numbers numerically).
pub fn delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, d) in desired {
        match (d, reported.get(k)) {
            (Value::Object(dd), Some(Value::Object(rr))) => {
                let sub = delta(dd, rr);
                if !sub.is_empty() {
                    out.insert(k.clone(), Value::Object(sub));
                }
            }
            (d, Some(r)) if json_eq(d, r) => {}
            (d, _) => {
                out.insert(k.clone(), d.clone());
            }
        }
    }
    out
}

/// S-3.1 metadata of a section: the same tree with a `{"timestamp": ms}` leaf per scalar or
/// array.
pub fn metadata_of(v: &Map<String, Value>, ts: u64) -> Value {
    Value::Object(
        v.iter()
            .map(|(k, v)| {
                let m = match v {
                    Value::Object(o) => metadata_of(o, ts),
                    _ => json!({ field::TIMESTAMP: ts }),
                };
                (k.clone(), m)
            })
            .collect(),
    )
}

/// A message the hub sends the device.
pub type Out = (String, Value);

impl HubShadow {
    /// The `get/accepted` document (S-3.2), empty sections omitted.
    pub fn document(&self, token: Option<&str>) -> Value {
        let ts = now_ms();
        let d = delta(&self.desired, &self.reported);
        let some = |m: &Map<String, Value>| (!m.is_empty()).then(|| Value::Object(m.clone()));
        let mut meta = Map::new();
        if !self.desired.is_empty() {
            meta.insert(field::DESIRED.into(), metadata_of(&self.desired, ts));
        }
        if !self.reported.is_empty() {
            meta.insert(field::REPORTED.into(), metadata_of(&self.reported, ts));
        }
        let doc = payload::ShadowDocument {
            state: payload::ShadowState {
                desired: some(&self.desired),
                reported: some(&self.reported),
                delta: some(&d),
            },
            metadata: Value::Object(meta),
            version: self.version,
            timestamp: ts,
            client_token: token,
        };
        serde_json::to_value(doc).unwrap_or(Value::Null)
    }

    /// The `update/delta` message for the current state (S-3.6), `None` when in sync.
    pub fn delta_message(&self, token: Option<&str>) -> Option<Value> {
        let d = delta(&self.desired, &self.reported);
        (!d.is_empty()).then(|| delta_body(&d, self.version, token))
    }

    /// Writes `desired` (S-3.4 merge) as the business side would over REST; returns the delta
    /// message to send, if any.
    pub fn set_desired(&mut self, desired: &Map<String, Value>) -> Option<Value> {
        merge(&mut self.desired, desired);
        self.version += 1;
        self.delta_message(None)
    }
}

/// An `update/delta` body (S-3.6) for `state` at `version`.
pub fn delta_body(state: &Map<String, Value>, version: u64, token: Option<&str>) -> Value {
    let ts = now_ms();
    serde_json::to_value(payload::Delta {
        state: Value::Object(state.clone()),
        metadata: metadata_of(state, ts),
        version,
        timestamp: ts,
        client_token: token,
    })
    .unwrap_or(Value::Null)
}

/// An S-3.8 error body.
pub fn error_body(code: ErrorCode, token: Option<&str>) -> Value {
    serde_json::to_value(payload::ErrorResponse::new(code, now_ms(), token)).unwrap_or(Value::Null)
}

/// The clientToken of a request body, when it has a readable one.
pub fn token_of(v: &Value) -> Option<&str> {
    v.get(field::CLIENT_TOKEN).and_then(Value::as_str)
}

/// The scripted hub's shadows, by name.
pub type Shadows = BTreeMap<String, HubShadow>;

/// Answers a device PUBLISH that the allow-list let through: shadow get and update (S-3),
/// NTP (S-6). Returns the messages to send back; method responses, OTA results and telemetry
/// are only recorded.
pub fn answer(thing: &str, shadows: &mut Shadows, topic: &Topic<'_>, body: &[u8]) -> Vec<Out> {
    let v: Result<Value, _> = serde_json::from_slice(body);
    match *topic {
        Topic::ShadowGet { shadow, .. } => {
            let get = if body.is_empty() { Ok(json!({})) } else { v };
            let reply = |ok: bool, body: Value| {
                let t = Topic::ShadowGet { thing, shadow };
                let t = if ok { t.accepted() } else { t.rejected() };
                (t.map(|t| t.to_string()).unwrap_or_default(), body)
            };
            let Ok(req) = get else {
                return vec![reply(false, error_body(ErrorCode::BadRequest, None))];
            };
            let tok = token_of(&req);
            match shadows.get(shadow).filter(|s| s.version > 0) {
                Some(s) => vec![reply(true, s.document(tok))],
                None => vec![reply(false, error_body(ErrorCode::NotFound, tok))],
            }
        }
        Topic::ShadowUpdate { shadow, .. } => update(thing, shadow, shadows, v.ok()),
        Topic::NtpRequest { .. } => {
            let recv = now_ms();
            let Some(send) = v
                .ok()
                .and_then(|v| v.get(field::CLIENT_SEND_TIME).and_then(Value::as_u64))
            else {
                return Vec::new();
            };
            let resp = payload::NtpResponse {
                client_send_time: send,
                server_recv_time: recv,
                server_send_time: now_ms(),
            };
            vec![(
                Topic::NtpResponse { thing }.to_string(),
                serde_json::to_value(resp).unwrap_or(Value::Null),
            )]
        }
        _ => Vec::new(),
    }
}

fn update(thing: &str, shadow: &str, shadows: &mut Shadows, req: Option<Value>) -> Vec<Out> {
    let t = Topic::ShadowUpdate { thing, shadow };
    let rejected = t.rejected().map(|t| t.to_string()).unwrap_or_default();
    let accepted = t.accepted().map(|t| t.to_string()).unwrap_or_default();
    let delta_topic = Topic::ShadowUpdateDelta { thing, shadow }.to_string();
    let Some(req) = req else {
        return vec![(rejected, error_body(ErrorCode::BadRequest, None))];
    };
    let tok = token_of(&req).map(str::to_owned);
    let tok = tok.as_deref();
    let state = req.get(field::STATE).and_then(Value::as_object);
    let section = |name: &str| state.and_then(|s| s.get(name));
    let (d, r) = (section(field::DESIRED), section(field::REPORTED));
    let well_typed = |s: Option<&Value>| matches!(s, None | Some(Value::Null | Value::Object(_)));
    if (d.is_none() && r.is_none()) || !well_typed(d) || !well_typed(r) {
        return vec![(rejected, error_body(ErrorCode::BadRequest, tok))];
    }
    let s = shadows.entry(shadow.to_owned()).or_default();
    if let Some(want) = req.get(field::VERSION)
        && want.as_u64() != Some(s.version)
    {
        return vec![(rejected, error_body(ErrorCode::Conflict, tok))];
    }
    let apply = |target: &mut Map<String, Value>, patch: Option<&Value>| match patch {
        Some(Value::Null) => target.clear(),
        Some(Value::Object(p)) => merge(target, p),
        _ => {}
    };
    apply(&mut s.desired, d);
    apply(&mut s.reported, r);
    s.version += 1;
    let ts = now_ms();
    let mut meta = Map::new();
    for (name, sec) in [(field::DESIRED, d), (field::REPORTED, r)] {
        if let Some(Value::Object(o)) = sec {
            meta.insert(name.into(), metadata_of(o, ts));
        }
    }
    let acc = payload::UpdateAccepted {
        state: state.cloned().map(Value::Object).unwrap_or(Value::Null),
        metadata: Value::Object(meta),
        version: s.version,
        timestamp: ts,
        client_token: tok,
    };
    let mut out = vec![(accepted, serde_json::to_value(acc).unwrap_or(Value::Null))];
    if d.is_some()
        && let Some(m) = s.delta_message(tok)
    {
        out.push((delta_topic, m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn merge_and_delta_follow_s3() {
        let mut m = obj(json!({"a": {"b": 1, "c": 2}, "x": [1]}));
        merge(
            &mut m,
            &obj(json!({"a": {"b": null, "c": null}, "x": [2], "y": 1})),
        );
        assert_eq!(Value::Object(m.clone()), json!({"x": [2], "y": 1}));
        let d = delta(
            &obj(json!({"y": 1.0, "x": [2], "z": {"k": "1"}})),
            &obj(json!({"y": 1, "z": {"k": 1}})),
        );
        assert_eq!(Value::Object(d), json!({"x": [2], "z": {"k": "1"}}));
    }

    #[test]
    fn answers_get_update_ntp() {
        let mut s = Shadows::new();
        let get = Topic::ShadowGet {
            thing: "t",
            shadow: "default",
        };
        let r = answer("t", &mut s, &get, br#"{"clientToken":"a"}"#);
        assert!(r[0].0.ends_with("/get/rejected"));
        assert_eq!(r[0].1["code"], 404);
        assert_eq!(r[0].1["clientToken"], "a");
        let up = Topic::ShadowUpdate {
            thing: "t",
            shadow: "default",
        };
        let r = answer(
            "t",
            &mut s,
            &up,
            br#"{"state":{"desired":{"sp":3}},"clientToken":"b"}"#,
        );
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].1["version"], 1);
        assert_eq!(r[1].1["state"], json!({"sp": 3}));
        let r = answer("t", &mut s, &up, br#"{"state":{},"clientToken":"c"}"#);
        assert_eq!(r[0].1["code"], 400);
        let r = answer(
            "t",
            &mut s,
            &up,
            br#"{"state":{"reported":{"sp":3}},"version":9}"#,
        );
        assert_eq!(r[0].1["code"], 409);
        let r = answer("t", &mut s, &get, b"");
        assert_eq!(r[0].1["version"], 1);
        assert!(r[0].1["state"].get("delta").is_some());
        let ntp = Topic::NtpRequest { thing: "t" };
        let r = answer("t", &mut s, &ntp, br#"{"clientSendTime":5}"#);
        assert_eq!(r[0].1["clientSendTime"], 5);
    }
}
