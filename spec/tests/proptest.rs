//! Property tests: topic build → parse round trips, the parser and the depth scan never panic,
//! payloads round-trip through serde-json-core, and `json_depth_exceeds` agrees with a recursive
//! reference.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use iothub_spec::limits::{MAX_TOPIC_LEN, json_depth, json_depth_exceeds};
use iothub_spec::payload::{
    ErrorResponse, GetRequest, LifecycleEvent, NtpResponse, OtaMeta, OtaResult, OtaTask,
    PresenceEvent, UpdateRequest,
};
use iothub_spec::topic::{Filter, Topic, thing_may_subscribe};
use iothub_spec::{code, topic};
use proptest::prelude::*;

fn thing_id() -> impl Strategy<Value = String> {
    "[0-9A-Za-z_-]{1,64}"
}
fn shadow_name() -> impl Strategy<Value = String> {
    "[0-9A-Za-z_:-]{1,64}"
}
fn method_name() -> impl Strategy<Value = String> {
    "[0-9A-Za-z_.-]{1,64}"
}
fn rest() -> impl Strategy<Value = String> {
    "[a-z0-9$ ._-]{1,12}(/[a-z0-9$ ._-]{1,12}){0,4}"
}

fn build(variant: u8, t: &str, s: &str, m: &str, r: &str) -> Topic<'static> {
    // Leak is fine in a test: it keeps the generated strings alive for the 'static topic.
    let t: &'static str = Box::leak(t.to_owned().into_boxed_str());
    let s: &'static str = Box::leak(s.to_owned().into_boxed_str());
    let m: &'static str = Box::leak(m.to_owned().into_boxed_str());
    let r: &'static str = Box::leak(r.to_owned().into_boxed_str());
    match variant % 21 {
        0 => Topic::ShadowGet {
            thing: t,
            shadow: s,
        },
        1 => Topic::ShadowGetAccepted {
            thing: t,
            shadow: s,
        },
        2 => Topic::ShadowGetRejected {
            thing: t,
            shadow: s,
        },
        3 => Topic::ShadowUpdate {
            thing: t,
            shadow: s,
        },
        4 => Topic::ShadowUpdateAccepted {
            thing: t,
            shadow: s,
        },
        5 => Topic::ShadowUpdateRejected {
            thing: t,
            shadow: s,
        },
        6 => Topic::ShadowUpdateDelta {
            thing: t,
            shadow: s,
        },
        7 => Topic::ShadowUpdateDocuments {
            thing: t,
            shadow: s,
        },
        8 => Topic::MethodRequest {
            thing: t,
            method: m,
        },
        9 => Topic::MethodResponse {
            thing: t,
            method: m,
        },
        10 => Topic::NtpRequest { thing: t },
        11 => Topic::NtpResponse { thing: t },
        12 => Topic::OtaTask { thing: t },
        13 => Topic::OtaTaskResult { thing: t },
        14 => Topic::Property { thing: t },
        15 => Topic::Will { thing: t, rest: r },
        16 => Topic::Will { thing: t, rest: "" },
        17 => Topic::Presence { thing: t },
        18 => Topic::PresenceEvent { thing: t },
        19 => Topic::LifecycleEvent { thing: t },
        _ => Topic::User { thing: t, rest: r },
    }
}

