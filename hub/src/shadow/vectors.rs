//! The hand-written golden vectors of `spec/vectors/` (see its README), run through the pure
//! shadow core: `shadow.json` (merge, delta, version), `errors.json` (request validation) and the
//! shadow messages of `payloads.json` (reply shapes). The vectors come from docs/spec.md, not from
//! this code, so these tests never check the code against its own output.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use iothub_spec::limits::Limits;
use iothub_spec::payload::field;

use super::merge::metadata_leaf;
use super::*;

fn load(name: &str) -> Value {
    let path = format!("{}/../spec/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cases(file: &Value) -> &Vec<Value> {
    match file.get("cases") {
        Some(Value::Array(cases)) => cases,
        _ => panic!("vector file without cases"),
    }
}

fn section(v: Option<&Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(other) => panic!("section is not an object: {other}"),
    }
}

/// Metadata mirroring `state` with the leaf timestamp `ts` everywhere.
fn stamp(state: &Map<String, Value>, ts: u64) -> Map<String, Value> {
    state
        .iter()
        .map(|(k, v)| match v {
            Value::Object(m) => (k.clone(), Value::Object(stamp(m, ts))),
            _ => (k.clone(), metadata_leaf(ts)),
        })
        .collect()
}

/// The vector's `before` as a stored shadow whose every leaf was written at time 1.
fn before(case: &Value) -> Shadow {
    match case.get("before") {
        None | Some(Value::Null) => Shadow::default(),
        Some(b) => {
            let desired = section(b.get(field::DESIRED));
            let reported = section(b.get(field::REPORTED));
            Shadow {
                metadata_desired: stamp(&desired, 1),
                metadata_reported: stamp(&reported, 1),
                desired,
                reported,
                version: b.get(field::VERSION).and_then(Value::as_u64).unwrap_or(0),
            }
        }
    }
}

fn is_leaf(meta: &Map<String, Value>) -> bool {
    meta.len() == 1 && meta.get(field::TIMESTAMP).is_some_and(Value::is_u64)
}

/// Dot-joined paths of every metadata leaf, with its timestamp.
fn metadata_paths(prefix: &str, meta: &Map<String, Value>, out: &mut Vec<(String, u64)>) {
    for (k, v) in meta {
        let path = format!("{prefix}.{k}");
        match v {
            Value::Object(m) if is_leaf(m) => {
                let ts = m.get(field::TIMESTAMP).and_then(Value::as_u64).unwrap_or(0);
                out.push((path, ts));
            }
            Value::Object(m) => metadata_paths(&path, m, out),
            other => panic!("metadata at {path} is not an object: {other}"),
        }
    }
}

