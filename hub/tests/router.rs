//! End-to-end tests of message routing through the hub's own subscription router
//! (`broker/router.rs`: a thing's own filters in a map keyed by thing, wildcard filters in
//! rmqtt's trie): devices get their replies and method calls, service users' wildcard
//! subscriptions still see every thing, MQTT 5 subscription identifiers of both kinds of filter
//! reach the client, unsubscribing stops delivery, and no thing sees another thing's messages.

mod support;

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;

/// The filters a device subscribes (S-2), written from docs/spec.md.
fn device_filters(thing: &str) -> [String; 5] {
    let t = thing_topic(thing);
    [
        shadow_topic(thing, "default", "get/+"),
        shadow_topic(thing, "default", "update/+"),
        format!("{t}/methods/+/req"),
        format!("{t}/ntp/resp"),
        format!("{t}/ota/task"),
    ]
}

async fn subscribe_device(client: &mut Client, thing: &str) {
    for filter in device_filters(thing) {
        let rc = client.subscribe(&filter).await.expect("subscribe");
        assert!(rc < 0x80, "{filter} refused: {rc:#x}");
    }
}

async fn set_desired(hub: &Hub, thing: &str, desired: serde_json::Value) {
    let (status, body) = hub
        .put(
            &format!("/things/{thing}/shadows/default/state/desired"),
            json!({ "state": { "desired": desired } }),
        )
        .await;
    assert!(
        (200..300).contains(&status),
        "desired: HTTP {status} {body}"
    );
}

/// Two things whose ids share a prefix (`a` and `a0`), each subscribed to its 5 device filters
/// only: each gets its own shadow replies, deltas and method calls, and nothing of the other's.
async fn devices_get_their_own_messages_only(proto: Proto) {
    let hub = Hub::start();
    let a = unique("a");
    let b = format!("{a}0");
    let secret_a = hub.create_thing(&a).await;
    let secret_b = hub.create_thing(&b).await;
    let mut ca = hub.connect_thing(proto, &a, &secret_a).await;
    let mut cb = hub.connect_thing(proto, &b, &secret_b).await;
    subscribe_device(&mut ca, &a).await;
    subscribe_device(&mut cb, &b).await;

    let (accepted, reply) = ca
        .update(&a, "default", json!({"state": {"reported": {"x": 1}}}))
        .await;
    assert!(accepted, "update/accepted: {reply}");
    let (accepted, doc) = ca.get(&a, "default").await;
    assert!(accepted, "get/accepted: {doc}");
    // b has no shadow yet: the 404 comes back on b's get/rejected.
    let (accepted, error) = cb.get(&b, "default").await;
    assert!(
        !accepted && error["code"] == json!(404),
        "get/rejected: {error}"
    );

    set_desired(&hub, &b, json!({"setpoint": 21})).await;
    let delta = cb
        .expect_message(&shadow_topic(&b, "default", "update/delta"), STEP)
        .await;
    assert_eq!(delta["state"]["setpoint"], json!(21), "{delta}");

    let req_topic = format!("{}/methods/reboot/req", thing_topic(&a));
    let resp_topic = format!("{}/methods/reboot/resp", thing_topic(&a));
    let device = async {
        let req = ca.expect_message(&req_topic, STEP).await;
        ca.publish_json(
            &resp_topic,
            &json!({"clientToken": req["clientToken"], "code": 200, "message": "ok"}),
        )
        .await;
    };
    let path = format!("/things/{a}/methods/reboot");
    let call = hub.post(&path, json!({"data": {}, "timeout": 5}));
    let ((status, body), ()) = tokio::join!(call, device);
    assert_eq!(status, 200, "method call: {body}");
    assert_eq!(body["data"]["code"], json!(200), "{body}");

    // Neither saw anything of the other thing (a's topics are not a prefix match of a0's).
    for (client, other) in [(&mut ca, &b), (&mut cb, &a)] {
        let other_prefix = format!("{}/", thing_topic(other));
        let leaked = client
            .wait_message(QUIET, |m| m.topic.starts_with(&other_prefix))
            .await;
        assert!(leaked.is_none(), "{}: got {leaked:?}", client.id);
    }
}
both!(devices_get_their_own_messages_only);

/// A raw MQTT 5 client, for what the shared harness does not expose: subscription identifiers
/// on received messages, and UNSUBSCRIBE.
struct V5Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<V5Event>,
    /// Messages that arrived while waiting for an acknowledgement: (topic, identifiers).
    buffered: Vec<(String, Vec<usize>)>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
enum V5Event {
    Publish { topic: String, sub_ids: Vec<usize> },
    SubAck(Vec<String>),
    UnsubAck,
    Closed(String),
}

