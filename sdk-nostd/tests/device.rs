//! Scenario tests of single behaviours, driven by hand.

// A failed unwrap in a test helper is a failed test.
#![allow(clippy::unwrap_used)]

use iothub_sdk_nostd::spec::payload::{self, field};
use iothub_sdk_nostd::spec::topic::{Filter, Topic};
use iothub_sdk_nostd::{
    Config, ConfigError, Device, Error, Event, Ignored, Instant, OtaReport, ShadowId, Transmit,
};
use serde_json::{Value, json};

const T: &str = "t1";
const SHADOWS: [&str; 2] = ["default", "cfg"];

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn device(tx: &mut [u8]) -> Device<'_> {
    let mut c = Config::new(T, &SHADOWS);
    c.methods = &["reboot"];
    c.token_seed = 0x1234_5678;
    Device::new(c, tx).unwrap()
}

/// Drains transmits as (kind, topic or filter, payload JSON).
fn drain(d: &mut Device<'_>, now: u64) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Some(t) = d.poll_transmit(at(now), &mut buf).unwrap() {
        match t {
            Transmit::Subscribe { filter, .. } => out.push((filter.to_owned(), Value::Null)),
            Transmit::Publish { topic, payload, .. } => {
                out.push((topic.to_owned(), serde_json::from_slice(payload).unwrap()))
            }
            _ => unreachable!(),
        }
    }
    out
}

fn token(v: &Value) -> String {
    v[field::CLIENT_TOKEN].as_str().unwrap().to_owned()
}

fn publish(topic: Topic<'_>, body: Value) -> (String, Vec<u8>) {
    (topic.to_string(), serde_json::to_vec(&body).unwrap())
}

/// Connects and answers both gets with documents at `version`; returns the device.
fn synced(tx: &mut [u8], version: u64) -> Device<'_> {
    let mut d = device(tx);
    d.handle_connected(at(0), false);
    let sent = drain(&mut d, 0);
    for (i, shadow) in SHADOWS.iter().enumerate() {
        let tok = token(&sent[7 + i].1);
        let (t, p) = publish(
            Topic::ShadowGetAccepted { thing: T, shadow },
            json!({field::STATE: {}, field::METADATA: {}, field::VERSION: version, field::TIMESTAMP: 1, field::CLIENT_TOKEN: tok}),
        );
        assert!(matches!(
            d.handle_publish(at(1), &t, &p),
            Ok(Some(Event::Shadow(_)))
        ));
    }
    d
}

#[test]
fn connect_subscribes_then_gets_every_shadow() {
    let mut tx = [0u8; 1024];
    let mut d = device(&mut tx);
    assert_eq!(drain(&mut d, 0), vec![]);
    assert_eq!(
        d.report(at(0), ShadowId::FIRST, &1),
        Err(Error::NotConnected)
    );
    d.handle_connected(at(0), false);
    let sent = drain(&mut d, 0);
    let mut want: Vec<String> = Vec::new();
    for s in SHADOWS {
        want.push(
            Filter::ShadowGetReplies {
                thing: T,
                shadow: s,
            }
            .to_string(),
        );
        want.push(
            Filter::ShadowUpdateReplies {
                thing: T,
                shadow: s,
            }
            .to_string(),
        );
    }
    want.push(Filter::MethodRequests { thing: T }.to_string());
    want.push(Filter::NtpResponse { thing: T }.to_string());
    want.push(Filter::OtaTask { thing: T }.to_string());
    for s in SHADOWS {
        want.push(
            Topic::ShadowGet {
                thing: T,
                shadow: s,
            }
            .to_string(),
        );
    }
    let got: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(got, want);
    assert_ne!(token(&sent[7].1), token(&sent[8].1));
    assert_eq!(d.poll_timeout(), Some(at(10_000)));

    // A resumed session after the first connect subscribes to nothing; it asks again only for
    // the documents whose get was lost with the connection (their answers would match no
    // request any more).
    d.handle_disconnected(at(5));
    d.handle_connected(at(6), true);
    let sent = drain(&mut d, 6);
    let gets: Vec<String> = SHADOWS
        .iter()
        .map(|s| {
            Topic::ShadowGet {
                thing: T,
                shadow: s,
            }
            .to_string()
        })
        .collect();
    let got: Vec<&String> = sent.iter().map(|(t, _)| t).collect();
    assert_eq!(got, gets.iter().collect::<Vec<_>>());
    // A clean one subscribes again at once; the gets, lost twice in a row now, wait for the
    // first backoff step.
    d.handle_disconnected(at(7));
    d.handle_connected(at(8), false);
    assert_eq!(drain(&mut d, 8).len(), 7);
    assert_eq!(d.poll_timeout(), Some(at(1_008)));
    d.handle_timeout(at(1_008));
    assert_eq!(drain(&mut d, 1_008).len(), 2);
}

