//! Webhook delivery: signed batches, an outage, a SIGKILL (S-14.3, S-14.4, D-78).

use serde_json::json;

use crate::support::*;
use crate::*;

/// S-14.3, S-14.4: signed batches; a receiver that answers 503 and then is gone gets every
/// message later, in order per thing, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_batches_are_signed_and_survive_an_outage() {
    let mut receiver = Receiver::start().await;
    let hub = Hub::start();
    let route = unique("wh");
    let created = create_route(&hub, webhook_route(&route, &receiver.url(), json!({}))).await;
    assert_eq!(created["route"]["sink"]["secret"], "****", "{created}");

    let (a, _, mut ca) = hub.new_thing(Proto::V5, "wa").await;
    let (b, _, mut cb) = hub.new_thing(Proto::V311, "wb").await;
    publish_range(&mut ca, &telemetry(&a), 0..15).await;
    publish_range(&mut cb, &telemetry(&b), 0..15).await;
    let got = receiver.wait_distinct(30, SLACK).await;
    assert_eq!(ns_of(&got, &a), (0..15).collect::<Vec<_>>());
    assert_eq!(ns_of(&got, &b), (0..15).collect::<Vec<_>>());
    let posts = receiver.posts();
    assert!(
        posts.len() < 30,
        "messages are batched: {} posts",
        posts.len()
    );
    for post in &posts {
        assert_eq!(post.headers["x-custom"], "yes");
        assert_eq!(post.headers["content-type"], "application/json");
    }
    let first = &got[0];
    assert_eq!(first["source"], "telemetry");
    assert_eq!(first["route"], route.as_str());
    assert!(
        first["topic"]
            .as_str()
            .is_some_and(|t| t.ends_with("/messages/property"))
    );

    // The receiver fails, then is gone altogether; the devices' messages are still taken.
    receiver.set_status(503);
    publish_range(&mut ca, &telemetry(&a), 15..25).await;
    publish_range(&mut cb, &telemetry(&b), 15..25).await;
    eventually(SLACK, || async {
        let s = route_status(&hub, &route).await;
        (s["failed"].as_u64() > Some(0)).then_some(())
    })
    .await
    .expect("failed attempts are counted");
    receiver.stop();
    publish_range(&mut ca, &telemetry(&a), 25..35).await;
    publish_range(&mut cb, &telemetry(&b), 25..35).await;
    let s = route_status(&hub, &route).await;
    assert!(s["outbox"].as_u64() >= Some(20), "{s}");
    assert!(s["lastError"].is_string(), "{s}");

    receiver.set_status(200);
    receiver.restart().await;
    let got = receiver.wait_distinct(70, SLACK).await;
    assert_eq!(
        ns_of(&got, &a),
        (0..35).collect::<Vec<_>>(),
        "in order, none lost"
    );
    assert_eq!(
        ns_of(&got, &b),
        (0..35).collect::<Vec<_>>(),
        "in order, none lost"
    );
    let s = eventually(SLACK, || async {
        let s = route_status(&hub, &route).await;
        (s["outbox"] == 0).then_some(s)
    })
    .await
    .expect("outbox drains");
    assert_eq!(s["delivered"], 70, "{s}");
    assert_eq!(s["dropped"], 0, "{s}");
    let (_, _, metrics) = hub.get_text("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "iothub_route_delivered_total{{route=\"{route}\"}} 70"
        )),
        "{metrics}"
    );
    // D-87: every delivered message's latency, from acceptance to the receiver's 200.
    assert!(
        metrics.contains(&format!(
            "iothub_route_delivery_seconds_count{{route=\"{route}\"}} 70"
        )),
        "{metrics}"
    );
}

/// D-78: whatever was PUBACKed is in the outbox, on disk: after a SIGKILL and a restart it is
/// delivered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let mut receiver = Receiver::not_listening().await;
    let mut hub = Hub::start();
    let route = unique("kill");
    create_route(&hub, webhook_route(&route, &receiver.url(), json!({}))).await;
    let (a, _, mut ca) = hub.new_thing(Proto::V5, "ka").await;
    publish_range(&mut ca, &telemetry(&a), 0..40).await;
    let s = route_status(&hub, &route).await;
    assert_eq!(s["outbox"], 40, "{s}");

    hub.kill();
    drop(ca);
    receiver.restart().await;
    hub.restart();
    let got = receiver.wait_distinct(40, SLACK).await;
    assert_eq!(ns_of(&got, &a), (0..40).collect::<Vec<_>>());
    let s = route_status(&hub, &route).await;
    assert_eq!(s["route"]["id"], route.as_str());
}
