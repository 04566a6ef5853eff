//! The webhook route at its stated size (issue 17): 100 things, each on its own MQTT connection,
//! stream numbered QoS 1 telemetry while the receiver is down for 20 s (its listener closed:
//! connection refused) and then up again. Every POST's HMAC-SHA256 signature is checked by the
//! receiver itself; every message the hub acknowledged arrives, in order per thing; repeats
//! (delivery is at least once) are counted and printed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::time::MissedTickBehavior;

use crate::support::*;
use crate::*;

const THINGS: usize = 100;
/// Messages per thing, one every [`EVERY`]: a 28 s stream.
const PER_THING: u64 = 112;
const EVERY: Duration = Duration::from_millis(250);
/// When, after the stream began, the receiver goes down, and for how long.
const DOWN_AT: Duration = Duration::from_secs(4);
const DOWN_FOR: Duration = Duration::from_secs(20);

/// S-14.3, S-14.4, D-78 at size: 100 things × 112 QoS 1 messages through a 20 s outage of the
/// receiver; delivered-distinct = acknowledged, in order per thing, no bad signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_things_through_a_twenty_second_receiver_outage() {
    let mut receiver = Receiver::start().await;
    let hub = Hub::start();
    let route = unique("size");
    // Backoff capped at 1 s so that the route notices the receiver's return quickly.
    create_route(
        &hub,
        webhook_route(
            &route,
            &receiver.url(),
            json!({"batchMax": 200, "batchDelayMs": 50, "retryInitialMs": 100,
                   "retryMaxMs": 1000, "maxAttempts": 1000}),
        ),
    )
    .await;
    let mut clients = Vec::with_capacity(THINGS);
    for _ in 0..THINGS {
        let (thing, _, client) = hub.new_thing(Proto::V311, "sz").await;
        clients.push((thing, client));
    }

    let started = Instant::now();
    let mut publishers = Vec::with_capacity(THINGS);
    for (thing, mut client) in clients {
        publishers.push(tokio::spawn(async move {
            let topic = telemetry(&thing);
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for n in 0..PER_THING {
                tick.tick().await;
                // Returns once the hub's PUBACK arrived (and asserts it is a success).
                client.publish_json(&topic, &json!({ "n": n })).await;
            }
            (thing, client)
        }));
    }

    tokio::time::sleep(DOWN_AT.saturating_sub(started.elapsed())).await;
    receiver.stop();
    let down = Instant::now();
    let refused = eventually(STEP, || async {
        receiver.refuses_connections().await.then_some(())
    })
    .await;
    assert!(refused.is_some(), "the receiver's port still accepts");
    tokio::time::sleep(DOWN_FOR.saturating_sub(down.elapsed())).await;
    let during = route_status(&hub, &route).await;
    assert!(receiver.refuses_connections().await, "down the whole time");
    receiver.restart().await;
    let outage = down.elapsed();

    let mut things = Vec::with_capacity(THINGS);
    for p in publishers {
        things.push(p.await.expect("publisher"));
    }
    let streamed = started.elapsed();
    let sent = THINGS as u64 * PER_THING;
    let status = eventually(Duration::from_secs(60), || async {
        let s = route_status(&hub, &route).await;
        (s["outbox"] == 0 && s["delivered"].as_u64() >= Some(sent)).then_some(s)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not drained: {}",
            received_summary(&receiver, THINGS as u64 * PER_THING)
        )
    });
    let drained = started.elapsed();

    assert_eq!(
        receiver.bad_signatures(),
        0,
        "every POST's signature checks"
    );
    let all = receiver.messages();
    let got = distinct(all.clone());
    let duplicates = all.len() - got.len();
    assert_eq!(got.len() as u64, sent, "delivered-distinct = acknowledged");
    let mut per_thing: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in &got {
        let thing = m["thingId"].as_str().expect("thingId").to_owned();
        per_thing
            .entry(thing)
            .or_default()
            .push(m["payload"]["n"].as_u64().expect("n"));
    }
    let names: BTreeSet<String> = things.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(
        per_thing.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "every thing's messages, no other"
    );
    for (thing, ns) in &per_thing {
        assert_eq!(
            ns,
            &(0..PER_THING).collect::<Vec<_>>(),
            "{thing}: in order, none lost"
        );
    }
    assert!(
        during["failed"].as_u64() > Some(0) && during["lastError"].is_string(),
        "the outage was seen: {during}"
    );
    assert!(
        during["outbox"].as_u64() > Some(1000),
        "messages were taken during the outage: {during}"
    );
    assert_eq!(status["dropped"], 0, "{status}");
    assert_eq!(status["deadLettered"], 0, "{status}");
    println!(
        "{THINGS} things × {PER_THING} QoS 1 messages = {sent} acknowledged; receiver down {:.1} s \
         (outbox then {}, failed attempts {}); stream {:.1} s, all delivered after {:.1} s; \
         {} POSTs, {} messages received, {duplicates} duplicates, 0 bad signatures",
        outage.as_secs_f64(),
        during["outbox"],
        during["failed"],
        streamed.as_secs_f64(),
        drained.as_secs_f64(),
        receiver.posts().len(),
        all.len(),
    );
    drop(things);
}

/// What the receiver has when the test gives up (for the panic message).
fn received_summary(receiver: &Receiver, sent: u64) -> String {
    let all = receiver.messages();
    let distinct = distinct(all.clone()).len();
    format!(
        "{distinct} distinct of {sent}, {} received, {} bad signatures",
        all.len(),
        receiver.bad_signatures()
    )
}
