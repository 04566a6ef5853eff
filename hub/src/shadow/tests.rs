//! Tests of the pure shadow core: request validation, update application, reply payloads, and
//! property tests of the merge/delta invariants. The golden vectors written from docs/spec.md
//! are run in `vectors.rs`.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;

use super::request::{DeviceUpdates, client_token_of, parse_desired_update};
use super::*;

fn limits() -> Limits {
    Limits::default()
}

fn update(text: &str) -> UpdateRequest {
    match parse_update(text.as_bytes(), &limits()) {
        Ok(r) => r,
        Err(e) => panic!("{text} rejected: {e}"),
    }
}

fn code_of(payload: &[u8]) -> (ErrorCode, Option<String>) {
    match parse_update(payload, &limits()) {
        Ok(r) => panic!("accepted {r:?}"),
        Err(e) => (e.code, e.client_token),
    }
}

fn apply(shadow: &Shadow, text: &str, now: u64) -> Result<Shadow, ShadowError> {
    apply_update(shadow, &update(text), &limits(), now)
}

fn applied(shadow: &Shadow, text: &str, now: u64) -> Shadow {
    match apply(shadow, text, now) {
        Ok(s) => s,
        Err(e) => panic!("{text} failed: {e}"),
    }
}

// ---- request validation (S-3.3, S-3.8, S-3.9, S-4) -------------------------------------------

#[test]
fn valid_update_is_parsed() {
    let r =
        update(r#"{"state":{"desired":{"a":1},"reported":null},"clientToken":"t","version":3}"#);
    assert_eq!(r.client_token.as_deref(), Some("t"));
    assert_eq!(r.version, Some(3));
    assert_eq!(r.reported, Some(SectionPatch::Clear));
    assert!(matches!(r.desired, Some(SectionPatch::Merge(ref m)) if m.len() == 1));
}

#[test]
fn oversized_payload_is_413() {
    let l = limits();
    let big = format!(
        r#"{{"state":{{"reported":{{"a":"{}"}}}}}}"#,
        "x".repeat(l.max_request_payload)
    );
    assert_eq!(code_of(big.as_bytes()).0, ErrorCode::PayloadTooLarge);
}

#[test]
fn non_utf8_is_415() {
    assert_eq!(
        code_of(b"{\"state\":{\"reported\":{\"a\":\"\xff\"}}}").0,
        ErrorCode::UnsupportedMediaType
    );
}

#[test]
fn deep_payload_is_400_without_recursing() {
    // Far deeper than any recursive parser's stack would survive if it were reached... and
    // still under the payload limit, so the depth check is what answers.
    let n = limits().max_request_payload / 2 - 1;
    let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_eq!(code_of(deep.as_bytes()).0, ErrorCode::BadRequest);
    let big = Limits {
        max_request_payload: 100_000,
        ..limits()
    };
    let deeper = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        parse_update(deeper.as_bytes(), &big).map_err(|e| e.code),
        Err(ErrorCode::BadRequest)
    );
}

