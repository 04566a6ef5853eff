//! Messages larger than the driver's buffers (`Device::handle_too_large`): each becomes an
//! `Event::TooLarge` with the size it needed, a lost delta starts a resync, and a document or a
//! reply that did not fit answers the request it belongs to, exactly once.

// A failed unwrap in a test helper is a failed test.
#![allow(clippy::unwrap_used)]

use iothub_sdk_nostd::spec::payload::field;
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{
    Config, Device, Event, Ignored, Instant, SYNC_LOST_AFTER, ShadowId, TooLarge, TooLargeKind,
    Transmit,
};
use serde_json::{Value, json};

const T: &str = "t1";
const SHADOWS: [&str; 1] = ["default"];
const INBOX: usize = 256;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Drains the publishes as (topic, payload JSON); subscriptions are skipped.
fn drain(d: &mut Device<'_>, now: u64) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Some(t) = d.poll_transmit(at(now), &mut buf).unwrap() {
        if let Transmit::Publish { topic, payload, .. } = t {
            out.push((topic.to_owned(), serde_json::from_slice(payload).unwrap()));
        }
    }
    out
}

fn get_topic() -> String {
    Topic::ShadowGet {
        thing: T,
        shadow: "default",
    }
    .to_string()
}

/// A connected device whose own get was answered with a document at version 3.
fn synced(tx: &mut [u8]) -> Device<'_> {
    let mut c = Config::new(T, &SHADOWS);
    c.token_seed = 7;
    let mut d: Device<'_> = Device::new(c, tx).unwrap();
    d.handle_connected(at(0), false);
    let sent = drain(&mut d, 0);
    let tok = sent[0].1[field::CLIENT_TOKEN].as_str().unwrap().to_owned();
    let topic = Topic::ShadowGetAccepted {
        thing: T,
        shadow: "default",
    }
    .to_string();
    let body = json!({field::STATE: {}, field::METADATA: {}, field::VERSION: 3, field::TIMESTAMP: 1, field::CLIENT_TOKEN: tok});
    let body = serde_json::to_vec(&body).unwrap();
    assert!(matches!(
        d.handle_publish(at(1), &topic, &body),
        Ok(Some(Event::Shadow(_)))
    ));
    d
}

fn too_large(kind: TooLargeKind, needed: usize) -> Event<'static> {
    Event::TooLarge(TooLarge {
        kind,
        needed,
        capacity: INBOX,
    })
}

#[test]
fn a_lost_delta_resyncs_and_a_document_that_does_not_fit_is_not_retried() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx);
    let delta = Topic::ShadowUpdateDelta {
        thing: T,
        shadow: "default",
    }
    .to_string();
    let doc = Topic::ShadowGetAccepted {
        thing: T,
        shadow: "default",
    }
    .to_string();
    let s = ShadowId::FIRST;

    // The delta is reported with its size, and the device asks for the whole document once,
    // however many deltas are lost meanwhile.
    let ev = d.handle_too_large(at(10), &delta, 1_234, INBOX).unwrap();
    assert_eq!(ev, too_large(TooLargeKind::Delta { shadow: s }, 1_234));
    let sent = drain(&mut d, 10);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, get_topic());
    let ev = d.handle_too_large(at(11), &delta, 1_300, INBOX).unwrap();
    assert_eq!(ev, too_large(TooLargeKind::Delta { shadow: s }, 1_300));
    assert!(drain(&mut d, 11).is_empty(), "a get is already under way");

    // The document does not fit either: that answers the device's own get, which is not
    // retried (only larger buffers or a smaller state help).
    let ev = d.handle_too_large(at(12), &doc, 2_500, INBOX).unwrap();
    let kind = TooLargeKind::Document {
        shadow: s,
        request: None,
    };
    assert_eq!(ev, too_large(kind, 2_500));
    assert_eq!(d.poll_timeout(), None, "nothing left in flight");
    d.handle_timeout(at(60_000));
    assert!(drain(&mut d, 60_000).is_empty());
    assert_eq!(d.poll_event(), None);

    // A delta that fits is applied as usual.
    let body = json!({field::STATE: {"setpoint": 25}, field::METADATA: {}, field::VERSION: 6, field::TIMESTAMP: 1});
    let body = serde_json::to_vec(&body).unwrap();
    match d.handle_publish(at(61_000), &delta, &body) {
        Ok(Some(Event::Delta(e))) => assert_eq!(e.version, 6),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reply_that_does_not_fit_answers_the_oldest_request_once() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx);
    let s = ShadowId::FIRST;

    // Two application gets: an oversized document answers the older one; the younger one times
    // out normally.
    let first = d.get_shadow(at(5), s).unwrap();
    let second = d.get_shadow(at(5), s).unwrap();
    assert_eq!(drain(&mut d, 5).len(), 2);
    let doc = Topic::ShadowGetAccepted {
        thing: T,
        shadow: "default",
    }
    .to_string();
    let ev = d.handle_too_large(at(6), &doc, 900, INBOX).unwrap();
    let kind = TooLargeKind::Document {
        shadow: s,
        request: Some(first),
    };
    assert_eq!(ev, too_large(kind, 900));
    d.handle_timeout(at(20_000));
    assert_eq!(d.poll_event(), Some(Event::TimedOut { request: second }));
    assert_eq!(d.poll_event(), None, "the first get was answered once");

    // A report whose `update/accepted` echo is too large: answered, accepted.
    let report = d.report(at(21_000), s, &json!({"note": "x"})).unwrap();
    assert_eq!(drain(&mut d, 21_000).len(), 1);
    let accepted = Topic::ShadowUpdateAccepted {
        thing: T,
        shadow: "default",
    }
    .to_string();
    let ev = d
        .handle_too_large(at(21_001), &accepted, 700, INBOX)
        .unwrap();
    let kind = TooLargeKind::UpdateReply {
        shadow: s,
        request: Some(report),
        accepted: true,
    };
    assert_eq!(ev, too_large(kind, 700));
    // Nothing is in flight any more: a second one answers nothing.
    let ev = d
        .handle_too_large(at(21_002), &accepted, 700, INBOX)
        .unwrap();
    let kind = TooLargeKind::UpdateReply {
        shadow: s,
        request: None,
        accepted: true,
    };
    assert_eq!(ev, too_large(kind, 700));
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn other_messages_are_reported_by_kind_or_ignored() {
    let mut tx = [0u8; 1024];
    let mut d = synced(&mut tx);
    let method = Topic::MethodRequest {
        thing: T,
        method: "reboot",
    }
    .to_string();
    let ev = d.handle_too_large(at(5), &method, 300, INBOX).unwrap();
    assert_eq!(ev, too_large(TooLargeKind::MethodCall, 300));
    let ota = Topic::OtaTask { thing: T }.to_string();
    let ev = d.handle_too_large(at(5), &ota, 300, INBOX).unwrap();
    assert_eq!(ev, too_large(TooLargeKind::OtaTask, 300));
    // A topic that did not fit the buffer either.
    let ev = d.handle_too_large(at(5), "", 9_000, INBOX).unwrap();
    assert_eq!(ev, too_large(TooLargeKind::Other, 9_000));
    // Not for this device, or the echo it never reads: no event.
    let other = Topic::ShadowUpdateDelta {
        thing: "t2",
        shadow: "default",
    }
    .to_string();
    assert_eq!(
        d.handle_too_large(at(5), &other, 300, INBOX),
        Err(Ignored::OtherThing)
    );
    let unknown = Topic::ShadowUpdateDelta {
        thing: T,
        shadow: "other",
    }
    .to_string();
    assert_eq!(
        d.handle_too_large(at(5), &unknown, 300, INBOX),
        Err(Ignored::UnknownShadow)
    );
    let echo = Topic::ShadowUpdateDocuments {
        thing: T,
        shadow: "default",
    }
    .to_string();
    assert_eq!(
        d.handle_too_large(at(5), &echo, 300, INBOX),
        Err(Ignored::Echo)
    );
    assert!(drain(&mut d, 5).is_empty(), "none of these resyncs");
}