/// Recursive reference for the depth of a JSON value.
fn reference_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(reference_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(reference_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        // Strings full of brackets, quotes and backslashes must not confuse the scan.
        "[\\[\\]{}\"\\\\a ]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(12, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z{\\[\"]{1,3}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// `write_to_split` writes what `write_to` writes, fails the same way (buffers of any size,
    /// invalid parts included), and hands back exactly the bytes after the topic.
    #[test]
    fn write_to_split_is_write_to(
        v in any::<u8>(),
        t in prop_oneof![thing_id(), "[a-z/ ]{0,4}"],
        s in prop_oneof![shadow_name(), "[a-z ]{0,3}"],
        m in method_name(),
        r in rest(),
        size in 0usize..=MAX_TOPIC_LEN + 8,
    ) {
        let topic = build(v, &t, &s, &m, &r);
        let mut a = vec![0u8; size];
        let mut b = vec![0u8; size];
        let whole = topic.write_to(&mut a).map(str::to_owned);
        let split = topic
            .write_to_split(&mut b)
            .map(|(text, rest)| (text.to_owned(), rest.len()));
        match (whole, split) {
            (Ok(w), Ok((text, rest))) => {
                prop_assert_eq!(&w, &text);
                prop_assert_eq!(rest, size - text.len());
                prop_assert_eq!(&b[..text.len()], text.as_bytes());
            }
            (whole, split) => prop_assert_eq!(whole.err(), split.err()),
        }
    }

    #[test]
    fn topic_round_trip(v in any::<u8>(), t in thing_id(), s in shadow_name(), m in method_name(), r in rest()) {
        let topic = build(v, &t, &s, &m, &r);
        let mut buf = [0u8; MAX_TOPIC_LEN];
        match topic.write_to(&mut buf) {
            Ok(text) => {
                prop_assert_eq!(Topic::parse(text), Ok(topic));
                prop_assert_eq!(topic.to_string(), text);
                prop_assert_eq!(topic.thing(), t.as_str());
                prop_assert_eq!(topic.thing_may_publish(&t), Topic::parse(text).unwrap().thing_may_publish(&t));
            }
            Err(e) => {
                // Only a long user/will tail can push a valid topic over the limit.
                prop_assert_eq!(e, topic::TopicError::TooLong);
                prop_assert!(topic.to_string().len() > MAX_TOPIC_LEN);
            }
        }
    }

    #[test]
    fn filters_are_subscribable(t in thing_id(), s in shadow_name()) {
        for f in Filter::all_for(&t, &s) {
            let mut buf = [0u8; MAX_TOPIC_LEN];
            let text = f.write_to(&mut buf).unwrap();
            prop_assert!(thing_may_subscribe(text, &t));
            prop_assert!(topic::is_valid_filter(text));
        }
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,300}") {
        let _ = Topic::parse(&s);
        let _ = thing_may_subscribe(&s, "t1");
        let _ = topic::is_valid_filter(&s);
    }

    #[test]
    fn parse_never_panics_on_near_topics(
        s in "\\$iothub(/(things|user|events|shadows|name|default|get|update|methods|ntp|ota|task|messages|will|t1|\\+|#||req|resp|result|presence|lifecycle|property|delta|x y)){0,9}"
    ) {
        if let Ok(t) = Topic::parse(&s) {
            // Whatever parses builds back to the same string.
            prop_assert_eq!(t.to_string(), s.clone());
        }
        let _ = thing_may_subscribe(&s, "t1");
    }

    #[test]
    fn depth_scan_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..20) {
        let exceeds = json_depth_exceeds(&bytes, max);
        prop_assert_eq!(exceeds, json_depth(&bytes) > max);
    }

    #[test]
    fn depth_scan_matches_recursive_reference(v in json_value(), max in 0usize..14) {
        let text = serde_json::to_string(&v).unwrap();
        let depth = reference_depth(&v);
        prop_assert_eq!(json_depth(text.as_bytes()), depth, "{}", text);
        prop_assert_eq!(json_depth_exceeds(text.as_bytes(), max), depth > max, "{}", text);
    }

    #[test]
    fn ntp_never_panics(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in any::<u64>()) {
        let r = NtpResponse { client_send_time: a, server_recv_time: b, server_send_time: c };
        let _ = r.now_ms(d);
        let _ = r.round_trip_ms(d);
    }

    #[test]
    fn ntp_is_exact_on_sane_clocks(send in 0u64..1u64 << 50, up in 0u64..10_000, proc_ in 0u64..1_000, down in 0u64..10_000, offset in 0u64..1u64 << 50) {
        // Device clock `send`; hub clock = device clock + offset.
        let r = NtpResponse {
            client_send_time: send,
            server_recv_time: send + up + offset,
            server_send_time: send + up + proc_ + offset,
        };
        let recv = send + up + proc_ + down;
        prop_assert_eq!(r.round_trip_ms(recv), up + down);
        // Symmetric paths give the exact hub time at reception.
        if up == down {
            prop_assert_eq!(r.now_ms(recv), recv + offset);
        }
    }

    #[test]
    fn payloads_round_trip(
        token in "[0-9A-Za-z_-]{1,64}",
        id in thing_id(),
        ts in any::<u64>(),
        version in proptest::option::of(any::<u64>()),
        progress in proptest::option::of(0u8..=100),
        code in any::<u16>(),
        status in 0u8..4,
    ) {
        let mut buf = [0u8; 1024];

        let g = GetRequest { client_token: Some(&token) };
        let n = serde_json_core::to_slice(&g, &mut buf).unwrap();
        let (back, _): (GetRequest, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        prop_assert_eq!(back, g);

        let u = UpdateRequest { state: (), client_token: Some(&token), version };
        let n = serde_json_core::to_slice(&u, &mut buf).unwrap();
        let (back, _): (UpdateRequest<()>, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        prop_assert_eq!(back, u);

        let e = ErrorResponse { code, message: "some message", timestamp: ts, client_token: None };
        let n = serde_json_core::to_slice(&e, &mut buf).unwrap();
        let (back, _): (ErrorResponse, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        prop_assert_eq!(back, e);

        let status = [code::OtaStatus::Ongoing, code::OtaStatus::Done, code::OtaStatus::Failed, code::OtaStatus::Canceled][status as usize];
        let r = OtaResult {
            client_token: &token, task_id: &id, status, progress,
            err_code: Some(code), err_msg: Some("m"), timestamp: ts,
        };
        let n = serde_json_core::to_slice(&r, &mut buf).unwrap();
        let (back, _): (OtaResult, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        prop_assert_eq!(back, r);

        let t = OtaTask {
            client_token: &token, task_id: &id, r#type: "app",
            meta: OtaMeta { version: "1.0", md5: None, sha256: Some("ab"), content_type: None, content_length: version },
            file_url: "https://x/y",
        };
        let n = serde_json_core::to_slice(&t, &mut buf).unwrap();
        let (back, _): (OtaTask, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        prop_assert_eq!(back, t);

        let p = PresenceEvent {
            thing_id: &id, client_id: &id, event_type: code::PresenceEventType::Disconnected,
            timestamp: ts, remote_addr: "[::1]:1883", disconnect_reason: Some("takeover"),
        };
        let n = serde_json_core::to_slice(&p, &mut buf).unwrap();
        let (back, _): (PresenceEvent, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        prop_assert_eq!(back, p);

        let l = LifecycleEvent { thing_id: &id, op: code::LifecycleOp::Delete, timestamp: ts };
        let n = serde_json_core::to_slice(&l, &mut buf).unwrap();
        let (back, _): (LifecycleEvent, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        prop_assert_eq!(back, l);
    }

    #[test]
    fn payload_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json_core::from_slice::<GetRequest>(&bytes);
        let _ = serde_json_core::from_slice::<OtaTask>(&bytes);
        let _ = serde_json_core::from_slice::<OtaResult>(&bytes);
        let _ = serde_json_core::from_slice::<NtpResponse>(&bytes);
        let _ = serde_json_core::from_slice::<ErrorResponse>(&bytes);
    }
}
