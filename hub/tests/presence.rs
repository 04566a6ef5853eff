//! End-to-end tests of S-8 (presence, registry connection status, lifecycle events).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn presence_topic(id: &str) -> String {
    format!("{}/presence", thing_topic(id))
}

fn event_topic(id: &str) -> String {
    format!("$iothub/events/things/{id}/presence")
}

/// The S-8.1 payload shape.
fn assert_presence(ev: &Value, id: &str, kind: &str, since: u64) {
    assert_eq!(ev["thingId"], json!(id), "S-8.1: {ev}");
    assert_eq!(ev["clientId"], json!(id), "S-8.1: {ev}");
    assert_eq!(ev["eventType"], kind, "S-8.1: {ev}");
    let t = ev["timestamp"].as_u64().expect("S-8.1 timestamp ms");
    assert!(
        t + 5 >= since && t <= now_ms() + 5,
        "S-8.1 timestamp {t}: {ev}"
    );
    let addr = ev["remoteAddr"].as_str().expect("S-8.1 remoteAddr");
    let parsed: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|_| panic!("S-8.1 remoteAddr is ip:port, got {addr:?}"));
    assert!(parsed.ip().is_loopback(), "{addr}");
    if let Some(reason) = ev.get("disconnectReason") {
        assert!(
            reason.is_string(),
            "S-8.1 disconnectReason is a string: {ev}"
        );
    }
}

/// S-8.1: connect and disconnect publish events on `$iothub/events/things/{id}/presence` and on
/// `T/presence`.
async fn s8_1_presence_events(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let mut svc = hub.connect_service(Proto::V5).await;
    assert!(svc.subscribe(&event_topic(&id)).await.expect("sub") < 0x80);
    assert!(svc.subscribe(&presence_topic(&id)).await.expect("sub") < 0x80);

    let since = now_ms();
    let c = hub.connect_thing(proto, &id, &secret).await;
    let ev = svc.expect_message(&event_topic(&id), STEP).await;
    assert_presence(&ev, &id, "connected", since);
    let connected = svc.expect_message(&presence_topic(&id), STEP).await;
    assert_presence(&connected, &id, "connected", since);

    let since = now_ms();
    c.disconnect().await;
    let ev = svc.expect_message(&event_topic(&id), STEP).await;
    assert_presence(&ev, &id, "disconnected", since);
    let retained = next_presence_but_one_replay(&mut svc, &id, &connected).await;
    assert_presence(&retained, &id, "disconnected", since);
}
both!(s8_1_presence_events);

/// The next message on `T/presence`, passing over at most one more copy of `seen` (the same
/// event, timestamp included). rmqtt sends a new subscription's retained messages from a task of
/// its own after the SUBACK (`_send_subscribe_messages`), so a presence published right after
/// the subscription can arrive twice: live, and as the subscription's retained message (MQTT
/// delivers at least once). Any other message is returned, so a stale or wrong presence still
/// fails the test.
async fn next_presence_but_one_replay(svc: &mut Client, id: &str, seen: &Value) -> Value {
    let topic = presence_topic(id);
    for _ in 0..2 {
        let m = svc
            .wait_message(STEP, |m| m.topic == topic)
            .await
            .unwrap_or_else(|| panic!("S-8.1: no message on {topic} within {STEP:?}"));
        let v = m.json();
        if v != *seen {
            return v;
        }
    }
    panic!("S-8.1: {topic} repeated {seen} more than once")
}

/// S-8.1: an abrupt close (no DISCONNECT packet) is a disconnect too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_1_abrupt_close_is_disconnected() {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let mut svc = hub.connect_service(Proto::V311).await;
    assert!(svc.subscribe(&event_topic(&id)).await.expect("sub") < 0x80);
    let c = hub.connect_thing(Proto::V5, &id, &secret).await;
    svc.expect_json(&event_topic(&id), STEP, |v| v["eventType"] == "connected")
        .await;
    drop(c); // aborts the event loop: the socket closes without DISCONNECT
    svc.expect_json(&event_topic(&id), STEP, |v| {
        v["eventType"] == "disconnected"
    })
    .await;
}