/// Leaf paths the request writes (non-null scalars and arrays, or everything under an object).
fn written_paths(prefix: &str, patch: &Value, out: &mut BTreeSet<String>) {
    match patch {
        Value::Object(m) => {
            for (k, v) in m {
                written_paths(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Null => {}
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn same(expected: Option<&Value>, actual: &Map<String, Value>) -> bool {
    let expected = section(expected);
    json_eq(&Value::Object(expected), &Value::Object(actual.clone()))
}

#[test]
fn shadow_vectors() {
    let file = load("shadow.json");
    let limits = Limits::default();
    let now = 2;
    let mut failures = Vec::new();
    let cases = cases(&file);
    assert!(!cases.is_empty());
    for case in cases {
        let name = case.get("name").and_then(Value::as_str).unwrap_or("?");
        let expect = &case["expect"];
        let payload = case["update"].to_string();
        let start = before(case);
        let outcome = parse_update(payload.as_bytes(), &limits)
            .and_then(|req| apply_update(&start, &req, &limits, now));
        if expect["accepted"] == json!(false) {
            match outcome {
                Ok(s) => failures.push(format!("{name}: accepted as {s:?}")),
                Err(e) if Some(u64::from(e.code.as_u16())) != expect["code"].as_u64() => failures
                    .push(format!(
                        "{name}: code {:?}, want {}",
                        e.code, expect["code"]
                    )),
                Err(_) => {}
            }
            continue;
        }
        let s = match outcome {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: rejected: {e}"));
                continue;
            }
        };
        let mut problems = Vec::new();
        if !same(expect.get(field::DESIRED), &s.desired) {
            problems.push(format!("desired {:?}", s.desired));
        }
        if !same(expect.get(field::REPORTED), &s.reported) {
            problems.push(format!("reported {:?}", s.reported));
        }
        if !same(expect.get(field::DELTA), &delta(&s)) {
            problems.push(format!("delta {:?}", delta(&s)));
        }
        if Some(s.version) != expect[field::VERSION].as_u64() {
            problems.push(format!("version {}", s.version));
        }
        let mut leaves = Vec::new();
        metadata_paths(field::DESIRED, &s.metadata_desired, &mut leaves);
        metadata_paths(field::REPORTED, &s.metadata_reported, &mut leaves);
        let got: BTreeSet<String> = leaves.iter().map(|(p, _)| p.clone()).collect();
        let want: BTreeSet<String> = expect["metadataPaths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if got != want {
            problems.push(format!("metadata paths {got:?}, want {want:?}"));
        }
        // S-3.4: every key written gets a fresh timestamp; the others keep theirs.
        let mut written = BTreeSet::new();
        for name in [field::DESIRED, field::REPORTED] {
            if let Some(patch) = case["update"][field::STATE].get(name) {
                written_paths(name, patch, &mut written);
            }
        }
        for (path, ts) in &leaves {
            let want_ts = if written.contains(path) { now } else { 1 };
            if *ts != want_ts {
                problems.push(format!("{path} stamped {ts}, want {want_ts}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} shadow vectors fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[test]
fn error_vectors() {
    let file = load("errors.json");
    let limits = Limits::default();
    let mut failures = Vec::new();
    let cases = cases(&file);
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let payload = match (case.get("payload"), case.get("payloadHex")) {
            (Some(Value::String(p)), _) => p.as_bytes().to_vec(),
            (_, Some(Value::String(h))) => hex(h),
            _ => panic!("{name}: no payload"),
        };
        let result = match case["topic"].as_str() {
            Some("get") => parse_get(&payload, &limits).map(|g| g.client_token),
            Some("update") => parse_update(&payload, &limits).map(|u| u.client_token),
            other => panic!("{name}: topic {other:?}"),
        };
        let want_code = case["expectCode"].as_u64();
        let want_token = case["expectClientToken"].as_str();
        let (code, token) = match &result {
            Ok(token) => (None, token.as_deref()),
            Err(e) => (Some(u64::from(e.code.as_u16())), e.client_token.as_deref()),
        };
        if code != want_code || token != want_token {
            failures.push(format!(
                "{name}: got code {code:?} token {token:?}, want {want_code:?} {want_token:?} ({:?})",
                result.as_ref().err().map(|e| &e.message)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} error vectors fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The payload of the `payloads.json` message called `name`.
fn message(file: &Value, name: &str) -> Value {
    file["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == json!(name)))
        .map(|m| m["payload"].clone())
        .unwrap_or_else(|| panic!("no message {name}"))
}

/// A shadow rebuilt from a document's `state` and `metadata` (delta ignored).
fn from_document(doc: &Value) -> Shadow {
    let mut body = doc.clone();
    if let Some(Value::Object(state)) = body.get_mut(field::STATE) {
        state.remove(field::DELTA);
    }
    let version = doc[field::VERSION].as_u64().unwrap_or(0);
    Shadow::from_body(&body.to_string(), version).unwrap_or_else(|e| panic!("{e}"))
}

fn updated(start: &Shadow, request: &Value, now: u64) -> (UpdateRequest, Shadow) {
    let req = parse_update(request.to_string().as_bytes(), &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let next = apply_update(start, &req, &Limits::default(), now).unwrap_or_else(|e| panic!("{e}"));
    (req, next)
}

#[test]
fn payload_vectors_get_accepted() {
    let file = load("payloads.json");
    for name in ["get_accepted", "get_accepted_reported_only"] {
        let want = message(&file, name);
        let shadow = from_document(&want);
        let now = want[field::TIMESTAMP].as_u64().unwrap_or(0);
        let token = want.get(field::CLIENT_TOKEN).and_then(Value::as_str);
        assert_eq!(get_document(&shadow, now, token), want, "{name}");
    }
}

#[test]
fn payload_vectors_update_accepted_delta_documents() {
    let file = load("payloads.json");

    // update_request applied to a shadow at version 5 gives update_accepted.
    let request = message(&file, "update_request");
    let want = message(&file, "update_accepted");
    let now = want[field::TIMESTAMP].as_u64().unwrap_or(0);
    let start = Shadow {
        version: 5,
        ..Shadow::default()
    };
    let (req, next) = updated(&start, &request, now);
    assert_eq!(update_replies(&start, &next, &req, now).accepted, want);

    // update_documents: desired.color=green by "rest-7" onto its `previous`.
    let want = message(&file, "update_documents");
    let now = want[field::TIMESTAMP].as_u64().unwrap_or(0);
    let previous = from_document(&want["previous"]);
    let request = json!({"state": {"desired": {"color": "green"}}, "clientToken": "rest-7"});
    let (req, next) = updated(&previous, &request, now);
    assert_eq!(update_replies(&previous, &next, &req, now).documents, want);

    // update_documents_first_version: the update that creates the shadow.
    let want = message(&file, "update_documents_first_version");
    let now = want[field::TIMESTAMP].as_u64().unwrap_or(0);
    let request = json!({"state": {"reported": {"color": "red"}}});
    let (req, next) = updated(&Shadow::default(), &request, now);
    assert_eq!(
        update_replies(&Shadow::default(), &next, &req, now).documents,
        want
    );

    // update_delta: color and cfg.interval desired away from what is reported, at version 7.
    let want = message(&file, "update_delta");
    let now = want[field::TIMESTAMP].as_u64().unwrap_or(0);
    let (_, start) = updated(
        &Shadow {
            version: 5,
            ..Shadow::default()
        },
        &json!({"state": {"reported": {"color": "red", "cfg": {"interval": 60}}}}),
        1,
    );
    let request = json!({"state": {"desired": {"color": "green", "cfg": {"interval": 30}}}, "clientToken": "rest-7"});
    let (req, next) = updated(&start, &request, now);
    assert_eq!(update_replies(&start, &next, &req, now).delta, Some(want));
}

#[test]
fn payload_vectors_rejected_shape() {
    let file = load("payloads.json");
    let want = message(&file, "update_rejected");
    let err = ShadowError::new(
        iothub_spec::code::ErrorCode::Conflict,
        want[field::MESSAGE].as_str().unwrap_or(""),
    )
    .with_client_token(want[field::CLIENT_TOKEN].as_str().map(str::to_owned));
    let now = want[field::TIMESTAMP].as_u64().unwrap_or(0);
    assert_eq!(error_payload(&err, now), want);
}
