//! End-to-end tests of S-1 (identity and connection) and S-2 (topics and their allow-list),
//! against the real `iothub` binary over MQTT 3.1.1 and MQTT 5.

mod support;

use serde_json::json;
use support::*;

/// The CONNACK codes S-1.3 allows for bad credentials / not authorized.
fn refused_codes(proto: Proto) -> [u8; 2] {
    match proto {
        Proto::V311 => [4, 5],
        Proto::V5 => [0x86, 0x87],
    }
}

/// The SUBACK failure code of S-2.2.
fn suback_failure(proto: Proto) -> u8 {
    match proto {
        Proto::V311 => 0x80,
        Proto::V5 => 0x87,
    }
}

fn assert_refused(proto: Proto, what: &str, result: Result<Client, ConnectError>) {
    match result {
        Err(ConnectError::Refused(code)) => assert!(
            refused_codes(proto).contains(&code),
            "{what} ({proto:?}): CONNACK code {code:#x}, S-1.3 wants one of {:?}",
            refused_codes(proto)
        ),
        Err(ConnectError::Failed(e)) => {
            panic!("{what} ({proto:?}): no CONNACK refusal, connection failed instead: {e}")
        }
        Ok(_) => panic!("{what} ({proto:?}): connection was accepted"),
    }
}

// ---------------------------------------------------------------- S-1

/// S-1.2: a registered thing connects with client id = username = thingId and its secret.
async fn s1_2_connect_ok(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let mut c = Client::connect(proto, hub.mqtt, &id, &id, &secret)
        .await
        .expect("thing must connect");
    // The connection is usable: its own topics can be subscribed.
    let rc = c
        .subscribe(&format!("{}/#", thing_topic(&id)))
        .await
        .expect("subscribe");
    assert!(rc < 0x80, "SUBACK {rc:#x}");
    assert!(
        !c.is_disconnected(QUIET).await,
        "connection closed by the hub"
    );
}
both!(s1_2_connect_ok);

/// S-1.3: a wrong secret is refused in CONNACK.
async fn s1_3_wrong_password_refused(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let _secret = hub.create_thing(&id).await;
    let r = Client::connect(proto, hub.mqtt, &id, &id, "not-the-secret").await;
    assert_refused(proto, "wrong password", r);
}
both!(s1_3_wrong_password_refused);

/// S-1.3: an unknown thing is refused in CONNACK.
async fn s1_3_unknown_thing_refused(proto: Proto) {
    let hub = Hub::start();
    let id = unique("ghost");
    let r = Client::connect(proto, hub.mqtt, &id, &id, "whatever").await;
    assert_refused(proto, "unknown thing", r);
}
both!(s1_3_unknown_thing_refused);

/// S-1.2: client identifier != username is refused as bad credentials, even with the right
/// secret of the username.
async fn s1_2_client_id_differs_from_username_refused(proto: Proto) {
    let hub = Hub::start();
    let a = unique("a");
    let b = unique("b");
    let _sa = hub.create_thing(&a).await;
    let sb = hub.create_thing(&b).await;
    let r = Client::connect(proto, hub.mqtt, &a, &b, &sb).await;
    assert_refused(proto, "client id != username", r);
}
both!(s1_2_client_id_differs_from_username_refused);

/// S-1.3: a disabled thing is refused; enabling it again lets it in.
async fn s1_3_disabled_thing_refused(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({ "enabled": false }))
        .await;
    assert_eq!(status, 200, "disable: {body}");
    let r = Client::connect(proto, hub.mqtt, &id, &id, &secret).await;
    assert_refused(proto, "disabled thing", r);
    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({ "enabled": true }))
        .await;
    assert_eq!(status, 200, "enable: {body}");
    Client::connect(proto, hub.mqtt, &id, &id, &secret)
        .await
        .expect("re-enabled thing must connect");
}
both!(s1_3_disabled_thing_refused);

/// S-1.3: disabling a thing closes its live connection.
async fn s1_3_disabling_closes_live_connection(proto: Proto) {
    let hub = Hub::start();
    let (id, _secret, mut c) = hub.new_thing(proto, "t").await;
    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({ "enabled": false }))
        .await;
    assert_eq!(status, 200, "disable: {body}");
    assert!(
        c.is_disconnected(STEP).await,
        "S-1.3: disabling must close the live connection"
    );
}
both!(s1_3_disabling_closes_live_connection);