/// S-8.1: the presence on `T/presence` is retained: a service user subscribing after the
/// connect (or the disconnect) still receives the last one, flagged retained.
async fn s8_1_presence_retained_for_late_subscriber(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let c = hub.connect_thing(proto, &id, &secret).await;
    // Wait until the hub has taken note of the connect (registry), then subscribe.
    let up = eventually(STEP, || async {
        let (_, t) = hub.rest_thing(&id).await;
        (t["connected"] == true).then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "S-8.2: registry never showed the thing connected"
    );

    let mut svc = hub.connect_service(proto).await;
    assert!(svc.subscribe(&presence_topic(&id)).await.expect("sub") < 0x80);
    let m = svc
        .wait_message(STEP, |m| m.topic == presence_topic(&id))
        .await
        .expect("S-8.1: retained presence for a late subscriber");
    assert!(m.retain, "S-2.3: T/presence is retained");
    assert_eq!(m.json()["eventType"], "connected", "{:?}", m.json());

    c.disconnect().await;
    let down = eventually(STEP, || async {
        let (_, t) = hub.rest_thing(&id).await;
        (t["connected"] == false).then_some(())
    })
    .await;
    assert!(
        down.is_some(),
        "S-8.2: registry never showed the thing disconnected"
    );
    let mut late = hub.connect_service(proto).await;
    assert!(
        late.subscribe("$iothub/things/+/presence")
            .await
            .expect("sub")
            < 0x80
    );
    let m = late
        .wait_message(STEP, |m| m.topic == presence_topic(&id))
        .await
        .expect("S-8.1: retained presence after the disconnect");
    assert!(m.retain);
    assert_eq!(m.json()["eventType"], "disconnected", "{:?}", m.json());
}
both!(s8_1_presence_retained_for_late_subscriber);

/// S-8.2: the registry shows `connected`, `connectedAt`, `disconnectedAt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_2_registry_connection_status() {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let (status, t) = hub.rest_thing(&id).await;
    assert_eq!(status, 200);
    assert_eq!(t["connected"], false, "never connected: {t}");

    let since = now_ms();
    let c = hub.connect_thing(Proto::V5, &id, &secret).await;
    let t = eventually(STEP, || async {
        let (_, t) = hub.rest_thing(&id).await;
        (t["connected"] == true).then_some(t)
    })
    .await
    .expect("S-8.2: connected true");
    let connected_at = t["connectedAt"].as_u64().expect("S-8.2 connectedAt");
    assert!(connected_at + 5 >= since, "{t}");
    assert!(t.get("password").is_none(), "S-9.2 never the secret: {t}");

    c.disconnect().await;
    let t = eventually(STEP, || async {
        let (_, t) = hub.rest_thing(&id).await;
        (t["connected"] == false).then_some(t)
    })
    .await
    .expect("S-8.2: connected false after disconnect");
    let disconnected_at = t["disconnectedAt"].as_u64().expect("S-8.2 disconnectedAt");
    assert!(disconnected_at >= connected_at, "{t}");
}

/// S-8.2: after a hub restart (here after SIGKILL, so nothing was recorded at shutdown) every
/// thing starts disconnected, and no stale `connected` presence is retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_2_restart_every_thing_disconnected() {
    let mut hub = Hub::start();
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let id = unique("t");
        let secret = hub.create_thing(&id).await;
        clients.push(hub.connect_thing(Proto::V311, &id, &secret).await);
        ids.push(id);
    }
    for id in &ids {
        let up = eventually(STEP, || async {
            let (_, t) = hub.rest_thing(id).await;
            (t["connected"] == true).then_some(())
        })
        .await;
        assert!(up.is_some(), "{id} never shown connected");
    }
    hub.kill();
    drop(clients);
    hub.restart();
    for id in &ids {
        let (status, t) = hub.rest_thing(id).await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(
            t["connected"], false,
            "S-8.2: after restart {id} must be disconnected: {t}"
        );
    }
    let (_, page) = hub.get("/things?pageSize=100").await;
    for t in page["data"]["content"].as_array().expect("content") {
        assert_eq!(t["connected"], false, "S-8.2: {t}");
    }
    let mut svc = hub.connect_service(Proto::V5).await;
    assert!(
        svc.subscribe("$iothub/things/+/presence")
            .await
            .expect("sub")
            < 0x80
    );
    while let Some(m) = svc.next_message(QUIET).await {
        assert_ne!(
            m.json()["eventType"],
            "connected",
            "S-8.2: stale retained connected presence after restart: {:?}",
            m.json()
        );
    }
}

