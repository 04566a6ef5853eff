//! Provisioning over MQTT (S-10, issue 18) against the real hub over real TCP: a device with
//! only a claim credential provisions itself and then reports shadow state with its new
//! credentials; a claim connection can do nothing else; disabled, expired and exhausted
//! enrollments are refused with their codes; a serial provisioned again keeps its thing and its
//! old secret stops working; a failed store write is a 503 with nothing half-created.
//!
//! Topics and user names come from the spec crate's builders; bodies are written from
//! docs/spec.md S-10 by hand.

mod support;

use std::path::Path;
use std::time::Duration;

use iothub_spec::topic::Filter;
use iothub_spec::topic::provision::{Claim, ProvisionKind};
use serde_json::{Value, json};
use support::*;

/// Creates an enrollment over REST and returns its claim secret.
async fn enroll(hub: &Hub, body: Value) -> String {
    let (status, resp) = hub.post("/enrollments", body).await;
    assert_eq!(status, 201, "{resp}");
    let secret = resp["data"]["claimSecret"].as_str().expect("claimSecret");
    secret.to_owned()
}

fn claim_of<'a>(enrollment: &'a str, serial: &'a str) -> Claim<'a> {
    Claim::parse_parts(enrollment, serial).expect("a valid enrollment id and serial")
}

fn claim_user(enrollment: &str, serial: &str) -> String {
    claim_of(enrollment, serial).to_string()
}

fn topic(enrollment: &str, serial: &str, kind: ProvisionKind) -> String {
    claim_of(enrollment, serial).topic(kind).to_string()
}

/// Connects as the claim `$claim/{enrollment}/{serial}`.
async fn claim(hub: &Hub, proto: Proto, enrollment: &str, serial: &str, secret: &str) -> Client {
    let user = claim_user(enrollment, serial);
    Client::connect(proto, hub.mqtt, &user, &user, secret)
        .await
        .unwrap_or_else(|e| panic!("claim {user}: {e:?}"))
}

/// Subscribes to both replies, sends a request and returns `(accepted, body)`; the hub closes
/// the claim connection afterwards (D-43).
async fn provision(
    client: &mut Client,
    enrollment: &str,
    serial: &str,
    req: Value,
) -> (bool, Value) {
    let accepted = topic(enrollment, serial, ProvisionKind::Accepted);
    let rejected = topic(enrollment, serial, ProvisionKind::Rejected);
    assert_eq!(
        client
            .subscribe(&accepted)
            .await
            .expect("provisioning test step"),
        1
    );
    assert_eq!(
        client
            .subscribe(&rejected)
            .await
            .expect("provisioning test step"),
        1
    );
    client
        .publish_json(&topic(enrollment, serial, ProvisionKind::Request), &req)
        .await;
    let msg = client
        .wait_message(STEP, |m| m.topic == accepted || m.topic == rejected)
        .await
        .expect("a provisioning reply");
    let body = msg.json();
    assert_eq!(body["clientToken"], req["clientToken"], "{body}");
    assert!(
        client.is_disconnected(STEP).await,
        "the claim connection is closed after the reply"
    );
    (msg.topic == accepted, body)
}

/// A fresh claim connection that provisions and returns the reply.
async fn provision_once(
    hub: &Hub,
    enrollment: &str,
    serial: &str,
    secret: &str,
    req: Value,
) -> (bool, Value) {
    let mut c = claim(hub, Proto::V5, enrollment, serial, secret).await;
    provision(&mut c, enrollment, serial, req).await
}