/// S-1.3: deleting a thing closes its live connection, and it cannot come back.
async fn s1_3_deleting_closes_live_connection(proto: Proto) {
    let hub = Hub::start();
    let (id, secret, mut c) = hub.new_thing(proto, "t").await;
    let (status, body) = hub.delete(&format!("/things/{id}")).await;
    assert!((200..300).contains(&status), "delete: {status} {body}");
    assert!(
        c.is_disconnected(STEP).await,
        "S-1.3: deleting must close the live connection"
    );
    let r = Client::connect(proto, hub.mqtt, &id, &id, &secret).await;
    assert_refused(proto, "deleted thing", r);
}
both!(s1_3_deleting_closes_live_connection);

/// S-1.4: a second connection with the same client id takes over; the first is closed and the
/// second works.
async fn s1_4_takeover(proto: Proto) {
    let hub = Hub::start();
    let (id, secret, mut first) = hub.new_thing(proto, "t").await;
    let mut second = hub.connect_thing(proto, &id, &secret).await;
    assert!(
        first.is_disconnected(STEP).await,
        "S-1.4: the first connection must be taken over (closed)"
    );
    let rc = second
        .subscribe(&format!("{}/#", thing_topic(&id)))
        .await
        .expect("subscribe on the new connection");
    assert!(rc < 0x80);
    let (accepted, reply) = second.get(&id, "default").await;
    assert!(!accepted, "never-written shadow");
    assert_eq!(reply["code"], 404, "{reply}");
    assert!(
        !second.is_disconnected(QUIET).await,
        "the new connection must stay up"
    );
}
both!(s1_4_takeover);

/// S-1.4: a device that lost its connection (closed abruptly, no DISCONNECT) and reconnects at
/// once is let in: the new connection takes over whatever is left of the old one.
async fn s1_4_immediate_reconnect_after_abrupt_close(proto: Proto) {
    let hub = Hub::start();
    let (id, secret, first) = hub.new_thing(proto, "t").await;
    drop(first);
    let r = Client::connect(proto, hub.mqtt, &id, &id, &secret).await;
    assert!(
        r.is_ok(),
        "S-1.4: immediate reconnect refused: {:?}\n{}",
        r.err(),
        hub.stderr()
    );
}
both!(s1_4_immediate_reconnect_after_abrupt_close);

/// S-1.4 + S-2.2: after the hub closed a 3.1.1 connection (denied PUBLISH), the thing
/// reconnecting at once is let in. Five rounds, as the failure is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_4_immediate_reconnect_after_hub_closed_v311() {
    let hub = Hub::start();
    let (id, secret, mut c) = hub.new_thing(Proto::V311, "t").await;
    for round in 0..5 {
        let _ = c
            .publish(
                &shadow_topic(&id, "default", "update/accepted"),
                b"{}".to_vec(),
            )
            .await;
        assert!(c.is_disconnected(STEP).await, "S-2.2: 3.1.1 denial closes");
        c = match Client::connect(Proto::V311, hub.mqtt, &id, &id, &secret).await {
            Ok(c) => c,
            Err(e) => panic!(
                "S-1.4 round {round}: reconnect right after the hub closed the connection refused: {e:?}\n{}",
                hub.stderr()
            ),
        };
    }
}

/// S-1.5: a service user may subscribe to `$iothub/things/+/presence` and sees things connect.
async fn s1_5_service_user_sees_presence(proto: Proto) {
    let hub = Hub::start();
    let mut svc = hub.connect_service(proto).await;
    let rc = svc
        .subscribe("$iothub/things/+/presence")
        .await
        .expect("subscribe");
    assert!(rc < 0x80, "service user subscribe refused: {rc:#x}");
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let _c = hub.connect_thing(proto, &id, &secret).await;
    let topic = format!("{}/presence", thing_topic(&id));
    let ev = svc
        .expect_json(&topic, STEP, |v| v["eventType"] == "connected")
        .await;
    assert_eq!(ev["thingId"], json!(id), "{ev}");
}
both!(s1_5_service_user_sees_presence);