impl V5Client {
    async fn connect(hub: &Hub, client_id: &str, user: &str, password: &str) -> V5Client {
        let mut opts = MqttOptions::new(client_id, hub.mqtt.ip().to_string(), hub.mqtt.port());
        opts.set_keep_alive(Duration::from_secs(10))
            .set_clean_start(true)
            .set_credentials(user, password);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => V5Event::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        sub_ids: p
                            .properties
                            .map(|p| p.subscription_identifiers)
                            .unwrap_or_default(),
                    },
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        V5Event::SubAck(s.return_codes.iter().map(|c| format!("{c:?}")).collect())
                    }
                    Ok(Event::Incoming(Packet::UnsubAck(_))) => V5Event::UnsubAck,
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(V5Event::Closed(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        V5Client {
            client,
            events,
            buffered: Vec::new(),
            task,
        }
    }

    /// The next event within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<V5Event> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event other than a message (messages are buffered) within `timeout`.
    async fn next_ack(&mut self, timeout: Duration) -> Option<V5Event> {
        loop {
            match self.next(timeout).await? {
                V5Event::Publish { topic, sub_ids } => self.buffered.push((topic, sub_ids)),
                other => return Some(other),
            }
        }
    }

    /// Subscribes at QoS 1 with a subscription identifier and waits for a successful SUBACK.
    async fn subscribe(&mut self, filter: &str, sub_id: usize) {
        let props = SubscribeProperties {
            id: Some(sub_id),
            user_properties: Vec::new(),
        };
        self.client
            .subscribe_with_properties(filter, QoS::AtLeastOnce, props)
            .await
            .expect("send SUBSCRIBE");
        match self.next_ack(STEP).await {
            Some(V5Event::SubAck(codes)) => {
                assert!(
                    codes.iter().all(|c| c.starts_with("Success")),
                    "{filter}: {codes:?}"
                )
            }
            other => panic!("{filter}: expected SUBACK, got {other:?}"),
        }
    }

    async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("send UNSUBSCRIBE");
        match self.next_ack(STEP).await {
            Some(V5Event::UnsubAck) => {}
            other => panic!("{filter}: expected UNSUBACK, got {other:?}"),
        }
    }

    /// The subscription identifiers of the next message on `topic` (others are skipped), or
    /// `None` if none comes within `timeout`.
    async fn message_on(&mut self, topic: &str, timeout: Duration) -> Option<Vec<usize>> {
        if let Some(i) = self.buffered.iter().position(|(t, _)| t == topic) {
            let (_, mut sub_ids) = self.buffered.remove(i);
            sub_ids.sort_unstable();
            return Some(sub_ids);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await? {
                V5Event::Publish {
                    topic: t,
                    mut sub_ids,
                } if t == topic => {
                    sub_ids.sort_unstable();
                    return Some(sub_ids);
                }
                V5Event::Closed(e) => panic!("connection closed: {e}"),
                _ => {}
            }
        }
    }
}

impl Drop for V5Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A service user subscribed to a wildcard filter of every thing (rmqtt's trie) and to one
/// thing's own filter (the per-thing map): one delivery per message carrying the identifiers of
/// all matching filters; unsubscribing each filter stops exactly its deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_user_wildcard_and_thing_filters_merge_and_unsubscribe() {
    let hub = Hub::start();
    let (a, _, mut ca) = hub.new_thing(Proto::V5, "a").await;
    let (b, _, mut cb) = hub.new_thing(Proto::V5, "b").await;
    let mut svc = V5Client::connect(&hub, &unique("svc"), SVC_USER, SVC_SECRET).await;
    let every = "$iothub/things/+/messages/property";
    let only_a = format!("{}/messages/property", thing_topic(&a));
    let topic_b = format!("{}/messages/property", thing_topic(&b));
    svc.subscribe(every, 5).await;
    svc.subscribe(&only_a, 6).await;

    let telemetry = json!({"temp": 20});
    ca.publish_json(&only_a, &telemetry).await;
    assert_eq!(svc.message_on(&only_a, STEP).await, Some(vec![5, 6]));
    cb.publish_json(&topic_b, &telemetry).await;
    assert_eq!(svc.message_on(&topic_b, STEP).await, Some(vec![5]));

    svc.unsubscribe(every).await;
    svc.buffered.clear();
    ca.publish_json(&only_a, &telemetry).await;
    assert_eq!(svc.message_on(&only_a, STEP).await, Some(vec![6]));
    cb.publish_json(&topic_b, &telemetry).await;
    assert_eq!(
        svc.message_on(&topic_b, QUIET).await,
        None,
        "b after unsubscribe"
    );

    svc.unsubscribe(&only_a).await;
    svc.buffered.clear();
    ca.publish_json(&only_a, &telemetry).await;
    assert_eq!(
        svc.message_on(&only_a, QUIET).await,
        None,
        "a after unsubscribe"
    );
}

/// A device that unsubscribes its delta filter gets no more deltas; subscribing again brings
/// them back. The hub's own publishes (the deltas) carry the subscription identifier of the
/// filter that matched, as MQTT 5 3.3.4 requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_unsubscribe_stops_delivery() {
    let hub = Hub::start();
    let thing = unique("t");
    let secret = hub.create_thing(&thing).await;
    let mut device = V5Client::connect(&hub, &thing, &thing, &secret).await;
    let updates = shadow_topic(&thing, "default", "update/+");
    let delta = shadow_topic(&thing, "default", "update/delta");
    device.subscribe(&updates, 1).await;

    set_desired(&hub, &thing, json!({"v": 1})).await;
    assert_eq!(
        device.message_on(&delta, STEP).await,
        Some(vec![1]),
        "delta"
    );

    device.unsubscribe(&updates).await;
    device.buffered.clear();
    set_desired(&hub, &thing, json!({"v": 2})).await;
    assert_eq!(
        device.message_on(&delta, QUIET).await,
        None,
        "after unsubscribe"
    );

    device.subscribe(&updates, 2).await;
    set_desired(&hub, &thing, json!({"v": 3})).await;
    assert_eq!(
        device.message_on(&delta, STEP).await,
        Some(vec![2]),
        "delta after subscribing again"
    );
}
