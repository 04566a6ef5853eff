//! Every input path with arbitrary bytes and arbitrary call sequences: nothing panics, and the
//! device's bookkeeping stays within its capacities.

// A failed unwrap in a test helper is a failed test.
#![allow(clippy::unwrap_used)]

use iothub_sdk_nostd::spec::payload::field;
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{Config, Device, Instant, OtaReport, QoS, json};
use proptest::prelude::*;

const THING: &str = "t1";
const SHADOWS: [&str; 2] = ["default", "named"];

fn config() -> Config<'static> {
    let mut c = Config::new(THING, &SHADOWS);
    c.methods = &["m"];
    c.token_seed = 0xabcd;
    c
}

/// Every topic the device consumes, for `THING` (plus a few it does not).
fn topics() -> Vec<String> {
    let mut v = Vec::new();
    for shadow in SHADOWS.into_iter().chain(["other"]) {
        let t = THING;
        v.extend(
            [
                Topic::ShadowGetAccepted { thing: t, shadow },
                Topic::ShadowGetRejected { thing: t, shadow },
                Topic::ShadowUpdateAccepted { thing: t, shadow },
                Topic::ShadowUpdateRejected { thing: t, shadow },
                Topic::ShadowUpdateDelta { thing: t, shadow },
                Topic::ShadowUpdateDocuments { thing: t, shadow },
                Topic::ShadowGet { thing: t, shadow },
            ]
            .iter()
            .map(|t| t.to_string()),
        );
    }
    for method in ["m", "unknown"] {
        v.push(
            Topic::MethodRequest {
                thing: THING,
                method,
            }
            .to_string(),
        );
    }
    v.push(Topic::NtpResponse { thing: THING }.to_string());
    v.push(Topic::OtaTask { thing: THING }.to_string());
    v.push(Topic::NtpResponse { thing: "t2" }.to_string());
    v.push(Topic::Presence { thing: THING }.to_string());
    v
}

/// JSON-ish payloads built from the protocol's own vocabulary, so that the interesting branches
/// (matching tokens, versions, codes) are reached, mixed with garbage.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let keys = prop::sample::select(vec![
        field::STATE,
        field::VERSION,
        field::CLIENT_TOKEN,
        field::CODE,
        field::DESIRED,
        field::REPORTED,
        field::DELTA,
        field::DATA,
        field::CLIENT_SEND_TIME,
        field::SERVER_RECV_TIME,
        field::SERVER_SEND_TIME,
        field::TASK_ID,
        field::TYPE,
        field::META,
        field::FILE_URL,
        "x",
    ]);
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("1.5e3".to_owned()),
        (0u32..8).prop_map(|n| format!("\"0000abcd-{n}\"")),
        "[a-z\\\\\"]{0,8}".prop_map(|s| format!("\"{s}\"")),
        Just("\"\\u00e9\"".to_owned()),
    ];
    let value = leaf.prop_recursive(12, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((keys.clone(), inner), 0..5).prop_map(|m| {
                let body: Vec<String> =
                    m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    });
    (value, any::<u8>(), any::<usize>()).prop_map(|(v, mutation, at)| {
        let mut b = v.into_bytes();
        // Sometimes truncate or corrupt one byte.
        if !b.is_empty() {
            let i = at % b.len();
            match mutation % 8 {
                0 => b.truncate(i),
                1 => b[i] = mutation,
                _ => {}
            }
        }
        b
    })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..200), jsonish()]
}

/// A device that is connected and has requests in flight.
fn busy_device<'a>(tx: &'a mut [u8]) -> Device<'a> {
    let mut d: Device = Device::new(config(), tx).unwrap();
    let now = Instant::from_millis(1);
    d.handle_connected(now, false);
    let _ = d.report(now, iothub_sdk_nostd::ShadowId::FIRST, &[1, 2]);
    let _ = d.request_ntp(now, 2);
    let mut buf = [0u8; 1024];
    while let Ok(Some(_)) = d.poll_transmit(now, &mut buf) {}
    d
}