/// S-1.5: a service user with a wrong secret is refused.
async fn s1_5_wrong_service_secret_refused(proto: Proto) {
    let hub = Hub::start();
    let r = Client::connect(proto, hub.mqtt, &unique("svc"), SVC_USER, "wrong").await;
    assert_refused(proto, "wrong service secret", r);
    let r = Client::connect(proto, hub.mqtt, &unique("svc"), "$nobody", SVC_SECRET).await;
    assert_refused(proto, "unknown service user", r);
}
both!(s1_5_wrong_service_secret_refused);

// ---------------------------------------------------------------- S-2

/// S-2.1/S-2.2: subscribing to another thing's topics is refused in SUBACK.
async fn s2_2_subscribe_other_thing_refused(proto: Proto) {
    let hub = Hub::start();
    let (_a, _sa, mut a) = hub.new_thing(proto, "a").await;
    let b = unique("b");
    let _sb = hub.create_thing(&b).await;
    for filter in [
        format!("{}/#", thing_topic(&b)),
        shadow_topic(&b, "default", "update/accepted"),
        shadow_topic(&b, "default", "update/delta"),
        format!("{}/presence", thing_topic(&b)),
        format!("$iothub/user/things/{b}/#"),
    ] {
        let rc = a.subscribe(&filter).await.expect("subscribe");
        assert_eq!(
            rc,
            suback_failure(proto),
            "S-2.2: {filter} must be refused ({proto:?})"
        );
    }
}
both!(s2_2_subscribe_other_thing_refused);

/// S-2.1: no wildcard in the id level (nor above it).
async fn s2_1_wildcard_in_id_level_refused(proto: Proto) {
    let hub = Hub::start();
    let (_a, _sa, mut a) = hub.new_thing(proto, "a").await;
    for filter in [
        "$iothub/things/+/presence",
        "$iothub/things/+/shadows/name/default/update/accepted",
        "$iothub/things/#",
        "$iothub/#",
        "$iothub/user/things/+/x",
        "$iothub/events/things/+/presence",
        "#",
    ] {
        let rc = a.subscribe(filter).await.expect("subscribe");
        assert_eq!(
            rc,
            suback_failure(proto),
            "S-2.1: {filter} must be refused ({proto:?})"
        );
    }
}
both!(s2_1_wildcard_in_id_level_refused);

/// S-2.1: filters inside its own `T/...` and `$iothub/user/things/{ownId}/...` are allowed.
async fn s2_1_own_topics_allowed(proto: Proto) {
    let hub = Hub::start();
    let id = unique("a");
    let secret = hub.create_thing(&id).await;
    let mut a = hub.connect_thing(proto, &id, &secret).await;
    for filter in [
        format!("{}/#", thing_topic(&id)),
        shadow_topic(&id, "default", "update/accepted"),
        shadow_topic(&id, "+", "update/delta"),
        format!("{}/methods/+/req", thing_topic(&id)),
        format!("$iothub/user/things/{id}/#"),
    ] {
        let rc = a.subscribe(&filter).await.expect("subscribe");
        assert!(rc < 0x80, "S-2.1: own filter {filter} refused: {rc:#x}");
    }
}
both!(s2_1_own_topics_allowed);

/// S-2.2 (MQTT 5): publishing to another thing's topics gets PUBACK 0x87 and has no effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_2_publish_to_other_thing_denied_v5() {
    let hub = Hub::start();
    let (_a, _sa, mut a) = hub.new_thing(Proto::V5, "a").await;
    let b = unique("b");
    let _sb = hub.create_thing(&b).await;
    let mut svc = hub.connect_service(Proto::V5).await;
    assert!(
        svc.subscribe(&format!("{}/#", thing_topic(&b)))
            .await
            .expect("sub")
            < 0x80
    );
    assert!(
        svc.subscribe(&format!("$iothub/user/things/{b}/#"))
            .await
            .expect("sub")
            < 0x80
    );
    let update = json!({"state":{"reported":{"hacked":true}},"clientToken":"x"});
    let payload = serde_json::to_vec(&update).expect("json");
    for topic in [
        shadow_topic(&b, "default", "update"),
        shadow_topic(&b, "default", "get"),
        format!("{}/messages/property", thing_topic(&b)),
        format!("$iothub/user/things/{b}/x"),
    ] {
        let rc = a.publish(&topic, payload.clone()).await.expect("publish");
        assert_eq!(rc, 0x87, "S-2.2: PUBACK for {topic} must be 0x87");
    }
    assert!(
        svc.next_message(QUIET).await.is_none(),
        "S-2.2: a denied PUBLISH is never delivered"
    );
    let (status, _) = hub.rest_shadow(&b, "default").await;
    assert_eq!(status, 404, "S-2.2: denied update must have no effect");
}

