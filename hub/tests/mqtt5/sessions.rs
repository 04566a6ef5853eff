//! Sessions and message expiry: MQTT 5 §3.1.2.4 (Clean Start), §3.1.2.11.2 (Session Expiry
//! Interval), §3.2.2.1.1 (Session Present), §3.3.2.3.3 (Message Expiry Interval), §4.1
//! (Session State); MQTT 3.1.1 §3.1.2.4 (Clean Session) for the unchanged 3.1.1 behaviour.

use std::time::Duration;

use serde_json::{Value, json};

use super::raw::{Raw, prop};
use super::support::{self, Client, Proto, QUIET, STEP};
use super::*;

/// Waits until the registry reports the thing disconnected (S-8.2), so that what follows is
/// published while it is offline.
async fn wait_offline(hub: &Hub, id: &str) {
    let offline = support::eventually(STEP, || async {
        let (_, thing) = hub.rest_thing(id).await;
        (thing["connected"] == json!(false)).then_some(())
    })
    .await;
    assert!(offline.is_some(), "{id} still reported connected");
}

fn json_payload(p: &raw::Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or(Value::Null)
}

/// The must-show of issue 15: a thing with Session Expiry 1 hour that connected with Clean
/// Start 1 goes offline while a method request, an OTA task, a desired-state delta and a
/// service user's QoS 1 message wait for it; it reconnects with Clean Start 0, sends no
/// SUBSCRIBE, gets Session Present 1 (§3.2.2.1.1) and every one of them. Messages published
/// without a Message Expiry Interval arrive without one (§3.3.2.3.3: they never expire; rmqtt
/// used to stamp 300 s on them, which would have dropped them after 5 minutes offline); a
/// message published with a 1 s expiry is gone after 2 s offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_thing_with_session_expiry_gets_queued_messages_after_clean_start_0() {
    offline_session_scenario(Duration::from_millis(2100)).await;
}

/// The same, offline for 10 real minutes (twice rmqtt's old 300 s message expiry). Run by hand:
/// `cargo test -p iothub-hub --test mqtt5 -- --ignored offline_for_ten_minutes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes 10 minutes"]
async fn offline_for_ten_minutes_gets_queued_messages_after_clean_start_0() {
    offline_session_scenario(Duration::from_secs(600)).await;
}

/// Offline for `offline`; the method call (S-5.3 waits at most 300 s for an offline thing) is
/// made in its last 20 s.
async fn offline_session_scenario(offline: Duration) {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "sess").await;
    let note = user_topic(&id, "note");
    let short = user_topic(&id, "short");
    let filters = [own_filter(&id), user_topic(&id, "#")];
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let raw = thing_session(hub.mqtt, &id, &secret, 3600, &filters).await;
    raw.disconnect(None).await;
    wait_offline(&hub, &id).await;

    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    let (rc, _) = svc.publish_acked(&note, br#"{"n":1}"#, false, &[]).await;
    assert_eq!(rc, 0, "service user's QoS 1 message accepted");
    let (rc, _) = svc
        .publish_acked(&short, br#"{"n":2}"#, false, &[(prop::MESSAGE_EXPIRY, 1)])
        .await;
    assert_eq!(rc, 0, "service user's expiring message accepted");
    let (s, b) = hub
        .put(
            &format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": {"led": "on"}}}),
        )
        .await;
    assert_eq!(s, 200, "desired update: {b}");
    let (s, b) = hub
        .post(
            "/ota/jobs",
            json!({"targets": {"thingIds": [id]}, "task": {
                "type": "app", "meta": {"version": "2.0.1"}, "fileUrl": "http://fw.example/a.bin"}}),
        )
        .await;
    assert_eq!(s, 201, "OTA job: {b}");
    // Away long enough for the 1 s message to expire.
    // Under the test client's 60 s HTTP timeout, with the thing's answer included.
    let lead = offline.min(Duration::from_secs(20));
    tokio::time::sleep(offline - lead).await;

    let method_path = format!("/things/{id}/methods/reboot");
    let method = hub.post(
        &method_path,
        json!({"data": {"delay": 0}, "timeout": 10, "connectTimeout": 120}),
    );
    let device = async {
        tokio::time::sleep(lead).await;
        let opts = thing_opts(&id, &secret)
            .clean_start(false)
            .session_expiry(3600);
        let (mut raw, ack) = Raw::connect_ok(hub.mqtt, &opts).await;
        assert!(ack.session_present, "§3.2.2.1.1: session kept: {ack:?}");
        let want = [
            note.clone(),
            format!("{}/shadows/name/default/update/delta", thing_topic(&id)),
            format!("{}/ota/task", thing_topic(&id)),
            format!("{}/methods/reboot/req", thing_topic(&id)),
        ];
        let mut seen: Vec<raw::Publish> = Vec::new();
        let deadline = tokio::time::Instant::now() + STEP;
        while !want.iter().all(|t| seen.iter().any(|p| &p.topic == t)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(packet) = raw.read(left).await else {
                break;
            };
            let Some(p) = packet.publish() else { continue };
            if let Some(pid) = p.packet_id {
                raw.puback(pid).await;
            }
            if p.topic == want[3] {
                let token = json_payload(&p)["clientToken"].clone();
                let resp = json!({"clientToken": token, "code": 200, "message": "ok"});
                let topic = format!("{}/methods/reboot/resp", thing_topic(&id));
                let bytes = resp.to_string();
                raw.publish(&topic, bytes.as_bytes(), 1, false, &[]).await;
            }
            seen.push(p);
        }
        (raw, seen, want)
    };
    let ((status, body), (mut raw, seen, want)) = tokio::join!(method, device);
    let topics: Vec<&str> = seen.iter().map(|p| p.topic.as_str()).collect();
    for t in &want {
        assert!(
            topics.contains(&t.as_str()),
            "{t} not delivered; got {topics:?}"
        );
    }
    assert_eq!(
        status, 200,
        "method call answered by the resumed thing: {body}"
    );
    let queued = seen.iter().find(|p| p.topic == note).expect("note");
    assert_eq!(queued.qos, 1);
    assert!(
        !queued.props.has(prop::MESSAGE_EXPIRY),
        "§3.3.2.3.3: no expiry invented: {:?}",
        queued.props
    );
    assert!(
        !topics.contains(&short.as_str()),
        "expired message delivered"
    );
    assert!(
        raw.expect_publish(&short, QUIET).await.is_none(),
        "§3.3.2.3.3: a message past its expiry is not delivered"
    );
}

/// §3.1.2.11.2: Session Expiry Interval 0 (the default) ends the session with the network
/// connection, whatever Clean Start says; a reconnect with Clean Start 0 gets Session Present 0
/// and nothing that was published meanwhile, also when it takes over a live connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_zero_starts_clean() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "zero").await;
    let note = user_topic(&id, "note");
    let opts = thing_opts(&id, &secret).clean_start(false);
    let (mut raw, ack) = Raw::connect_ok(hub.mqtt, &opts).await;
    assert!(!ack.session_present, "{ack:?}");
    assert_eq!(raw.subscribe(&user_topic(&id, "#"), 1).await, 1);
    raw.disconnect(None).await;
    wait_offline(&hub, &id).await;

    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    svc.publish_acked(&note, b"{}", false, &[]).await;

    let (mut raw, ack) = Raw::connect_ok(hub.mqtt, &opts).await;
    assert!(
        !ack.session_present,
        "§3.1.2.11.2: expiry 0 keeps nothing: {ack:?}"
    );
    assert!(
        raw.expect_publish(&note, QUIET).await.is_none(),
        "message kept for an ended session"
    );

    // Taking over the live connection: the old session ends with its connection.
    assert_eq!(raw.subscribe(&user_topic(&id, "#"), 1).await, 1);
    let (_again, ack) = Raw::connect_ok(hub.mqtt, &opts).await;
    assert!(
        !ack.session_present,
        "takeover of an expiry-0 session: {ack:?}"
    );
}