#[test]
fn depth_at_the_limit_is_accepted_one_more_is_not() {
    let depth = limits().max_json_depth;
    // {"state":{"reported": ...}} uses three levels; nest the rest inside.
    let inner = |levels: usize| {
        let mut s = String::from("1");
        for _ in 0..levels {
            s = format!(r#"{{"k":{s}}}"#);
        }
        format!(r#"{{"state":{{"reported":{s}}}}}"#)
    };
    assert!(parse_update(inner(depth - 2).as_bytes(), &limits()).is_ok());
    assert_eq!(
        code_of(inner(depth - 1).as_bytes()).0,
        ErrorCode::BadRequest
    );
}

#[test]
fn malformed_json_is_400() {
    assert_eq!(code_of(b"{\"state\":").0, ErrorCode::BadRequest);
    assert_eq!(code_of(b"not json").0, ErrorCode::BadRequest);
}

#[test]
fn empty_update_is_400_empty_get_is_an_empty_request() {
    assert_eq!(code_of(b"").0, ErrorCode::BadRequest);
    assert_eq!(code_of(b"  \n").0, ErrorCode::BadRequest);
    assert_eq!(parse_get(b"", &limits()), Ok(GetRequest::default()));
    assert_eq!(
        parse_get(br#"{"clientToken":"g"}"#, &limits()).map(|g| g.client_token),
        Ok(Some("g".into()))
    );
    assert_eq!(
        parse_get(b"[1]", &limits()).map_err(|e| e.code),
        Err(ErrorCode::BadRequest)
    );
}

#[test]
fn wrong_types_are_400_and_echo_a_readable_token() {
    for bad in [
        r#"{"state":1,"clientToken":"t"}"#,
        r#"{"state":[],"clientToken":"t"}"#,
        r#"{"state":{"desired":1},"clientToken":"t"}"#,
        r#"{"state":{"reported":"x"},"clientToken":"t"}"#,
        r#"{"state":{"desired":{}},"version":-1,"clientToken":"t"}"#,
        r#"{"state":{"desired":{}},"version":1.5,"clientToken":"t"}"#,
        r#"{"state":{"desired":{}},"version":"1","clientToken":"t"}"#,
        r#"{"state":{},"clientToken":"t"}"#,
        r#"{"state":null,"clientToken":"t"}"#,
        r#"{"clientToken":"t"}"#,
        r#"{"state":{"delta":{}},"clientToken":"t"}"#,
    ] {
        assert_eq!(
            code_of(bad.as_bytes()),
            (ErrorCode::BadRequest, Some("t".into())),
            "{bad}"
        );
    }
    assert_eq!(
        code_of(b"[]"),
        (ErrorCode::BadRequest, None),
        "not an object"
    );
}

#[test]
fn bad_client_token_is_400_and_not_echoed() {
    let max = limits().max_client_token;
    let ok = format!(
        r#"{{"state":{{"reported":{{}}}},"clientToken":"{}"}}"#,
        "t".repeat(max)
    );
    assert_eq!(update(&ok).client_token.map(|t| t.len()), Some(max));
    let long = format!(
        r#"{{"state":{{"reported":{{}}}},"clientToken":"{}"}}"#,
        "t".repeat(max + 1)
    );
    assert_eq!(code_of(long.as_bytes()), (ErrorCode::BadRequest, None));
    assert_eq!(
        code_of(br#"{"state":{"reported":{}},"clientToken":7}"#),
        (ErrorCode::BadRequest, None)
    );
}

#[test]
fn client_token_is_read_best_effort() {
    let l = limits();
    assert_eq!(
        client_token_of(br#"{"clientToken":"x","state":5}"#, &l),
        Some("x".into())
    );
    assert_eq!(client_token_of(b"{\"clientToken\":", &l), None);
    assert_eq!(client_token_of(b"", &l), None);
    // Escaped tokens are decoded, and the limit applies to the decoded token.
    assert_eq!(
        client_token_of(br#"{"clientToken":"a\u0041\"b"}"#, &l),
        Some("aA\"b".into())
    );
    let escaped_long = format!(
        r#"{{"clientToken":"{}"}}"#,
        "\\u0041".repeat(l.max_client_token + 1)
    );
    assert_eq!(client_token_of(escaped_long.as_bytes(), &l), None);
}

/// docs/spec.md S-4.2: requests refused before they are parsed still get their token back.
#[test]
fn refused_before_parsing_still_echo_the_token() {
    let l = limits();
    let big = format!(
        r#"{{"clientToken":"big","state":{{"reported":{{"a":"{}"}}}}}}"#,
        "x".repeat(l.max_request_payload)
    );
    assert_eq!(
        code_of(big.as_bytes()),
        (ErrorCode::PayloadTooLarge, Some("big".into()))
    );
    // The token after the oversized part is found too.
    let big_last = format!(
        r#"{{"state":{{"reported":{{"a":"{}"}}}},"clientToken":"last"}}"#,
        "x".repeat(l.max_request_payload)
    );
    assert_eq!(code_of(big_last.as_bytes()).1.as_deref(), Some("last"));
    let deep = format!(
        r#"{{"clientToken":"deep","state":{{"reported":{}1{}}}}}"#,
        r#"{"k":"#.repeat(l.max_json_depth),
        "}".repeat(l.max_json_depth)
    );
    assert_eq!(
        code_of(deep.as_bytes()),
        (ErrorCode::BadRequest, Some("deep".into()))
    );
    assert_eq!(
        code_of(b"{\"clientToken\":\"utf\",\"state\":{\"reported\":{\"a\":\"\xff\"}}}"),
        (ErrorCode::UnsupportedMediaType, Some("utf".into()))
    );
    assert_eq!(
        code_of(br#"{"clientToken":"syntax","state":{"reported":{"a":}}}"#),
        (ErrorCode::BadRequest, Some("syntax".into()))
    );
    // A token nested below the top level is not the request's.
    assert_eq!(
        code_of(br#"{"state":{"reported":{"clientToken":"inner","a":}}}"#),
        (ErrorCode::BadRequest, None)
    );
    assert_eq!(
        parse_get(big.as_bytes(), &l).map_err(|e| (e.code, e.client_token)),
        Err((ErrorCode::PayloadTooLarge, Some("big".into())))
    );
}

#[test]
fn rest_updates_write_desired_only() {
    let l = limits();
    assert!(
        parse_desired_update(br#"{"state":{"desired":{"a":1}}}"#, &l, DeviceUpdates::Spec).is_ok()
    );
    assert_eq!(
        parse_desired_update(
            br#"{"state":{"reported":{"a":1}},"clientToken":"r"}"#,
            &l,
            DeviceUpdates::Spec
        )
        .map_err(|e| (e.code, e.client_token)),
        Err((ErrorCode::BadRequest, Some("r".into())))
    );
}

/// `--tio-compat`: tio's Go `StateReq` always carries `"version": 0` and a `null` for the
/// section it does not write.
#[test]
fn tio_requests_read_as_tio_reads_them() {
    let l = limits();
    let report = br#"{"state":{"desired":null,"reported":{"a":1}},"clientToken":"t","version":0}"#;
    let spec = parse_device_update(report, &l, DeviceUpdates::Spec).expect("valid");
    assert_eq!(spec.desired, Some(SectionPatch::Clear));
    assert_eq!(spec.version, Some(0));
    let tio = parse_device_update(report, &l, DeviceUpdates::Tio).expect("valid");
    assert_eq!(tio.desired, None);
    assert_eq!(tio.version, None);
    assert_eq!(tio.state, json!({"reported": {"a": 1}}));
    // Other versions still count.
    let v3 = br#"{"state":{"reported":{"a":1}},"version":3}"#;
    assert_eq!(
        parse_device_update(v3, &l, DeviceUpdates::Tio)
            .expect("valid")
            .version,
        Some(3)
    );
    // A thing writes reported only.
    assert_eq!(
        parse_device_update(
            br#"{"state":{"desired":{"a":1}},"clientToken":"d"}"#,
            &l,
            DeviceUpdates::Tio
        )
        .map_err(|e| (e.code, e.client_token)),
        Err((ErrorCode::BadRequest, Some("d".into())))
    );
    let rest = br#"{"state":{"desired":{"a":1},"reported":null},"clientToken":"r","version":0}"#;
    assert_eq!(
        parse_desired_update(rest, &l, DeviceUpdates::Spec).map_err(|e| e.code),
        Err(ErrorCode::BadRequest)
    );
    let tio = parse_desired_update(rest, &l, DeviceUpdates::Tio).expect("valid");
    assert_eq!((tio.reported, tio.version), (None, None));
    assert_eq!(tio.state, json!({"desired": {"a": 1}}));
}

// ---- apply_update (S-3.4) ---------------------------------------------------------------------

#[test]
fn first_update_creates_version_1_and_each_update_adds_1() {
    let s1 = applied(&Shadow::default(), r#"{"state":{"reported":{"a":1}}}"#, 10);
    assert_eq!(s1.version, 1);
    let s2 = applied(&s1, r#"{"state":{"desired":{"a":2}}}"#, 11);
    assert_eq!(s2.version, 2);
    assert_eq!(Value::Object(s2.desired.clone()), json!({"a": 2}));
    assert_eq!(Value::Object(s2.reported.clone()), json!({"a": 1}));
    assert_eq!(
        Value::Object(s2.metadata_reported.clone()),
        json!({"a": {"timestamp": 10}})
    );
    assert_eq!(
        Value::Object(s2.metadata_desired.clone()),
        json!({"a": {"timestamp": 11}})
    );
}

#[test]
fn version_must_match_or_409_and_nothing_changes() {
    let s1 = applied(&Shadow::default(), r#"{"state":{"reported":{"a":1}}}"#, 10);
    let err = apply(
        &s1,
        r#"{"state":{"reported":{"a":2}},"version":0,"clientToken":"c"}"#,
        11,
    );
    assert_eq!(
        err.map_err(|e| (e.code, e.client_token)),
        Err((ErrorCode::Conflict, Some("c".into())))
    );
    let s2 = applied(&s1, r#"{"state":{"reported":{"a":2}},"version":1}"#, 11);
    assert_eq!(s2.version, 2);
}

#[test]
fn version_zero_creates_a_missing_shadow_other_versions_conflict() {
    assert!(
        apply(
            &Shadow::default(),
            r#"{"state":{"reported":{}},"version":0}"#,
            1
        )
        .is_ok()
    );
    assert_eq!(
        apply(
            &Shadow::default(),
            r#"{"state":{"reported":{}},"version":1}"#,
            1
        )
        .map_err(|e| e.code),
        Err(ErrorCode::Conflict)
    );
}

#[test]
fn section_null_clears_state_and_metadata() {
    let s1 = applied(
        &Shadow::default(),
        r#"{"state":{"desired":{"a":1,"b":{"c":2}},"reported":{"a":1}}}"#,
        1,
    );
    let s2 = applied(&s1, r#"{"state":{"desired":null}}"#, 2);
    assert!(s2.desired.is_empty() && s2.metadata_desired.is_empty());
    assert_eq!(Value::Object(s2.reported), json!({"a": 1}));
    assert_eq!(s2.version, 2);
}

#[test]
fn resulting_state_over_the_limit_is_413() {
    let l = Limits {
        max_state_bytes: 64,
        ..limits()
    };
    let mut s = Shadow::default();
    for i in 0..4 {
        let req = update(&format!(
            r#"{{"state":{{"reported":{{"k{i}":"0123456789"}}}}}}"#
        ));
        s = match apply_update(&s, &req, &l, 1) {
            Ok(next) => next,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::PayloadTooLarge);
                assert!(s.state_bytes() <= 64);
                return;
            }
        };
    }
    panic!("state grew past the limit: {}", s.state_bytes());
}

#[test]
fn body_round_trips() {
    let s = applied(
        &Shadow::default(),
        r#"{"state":{"desired":{"a":[1,{"b":null}]},"reported":{"x":{"y":"z"}}}}"#,
        7,
    );
    let back = Shadow::from_body(&s.to_body(), s.version);
    assert_eq!(back.ok(), Some(s));
    assert_eq!(
        Shadow::from_body("{}", 3).ok(),
        Some(Shadow {
            version: 3,
            ..Shadow::default()
        })
    );
    assert!(Shadow::from_body(r#"{"state":{"desired":5}}"#, 1).is_err());
    assert!(Shadow::from_body("nope", 1).is_err());
}

// ---- payloads (S-3.2, S-3.5–S-3.8) ------------------------------------------------------------

#[test]
fn get_document_omits_empty_sections_and_includes_delta() {
    let s = applied(
        &Shadow::default(),
        r#"{"state":{"desired":{"a":1,"b":2},"reported":{"a":1.0}}}"#,
        5,
    );
    assert_eq!(
        get_document(&s, 9, Some("g")),
        json!({
            "state": {"desired": {"a": 1, "b": 2}, "reported": {"a": 1.0}, "delta": {"b": 2}},
            "metadata": {"desired": {"a": {"timestamp": 5}, "b": {"timestamp": 5}},
                         "reported": {"a": {"timestamp": 5}}},
            "version": 1, "timestamp": 9, "clientToken": "g"
        })
    );
    let r = applied(&Shadow::default(), r#"{"state":{"reported":{"a":1}}}"#, 5);
    assert_eq!(
        get_document(&r, 9, None),
        json!({"state": {"reported": {"a": 1}}, "metadata": {"reported": {"a": {"timestamp": 5}}},
               "version": 1, "timestamp": 9})
    );
}

#[test]
fn update_replies_accepted_delta_documents() {
    let s1 = applied(&Shadow::default(), r#"{"state":{"reported":{"a":1}}}"#, 5);
    let text = r#"{"state":{"desired":{"a":2,"gone":null}},"clientToken":"u"}"#;
    let req = update(text);
    let s2 = applied(&s1, text, 6);
    let r = update_replies(&s1, &s2, &req, 6);
    assert_eq!(
        r.accepted,
        json!({"state": {"desired": {"a": 2, "gone": null}},
               "metadata": {"desired": {"a": {"timestamp": 6}, "gone": {"timestamp": 6}}},
               "version": 2, "timestamp": 6, "clientToken": "u"})
    );
    assert_eq!(
        r.delta,
        Some(
            json!({"state": {"a": 2}, "metadata": {"a": {"timestamp": 6}},
                    "version": 2, "timestamp": 6, "clientToken": "u"})
        )
    );
    assert_eq!(
        r.documents,
        json!({
            "previous": {"state": {"reported": {"a": 1}},
                         "metadata": {"reported": {"a": {"timestamp": 5}}}, "version": 1},
            "current": {"state": {"desired": {"a": 2}, "reported": {"a": 1}},
                        "metadata": {"desired": {"a": {"timestamp": 6}},
                                     "reported": {"a": {"timestamp": 5}}}, "version": 2},
            "timestamp": 6, "clientToken": "u"
        })
    );
}

#[test]
fn no_delta_for_reported_only_updates_or_empty_delta() {
    let s1 = applied(&Shadow::default(), r#"{"state":{"desired":{"a":1}}}"#, 5);
    let req = update(r#"{"state":{"reported":{"b":1}}}"#);
    let s2 = applied(&s1, r#"{"state":{"reported":{"b":1}}}"#, 6);
    let r = update_replies(&s1, &s2, &req, 6);
    assert_eq!(r.delta, None);
    let req = update(r#"{"state":{"desired":{"b":1.0}}}"#);
    let s3 = applied(&Shadow::default(), r#"{"state":{"reported":{"b":1}}}"#, 6);
    let s4 = applied(&s3, r#"{"state":{"desired":{"b":1.0}}}"#, 7);
    assert_eq!(update_replies(&s3, &s4, &req, 7).delta, None);
}

#[test]
fn first_documents_have_no_previous() {
    let req = update(r#"{"state":{"reported":{"a":1}}}"#);
    let s1 = applied(&Shadow::default(), r#"{"state":{"reported":{"a":1}}}"#, 5);
    let r = update_replies(&Shadow::default(), &s1, &req, 5);
    assert_eq!(
        r.documents,
        json!({"current": {"state": {"reported": {"a": 1}},
                           "metadata": {"reported": {"a": {"timestamp": 5}}}, "version": 1},
               "timestamp": 5})
    );
}

#[test]
fn error_payload_shape() {
    let e = ShadowError::new(ErrorCode::Conflict, "version conflict")
        .with_client_token(Some("c".into()));
    assert_eq!(
        error_payload(&e, 3),
        json!({"code": 409, "message": "version conflict", "timestamp": 3, "clientToken": "c"})
    );
    let e = ShadowError::new(ErrorCode::BadRequest, "x");
    assert_eq!(
        error_payload(&e, 3),
        json!({"code": 400, "message": "x", "timestamp": 3})
    );
}

// ---- property tests ---------------------------------------------------------------------------

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..3).prop_map(Value::from),
        (-3i64..3).prop_map(|n| Value::from(n as f64)),
        "[ab]{0,2}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        prop::collection::vec((0i64..3).prop_map(Value::from), 0..3).prop_map(Value::Array),
    ]
}

/// A patch value: leaves, nulls (deletes) and nested objects over a small key alphabet, so that
/// patches collide with existing keys often.
fn patch_value() -> impl Strategy<Value = Value> {
    let base = prop_oneof![4 => leaf(), 1 => Just(Value::Null)];
    base.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map("[abcd]", inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

fn patch() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[abcd]", patch_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn section_request(section: &str, patch: &Map<String, Value>) -> UpdateRequest {
    let mut state = Map::new();
    state.insert(section.into(), Value::Object(patch.clone()));
    let text = json!({ "state": state }).to_string();
    update(&text)
}

fn big_limits() -> Limits {
    Limits {
        max_state_bytes: usize::MAX,
        max_request_payload: usize::MAX,
        ..limits()
    }
}

fn must(r: Result<Shadow, ShadowError>) -> Shadow {
    match r {
        Ok(s) => s,
        Err(e) => panic!("update rejected: {e}"),
    }
}

/// Metadata mirrors state key for key, with a `{"timestamp": n}` leaf at every non-object, and
/// no object in the state is empty.
fn mirrors(state: &Map<String, Value>, meta: &Map<String, Value>) -> bool {
    state.len() == meta.len()
        && state.iter().all(|(k, v)| match (v, meta.get(k)) {
            (Value::Object(s), Some(Value::Object(m))) if !s.is_empty() => mirrors(s, m),
            (Value::Object(_), _) => false,
            (_, Some(Value::Object(m))) => m.len() == 1 && m.values().all(|t| t.as_u64().is_some()),
            _ => false,
        })
}

/// Drops the timestamps' values, keeping the shape.
fn shape(meta: &Map<String, Value>) -> Value {
    Value::Object(
        meta.iter()
            .map(|(k, v)| match v {
                Value::Object(m) if m.values().all(|t| !t.is_object()) => (k.clone(), json!(0)),
                Value::Object(m) => (k.clone(), shape(m)),
                other => (k.clone(), other.clone()),
            })
            .collect(),
    )
}

/// Whether `path` (a chain of object keys) exists in `map`.
fn has_path(map: &Map<String, Value>, path: &[String]) -> bool {
    match path {
        [] => true,
        [last] => map.contains_key(last),
        [first, rest @ ..] => match map.get(first) {
            Some(Value::Object(m)) => has_path(m, rest),
            _ => false,
        },
    }
}

fn null_paths(patch: &Map<String, Value>, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in patch {
        prefix.push(k.clone());
        match v {
            Value::Null => out.push(prefix.clone()),
            Value::Object(m) => null_paths(m, prefix, out),
            _ => {}
        }
        prefix.pop();
    }
}

proptest! {
    #[test]
    fn reporting_the_delta_leaves_no_delta(reported in patch(), desired in patch()) {
        let l = big_limits();
        let s = must(apply_update(&Shadow::default(), &section_request("reported", &reported), &l, 1));
        let s = must(apply_update(&s, &section_request("desired", &desired), &l, 2));
        let d = delta(&s);
        let s = must(apply_update(&s, &section_request("reported", &d), &l, 3));
        prop_assert!(delta(&s).is_empty(), "delta left: {:?}", delta(&s));
    }

    #[test]
    fn metadata_mirrors_state_and_nulls_leave_nothing(patches in prop::collection::vec((any::<bool>(), patch()), 1..6)) {
        let l = big_limits();
        let mut s = Shadow::default();
        for (i, (desired, p)) in patches.iter().enumerate() {
            let section = if *desired { "desired" } else { "reported" };
            let next = must(apply_update(&s, &section_request(section, p), &l, i as u64));
            prop_assert!(next.version > s.version);
            prop_assert!(mirrors(&next.desired, &next.metadata_desired));
            prop_assert!(mirrors(&next.reported, &next.metadata_reported));
            let (state, meta) = if *desired {
                (&next.desired, &next.metadata_desired)
            } else {
                (&next.reported, &next.metadata_reported)
            };
            let mut nulls = Vec::new();
            null_paths(p, &mut Vec::new(), &mut nulls);
            for path in nulls {
                prop_assert!(!has_path(state, &path), "{path:?} still in state");
                prop_assert!(!has_path(meta, &path), "{path:?} still in metadata");
            }
            s = next;
        }
    }

    #[test]
    fn applying_a_patch_twice_equals_once_except_timestamps(start in patch(), p in patch()) {
        let l = big_limits();
        let s0 = must(apply_update(&Shadow::default(), &section_request("desired", &start), &l, 1));
        let once = must(apply_update(&s0, &section_request("desired", &p), &l, 2));
        let twice = must(apply_update(&once, &section_request("desired", &p), &l, 3));
        prop_assert_eq!(&once.desired, &twice.desired);
        prop_assert_eq!(shape(&once.metadata_desired), shape(&twice.metadata_desired));
        prop_assert_eq!(twice.version, once.version + 1);
    }

    #[test]
    fn body_round_trip_is_lossless(p in patch(), q in patch()) {
        let l = big_limits();
        let s = must(apply_update(&Shadow::default(), &section_request("desired", &p), &l, 1));
        let s = must(apply_update(&s, &section_request("reported", &q), &l, 2));
        prop_assert_eq!(Shadow::from_body(&s.to_body(), s.version).ok(), Some(s));
    }

    #[test]
    fn json_eq_is_reflexive_and_symmetric(a in patch_value(), b in patch_value()) {
        prop_assert!(json_eq(&a, &a));
        prop_assert_eq!(json_eq(&a, &b), json_eq(&b, &a));
    }
}