#[test]
fn get_timeouts_retry_with_backoff_and_404_is_an_empty_shadow() {
    let mut tx = [0u8; 1024];
    let mut d = device(&mut tx);
    d.handle_connected(at(0), false);
    drain(&mut d, 0);
    d.handle_timeout(at(10_000));
    assert!(
        d.poll_event().is_none(),
        "the device's own gets time out silently"
    );
    assert!(drain(&mut d, 10_000).is_empty());
    assert_eq!(d.poll_timeout(), Some(at(11_000)));
    d.handle_timeout(at(11_000));
    let sent = drain(&mut d, 11_000);
    assert_eq!(sent.len(), 2);
    let (t, p) = publish(
        Topic::ShadowGetRejected {
            thing: T,
            shadow: "default",
        },
        json!({field::CODE: 404, field::MESSAGE: "not found", field::TIMESTAMP: 1, field::CLIENT_TOKEN: token(&sent[0].1)}),
    );
    match d.handle_publish(at(11_001), &t, &p) {
        Ok(Some(Event::Shadow(s))) => {
            assert_eq!((s.version, s.request, s.desired), (0, None, None));
        }
        other => panic!("{other:?}"),
    }
    // The late answer to the first attempt matches nothing.
    assert_eq!(
        d.handle_publish(at(11_002), &t, &p),
        Err(Ignored::Unmatched)
    );
}

#[test]
fn deltas_apply_in_version_order_and_echoes_are_ignored() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx, 5);
    let delta = |v: u64| {
        publish(
            Topic::ShadowUpdateDelta {
                thing: T,
                shadow: "default",
            },
            json!({field::STATE: {"a": v}, field::METADATA: {}, field::VERSION: v, field::TIMESTAMP: 1}),
        )
    };
    let (t, p) = delta(5);
    assert_eq!(d.handle_publish(at(2), &t, &p), Err(Ignored::Stale));
    let (t, p) = delta(7);
    match d.handle_publish(at(2), &t, &p) {
        Ok(Some(Event::Delta(e))) => {
            assert_eq!(e.version, 7);
            assert_eq!(e.state.as_str(), r#"{"a":7}"#);
        }
        other => panic!("{other:?}"),
    }
    let (t, p) = delta(6);
    assert_eq!(d.handle_publish(at(3), &t, &p), Err(Ignored::Stale));
    assert_eq!(d.applied_version(ShadowId::FIRST), Some(7));
    let (t, p) = publish(
        Topic::ShadowUpdateDocuments {
            thing: T,
            shadow: "default",
        },
        json!({field::CURRENT: {}, field::TIMESTAMP: 1}),
    );
    assert_eq!(d.handle_publish(at(3), &t, &p), Err(Ignored::Echo));
    // Another thing's topic.
    let (t, p) = publish(
        Topic::ShadowUpdateDelta {
            thing: "t2",
            shadow: "default",
        },
        json!({field::STATE: {}, field::VERSION: 99}),
    );
    assert_eq!(d.handle_publish(at(3), &t, &p), Err(Ignored::OtherThing));
    // A stale document answering the application's get resolves it as Accepted.
    let id = d.get_shadow(at(4), ShadowId::FIRST).unwrap();
    let sent = drain(&mut d, 4);
    let (t, p) = publish(
        Topic::ShadowGetAccepted {
            thing: T,
            shadow: "default",
        },
        json!({field::STATE: {}, field::METADATA: {}, field::VERSION: 6, field::TIMESTAMP: 1, field::CLIENT_TOKEN: token(&sent[0].1)}),
    );
    assert_eq!(
        d.handle_publish(at(5), &t, &p),
        Ok(Some(Event::Accepted {
            request: id,
            shadow: ShadowId::FIRST,
            version: 6
        }))
    );
}