/// §3.1.2.4: Clean Start 1 discards an existing session, even one with a long expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_1_discards_a_kept_session() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "discard").await;
    let note = user_topic(&id, "note");
    let raw = thing_session(hub.mqtt, &id, &secret, 3600, &[&user_topic(&id, "#")]).await;
    raw.disconnect(None).await;
    wait_offline(&hub, &id).await;
    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    svc.publish_acked(&note, b"{}", false, &[]).await;

    let (mut raw, ack) =
        Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret).session_expiry(3600)).await;
    assert!(!ack.session_present, "{ack:?}");
    assert!(
        raw.expect_publish(&note, QUIET).await.is_none(),
        "discarded session's message delivered"
    );
}

/// §3.1.2.11.2: a session outlives its connection by the expiry interval, no longer; and the
/// DISCONNECT's Session Expiry Interval (§3.14.2.2.2) replaces the CONNECT's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expires_after_its_interval_or_as_disconnect_says() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "expire").await;
    let resume = |expiry| {
        thing_opts(&id, &secret)
            .clean_start(false)
            .session_expiry(expiry)
    };

    let raw = thing_session(hub.mqtt, &id, &secret, 1, &[&user_topic(&id, "#")]).await;
    raw.disconnect(None).await;
    wait_offline(&hub, &id).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (raw, ack) = Raw::connect_ok(hub.mqtt, &resume(1)).await;
    assert!(
        !ack.session_present,
        "1 s session still present after 2.5 s: {ack:?}"
    );

    raw.disconnect(Some(60)).await;
    wait_offline(&hub, &id).await;
    let (raw, ack) = Raw::connect_ok(hub.mqtt, &resume(1)).await;
    assert!(
        ack.session_present,
        "DISCONNECT raised the expiry to 60 s: {ack:?}"
    );

    raw.disconnect(Some(0)).await;
    wait_offline(&hub, &id).await;
    let (_raw, ack) = Raw::connect_ok(hub.mqtt, &resume(1)).await;
    assert!(!ack.session_present, "DISCONNECT set expiry 0: {ack:?}");
}

/// MQTT 3.1.1 §3.1.2.4: Clean Session 0 keeps the session and its queued QoS 1 messages;
/// Clean Session 1 discards them (unchanged by the MQTT 5 rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_clean_session_semantics_unchanged() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "v3").await;
    let note = user_topic(&id, "note");
    let mut c = Client::connect_opts(Proto::V311, hub.mqtt, &id, &id, &secret, false)
        .await
        .expect("connect");
    c.subscribe(&user_topic(&id, "#")).await.expect("subscribe");
    c.disconnect().await;
    wait_offline(&hub, &id).await;
    let (mut svc, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc"))).await;
    svc.publish_acked(&note, br#"{"n":1}"#, false, &[]).await;

    let mut c = Client::connect_opts(Proto::V311, hub.mqtt, &id, &id, &secret, false)
        .await
        .expect("reconnect");
    assert_eq!(c.expect_message(&note, STEP).await, json!({"n": 1}));
    c.disconnect().await;
    wait_offline(&hub, &id).await;
    svc.publish_acked(&note, br#"{"n":2}"#, false, &[]).await;

    let mut c = Client::connect_opts(Proto::V311, hub.mqtt, &id, &id, &secret, true)
        .await
        .expect("clean reconnect");
    assert!(
        !c.sees(&note, QUIET).await,
        "Clean Session 1 got the old session's message"
    );
}
