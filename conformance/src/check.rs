//! Pure checking functions: they take what the suite observed and say what is wrong with it.
//!
//! They never talk to a hub, so the unit tests below can feed them fabricated observations of a
//! broken hub and prove that every case is able to fail (the checker's negative checks).

use std::collections::BTreeSet;

use iothub_spec::payload::field;
use serde_json::{Map, Value};

use crate::external::Denials;
use crate::mqtt::Proto;

/// JSON equality as the vectors define it: objects regardless of key order, numbers numerically
/// (`1 == 1.0`, `-5e-1 == -0.5`), everything else exactly.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w))
        }
        _ => a == b,
    }
}

/// Checks the S-9.1 envelope: an object with `code` equal to the HTTP status, a string
/// `message` and a `data` key.
pub fn envelope(status: u16, body: &Value) -> Result<(), String> {
    let Some(o) = body.as_object() else {
        return Err("body is not a JSON object".into());
    };
    match o.get(field::CODE).and_then(Value::as_u64) {
        Some(c) if c == u64::from(status) => {}
        Some(c) => return Err(format!("code {c} differs from the HTTP status")),
        None => return Err("no numeric code".into()),
    }
    if !o.get(field::MESSAGE).is_some_and(Value::is_string) {
        return Err("no string message".into());
    }
    if !o.contains_key(field::DATA) {
        return Err("no data key".into());
    }
    Ok(())
}

/// Whether `v` is a metadata leaf `{"timestamp": ms}`.
fn is_leaf(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get(field::TIMESTAMP).is_some_and(Value::is_u64))
}

fn walk_meta(prefix: &str, v: &Value, out: &mut BTreeSet<String>) -> Result<(), String> {
    if is_leaf(v) {
        out.insert(prefix.to_string());
        return Ok(());
    }
    let Some(o) = v.as_object() else {
        return Err(format!(
            "metadata at {prefix} is neither an object nor a {{\"timestamp\":ms}} leaf: {v}"
        ));
    };
    if o.is_empty() {
        return Err(format!("metadata at {prefix} is an empty object"));
    }
    for (k, c) in o {
        walk_meta(&format!("{prefix}.{k}"), c, out)?;
    }
    Ok(())
}

/// The dot-joined paths of every `{"timestamp":ms}` leaf in a metadata object
/// `{"desired":{..},"reported":{..}}` (`desired.a.b`, `reported.x`).
pub fn metadata_leaf_paths(metadata: &Value) -> Result<BTreeSet<String>, String> {
    let Some(o) = metadata.as_object() else {
        return Err(format!("metadata is not an object: {metadata}"));
    };
    let mut out = BTreeSet::new();
    for (k, v) in o {
        if k != field::DESIRED && k != field::REPORTED {
            return Err(format!("metadata has an unexpected section {k:?}"));
        }
        walk_meta(k, v, &mut out)?;
    }
    Ok(out)
}

/// The leaf paths (scalars and arrays) of a plain JSON object, joined with `.` under `prefix`.
pub fn value_leaf_paths(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                value_leaf_paths(&format!("{prefix}.{k}"), c, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// What a shadow must look like after a vector's update (`expect` of `shadow.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedDoc {
    /// Whole desired state, `None` when absent or empty.
    pub desired: Option<Value>,
    /// Whole reported state, `None` when absent or empty.
    pub reported: Option<Value>,
    /// Whole delta, `None` when absent or empty.
    pub delta: Option<Value>,
    /// The version.
    pub version: u64,
    /// Every metadata leaf path, exactly.
    pub metadata_paths: BTreeSet<String>,
}

fn section<'a>(state: Option<&'a Map<String, Value>>, name: &str) -> Option<&'a Value> {
    state.and_then(|s| s.get(name))
}

fn compare_section(name: &str, want: &Option<Value>, got: Option<&Value>, out: &mut Vec<String>) {
    match (want, got) {
        (None, None) => {}
        (None, Some(g)) if g.as_object().is_some_and(Map::is_empty) => {
            out.push(format!(
                "state.{name} is an empty object; S-3.2 says an empty section is omitted"
            ));
        }
        (None, Some(g)) => out.push(format!("state.{name}: expected absent, got {g}")),
        (Some(w), None) => out.push(format!("state.{name}: expected {w}, got absent")),
        (Some(w), Some(g)) => {
            if !json_eq(w, g) {
                out.push(format!("state.{name}: expected {w}, got {g}"));
            }
        }
    }
}

