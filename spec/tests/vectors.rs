//! Checks the golden vectors in `spec/vectors/` against this crate: topics and the S-2.1
//! allow-list against the parser, every payload example against its payload type, and the schema
//! (plus the depth and UTF-8 facts this crate can decide) of the shadow and error vectors.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::fmt::Debug;

use iothub_spec::limits::{Limits, json_depth_exceeds};
use iothub_spec::payload::{
    Delta, Documents, ErrorResponse, GetRequest, LifecycleEvent, MethodRequest, MethodResponse,
    NtpRequest, NtpResponse, OtaResult, OtaTask, PresenceEvent, ShadowDocument, UpdateAccepted,
    UpdateRequest,
};
use iothub_spec::topic::{Topic, thing_may_subscribe};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect(&path);
    serde_json::from_str(&text).expect(&path)
}

fn unique_names(cases: &[Value]) {
    let mut seen = HashSet::new();
    for c in cases {
        let name = c["name"].as_str().expect("name");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name} is not snake_case"
        );
        assert!(seen.insert(name.to_owned()), "duplicate case name {name}");
        assert!(
            c["clause"].as_str().unwrap().starts_with("S-"),
            "{name}: clause"
        );
    }
}

#[test]
fn topics_valid() {
    let v = load("topics.json");
    let valid = v["valid"].as_array().unwrap();
    assert!(valid.len() >= 20);
    let mut kinds = HashSet::new();
    for case in valid {
        let topic = case["topic"].as_str().unwrap();
        let t = Topic::parse(topic).unwrap_or_else(|e| panic!("{topic}: {e}"));
        assert_eq!(t.kind(), case["kind"].as_str().unwrap(), "{topic}");
        assert_eq!(t.thing(), case["thing"].as_str().unwrap(), "{topic}");
        if let Some(s) = case.get("shadow") {
            assert_eq!(t.shadow(), s.as_str(), "{topic}");
        }
        if let Some(m) = case.get("method") {
            assert_eq!(t.method(), m.as_str(), "{topic}");
        }
        if let Some(r) = case.get("rest") {
            let rest = match t {
                Topic::Will { rest, .. } | Topic::User { rest, .. } => rest,
                _ => panic!("{topic}: rest given for {}", t.kind()),
            };
            assert_eq!(rest, r.as_str().unwrap(), "{topic}");
        }
        // Building the parsed topic gives back the same string.
        assert_eq!(t.to_string(), topic);
        let mut buf = [0u8; iothub_spec::limits::MAX_TOPIC_LEN];
        assert_eq!(t.write_to(&mut buf).unwrap(), topic);
        kinds.insert(t.kind());
    }
    assert_eq!(
        kinds.len(),
        20,
        "every Topic variant appears in topics.json"
    );
}

#[test]
fn topics_invalid() {
    let v = load("topics.json");
    let invalid = v["invalid"].as_array().unwrap();
    assert!(invalid.len() >= 15);
    for t in invalid {
        let topic = t.as_str().unwrap();
        assert!(
            Topic::parse(topic).is_err(),
            "{topic:?} parsed as {:?}",
            Topic::parse(topic)
        );
    }
}

#[test]
fn topics_acl() {
    let v = load("topics.json");
    let acl = v["acl"].as_array().unwrap();
    assert!(acl.len() >= 25);
    let (mut publish, mut subscribe) = (0, 0);
    for case in acl {
        let thing = case["thing"].as_str().unwrap();
        let allowed = case["allowed"].as_bool().unwrap();
        if let Some(topic) = case.get("publish") {
            let topic = topic.as_str().unwrap();
            let got = Topic::parse(topic).is_ok_and(|t| t.thing_may_publish(thing));
            assert_eq!(got, allowed, "{thing} publish {topic}");
            publish += 1;
        } else {
            let filter = case["subscribe"].as_str().unwrap();
            assert_eq!(
                thing_may_subscribe(filter, thing),
                allowed,
                "{thing} subscribe {filter}"
            );
            subscribe += 1;
        }
    }
    assert!(publish >= 10 && subscribe >= 10);
}

/// Parses `payload` as `T`, re-encodes it, and checks the JSON value is unchanged.
fn round_trip<'a, T>(name: &str, text: &'a str) -> T
where
    T: Deserialize<'a> + Serialize + Debug,
{
    let parsed: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_value(&parsed).unwrap();
    let want: Value = serde_json::from_str(text).unwrap();
    assert_eq!(again, want, "{name}");
    parsed
}