#[test]
fn connections_lost_while_the_document_is_awaited_are_reported_and_slow_the_get_down() {
    let mut tx = [0u8; 1024];
    let mut c = Config::new(T, &SHADOWS);
    c.token_seed = 7;
    let mut d: Device<'_> = Device::new(c, &mut tx).unwrap();
    let gets = |d: &mut Device<'_>, now: u64| -> usize {
        drain(d, now)
            .iter()
            .filter(|(t, _)| *t == get_topic())
            .count()
    };
    // What a broker does with a document larger than the client's receive buffer: the get
    // goes out, the connection ends. Asked again at once after the first loss...
    let mut now = 0;
    d.handle_connected(at(now), false);
    assert_eq!(gets(&mut d, now), 1);
    d.handle_disconnected(at(now + 5));
    now = 1_000;
    d.handle_connected(at(now), false);
    assert_eq!(gets(&mut d, now), 1);
    assert_eq!(d.poll_event(), None);
    d.handle_disconnected(at(now + 5));
    // ...then after a backoff that doubles, so the connection stays up in between.
    for (lost, wait) in [(2u8, 1_000u64), (3, 2_000), (4, 4_000)] {
        now += 10_000;
        d.handle_connected(at(now), false);
        assert_eq!(gets(&mut d, now), 0, "{lost} lost: not at once");
        assert_eq!(d.poll_timeout(), Some(at(now + wait)));
        d.handle_timeout(at(now + wait));
        assert_eq!(gets(&mut d, now + wait), 1);
        d.handle_disconnected(at(now + wait + 5));
        let expected = (lost + 1 == SYNC_LOST_AFTER).then_some(Event::SyncLost {
            shadow: ShadowId::FIRST,
            connections: SYNC_LOST_AFTER,
        });
        assert_eq!(d.poll_event(), expected, "after {} lost", lost + 1);
        assert_eq!(d.poll_event(), None, "once per streak");
    }

    // The document arrives: the streak ends, the next connection gets at once again.
    now += 100_000;
    d.handle_connected(at(now), false);
    d.handle_timeout(at(now + 60_000));
    let sent = drain(&mut d, now + 60_000);
    let tok = sent
        .iter()
        .find(|(t, _)| *t == get_topic())
        .map(|(_, p)| p[field::CLIENT_TOKEN].as_str().unwrap().to_owned())
        .unwrap();
    let topic = Topic::ShadowGetAccepted {
        thing: T,
        shadow: "default",
    }
    .to_string();
    let body = json!({field::STATE: {}, field::METADATA: {}, field::VERSION: 3, field::TIMESTAMP: 1, field::CLIENT_TOKEN: tok});
    let body = serde_json::to_vec(&body).unwrap();
    assert!(matches!(
        d.handle_publish(at(now + 60_001), &topic, &body),
        Ok(Some(Event::Shadow(_)))
    ));
    d.handle_disconnected(at(now + 60_002));
    d.handle_connected(at(now + 70_000), false);
    assert_eq!(gets(&mut d, now + 70_000), 1);
    assert_eq!(d.poll_event(), None);
}