/// Compares a `get/accepted` document (S-3.2) with the expectation; returns every difference
/// (empty when it matches).
pub fn compare_document(want: &ExpectedDoc, doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(d) = doc.as_object() else {
        return vec![format!("document is not a JSON object: {doc}")];
    };
    let state = d.get(field::STATE).and_then(Value::as_object);
    if state.is_none() {
        out.push("document has no state object".into());
    }
    compare_section(
        field::DESIRED,
        &want.desired,
        section(state, field::DESIRED),
        &mut out,
    );
    compare_section(
        field::REPORTED,
        &want.reported,
        section(state, field::REPORTED),
        &mut out,
    );
    compare_section(
        field::DELTA,
        &want.delta,
        section(state, field::DELTA),
        &mut out,
    );
    if let Some(s) = state {
        for k in s.keys() {
            if ![field::DESIRED, field::REPORTED, field::DELTA].contains(&k.as_str()) {
                out.push(format!("state has an unexpected key {k:?}"));
            }
        }
    }
    match d.get(field::VERSION).and_then(Value::as_u64) {
        Some(v) if v == want.version => {}
        Some(v) => out.push(format!("version: expected {}, got {v}", want.version)),
        None => out.push("version missing or not an integer".into()),
    }
    if !d.get(field::TIMESTAMP).is_some_and(Value::is_u64) {
        out.push("timestamp missing or not an integer".into());
    }
    match d.get(field::METADATA) {
        None => out.push("metadata missing".into()),
        Some(m) => match metadata_leaf_paths(m) {
            Err(e) => out.push(e),
            Ok(paths) => {
                let missing: Vec<_> = want.metadata_paths.difference(&paths).collect();
                let extra: Vec<_> = paths.difference(&want.metadata_paths).collect();
                if !missing.is_empty() {
                    out.push(format!("metadata leaves missing: {missing:?}"));
                }
                if !extra.is_empty() {
                    out.push(format!("unexpected metadata leaves: {extra:?}"));
                }
            }
        },
    }
    out
}

/// Checks an error reply (S-3.8): `code`, a string `message`, an integer `timestamp`, and the
/// `clientToken` (`None`: the key must be absent).
pub fn error_reply(v: &Value, code: u16, token: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    match v.get(field::CODE).and_then(Value::as_u64) {
        Some(c) if c == u64::from(code) => {}
        Some(c) => out.push(format!("code: expected {code}, got {c}")),
        None => out.push("code missing".into()),
    }
    if !v.get(field::MESSAGE).is_some_and(Value::is_string) {
        out.push("message missing or not a string".into());
    }
    if !v.get(field::TIMESTAMP).is_some_and(Value::is_u64) {
        out.push("timestamp missing or not an integer".into());
    }
    out.extend(token_echo(v, token));
    out
}

/// Checks the `clientToken` of a reply: equal to `token`, or absent when `None` (S-4.1).
pub fn token_echo(v: &Value, token: Option<&str>) -> Option<String> {
    let got = v.get(field::CLIENT_TOKEN);
    match (token, got) {
        (None, None) => None,
        (None, Some(g)) => Some(format!("clientToken: expected none, got {g}")),
        (Some(t), Some(Value::String(g))) if g == t => None,
        (Some(t), g) => Some(format!("clientToken: expected {t:?}, got {g:?}")),
    }
}

/// What became of one SUBSCRIBE in an allow-list case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubOutcome {
    /// SUBACK codes.
    Codes(Vec<u8>),
    /// The hub closed the connection instead.
    Closed,
    /// No answer in time.
    Silent,
}

