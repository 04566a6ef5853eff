//! D-84: a session's message queue is bounded, and what does not fit is counted
//! (`iothub_mqtt_queue_full_dropped_total`) and logged, never dropped silently. A thing offline
//! with a persistent session gets 1,500 messages; its queue holds rmqtt's default 1,000, so
//! the rest are counted as dropped, and the thing receives what was kept when it returns.

mod support;

use std::time::Duration;

use iothub_spec::topic::Topic;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::*;

const SENT: usize = 1_500;
const QUEUE: usize = 1_000;

fn options(hub: &Hub, client_id: &str, user: &str, password: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, hub.mqtt.ip().to_string(), hub.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(false)
        .set_credentials(user, password)
        .set_inflight(100);
    opts
}

/// `iothub_mqtt_queue_full_dropped_total`, 0 before the first drop is counted.
async fn dropped(hub: &Hub) -> u64 {
    let (_, _, text) = hub.get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("iothub_mqtt_queue_full_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_are_counted_and_logged() {
    let hub = Hub::start();
    let thing = unique("qfull");
    let secret = hub.create_thing(&thing).await;
    let topic = Topic::User {
        thing: &thing,
        rest: "inbox",
    }
    .to_string();
    let filter = topic.replace("/inbox", "/#");

    // The thing subscribes with a persistent session, then goes away.
    let (client, mut events) = AsyncClient::new(options(&hub, &thing, &thing, &secret), 64);
    client
        .subscribe(&filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match tokio::time::timeout(STEP, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
    drop(client);
    drop(events);
    let before = dropped(&hub).await;

    // A service user publishes more than the queue holds; every PUBLISH is acknowledged.
    let (svc, mut svc_events) =
        AsyncClient::new(options(&hub, &unique("svc"), SVC_USER, SVC_SECRET), 64);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < SENT {
            match tokio::time::timeout(STEP, svc_events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("{acked} of {SENT} acknowledged: {other:?}"),
            }
        }
        acked
    });
    for i in 0..SENT {
        svc.publish(&topic, QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("publish");
    }
    assert_eq!(acks.await.expect("acks"), SENT);

    let counted = eventually(STEP, || async {
        let n = dropped(&hub).await - before;
        (n >= (SENT - QUEUE) as u64).then_some(n)
    })
    .await
    .unwrap_or_else(|| panic!("drops not counted\n{}", hub.stderr()));
    assert!(counted <= SENT as u64, "{counted}");
    eventually(STEP, || async {
        hub.stderr().contains("message queue full").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no warning logged\n{}", hub.stderr()));

    // The thing comes back: it gets what was kept, no more than the queue and the sent count.
    let (_client, mut events) = AsyncClient::new(options(&hub, &thing, &thing, &secret), 64);
    let mut received = 0usize;
    while let Ok(Ok(ev)) = tokio::time::timeout(QUIET, events.poll()).await {
        if let Event::Incoming(Packet::Publish(_)) = ev {
            received += 1;
        }
    }
    assert!(received > 0, "the queued messages are delivered");
    assert_eq!(
        received as u64 + counted,
        SENT as u64,
        "every message was either delivered or counted as dropped"
    );
}