async fn provisions_then_reports_shadow(proto: Proto) {
    let hub = Hub::start();
    let secret = enroll(
        &hub,
        json!({"enrollmentId": "factory",
               "template": {"tags": {"site": "b1"}, "desired": {"interval": 15}},
               "idRule": {"kind": "prefix", "value": "dev-"}}),
    )
    .await;
    let mut c = claim(&hub, proto, "factory", "AA:01", &secret).await;
    let (ok, body) = provision(
        &mut c,
        "factory",
        "AA:01",
        json!({"clientToken": "p1", "attributes": {"model": "x1"}}),
    )
    .await;
    assert!(ok, "{body}");
    assert_eq!(body["thingId"], "dev-AA-01");
    assert!(
        body["settings"]["limits"]["maxRequestPayload"]
            .as_u64()
            .expect("provisioning test step")
            > 0
    );
    let password = body["password"].as_str().expect("provisioning test step");

    // The new credentials work like any thing's (S-1.2): report shadow state.
    let mut dev = hub.connect_thing(proto, "dev-AA-01", password).await;
    let replies = Filter::ShadowUpdateReplies {
        thing: "dev-AA-01",
        shadow: "default",
    };
    dev.subscribe(&replies.to_string())
        .await
        .expect("provisioning test step");
    let (accepted, reply) = dev
        .update(
            "dev-AA-01",
            "default",
            json!({"state": {"reported": {"temp": 21}}}),
        )
        .await;
    assert!(accepted, "{reply}");
    let (status, shadow) = hub.rest_shadow("dev-AA-01", "default").await;
    assert_eq!(status, 200);
    assert_eq!(shadow["state"]["reported"]["temp"], 21);
    // The template's desired state was the shadow's first version (S-10.4).
    assert_eq!(shadow["state"]["desired"]["interval"], 15, "{shadow}");
    assert_eq!(shadow["version"], 2, "{shadow}");
    assert_eq!(shadow["state"]["delta"]["interval"], 15, "{shadow}");

    // The thing carries the template's tags, its serial and attributes.
    let (_, thing) = hub.rest_thing("dev-AA-01").await;
    let tags = &thing["tags"];
    assert_eq!(tags["site"], "b1");
    assert_eq!(tags["serial"], "AA:01");
    assert_eq!(tags["enrollment"], "factory");
    assert_eq!(tags["attributes"]["model"], "x1");
    let (_, e) = hub.get("/enrollments/factory").await;
    assert_eq!(e["data"]["uses"], 1);
    assert!(e["data"].get("claimSecret").is_none(), "shown once only");

    let (_, _, text) = hub.get_text("/metrics").await;
    assert!(
        text.contains("iothub_provisioning_requests_total{outcome=\"accepted\"} 1"),
        "{text}"
    );
}
both!(provisions_then_reports_shadow);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_can_do_nothing_but_provision() {
    let hub = Hub::start();
    let secret = enroll(&hub, json!({"enrollmentId": "e1"})).await;
    hub.create_thing("other").await;

    // Wrong secret, client id other than the user name, a Will: refused at CONNECT.
    let user = claim_user("e1", "s1");
    assert!(
        Client::connect(Proto::V5, hub.mqtt, &user, &user, "wrong")
            .await
            .is_err()
    );
    assert!(
        Client::connect(Proto::V5, hub.mqtt, "s1", &user, &secret)
            .await
            .is_err()
    );
    assert!(
        Client::connect(
            Proto::V5,
            hub.mqtt,
            "$claim/nope/s1",
            "$claim/nope/s1",
            &secret
        )
        .await
        .is_err()
    );
    let will = Client::connect_with_will(
        Proto::V5,
        hub.mqtt,
        &user,
        &user,
        &secret,
        true,
        Some((&topic("e1", "s1", ProvisionKind::Request), b"{}")),
    )
    .await;
    assert!(will.is_err());

    let mut c = claim(&hub, Proto::V5, "e1", "s1", &secret).await;
    for filter in [
        "#",
        "$iothub/#",
        "$iothub/things/other/#",
        "$iothub/provision/e1/s2/accepted",
        "$iothub/provision/e1/s1/+",
        "$iothub/provision/e1/s1/request",
    ] {
        assert_eq!(
            c.subscribe(filter).await.expect("provisioning test step"),
            0x87,
            "{filter}"
        );
    }
    for t in [
        "$iothub/things/other/shadows/name/default/update",
        "$iothub/user/things/other/x",
        "$iothub/provision/e1/s2/request",
        "$iothub/provision/e1/s1/accepted",
        "plain/topic",
    ] {
        assert_eq!(
            c.publish(t, b"{}".to_vec())
                .await
                .expect("provisioning test step"),
            0x87,
            "{t}"
        );
    }
    // Still allowed: its own request, answered.
    let (ok, body) = provision(&mut c, "e1", "s1", json!({"clientToken": "t"})).await;
    assert!(ok, "{body}");
    let (_, things) = hub.get("/things?pageSize=100").await;
    assert_eq!(
        things["data"]["total"], 2,
        "only the one provisioned thing was added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enrollments_answer_their_codes() {
    let hub = Hub::start();
    let disabled = enroll(&hub, json!({"enrollmentId": "off", "enabled": false})).await;
    let expired = enroll(&hub, json!({"enrollmentId": "old", "expiresAt": 1000})).await;
    let one = enroll(&hub, json!({"enrollmentId": "one", "maxUses": 1})).await;
    let pattern = enroll(
        &hub,
        json!({"enrollmentId": "pat", "idRule": {"kind": "pattern", "value": "m-*"}}),
    )
    .await;

    let cases = [
        ("off", &disabled, "enrollment disabled"),
        ("old", &expired, "enrollment expired"),
    ];
    for (enrollment, secret, message) in cases {
        let (ok, body) =
            provision_once(&hub, enrollment, "s1", secret, json!({"clientToken": "c"})).await;
        assert!(!ok);
        assert_eq!(body["code"], 403, "{body}");
        assert_eq!(body["message"], message);
    }
    let (ok, _) = provision_once(&hub, "one", "s1", &one, json!({"clientToken": "c"})).await;
    assert!(ok);
    let (ok, body) = provision_once(&hub, "one", "s2", &one, json!({"clientToken": "c"})).await;
    assert!(!ok);
    assert_eq!(
        (body["code"].as_u64(), body["message"].as_str()),
        (Some(403), Some("enrollment exhausted"))
    );
    // A serial seen before uses nothing up.
    let (ok, body) = provision_once(&hub, "one", "s1", &one, json!({"clientToken": "c"})).await;
    assert!(ok, "{body}");

    // Id rule, malformed request, serial mismatch: 400; an id taken: 409.
    let (_, body) = provision_once(
        &hub,
        "pat",
        "s1",
        &pattern,
        json!({"clientToken": "c", "thingId": "x-1"}),
    )
    .await;
    assert_eq!(body["code"], 400, "{body}");
    let (_, body) = provision_once(
        &hub,
        "pat",
        "s1",
        &pattern,
        json!({"clientToken": "c", "serial": "s9", "thingId": "m-1"}),
    )
    .await;
    assert_eq!(body["code"], 400, "{body}");
    hub.create_thing("m-taken").await;
    let (_, body) = provision_once(
        &hub,
        "pat",
        "s1",
        &pattern,
        json!({"clientToken": "c", "thingId": "m-taken"}),
    )
    .await;
    assert_eq!(body["code"], 409, "{body}");
    let (ok, body) = provision_once(
        &hub,
        "pat",
        "s1",
        &pattern,
        json!({"clientToken": "c", "thingId": "m-1"}),
    )
    .await;
    assert!(ok, "{body}");

    // Re-enabling works; disabling again refuses again.
    let (status, _) = hub
        .patch("/enrollments/off", json!({"enabled": true}))
        .await;
    assert_eq!(status, 200);
    let (ok, body) =
        provision_once(&hub, "off", "s1", &disabled, json!({"clientToken": "c"})).await;
    assert!(ok, "{body}");
    let (_, _, text) = hub.get_text("/metrics").await;
    assert!(
        text.contains("iothub_provisioning_requests_total{outcome=\"forbidden\"} 3"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_serial_keeps_its_thing_and_loses_its_old_secret() {
    let hub = Hub::start();
    let secret = enroll(&hub, json!({"enrollmentId": "e1"})).await;
    let mut events = hub.connect_service(Proto::V5).await;
    events
        .subscribe("$iothub/events/things/+/lifecycle")
        .await
        .expect("provisioning test step");

    let (ok, first) =
        provision_once(&hub, "e1", "SN-7", &secret, json!({"clientToken": "a"})).await;
    assert!(ok, "{first}");
    let thing = first["thingId"]
        .as_str()
        .expect("provisioning test step")
        .to_owned();
    let old = first["password"]
        .as_str()
        .expect("provisioning test step")
        .to_owned();
    let mut live = hub.connect_thing(Proto::V5, &thing, &old).await;

    let (ok, second) =
        provision_once(&hub, "e1", "SN-7", &secret, json!({"clientToken": "b"})).await;
    assert!(ok, "{second}");
    assert_eq!(second["thingId"], thing.as_str(), "same thing");
    let new = second["password"].as_str().expect("provisioning test step");
    assert_ne!(new, old);

    // The old secret's connection is closed and the old secret refused; the new one works.
    assert!(live.is_disconnected(STEP).await);
    assert_eq!(
        Client::connect(Proto::V5, hub.mqtt, &thing, &thing, &old)
            .await
            .err(),
        Some(ConnectError::Refused(0x86))
    );
    hub.connect_thing(Proto::V5, &thing, new).await;

    // Every provisioning is a lifecycle event.
    let lifecycle = format!("$iothub/events/things/{thing}/lifecycle");
    for _ in 0..2 {
        let e = events
            .expect_json(&lifecycle, STEP, |v| v["op"] == "provision")
            .await;
        assert_eq!(e["thingId"], thing.as_str());
    }
    let (_, e) = hub.get("/enrollments/e1").await;
    assert_eq!(e["data"]["uses"], 1, "re-provisioning uses nothing up");
}

/// A device that connects again before the hub closed its answered claim connection keeps the
/// new connection: the delayed close (D-43) is for the connection that got the reply only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_after_a_reply_spares_a_newer_connection() {
    let hub = Hub::start();
    let secret = enroll(&hub, json!({"enrollmentId": "e1"})).await;
    let accepted = topic("e1", "SN-9", ProvisionKind::Accepted);
    let mut first = claim(&hub, Proto::V5, "e1", "SN-9", &secret).await;
    assert_eq!(first.subscribe(&accepted).await.expect("subscribe"), 1);
    first
        .publish_json(
            &topic("e1", "SN-9", ProvisionKind::Request),
            &json!({"clientToken": "a"}),
        )
        .await;
    first
        .wait_message(STEP, |m| m.topic == accepted)
        .await
        .expect("the first connection's reply");

    // At once, well inside the hub's 500 ms: the same claim again, as a retrying device would.
    let mut second = claim(&hub, Proto::V5, "e1", "SN-9", &secret).await;
    assert!(
        !second.is_disconnected(Duration::from_secs(2)).await,
        "the close meant for the answered connection closed its successor"
    );
    // The newer connection is served and then closed after its own reply.
    let (ok, body) = provision(&mut second, "e1", "SN-9", json!({"clientToken": "b"})).await;
    assert!(ok, "{body}");
}

fn set_rules(path: &Path, rules: &str) {
    std::fs::write(path, rules).expect("write fault rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("fault-rules");
    set_rules(&rules, "");
    let rules_env = rules.display().to_string();
    let hub = Hub::start_with_env(
        dir.path(),
        &[],
        &[("IOTHUB_FAULT_FILE", rules_env.as_str())],
    );
    let secret = enroll(
        &hub,
        json!({"enrollmentId": "e1", "idRule": {"kind": "prefix", "value": "f-"}}),
    )
    .await;
    for rule in [
        "enrollments statement 1",
        "enrollments statement 3",
        "enrollments statement 4",
        "enrollments commit",
    ] {
        set_rules(&rules, rule);
        let (ok, body) =
            provision_once(&hub, "e1", "s1", &secret, json!({"clientToken": "c"})).await;
        assert!(!ok, "{rule}");
        assert_eq!(body["code"], 503, "{rule}: {body}");
        set_rules(&rules, "");
        let (status, _) = hub.rest_thing("f-s1").await;
        assert_eq!(status, 404, "{rule}: no thing half-created");
        let (_, e) = hub.get("/enrollments/e1").await;
        assert_eq!(e["data"]["uses"], 0, "{rule}: no use counted");
    }
    let (ok, body) = provision_once(&hub, "e1", "s1", &secret, json!({"clientToken": "c"})).await;
    assert!(ok, "{body}");
    assert_eq!(body["thingId"], "f-s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollments_rest_api() {
    let hub = Hub::start();
    let (status, resp) = hub
        .post(
            "/enrollments",
            json!({"enrollmentId": "e1", "claimSecret": "my-claim", "maxUses": 5}),
        )
        .await;
    assert_eq!(status, 201, "{resp}");
    assert_eq!(resp["data"]["claimSecret"], "my-claim");
    let (status, _) = hub
        .post("/enrollments", json!({"enrollmentId": "e1"}))
        .await;
    assert_eq!(status, 409);
    for bad in [
        json!({"enrollmentId": "a.b"}),
        json!({"enrollmentId": "e2", "idRule": {"kind": "prefix", "value": "a/b"}}),
        json!({"enrollmentId": "e2", "idRule": {"kind": "nope"}}),
        json!({"enrollmentId": "e2", "claimSecret": ""}),
    ] {
        let (status, resp) = hub.post("/enrollments", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {resp}");
    }
    let (status, list) = hub.get("/enrollments").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"]["total"], 1);
    let (status, e) = hub
        .patch(
            "/enrollments/e1",
            json!({"maxUses": null, "enabled": false}),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["data"]["maxUses"], Value::Null);
    assert_eq!(e["data"]["enabled"], false);
    let (status, _) = hub.delete("/enrollments/e1").await;
    assert_eq!(status, 200);
    let (status, _) = hub.get("/enrollments/e1").await;
    assert_eq!(status, 404);
    // Its claim secret no longer connects.
    let user = claim_user("e1", "s1");
    assert!(
        Client::connect(Proto::V5, hub.mqtt, &user, &user, "my-claim")
            .await
            .is_err()
    );
}