/// Judges a SUBSCRIBE against S-2.1/S-2.2. `malformed` filters (not valid MQTT) may also be
/// refused by closing the connection or, in MQTT 5, with 0x8F (topic filter invalid). With
/// [`Denials::Broker`] any refusal (a failure code, a closed connection) is the broker's own
/// (D-59); a grant is still a failure.
pub fn judge_subscribe(
    denials: Denials,
    allowed: bool,
    malformed: bool,
    proto: Proto,
    got: &SubOutcome,
) -> Result<(), String> {
    let deny = match proto {
        Proto::V311 => 0x80,
        Proto::V5 => 0x87,
    };
    match (allowed, got) {
        (true, SubOutcome::Codes(c)) if c.len() == 1 && c[0] <= 2 => Ok(()),
        (true, other) => Err(format!("allowed filter not granted: {other:?}")),
        (false, SubOutcome::Codes(c))
            if denials == Denials::Broker && !c.is_empty() && c.iter().all(|x| *x >= 0x80) =>
        {
            Ok(())
        }
        (false, SubOutcome::Closed) if denials == Denials::Broker => Ok(()),
        (false, SubOutcome::Codes(c)) if c.len() == 1 && c[0] == deny => Ok(()),
        (false, SubOutcome::Codes(c))
            if malformed && c.len() == 1 && (c[0] == 0x80 || c[0] == 0x8F) =>
        {
            Ok(())
        }
        (false, SubOutcome::Closed) if malformed => Ok(()),
        (false, SubOutcome::Codes(c)) if c.iter().all(|x| *x <= 2) => {
            Err(format!("forbidden filter was GRANTED (SUBACK {c:02x?})"))
        }
        (false, other) => Err(format!("expected SUBACK {deny:#04x}, got {other:?}")),
    }
}

/// What became of one PUBLISH in an allow-list case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubOutcome {
    /// PUBACK reason (0 in 3.1.1), `None` when none came.
    pub ack: Option<u8>,
    /// Whether the hub closed the connection.
    pub closed: bool,
    /// Whether an observer (service user on `$iothub/#`, or the thing itself) received it.
    pub delivered: bool,
}