/// S-1.4 + S-8: a takeover leaves the thing connected: no stale `disconnected` in the retained
/// presence or in the registry.
async fn s8_takeover_stays_connected(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let mut svc = hub.connect_service(Proto::V5).await;
    assert!(svc.subscribe(&event_topic(&id)).await.expect("sub") < 0x80);
    let mut first = hub.connect_thing(proto, &id, &secret).await;
    svc.expect_json(&event_topic(&id), STEP, |v| v["eventType"] == "connected")
        .await;
    let second = hub.connect_thing(proto, &id, &secret).await;
    assert!(first.is_disconnected(STEP).await, "S-1.4 takeover");
    // Let every event of the takeover arrive.
    let mut events = Vec::new();
    while let Some(m) = svc.next_message(Duration::from_millis(1500)).await {
        events.push(m.json());
    }
    let (_, t) = hub.rest_thing(&id).await;
    assert_eq!(
        t["connected"], true,
        "S-8.2 registry after takeover: {t}; events: {events:?}"
    );
    let mut late = hub.connect_service(Proto::V311).await;
    assert!(late.subscribe(&presence_topic(&id)).await.expect("sub") < 0x80);
    let retained = late.expect_message(&presence_topic(&id), STEP).await;
    assert_eq!(
        retained["eventType"], "connected",
        "S-8.1 retained presence after takeover: {retained}; events: {events:?}"
    );
    // The new connection's connect is reported (the old one's disconnect, if reported at all,
    // may come before or after it on the non-retained events topic).
    assert!(
        events.iter().any(|e| e["eventType"] == "connected"),
        "S-8.1: no connected event for the new connection: {events:?}"
    );
    drop(second);
}
both!(s8_takeover_stays_connected);

/// S-8.3: lifecycle events on create, disable, enable and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_3_lifecycle_events() {
    let hub = Hub::start();
    let mut svc = hub.connect_service(Proto::V5).await;
    assert!(
        svc.subscribe("$iothub/events/things/+/lifecycle")
            .await
            .expect("sub")
            < 0x80
    );
    let id = unique("t");
    let topic = format!("$iothub/events/things/{id}/lifecycle");
    let since = now_ms();
    let _secret = hub.create_thing(&id).await;
    let (s, b) = hub
        .patch(&format!("/things/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = hub
        .patch(&format!("/things/{id}"), json!({"enabled": true}))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = hub.delete(&format!("/things/{id}")).await;
    assert_eq!(s, 200, "{b}");
    for op in ["create", "disable", "enable", "delete"] {
        let ev = svc.expect_message(&topic, STEP).await;
        assert_eq!(ev["op"], op, "S-8.3 order of lifecycle events: {ev}");
        assert_eq!(ev["thingId"], json!(id), "{ev}");
        let t = ev["timestamp"].as_u64().expect("timestamp");
        assert!(t + 5 >= since, "{ev}");
    }
    // Batch creation publishes `create` for each thing.
    let ids: Vec<String> = (0..3).map(|_| unique("b")).collect();
    let (s, b) = hub
        .post(
            "/things/batch",
            json!({"things": ids.iter().map(|i| json!({"thingId": i})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    for i in &ids {
        let ev = svc
            .expect_message(&format!("$iothub/events/things/{i}/lifecycle"), STEP)
            .await;
        assert_eq!(ev["op"], "create", "{ev}");
    }
}

/// S-8.2: a graceful stop (SIGTERM) with things connected records every one of them
/// disconnected at the stop, in one write rather than one per connection (issue 24: 18,000
/// connections took over 15 s to stop); the timestamps are the stop's, not the next start's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_2_graceful_stop_records_every_thing_disconnected() {
    let mut hub = Hub::start();
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let id = unique("t");
        let secret = hub.create_thing(&id).await;
        clients.push(hub.connect_thing(Proto::V5, &id, &secret).await);
        ids.push(id);
    }
    for id in &ids {
        let up = eventually(STEP, || async {
            let (_, t) = hub.rest_thing(id).await;
            (t["connected"] == true).then_some(())
        })
        .await;
        assert!(up.is_some(), "{id} never shown connected");
    }
    let status = hub.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop failed: {status}");
    let stopped = now_ms();
    drop(clients);
    // Let the clock move on so that the restart's own reset would be told apart.
    tokio::time::sleep(Duration::from_millis(20)).await;
    hub.restart();
    for id in &ids {
        let (status, t) = hub.rest_thing(id).await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["connected"], false, "S-8.2: {t}");
        let at = t["disconnectedAt"].as_u64().expect("S-8.2 disconnectedAt");
        let connected_at = t["connectedAt"].as_u64().expect("S-8.2 connectedAt");
        assert!(
            connected_at <= at && at <= stopped,
            "S-8.2: {id} disconnected at {at}, want the stop ({connected_at}..={stopped}): {t}"
        );
    }
}