#[derive(Debug, Clone)]
enum Op {
    Connect(bool),
    Disconnect,
    Advance(u64),
    Timeout,
    Publish(usize, Vec<u8>),
    PublishAny(String, Vec<u8>),
    Report(u8),
    Get(u8),
    Respond(String, String, u16),
    Ntp(u8),
    Ota(u8, u8),
    Telemetry,
    Transmit(usize),
    Events,
    TooLarge(usize, usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let n = topics().len();
    prop_oneof![
        any::<bool>().prop_map(Op::Connect),
        Just(Op::Disconnect),
        (0u64..30_000).prop_map(Op::Advance),
        Just(Op::Timeout),
        (0..n, payload()).prop_map(|(i, p)| Op::Publish(i, p)),
        (".{0,40}", payload()).prop_map(|(t, p)| Op::PublishAny(t, p)),
        any::<u8>().prop_map(Op::Report),
        any::<u8>().prop_map(Op::Get),
        (".{0,70}", ".{0,70}", any::<u16>()).prop_map(|(m, t, c)| Op::Respond(m, t, c)),
        any::<u8>().prop_map(Op::Ntp),
        (any::<u8>(), any::<u8>()).prop_map(|(k, p)| Op::Ota(k, p)),
        Just(Op::Telemetry),
        (0usize..1200).prop_map(Op::Transmit),
        Just(Op::Events),
        (0..n, 0usize..100_000, 0usize..4096).prop_map(|(i, a, b)| Op::TooLarge(i, a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `handle_publish` with an arbitrary topic and payload never panics.
    #[test]
    fn publish_arbitrary_bytes(topic in ".{0,300}", payload in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut tx = [0u8; 2048];
        let mut d = busy_device(&mut tx);
        let _ = d.handle_publish(Instant::from_millis(2), &topic, &payload);
    }

    /// Every consumed topic with arbitrary and JSON-shaped payloads never panics.
    #[test]
    fn publish_our_topics(i in 0usize..64, payload in payload(), now in any::<u64>()) {
        let topics = topics();
        let topic = &topics[i % topics.len()];
        let mut tx = [0u8; 2048];
        let mut d = busy_device(&mut tx);
        let now = Instant::from_millis(now);
        let _ = d.handle_publish(now, topic, &payload);
        let mut buf = [0u8; 1024];
        while let Ok(Some(_)) = d.poll_transmit(now, &mut buf) {}
        while d.poll_event().is_some() {}
    }

    /// The scanner never panics, and on valid JSON objects agrees with serde_json.
    #[test]
    fn scanner_arbitrary(bytes in prop::collection::vec(any::<u8>(), 0..300), depth in 0usize..80) {
        let _ = json::split(&bytes, ["a", "b"], depth);
        let _ = json::skip_value(&bytes, 0, depth);
        if let Ok(m) = json::Members::new(&bytes, depth) {
            for _ in m {}
        }
    }

    #[test]
    fn scanner_agrees_with_serde_json(bytes in jsonish()) {
        let ours = json::split(&bytes, [field::STATE, field::VERSION, field::CLIENT_TOKEN], 64);
        let theirs: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
        match theirs {
            Ok(serde_json::Value::Object(map)) => {
                let ours = ours.expect("scanner refused valid JSON");
                for (key, raw) in [field::STATE, field::VERSION, field::CLIENT_TOKEN].iter().zip(ours) {
                    let want = map.get(*key);
                    let got = raw.map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap());
                    prop_assert_eq!(got.as_ref(), want);
                }
            }
            // Not an object, or invalid: the scanner must not accept it as an object, except for
            // number/literal grammar it leaves to serde-json-core (checked not to panic only).
            Ok(_) => prop_assert!(ours.is_err()),
            Err(_) => {}
        }
    }

    /// Arbitrary sequences of every input and command never panic and keep capacities.
    #[test]
    fn arbitrary_call_sequences(ops in prop::collection::vec(op(), 0..60)) {
        let topics = topics();
        let mut tx = [0u8; 1024];
        let mut d: Device = Device::new(config(), &mut tx).unwrap();
        let mut now = 0u64;
        let mut buf = vec![0u8; 1200];
        for op in ops {
            let t = Instant::from_millis(now);
            match op {
                Op::Connect(sp) => d.handle_connected(t, sp),
                Op::Disconnect => d.handle_disconnected(t),
                Op::Advance(ms) => now += ms,
                Op::Timeout => d.handle_timeout(t),
                Op::Publish(i, p) => { let _ = d.handle_publish(t, &topics[i], &p); }
                Op::PublishAny(topic, p) => { let _ = d.handle_publish(t, &topic, &p); }
                Op::Report(s) => { let _ = d.report(t, d.shadow_id(SHADOWS[usize::from(s) % 2]).unwrap(), &s); }
                Op::Get(s) => { let _ = d.get_shadow(t, d.shadow_id(SHADOWS[usize::from(s) % 2]).unwrap()); }
                Op::Respond(m, tok, c) => { let _ = d.respond(t, &m, &tok, c, Some(&m), Some(&tok)); }
                Op::Ntp(n) => { let _ = d.request_ntp(t, n); }
                Op::Ota(k, p) => {
                    let r = match k % 4 {
                        0 => OtaReport::Ongoing { progress: p },
                        1 => OtaReport::Done,
                        2 => OtaReport::Failed { code: iothub_sdk_nostd::spec::code::OtaErrorCode::NoSpace, message: Some("x") },
                        _ => OtaReport::Canceled,
                    };
                    let _ = d.report_ota(t, r);
                }
                Op::Telemetry => { let _ = d.publish_telemetry(t, &[now; 4], QoS::AtMostOnce); }
                Op::Transmit(n) => { let _ = d.poll_transmit(t, &mut buf[..n]); }
                Op::Events => while d.poll_event().is_some() {},
                Op::TooLarge(i, needed, cap) => { let _ = d.handle_too_large(t, &topics[i], needed, cap); }
            }
            prop_assert!(d.in_flight() <= 10);
            if let Some(deadline) = d.poll_timeout() {
                // A deadline is never more than one timeout (or backoff) ahead.
                prop_assert!(deadline.as_millis() <= now + 60_000);
            }
        }
        // Draining always terminates.
        let t = Instant::from_millis(now);
        let mut n = 0;
        while let Ok(Some(_)) = d.poll_transmit(t, &mut buf) { n += 1; prop_assert!(n < 100); }
        while d.poll_event().is_some() { n += 1; prop_assert!(n < 200); }
    }
}
