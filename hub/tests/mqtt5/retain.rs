//! Retain: MQTT 5 §3.3.1.3 (RETAIN), §3.2.2.3.5 (Retain Available) and S-2.4 (the hub keeps
//! retained messages on `T/presence` and on a thing's free topics `$iothub/user/things/{id}/…`,
//! at most 16 per thing; elsewhere the flag stores nothing).

use super::raw::{Raw, prop};
use super::support::{QUIET, STEP};
use super::*;

/// The per-thing cap of S-2.4 (spec crate: `MAX_RETAINED_PER_THING`), written here from the spec.
const CAP: usize = 16;

/// §3.3.1.3: a retained message on a thing's free topic is delivered to later subscribers with
/// RETAIN 1; an empty retained payload deletes it. CONNACK says Retain Available (absent = 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_user_message_reaches_later_subscribers_and_can_be_deleted() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "ret").await;
    let (mut thing, ack) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    assert_ne!(ack.props.int(prop::RETAIN_AVAILABLE), Some(0), "{ack:?}");
    let topic = user_topic(&id, "config");
    let (rc, _) = thing.publish_acked(&topic, br#"{"v":1}"#, true, &[]).await;
    assert_eq!(rc, 0);

    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    assert_eq!(svc.subscribe(&user_topic(&id, "#"), 1).await, 1);
    let got = svc
        .expect_publish(&topic, STEP)
        .await
        .expect("retained message on subscribe");
    assert!(got.retain, "§3.3.1.3: sent with RETAIN 1 on subscribe");
    assert_eq!(got.payload, br#"{"v":1}"#);

    let (rc, _) = thing.publish_acked(&topic, b"", true, &[]).await;
    assert_eq!(rc, 0);
    let (mut late, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    assert_eq!(late.subscribe(&user_topic(&id, "#"), 1).await, 1);
    assert!(
        late.expect_publish(&topic, QUIET).await.is_none(),
        "deleted retained message sent"
    );
}

/// S-2.4: the 17th retained topic of one thing is refused with PUBACK 0x97 (Quota exceeded)
/// and not kept; replacing one of the 16 still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_per_thing_are_capped() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "cap").await;
    let (mut thing, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    for i in 0..CAP {
        let (rc, _) = thing
            .publish_acked(&user_topic(&id, &format!("k{i}")), b"{}", true, &[])
            .await;
        assert_eq!(rc, 0, "retained message {i}");
    }
    let (rc, _) = thing
        .publish_acked(&user_topic(&id, "extra"), b"{}", true, &[])
        .await;
    assert_eq!(rc, 0x97, "S-2.4: one over the cap");
    let (rc, _) = thing
        .publish_acked(&user_topic(&id, "k0"), br#"{"v":2}"#, true, &[])
        .await;
    assert_eq!(rc, 0, "replacing a kept one");

    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    assert_eq!(svc.subscribe(&user_topic(&id, "#"), 1).await, 1);
    let mut topics = Vec::new();
    while let Some(p) = svc.read(QUIET).await {
        if let Some(p) = p.publish() {
            if let Some(pid) = p.packet_id {
                svc.puback(pid).await;
            }
            topics.push(p.topic);
        }
    }
    assert_eq!(topics.len(), CAP, "{topics:?}");
    assert!(!topics.contains(&user_topic(&id, "extra")));
}

/// S-2.4: on a request topic the retain flag stores nothing (requests are commands to the hub):
/// a later subscriber to the thing's topics gets no retained copy of its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_flag_on_request_topics_stores_nothing() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "req").await;
    let (mut thing, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let property = format!("{}/messages/property", thing_topic(&id));
    let (rc, _) = thing
        .publish_acked(&property, br#"{"t":1}"#, true, &[])
        .await;
    assert_eq!(rc, 0);
    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    assert_eq!(svc.subscribe(&property, 1).await, 1);
    assert!(svc.expect_publish(&property, QUIET).await.is_none());
}
