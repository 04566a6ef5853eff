//! Maximum Packet Size: MQTT 5 §3.1.2.11.4 and D-40. The server must not send a client a packet
//! larger than the Maximum Packet Size it announced in CONNECT: it discards the message, as if
//! sent, and keeps the connection.

use serde_json::json;

use super::raw::Raw;
use super::support::{QUIET, STEP, shadow_topic};
use super::*;

/// CONNECT property Maximum Packet Size (four bytes, MQTT 5 §3.1.2.11.4).
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
/// What the test thing announces.
const MAX: u32 = 1024;

/// `iothub_mqtt_oversized_dropped_total` as served by `/metrics`.
async fn dropped(hub: &Hub) -> u64 {
    let (status, _, text) = hub.get_text("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix("iothub_mqtt_oversized_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no iothub_mqtt_oversized_dropped_total in {text}"))
}

/// A user message and a shadow delta larger than the thing's Maximum Packet Size are dropped
/// (counted in /metrics); the connection stays up and the next small message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_over_the_clients_maximum_packet_size_are_dropped_not_fatal() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "max").await;
    let mut opts = thing_opts(&id, &secret);
    opts.props.push((MAXIMUM_PACKET_SIZE, MAX));
    let (mut thing, _) = Raw::connect_ok(hub.mqtt, &opts).await;
    let delta = shadow_topic(&id, "default", "update/delta");
    assert_eq!(thing.subscribe(&user_topic(&id, "#"), 1).await, 1);
    assert_eq!(thing.subscribe(&delta, 1).await, 1);
    let before = dropped(&hub).await;

    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    let big = user_topic(&id, "big");
    let (rc, _) = svc
        .publish_acked(&big, &vec![b'x'; 2 * MAX as usize], false, &[])
        .await;
    assert_eq!(rc, 0, "the hub accepts the message itself");
    assert!(
        thing.expect_publish(&big, QUIET).await.is_none(),
        "§3.1.2.11.4: a packet over the client's maximum was sent"
    );
    let small = user_topic(&id, "small");
    let (rc, _) = svc.publish_acked(&small, b"{}", false, &[]).await;
    assert_eq!(rc, 0);
    let got = thing
        .expect_publish(&small, STEP)
        .await
        .expect("the connection survives and the next message arrives");
    assert_eq!(got.payload, b"{}");

    // A delta over the maximum (D-40): dropped the same way; a later small one arrives.
    let label = "y".repeat(2 * MAX as usize);
    let (status, _) = hub
        .put(
            &format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": {"label": label}}}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(thing.expect_publish(&delta, QUIET).await.is_none());
    let (status, _) = hub
        .put(
            &format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": {"label": null, "setpoint": 21}}}),
        )
        .await;
    assert_eq!(status, 200);
    let got = thing
        .expect_publish(&delta, STEP)
        .await
        .expect("a delta within the maximum arrives on the same connection");
    let body: serde_json::Value = serde_json::from_slice(&got.payload).expect("JSON delta");
    assert_eq!(body["state"], json!({"setpoint": 21}), "{body}");

    assert!(
        thing.read(QUIET).await.is_none_or(|p| p.kind != 14),
        "no DISCONNECT"
    );
    assert_eq!(dropped(&hub).await, before + 2, "each drop counted");
}