#[test]
fn several_requests_in_flight_matched_by_token_capped_at_ten() {
    let mut tx = [0u8; 4096];
    let mut d = synced(&mut tx, 1);
    let mut ids = Vec::new();
    for i in 0..10 {
        match d.report(at(2), ShadowId::FIRST, &json!({"i": i})) {
            Ok(id) => ids.push(id),
            Err(Error::QueueFull) => {
                drain(&mut d, 2);
                ids.push(d.report(at(2), ShadowId::FIRST, &json!({"i": i})).unwrap());
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        d.report(at(2), ShadowId::FIRST, &1),
        Err(Error::TooManyInFlight)
    );
    let sent = drain(&mut d, 2);
    let updates: Vec<_> = sent
        .iter()
        .filter(|(t, _)| {
            *t == Topic::ShadowUpdate {
                thing: T,
                shadow: "default",
            }
            .to_string()
        })
        .collect();
    assert!(updates.len() >= 2);
    // Answer the last one first.
    let (_, body) = updates.last().unwrap();
    let (t, p) = publish(
        Topic::ShadowUpdateAccepted {
            thing: T,
            shadow: "default",
        },
        json!({field::STATE: {}, field::METADATA: {}, field::VERSION: 9, field::TIMESTAMP: 1, field::CLIENT_TOKEN: token(body)}),
    );
    assert_eq!(
        d.handle_publish(at(3), &t, &p),
        Ok(Some(Event::Accepted {
            request: ids[9],
            shadow: ShadowId::FIRST,
            version: 9
        }))
    );
    // Same reply again: a duplicate.
    assert_eq!(d.handle_publish(at(3), &t, &p), Err(Ignored::Unmatched));
    let (_, body) = updates[0];
    let (t, p) = publish(
        Topic::ShadowUpdateRejected {
            thing: T,
            shadow: "default",
        },
        json!({field::CODE: 503, field::MESSAGE: "later", field::TIMESTAMP: 1, field::CLIENT_TOKEN: token(body)}),
    );
    assert!(matches!(
        d.handle_publish(at(3), &t, &p),
        Ok(Some(Event::Rejected { code: 503, .. }))
    ));
    // The rest time out together, or fail at once on disconnect.
    d.handle_disconnected(at(4));
    let mut timed_out = 0;
    while let Some(e) = d.poll_event() {
        assert!(matches!(e, Event::TimedOut { .. }));
        timed_out += 1;
    }
    assert_eq!(timed_out, 8);
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn all_methods_hands_every_call_to_the_app() {
    let mut tx = [0u8; 1024];
    let mut c = Config::new(T, &SHADOWS);
    c.all_methods = true;
    let mut d = Device::<'_>::new(c, &mut tx).unwrap();
    d.handle_connected(at(0), false);
    let _ = drain(&mut d, 0);
    let (t, p) = publish(
        Topic::MethodRequest {
            thing: T,
            method: "anything",
        },
        json!({field::CLIENT_TOKEN: "c1", field::DATA: [1]}),
    );
    let Ok(Some(Event::MethodCall(call))) = d.handle_publish(at(1), &t, &p) else {
        panic!("call not handed over")
    };
    assert_eq!((call.method, call.client_token), ("anything", "c1"));
    assert_eq!(call.data.as_str(), "[1]");
    // Nothing is answered by the device itself.
    assert_eq!(drain(&mut d, 1), vec![]);
}

#[test]
fn unknown_methods_get_404_known_ones_reach_the_app() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx, 1);
    let (t, p) = publish(
        Topic::MethodRequest {
            thing: T,
            method: "nope",
        },
        json!({field::CLIENT_TOKEN: "c1", field::DATA: null}),
    );
    assert_eq!(d.handle_publish(at(2), &t, &p), Ok(None));
    let sent = drain(&mut d, 2);
    assert_eq!(
        sent[0].0,
        Topic::MethodResponse {
            thing: T,
            method: "nope"
        }
        .to_string()
    );
    assert_eq!(sent[0].1[field::CODE], 404);
    assert_eq!(token(&sent[0].1), "c1");

    let (t, p) = publish(
        Topic::MethodRequest {
            thing: T,
            method: "reboot",
        },
        json!({field::CLIENT_TOKEN: "c2", field::DATA: {"delay": 5}}),
    );
    let Ok(Some(Event::MethodCall(call))) = d.handle_publish(at(3), &t, &p) else {
        panic!()
    };
    assert_eq!((call.method, call.client_token), ("reboot", "c2"));
    assert_eq!(call.data.as_str(), r#"{"delay":5}"#);
    d.respond(
        at(3),
        call.method,
        call.client_token,
        200,
        None,
        Some(&json!({"ok": true})),
    )
    .unwrap();
    let sent = drain(&mut d, 3);
    assert_eq!(
        sent[0].1,
        json!({field::CLIENT_TOKEN: "c2", field::CODE: 200, field::DATA: {"ok": true}})
    );
}

#[test]
fn ntp_keeps_the_sample_with_the_smallest_round_trip() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx, 1);
    let id = d.request_ntp(at(1000), 3).unwrap();
    assert_eq!(d.request_ntp(at(1000), 3), Err(Error::Busy));
    // (send, server recv, server send, recv): S-6.1's example has rtt 100; then 40, then 300.
    let samples = [
        (1000, 5000, 5010, 1110),
        (1200, 5160, 5161, 1241),
        (1300, 5400, 5401, 1601),
    ];
    let mut last = None;
    for (send, srv_recv, srv_send, recv) in samples {
        let sent = drain(&mut d, send);
        assert_eq!(sent[0].1[field::CLIENT_SEND_TIME], send);
        let (t, p) = publish(
            Topic::NtpResponse { thing: T },
            serde_json::to_value(payload::NtpResponse {
                client_send_time: send,
                server_recv_time: srv_recv,
                server_send_time: srv_send,
            })
            .unwrap(),
        );
        last = match d.handle_publish(at(recv), &t, &p).unwrap() {
            Some(Event::Ntp { request, sample }) => Some((request, sample)),
            None => None,
            Some(other) => panic!("{other:?}"),
        };
    }
    let (request, sample) = last.unwrap();
    assert_eq!(request, id);
    // Second sample: now = (5160 + 5161 + 1241 - 1200) / 2 = 5181, rtt = 41 - 1 = 40.
    assert_eq!(
        (sample.server_time_ms, sample.round_trip_ms, sample.local),
        (5181, 40, at(1241))
    );
    assert_eq!(d.unix_time_ms(at(2241)), Some(6181));
}

