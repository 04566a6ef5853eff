//! `iothub_sdk::provision` against the real hub (S-10): a device holding only a claim secret
//! gets its own credentials and then reports shadow state with them; refusals keep their code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use iothub_sdk::{Error, ProvisionOptions, Thing, provision};
use serde_json::json;
use support::Hub;

/// Creates an enrollment over REST; returns its claim secret.
async fn enroll(hub: &Hub, body: serde_json::Value) -> String {
    let (status, resp) = hub
        .call(reqwest::Method::POST, "/enrollments", Some(body))
        .await;
    assert_eq!(status, 201, "{resp}");
    resp["data"]["claimSecret"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_device_provisions_then_reports() {
    let hub = Hub::start();
    let claim = enroll(
        &hub,
        json!({"enrollmentId": "sdk", "idRule": {"kind": "prefix", "value": "sdk-"}}),
    )
    .await;
    let options = ProvisionOptions::new("127.0.0.1", hub.mqtt.port(), "sdk", "SN.1", &claim)
        .attributes(json!({"fw": "1.0"}));
    let creds = provision(&options).await.expect("provision");
    assert_eq!(creds.thing_id, "sdk-SN-1");
    assert!(creds.limits.max_request_payload > 0);

    let thing = Thing::connect(hub.options(&creds.thing_id, &creds.password))
        .await
        .expect("connect with the new credentials");
    let v = thing
        .shadow("default")
        .report(&json!({"booted": true}))
        .await
        .expect("report");
    assert_eq!(v, 1);
    let (status, doc) = hub.shadow(&creds.thing_id, "default").await;
    assert_eq!(status, 200);
    assert_eq!(doc["state"]["reported"]["booted"], true);

    // Provisioning the same serial again: the same thing, a new secret.
    let again = provision(&options).await.expect("provision again");
    assert_eq!(again.thing_id, creds.thing_id);
    assert_ne!(again.password, creds.password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_their_code() {
    let hub = Hub::start();
    let claim = enroll(&hub, json!({"enrollmentId": "off", "enabled": false})).await;
    let options = ProvisionOptions::new("127.0.0.1", hub.mqtt.port(), "off", "s1", &claim);
    match provision(&options).await {
        Err(Error::Rejected { code, message }) => {
            assert_eq!((code, message.as_str()), (403, "enrollment disabled"))
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    let wrong = ProvisionOptions::new("127.0.0.1", hub.mqtt.port(), "off", "s1", "wrong");
    assert!(matches!(provision(&wrong).await, Err(Error::Refused(_))));
    let bad = ProvisionOptions::new("127.0.0.1", hub.mqtt.port(), "off", "s/1", &claim);
    assert!(matches!(
        provision(&bad).await,
        Err(Error::InvalidArgument(_))
    ));
}