/// S-2.2 (MQTT 3.1.1): publishing to another thing's update closes the connection; no effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_2_publish_to_other_thing_closes_v311() {
    let hub = Hub::start();
    let (_a, _sa, mut a) = hub.new_thing(Proto::V311, "a").await;
    let b = unique("b");
    let _sb = hub.create_thing(&b).await;
    let mut svc = hub.connect_service(Proto::V5).await;
    assert!(
        svc.subscribe(&format!("{}/#", thing_topic(&b)))
            .await
            .expect("sub")
            < 0x80
    );
    let update = json!({"state":{"reported":{"hacked":true}},"clientToken":"x"});
    let r = a
        .publish(
            &shadow_topic(&b, "default", "update"),
            serde_json::to_vec(&update).expect("json"),
        )
        .await;
    assert!(
        r.is_err() || a.is_disconnected(STEP).await,
        "S-2.2: MQTT 3.1.1 denied PUBLISH must close the connection (got PUBACK {r:?})"
    );
    assert!(a.is_disconnected(STEP).await);
    assert!(
        svc.next_message(QUIET).await.is_none(),
        "S-2.2: a denied PUBLISH is never delivered"
    );
    let (status, _) = hub.rest_shadow(&b, "default").await;
    assert_eq!(status, 404, "S-2.2: denied update must have no effect");
}

/// S-2.1: hub → thing topics (`S/update/accepted`, `T/presence`, …) are not publishable by a
/// thing, not even its own. (One thing per topic: in 3.1.1 each denial closes the connection.)
async fn s2_1_publish_to_hub_topic_denied(proto: Proto) {
    let hub = Hub::start();
    let mut svc = hub.connect_service(Proto::V5).await;
    assert!(svc.subscribe("$iothub/#").await.expect("sub") < 0x80);
    let topics: [fn(&str) -> String; 5] = [
        |id| shadow_topic(id, "default", "update/accepted"),
        |id| shadow_topic(id, "default", "update/delta"),
        |id| format!("{}/presence", thing_topic(id)),
        |id| format!("{}/methods/reboot/req", thing_topic(id)),
        |id| format!("$iothub/events/things/{id}/presence"),
    ];
    for topic in topics {
        let id = unique("a");
        let secret = hub.create_thing(&id).await;
        let topic = topic(&id);
        let mut a = hub.connect_thing(proto, &id, &secret).await;
        let payload = br#"{"state":{"reported":{"fake":1}},"version":1}"#.to_vec();
        let r = a.publish(&topic, payload).await;
        match proto {
            Proto::V5 => assert_eq!(r, Ok(0x87), "S-2.2: PUBACK for {topic}"),
            Proto::V311 => assert!(
                r.is_err() || a.is_disconnected(STEP).await,
                "S-2.2: 3.1.1 publish to {topic} must close the connection"
            ),
        }
    }
    // The hub's own messages (presence, …) are legitimate; only the forged payload is not.
    let leaked = svc
        .wait_message(QUIET, |m| {
            String::from_utf8_lossy(&m.payload).contains("fake")
        })
        .await;
    assert!(
        leaked.is_none(),
        "S-2.2: denied PUBLISH delivered: {leaked:?}"
    );
}
both!(s2_1_publish_to_hub_topic_denied);

