//! Shared subscriptions: MQTT 5 §4.8.2 and §3.2.2.3.13 (Shared Subscription Available). The hub
//! offers them to service users, so several instances of a back end can split one stream; a
//! thing keeps the plain allow-list of S-2.1 and gets SUBACK 0x87 for `$share/...`.

use super::raw::{Raw, prop};
use super::support::QUIET;
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_users_share_a_subscription_and_each_message_goes_to_one() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "shared").await;
    let topic = user_topic(&id, "data");
    let shared = format!("$share/backend/{}", user_topic(&id, "#"));
    let (mut a, ack) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc-a"))).await;
    assert_ne!(
        ack.props.int(prop::SHARED_SUBSCRIPTION_AVAILABLE),
        Some(0),
        "{ack:?}"
    );
    let (mut b, _) = Raw::connect_ok(hub.mqtt, &service_opts(&unique("svc-b"))).await;
    assert_eq!(
        a.subscribe(&shared, 1).await,
        1,
        "service user's shared subscription"
    );
    assert_eq!(
        b.subscribe(&shared, 1).await,
        1,
        "service user's shared subscription"
    );

    let (mut thing, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let n = 10;
    for i in 0..n {
        let (rc, _) = thing
            .publish_acked(&topic, format!("{{\"i\":{i}}}").as_bytes(), false, &[])
            .await;
        assert_eq!(rc, 0);
    }
    let mut got = (0, 0);
    while a.expect_publish(&topic, QUIET).await.is_some() {
        got.0 += 1;
    }
    while b.expect_publish(&topic, QUIET).await.is_some() {
        got.1 += 1;
    }
    assert_eq!(
        got.0 + got.1,
        n,
        "§4.8.2: each message to exactly one member: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn things_may_not_use_shared_subscriptions() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "noshare").await;
    let (mut thing, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let rc = thing
        .subscribe(&format!("$share/g/{}", user_topic(&id, "#")), 1)
        .await;
    assert_eq!(rc, 0x87, "S-2.1: a thing's $share subscription");
    // Its plain subscription to the same filter still works.
    assert_eq!(thing.subscribe(&user_topic(&id, "#"), 1).await, 1);
}