#[test]
fn payloads() {
    let v = load("payloads.json");
    let messages = v["messages"].as_array().unwrap();
    unique_names(messages);
    let mut kinds = HashSet::new();
    for m in messages {
        let name = m["name"].as_str().unwrap();
        let topic = Topic::parse(m["topic"].as_str().unwrap()).expect(name);
        let text = m["payload"].to_string();
        let text = text.as_str();
        match topic {
            Topic::ShadowGet { .. } => {
                round_trip::<GetRequest>(name, text);
            }
            Topic::ShadowGetAccepted { .. } => {
                let d = round_trip::<ShadowDocument<Value, Value>>(name, text);
                assert!(d.version >= 1, "{name}");
            }
            Topic::ShadowGetRejected { .. } | Topic::ShadowUpdateRejected { .. } => {
                let e = round_trip::<ErrorResponse>(name, text);
                assert!(e.error_code().is_some(), "{name}");
            }
            Topic::ShadowUpdate { .. } => {
                round_trip::<UpdateRequest<Value>>(name, text);
            }
            Topic::ShadowUpdateAccepted { .. } => {
                round_trip::<UpdateAccepted<Value, Value>>(name, text);
            }
            Topic::ShadowUpdateDelta { .. } => {
                round_trip::<Delta<Value, Value>>(name, text);
            }
            Topic::ShadowUpdateDocuments { .. } => {
                let d = round_trip::<Documents<Value, Value>>(name, text);
                match d.previous {
                    Some(p) => assert_eq!(p.version + 1, d.current.version, "{name}"),
                    None => assert_eq!(d.current.version, 1, "{name}"),
                }
            }
            Topic::MethodRequest { .. } => {
                round_trip::<MethodRequest<Value>>(name, text);
            }
            Topic::MethodResponse { .. } => {
                round_trip::<MethodResponse<Value>>(name, text);
            }
            Topic::NtpRequest { .. } => {
                round_trip::<NtpRequest>(name, text);
            }
            Topic::NtpResponse { .. } => {
                round_trip::<NtpResponse>(name, text);
            }
            Topic::OtaTask { .. } => {
                round_trip::<OtaTask>(name, text);
            }
            Topic::OtaTaskResult { .. } => {
                round_trip::<OtaResult>(name, text);
            }
            Topic::Presence { thing } | Topic::PresenceEvent { thing } => {
                let p = round_trip::<PresenceEvent>(name, text);
                assert_eq!(p.thing_id, thing, "{name}");
            }
            Topic::LifecycleEvent { thing } => {
                let l = round_trip::<LifecycleEvent>(name, text);
                assert_eq!(l.thing_id, thing, "{name}");
            }
            Topic::Property { .. } => assert!(m["payload"].is_object(), "{name}"),
            other => panic!("{name}: no payload type for {}", other.kind()),
        }
        kinds.insert(topic.kind());
        // Devices decode the same bytes without std: serde-json-core with borrowed strings.
        check_no_std(name, topic, text.as_bytes());
    }
    for k in [
        "ShadowGet",
        "ShadowGetAccepted",
        "ShadowGetRejected",
        "ShadowUpdate",
        "ShadowUpdateAccepted",
        "ShadowUpdateRejected",
        "ShadowUpdateDelta",
        "ShadowUpdateDocuments",
        "MethodRequest",
        "MethodResponse",
        "NtpRequest",
        "NtpResponse",
        "OtaTask",
        "OtaTaskResult",
        "Presence",
        "PresenceEvent",
        "LifecycleEvent",
        "Property",
    ] {
        assert!(kinds.contains(k), "payloads.json lacks a {k} message");
    }
}

/// The fixed-shape messages decode with serde-json-core (no std, no heap) too.
fn check_no_std(name: &str, topic: Topic<'_>, bytes: &[u8]) {
    use serde::de::IgnoredAny;
    use serde_json_core::from_slice as de;
    let ok = match topic {
        Topic::ShadowGet { .. } => de::<GetRequest>(bytes).is_ok(),
        Topic::ShadowGetRejected { .. } | Topic::ShadowUpdateRejected { .. } => {
            de::<ErrorResponse>(bytes).is_ok()
        }
        Topic::ShadowUpdateDelta { .. } => de::<Delta<IgnoredAny, IgnoredAny>>(bytes).is_ok(),
        Topic::ShadowGetAccepted { .. } => {
            de::<ShadowDocument<IgnoredAny, IgnoredAny>>(bytes).is_ok()
        }
        Topic::NtpRequest { .. } => de::<NtpRequest>(bytes).is_ok(),
        Topic::NtpResponse { .. } => de::<NtpResponse>(bytes).is_ok(),
        Topic::OtaTask { .. } => de::<OtaTask>(bytes).is_ok(),
        Topic::OtaTaskResult { .. } => de::<OtaResult>(bytes).is_ok(),
        Topic::MethodRequest { .. } => de::<MethodRequest<IgnoredAny>>(bytes).is_ok(),
        Topic::Presence { .. } | Topic::PresenceEvent { .. } => de::<PresenceEvent>(bytes).is_ok(),
        Topic::LifecycleEvent { .. } => de::<LifecycleEvent>(bytes).is_ok(),
        _ => true,
    };
    assert!(ok, "{name}: serde-json-core could not decode it");
}

