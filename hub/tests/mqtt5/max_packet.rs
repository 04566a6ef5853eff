//! Maximum Packet Size: MQTT 5 §3.1.2.11.4. "The Server MUST NOT send packets exceeding
//! Maximum Packet Size to the Client" and "Where a Packet is too large to send, the Server MUST
//! discard it without sending it and then behave as if it had completed sending that
//! Application Message". The hub discards, counts it in `/metrics` and keeps the connection
//! (D-40); it used to close the connection on the encoder's refusal.

use serde_json::{Value, json};

use super::raw::Raw;
use super::support::{QUIET, STEP, shadow_topic};
use super::*;

/// Maximum Packet Size property (four bytes, MQTT 5 §3.1.2.11.4).
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// `iothub_mqtt_oversized_dropped_total` from `/metrics`.
async fn dropped(hub: &Hub) -> u64 {
    let (_, _, text) = hub.get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("iothub_mqtt_oversized_dropped_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("iothub_mqtt_oversized_dropped_total in /metrics")
}

/// A subscriber announcing 256 bytes: a 1 KiB message is discarded, the connection stays up,
/// the next small message arrives, and the counter moved by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_delivery_is_discarded_and_the_connection_stays() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "maxpkt").await;
    let (mut thing, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let svc_id = unique("svc");
    let mut opts = service_opts(&svc_id);
    opts.props.push((MAXIMUM_PACKET_SIZE, 256));
    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &opts).await;
    assert_eq!(svc.subscribe(&user_topic(&id, "#"), 1).await, 1);
    let before = dropped(&hub).await;

    let big = user_topic(&id, "big");
    let (rc, _) = thing.publish_acked(&big, &[b'x'; 1024], false, &[]).await;
    assert_eq!(rc, 0, "the publisher's message itself is accepted");
    let small = user_topic(&id, "small");
    let (rc, _) = thing.publish_acked(&small, b"{}", false, &[]).await;
    assert_eq!(rc, 0);

    // Read the small one by hand to learn the hub's per-packet overhead (its properties).
    let packet = svc
        .read(STEP)
        .await
        .expect("§3.1.2.11.4: the next message that fits still arrives");
    let got = packet.publish().expect("a PUBLISH");
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        (small.as_str(), &b"{}"[..])
    );
    svc.puback(got.packet_id.expect("QoS 1")).await;
    let overhead = packet.body.len() - small.len() - got.payload.len();
    assert!(
        svc.expect_publish(&big, QUIET).await.is_none(),
        "the oversized message was sent"
    );
    assert!(!svc.closed_within(QUIET).await, "connection closed");
    assert_eq!(dropped(&hub).await, before + 1, "one discard counted");

    // The boundary: the hub's encoder keeps the remaining length within the maximum less the
    // largest fixed header (256 - 5, D-40), so that packet arrives and one byte more is
    // discarded, not sent and not a disconnect.
    let edge = user_topic(&id, "e");
    let payload = 256 - 5 - overhead - edge.len();
    let (rc, _) = thing
        .publish_acked(&edge, &vec![b'z'; payload + 1], false, &[])
        .await;
    assert_eq!(rc, 0);
    let (rc, _) = thing
        .publish_acked(&edge, &vec![b'y'; payload], false, &[])
        .await;
    assert_eq!(rc, 0);
    let got = svc.expect_publish(&edge, STEP).await;
    assert_eq!(
        got.map(|p| p.payload.len()),
        Some(payload),
        "the largest packet the hub sends must be delivered, one byte more discarded"
    );
    assert_eq!(dropped(&hub).await, before + 2, "the one byte over counted");
}

/// A shadow delta over a thing's Maximum Packet Size is discarded the same way (D-40): no
/// DISCONNECT, and the next delta that fits arrives on the same connection with a `version`
/// more than one ahead of the last one the thing saw, which is how the thing learns of the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_shadow_delta_is_discarded_and_the_version_skips() {
    const MAX: u32 = 1024;
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "maxdelta").await;
    let mut opts = thing_opts(&id, &secret);
    opts.props.push((MAXIMUM_PACKET_SIZE, MAX));
    let (mut thing, _) = Raw::connect_ok(hub.mqtt, &opts).await;
    let delta = shadow_topic(&id, "default", "update/delta");
    assert_eq!(thing.subscribe(&delta, 1).await, 1);
    let before = dropped(&hub).await;
    let desired = format!("/things/{id}/shadows/default/state/desired");
    let version = |p: &super::raw::Publish| {
        let body: Value = serde_json::from_slice(&p.payload).expect("JSON delta");
        (body["version"].as_u64().expect("version"), body)
    };

    let (status, _) = hub
        .put(&desired, json!({"state": {"desired": {"setpoint": 20}}}))
        .await;
    assert_eq!(status, 200);
    let first = thing
        .expect_publish(&delta, STEP)
        .await
        .expect("small delta");
    let (v1, _) = version(&first);

    let (status, _) = hub
        .put(
            &desired,
            json!({"state": {"desired": {"label": "y".repeat(2 * MAX as usize)}}}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        thing.expect_publish(&delta, QUIET).await.is_none(),
        "§3.1.2.11.4: a delta over the client's maximum was sent"
    );

    let (status, _) = hub
        .put(
            &desired,
            json!({"state": {"desired": {"label": null, "setpoint": 21}}}),
        )
        .await;
    assert_eq!(status, 200);
    let got = thing
        .expect_publish(&delta, STEP)
        .await
        .expect("a delta within the maximum arrives on the same connection");
    let (v3, body) = version(&got);
    assert_eq!(body["state"], json!({"setpoint": 21}), "{body}");
    assert!(
        v3 > v1 + 1,
        "D-40: the version shows the gap: {v1} then {v3}"
    );
    assert!(
        thing.read(QUIET).await.is_none_or(|p| p.kind != 14),
        "no DISCONNECT"
    );
    assert_eq!(dropped(&hub).await, before + 1, "the discard counted");
}