/// Judges a QoS 1 PUBLISH against S-2.1/S-2.2: a denied one is never delivered, gets PUBACK
/// 0x87 in MQTT 5 and closes the connection in 3.1.1; an allowed one is acknowledged (0x00 or
/// 0x10 no matching subscribers) and keeps the connection. `malformed` topic names (wildcards)
/// may also close the connection in MQTT 5. With [`Denials::Broker`] a denied one may get any
/// PUBACK or close the connection, the broker's own way (D-59), and is still never delivered.
pub fn judge_publish(
    denials: Denials,
    allowed: bool,
    malformed: bool,
    proto: Proto,
    got: &PubOutcome,
) -> Result<(), String> {
    if allowed {
        if got.closed {
            return Err("allowed PUBLISH closed the connection".into());
        }
        return match (proto, got.ack) {
            (Proto::V311, Some(0)) | (Proto::V5, Some(0x00 | 0x10)) => Ok(()),
            (_, a) => Err(format!(
                "allowed PUBLISH: expected PUBACK success, got {a:?}"
            )),
        };
    }
    if got.delivered {
        return Err("forbidden PUBLISH was DELIVERED to a subscriber".into());
    }
    if denials == Denials::Broker {
        return match (got.ack, got.closed) {
            (None, false) => Err("forbidden PUBLISH got no PUBACK and kept the connection".into()),
            _ => Ok(()),
        };
    }
    match proto {
        Proto::V311 if got.closed => Ok(()),
        Proto::V311 => Err(format!(
            "forbidden PUBLISH did not close the 3.1.1 connection (PUBACK {:?})",
            got.ack
        )),
        Proto::V5 if got.ack == Some(0x87) => Ok(()),
        Proto::V5 if malformed && got.closed => Ok(()),
        Proto::V5 => Err(format!(
            "forbidden PUBLISH: expected PUBACK 0x87, got {:?} (closed: {})",
            got.ack, got.closed
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn want() -> ExpectedDoc {
        ExpectedDoc {
            desired: Some(json!({"a": 1})),
            reported: Some(json!({"a": 0, "b": {"c": 2}})),
            delta: Some(json!({"a": 1})),
            version: 3,
            metadata_paths: ["desired.a", "reported.a", "reported.b.c"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    fn good_doc() -> Value {
        json!({
            "state": {"desired": {"a": 1.0}, "reported": {"b": {"c": 2}, "a": 0}, "delta": {"a": 1}},
            "metadata": {"desired": {"a": {"timestamp": 5}},
                         "reported": {"a": {"timestamp": 5}, "b": {"c": {"timestamp": 6}}}},
            "version": 3, "timestamp": 7
        })
    }

    #[test]
    fn numbers_compare_numerically() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(
            &json!(-0.5),
            &serde_json::from_str::<Value>("-5e-1").unwrap()
        ));
        assert!(!json_eq(&json!(1), &json!("1")));
        assert!(!json_eq(&json!([1, 2]), &json!([2, 1])));
        assert!(json_eq(&json!({"a": 1, "b": 2}), &json!({"b": 2, "a": 1})));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": null})));
    }

    #[test]
    fn matching_document_passes() {
        assert_eq!(compare_document(&want(), &good_doc()), Vec::<String>::new());
    }

    #[test]
    fn wrong_delta_is_flagged() {
        let mut d = good_doc();
        d["state"]["delta"] = json!({"a": 2});
        assert!(compare_document(&want(), &d)[0].contains("state.delta"));
        d["state"].as_object_mut().unwrap().remove("delta");
        assert!(compare_document(&want(), &d)[0].contains("got absent"));
    }

    #[test]
    fn wrong_version_is_flagged() {
        let mut d = good_doc();
        d["version"] = json!(4);
        assert_eq!(
            compare_document(&want(), &d),
            vec!["version: expected 3, got 4".to_string()]
        );
    }

    #[test]
    fn missing_or_extra_metadata_is_flagged() {
        let mut d = good_doc();
        d["metadata"]["reported"]["b"] = json!({});
        let e = compare_document(&want(), &d);
        assert!(e[0].contains("empty object"), "{e:?}");
        let mut d = good_doc();
        d["metadata"]["reported"]
            .as_object_mut()
            .unwrap()
            .remove("b");
        assert!(compare_document(&want(), &d)[0].contains("missing"));
        let mut d = good_doc();
        d["metadata"]["desired"]["zz"] = json!({"timestamp": 1});
        assert!(compare_document(&want(), &d)[0].contains("unexpected metadata"));
    }

    #[test]
    fn empty_section_must_be_omitted() {
        let mut w = want();
        w.delta = None;
        let mut d = good_doc();
        d["state"]["delta"] = json!({});
        assert!(compare_document(&w, &d)[0].contains("omitted"));
    }

    #[test]
    fn error_replies() {
        let ok =
            json!({"code": 409, "message": "version conflict", "timestamp": 1, "clientToken": "t"});
        assert!(error_reply(&ok, 409, Some("t")).is_empty());
        assert_eq!(error_reply(&ok, 400, Some("t")).len(), 1);
        assert_eq!(error_reply(&ok, 409, None).len(), 1);
        let no_token = json!({"code": 409, "message": "x", "timestamp": 1});
        assert_eq!(error_reply(&no_token, 409, Some("t")).len(), 1);
    }

    #[test]
    fn envelope_checks() {
        assert!(envelope(200, &json!({"code": 200, "message": "ok", "data": null})).is_ok());
        assert!(envelope(404, &json!({"code": 200, "message": "ok", "data": null})).is_err());
        assert!(envelope(200, &json!({"code": 200, "message": "ok"})).is_err());
        assert!(envelope(500, &json!("oops")).is_err());
    }

    #[test]
    fn granted_forbidden_subscribe_is_flagged() {
        let e = judge_subscribe(
            Denials::Hub,
            false,
            false,
            Proto::V311,
            &SubOutcome::Codes(vec![1]),
        )
        .unwrap_err();
        assert!(e.contains("GRANTED"));
        assert!(
            judge_subscribe(
                Denials::Hub,
                false,
                false,
                Proto::V5,
                &SubOutcome::Codes(vec![0x80])
            )
            .is_err()
        );
        assert!(
            judge_subscribe(
                Denials::Hub,
                false,
                false,
                Proto::V5,
                &SubOutcome::Codes(vec![0x87])
            )
            .is_ok()
        );
        assert!(
            judge_subscribe(Denials::Hub, false, false, Proto::V311, &SubOutcome::Closed).is_err()
        );
        assert!(
            judge_subscribe(Denials::Hub, false, true, Proto::V311, &SubOutcome::Closed).is_ok()
        );
        assert!(
            judge_subscribe(
                Denials::Hub,
                true,
                false,
                Proto::V5,
                &SubOutcome::Codes(vec![0x87])
            )
            .is_err()
        );
    }

    #[test]
    fn delivered_or_acked_forbidden_publish_is_flagged() {
        let delivered = PubOutcome {
            ack: Some(0x87),
            closed: false,
            delivered: true,
        };
        assert!(
            judge_publish(Denials::Hub, false, false, Proto::V5, &delivered)
                .unwrap_err()
                .contains("DELIVERED")
        );
        let acked = PubOutcome {
            ack: Some(0),
            closed: false,
            delivered: false,
        };
        assert!(judge_publish(Denials::Hub, false, false, Proto::V5, &acked).is_err());
        assert!(judge_publish(Denials::Hub, false, false, Proto::V311, &acked).is_err());
        let closed = PubOutcome {
            ack: None,
            closed: true,
            delivered: false,
        };
        assert!(judge_publish(Denials::Hub, false, false, Proto::V311, &closed).is_ok());
        assert!(judge_publish(Denials::Hub, true, false, Proto::V311, &closed).is_err());
        let refused = PubOutcome {
            ack: Some(0x87),
            closed: false,
            delivered: false,
        };
        assert!(judge_publish(Denials::Hub, true, false, Proto::V5, &refused).is_err());
        assert!(judge_publish(Denials::Hub, false, false, Proto::V5, &refused).is_ok());
    }

    /// D-59: a broker the hub does not run refuses in its own way, but never delivers a denied
    /// PUBLISH, never grants a denied SUBSCRIBE and never leaves one unanswered.
    #[test]
    fn a_brokers_own_denials_pass_and_leaks_still_fail() {
        let b = Denials::Broker;
        let acked = PubOutcome {
            ack: Some(0),
            closed: false,
            delivered: false,
        };
        assert!(judge_publish(b, false, false, Proto::V311, &acked).is_ok());
        assert!(judge_publish(b, false, false, Proto::V5, &acked).is_ok());
        let delivered = PubOutcome {
            delivered: true,
            ..acked.clone()
        };
        assert!(judge_publish(b, false, false, Proto::V5, &delivered).is_err());
        let silent = PubOutcome { ack: None, ..acked };
        assert!(judge_publish(b, false, false, Proto::V5, &silent).is_err());
        for codes in [vec![0x80], vec![0x87], vec![0x8F]] {
            assert!(judge_subscribe(b, false, false, Proto::V5, &SubOutcome::Codes(codes)).is_ok());
        }
        assert!(judge_subscribe(b, false, false, Proto::V311, &SubOutcome::Closed).is_ok());
        assert!(judge_subscribe(b, false, false, Proto::V5, &SubOutcome::Codes(vec![1])).is_err());
        assert!(judge_subscribe(b, false, false, Proto::V5, &SubOutcome::Silent).is_err());
        assert!(
            judge_subscribe(b, true, false, Proto::V5, &SubOutcome::Codes(vec![0x87])).is_err()
        );
    }

    #[test]
    fn metadata_paths() {
        let p = metadata_leaf_paths(
            &json!({"desired": {"a": {"b": {"timestamp": 1}}, "l": {"timestamp": 2}}}),
        )
        .unwrap();
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            vec!["desired.a.b", "desired.l"]
        );
        assert!(metadata_leaf_paths(&json!({"desired": {"a": 5}})).is_err());
        let mut out = BTreeSet::new();
        value_leaf_paths("reported", &json!({"a": [1], "b": {"c": null}}), &mut out);
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            vec!["reported.a", "reported.b.c"]
        );
    }
}