#[test]
fn ntp_without_answers_times_out() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx, 1);
    let id = d.request_ntp(at(0), 2).unwrap();
    drain(&mut d, 0);
    d.handle_timeout(at(10_000));
    drain(&mut d, 10_000);
    d.handle_timeout(at(20_000));
    assert_eq!(d.poll_event(), Some(Event::TimedOut { request: id }));
}

#[test]
fn ota_task_progress_and_final_result_resent_on_duplicate() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx, 1);
    let task = json!({
        field::CLIENT_TOKEN: "o1", field::TASK_ID: "task-1", field::TYPE: "app",
        field::META: {"version": "1.2.0"}, field::FILE_URL: "https://files.invalid/a.bin",
    });
    let (t, p) = publish(Topic::OtaTask { thing: T }, task);
    let Ok(Some(Event::OtaTask(ota))) = d.handle_publish(at(2), &t, &p) else {
        panic!()
    };
    assert_eq!((ota.task_id, ota.meta.version), ("task-1", "1.2.0"));
    assert_eq!(d.handle_publish(at(2), &t, &p), Err(Ignored::Duplicate));
    d.report_ota(at(3), OtaReport::Ongoing { progress: 150 })
        .unwrap();
    d.report_ota(at(4), OtaReport::Done).unwrap();
    assert_eq!(d.report_ota(at(5), OtaReport::Done), Err(Error::NoOtaTask));
    let sent = drain(&mut d, 5);
    assert_eq!(sent[0].0, Topic::OtaTaskResult { thing: T }.to_string());
    assert_eq!(sent[0].1[field::PROGRESS], 100);
    assert_eq!(sent[1].1[field::STATUS], "done");
    assert_eq!(token(&sent[1].1), "o1");
    // The hub sends the task again (it missed the result): the final result goes again.
    assert_eq!(d.handle_publish(at(6), &t, &p), Err(Ignored::Duplicate));
    let sent = drain(&mut d, 6);
    assert_eq!(sent[0].1[field::STATUS], "done");
    // A malformed task with readable ids is answered failed 400.
    let (t, p) = publish(
        Topic::OtaTask { thing: T },
        json!({field::CLIENT_TOKEN: "o2", field::TASK_ID: "task-2"}),
    );
    assert_eq!(d.handle_publish(at(7), &t, &p), Err(Ignored::BadOtaTask));
    let sent = drain(&mut d, 7);
    assert_eq!(sent[0].1[field::ERR_CODE], 400);
}

#[test]
fn config_is_validated() {
    type D<'a> = Device<'a>;
    type One<'a> = Device<'a, 1>;
    let mut tx = [0u8; 1024];
    assert_eq!(
        D::new(Config::new("a/b", &SHADOWS), &mut tx).err(),
        Some(ConfigError::InvalidThingId)
    );
    let mut tx = [0u8; 1024];
    assert_eq!(
        D::new(Config::new(T, &["a", "a"]), &mut tx).err(),
        Some(ConfigError::InvalidShadowName)
    );
    let mut tx = [0u8; 1024];
    assert_eq!(
        One::new(Config::new(T, &SHADOWS), &mut tx).err(),
        Some(ConfigError::ShadowCount)
    );
    let mut small = [0u8; 16];
    assert_eq!(
        D::new(Config::new(T, &SHADOWS), &mut small).err(),
        Some(ConfigError::BufferTooSmall)
    );
}

#[test]
fn memory_size_of_the_default_device() {
    let size = core::mem::size_of::<Device<'static>>();
    println!("size_of::<Device>() = {size} bytes");
    assert!(size < 2048, "{size}");
}