fn is_object_or_null(v: &Value) -> bool {
    v.is_object() || v.is_null()
}

#[test]
fn shadow_vectors_schema() {
    let v = load("shadow.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 45, "{} shadow cases", cases.len());
    unique_names(cases);
    let depth = Limits::DEFAULT.max_json_depth;
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let before = &c["before"];
        if !before.is_null() {
            assert!(before["version"].as_u64().unwrap() >= 1, "{name}");
            for s in ["desired", "reported"] {
                if let Some(x) = before.get(s) {
                    assert!(
                        x.is_object() && !x.as_object().unwrap().is_empty(),
                        "{name}"
                    );
                }
            }
        }
        let update = &c["update"];
        assert!(update.is_object(), "{name}");
        let update_text = update.to_string();
        let too_deep = json_depth_exceeds(update_text.as_bytes(), depth);
        let e = &c["expect"];
        if e["accepted"].as_bool().unwrap() {
            assert!(!too_deep, "{name}: accepted but deeper than {depth}");
            for s in ["desired", "reported", "delta"] {
                assert!(is_object_or_null(&e[s]), "{name}: {s}");
            }
            let old = if before.is_null() {
                0
            } else {
                before["version"].as_u64().unwrap()
            };
            assert_eq!(e["version"].as_u64().unwrap(), old + 1, "{name}: version");
            // metadataPaths must be exactly the leaves of desired and reported.
            let mut leaves = Vec::new();
            collect_leaves(&e["desired"], "desired", &mut leaves);
            collect_leaves(&e["reported"], "reported", &mut leaves);
            let mut paths: Vec<String> = e["metadataPaths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            leaves.sort();
            paths.sort();
            assert_eq!(paths, leaves, "{name}: metadataPaths");
        } else {
            let code = e["code"].as_u64().unwrap();
            assert!(matches!(code, 400 | 409 | 413), "{name}");
            if too_deep {
                assert_eq!(code, 400, "{name}");
            }
        }
    }
}

fn collect_leaves(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Null => {}
        Value::Object(map) => {
            for (k, x) in map {
                assert!(!x.is_null() && !k.contains('.'), "{path}.{k}");
                if x.is_object() {
                    assert!(
                        !x.as_object().unwrap().is_empty(),
                        "empty object at {path}.{k}"
                    );
                }
                collect_leaves(x, &format!("{path}.{k}"), out);
            }
        }
        _ => out.push(path.to_owned()),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn error_vectors_schema() {
    let v = load("errors.json");
    assert!(v["notes"].is_string());
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    unique_names(cases);
    let limits = Limits::DEFAULT;
    for c in cases {
        let name = c["name"].as_str().unwrap();
        assert!(
            matches!(c["topic"].as_str(), Some("get" | "update")),
            "{name}"
        );
        let bytes = match (c.get("payload"), c.get("payloadHex")) {
            (Some(p), None) => p.as_str().unwrap().as_bytes().to_vec(),
            (None, Some(h)) => hex(h.as_str().unwrap()),
            _ => panic!("{name}: exactly one of payload and payloadHex"),
        };
        let code = c["expectCode"].as_u64();
        let utf8 = std::str::from_utf8(&bytes).is_ok();
        assert_eq!(code == Some(415), !utf8, "{name}: 415 iff not UTF-8");
        if utf8 && json_depth_exceeds(&bytes, limits.max_json_depth) {
            assert_eq!(code, Some(400), "{name}: too deep");
        }
        // S-4.2: the token is echoed whenever it can be recovered, parsed or not.
        let recovered = iothub_spec::scan::client_token(&bytes, limits.max_client_token);
        if let Some(token) = c["expectClientToken"].as_str() {
            assert!(token.len() <= limits.max_client_token, "{name}");
            assert_eq!(recovered, Some(token), "{name}");
            if let Ok(parsed) = serde_json::from_slice::<GetRequest>(&bytes) {
                assert_eq!(parsed.client_token, Some(token), "{name}");
            }
        } else if code.is_some() {
            assert_eq!(
                recovered, None,
                "{name}: a recoverable token must be echoed"
            );
        }
        if code.is_none() {
            assert!(utf8, "{name}");
            if c["topic"] == "update" {
                let u: UpdateRequest<Value> = serde_json::from_slice(&bytes).expect(name);
                assert!(u.state.get("desired").is_some() || u.state.get("reported").is_some());
            }
        }
    }
}