/// S-2: telemetry on `T/messages/property` is forwarded to service users.
async fn s2_telemetry_forwarded_to_service_user(proto: Proto) {
    let hub = Hub::start();
    let mut svc = hub.connect_service(proto).await;
    assert!(
        svc.subscribe("$iothub/things/+/messages/property")
            .await
            .expect("sub")
            < 0x80
    );
    let (id, _s, mut a) = hub.new_thing(proto, "t").await;
    let telemetry = json!({"temp": 21.5, "hum": [1, 2]});
    a.publish_json(
        &format!("{}/messages/property", thing_topic(&id)),
        &telemetry,
    )
    .await;
    let got = svc
        .expect_message(&format!("{}/messages/property", thing_topic(&id)), STEP)
        .await;
    assert_eq!(got, telemetry);
}
both!(s2_telemetry_forwarded_to_service_user);

/// S-2: `$iothub/user/things/{id}/{anything}` works both ways between a thing and a service
/// user.
async fn s2_user_topics_both_ways(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let mut a = hub.connect_thing(proto, &id, &secret).await;
    assert!(
        a.subscribe(&format!("$iothub/user/things/{id}/#"))
            .await
            .expect("sub")
            < 0x80
    );
    let mut svc = hub.connect_service(proto).await;
    assert!(
        svc.subscribe("$iothub/user/things/+/up/#")
            .await
            .expect("sub")
            < 0x80
    );

    let up = format!("$iothub/user/things/{id}/up/hello");
    a.publish_json(&up, &json!({"n": 1})).await;
    assert_eq!(svc.expect_message(&up, STEP).await, json!({"n": 1}));

    let down = format!("$iothub/user/things/{id}/down/cmd");
    svc.publish_json(&down, &json!({"go": true})).await;
    assert_eq!(a.expect_message(&down, STEP).await, json!({"go": true}));
}
both!(s2_user_topics_both_ways);

/// S-1.6: secrets are never logged (hub at RUST_LOG=debug) and never stored in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_6_secret_never_logged_nor_stored_in_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start_with_env(dir.path(), &[], &[("RUST_LOG", "debug")]);
    let id = unique("t");
    let chosen = "chosen-Secret-4711-abcdef";
    let (status, body) = hub
        .post("/things", json!({"thingId": id, "password": chosen}))
        .await;
    assert!((200..300).contains(&status), "{body}");
    let generated = hub.create_thing(&unique("g")).await;
    let c = hub.connect_thing(Proto::V5, &id, chosen).await;
    c.disconnect().await;
    let near_miss = format!("{chosen}-typo");
    let _ = Client::connect(Proto::V311, hub.mqtt, &id, &id, &near_miss).await;
    let _ = Client::connect(Proto::V5, hub.mqtt, &unique("svc"), SVC_USER, SVC_SECRET).await;
    tokio::task::block_in_place(|| {
        hub.terminate(std::time::Duration::from_secs(15));
    });
    let log = hub.stderr();
    for secret in [chosen, generated.as_str(), near_miss.as_str(), SVC_SECRET] {
        assert!(
            !log.contains(secret),
            "S-1.6: secret {secret:?} appears in the hub's log"
        );
    }
    for entry in std::fs::read_dir(dir.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n == "hub-stderr.log") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        for secret in [chosen, generated.as_str()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "S-1.6: secret stored in clear in {}",
                path.display()
            );
        }
    }
}

/// S-2: a thing's MQTT Will on `T/messages/will/{anything}` is forwarded to service users when
/// the connection drops without DISCONNECT.
async fn s2_will_forwarded(proto: Proto) {
    let hub = Hub::start();
    let id = unique("t");
    let secret = hub.create_thing(&id).await;
    let mut svc = hub.connect_service(proto).await;
    assert!(
        svc.subscribe("$iothub/things/+/messages/will/#")
            .await
            .expect("sub")
            < 0x80
    );
    let will_topic = format!("{}/messages/will/lost", thing_topic(&id));
    let c = Client::connect_with_will(
        proto,
        hub.mqtt,
        &id,
        &id,
        &secret,
        true,
        Some((&will_topic, br#"{"bye":true}"#)),
    )
    .await
    .expect("connect with a Will");
    drop(c); // abrupt close: the Will is published
    let got = svc.expect_message(&will_topic, STEP).await;
    assert_eq!(got, json!({"bye": true}));
}
both!(s2_will_forwarded);
