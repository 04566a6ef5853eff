//! Flow control and acknowledgements: MQTT 5 §3.2.2.3.3 (Receive Maximum in CONNACK), §4.9
//! (Flow Control) and §3.4.2 (PUBACK variable header).

use super::raw::{Raw, prop};
use super::support::{QUIET, STEP};
use super::*;

/// DISCONNECT reason 0x93 Receive Maximum exceeded.
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;

/// §4.9: the client may have at most Receive Maximum QoS 2 PUBLISHes unacknowledged (no
/// PUBREL sent); one more is a protocol error, DISCONNECT 0x93 (§3.3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_receive_maximum_disconnects_with_0x93() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "flow").await;
    let (mut raw, ack) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let receive_max = ack
        .props
        .int(prop::RECEIVE_MAXIMUM)
        .expect("§3.2.2.3.3: the hub announces its Receive Maximum");
    assert!((1..=1024).contains(&receive_max), "{receive_max}");
    let topic = user_topic(&id, "q2");
    // Up to the maximum: each gets a PUBREC, none is released.
    for _ in 0..receive_max {
        raw.publish(&topic, b"{}", 2, false, &[]).await;
    }
    let mut recs = 0;
    while recs < receive_max {
        let p = raw.read(STEP).await.expect("PUBREC for each QoS 2 PUBLISH");
        assert_ne!(p.kind, 14, "disconnected within the window: {p:?}");
        if p.kind == 5 {
            recs += 1;
        }
    }
    assert!(
        raw.read(QUIET).await.is_none(),
        "nothing else while within the window"
    );
    raw.publish(&topic, b"{}", 2, false, &[]).await;
    assert_eq!(
        raw.disconnect_reason(STEP).await,
        Some(RECEIVE_MAXIMUM_EXCEEDED),
        "§4.9: one QoS 2 PUBLISH over Receive Maximum {receive_max}"
    );
}

/// §3.4.2: a PUBACK is at most 4 bytes here, reason code and an empty property length (the
/// reason 0x00 and no properties may also be omitted); a refused PUBLISH gets 0x87 with no
/// Reason String (§3.4.2.2.2 makes it optional, and some clients read a fixed 4-byte PUBACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_is_short_and_carries_no_reason_string() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "ack").await;
    let (mut raw, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let (rc, body) = raw
        .publish_acked(&user_topic(&id, "ok"), b"{}", false, &[])
        .await;
    assert_eq!(rc, 0, "success PUBACK");
    assert!(
        body.len() == 2 || body.get(3..) == Some(&[0][..]),
        "success PUBACK {body:02x?}"
    );
    // S-2.1: not on the thing's allow-list.
    let (rc, body) = raw
        .publish_acked(&user_topic("someone-else", "x"), b"{}", false, &[])
        .await;
    assert_eq!(rc, 0x87, "S-2.2 refusal");
    assert!(
        body.len() == 3 || body.get(3..) == Some(&[0][..]),
        "PUBACK 0x87 with properties: {body:02x?}"
    );
}
