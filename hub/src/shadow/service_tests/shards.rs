//! The pipeline on several shards: each thing's order and in-flight limit hold exactly, whichever
//! shard owns it, while the shards work at the same time.

use super::*;
use crate::shard::shard_of;

/// Things spread over `shards` shards, at least two on each.
fn things_on_every_shard(shards: usize, n: usize) -> Vec<String> {
    let things: Vec<String> = (0..n).map(|i| format!("s{i:03}")).collect();
    for shard in 0..shards {
        let on_it = things
            .iter()
            .filter(|t| shard_of(t, shards) == shard)
            .count();
        assert!(
            on_it >= 2,
            "shard {shard} owns {on_it} of the test's things"
        );
    }
    things
}

fn accepted_topic(thing: &str) -> String {
    Topic::ShadowUpdateAccepted {
        thing,
        shadow: "default",
    }
    .to_string()
}

/// Waits (real time, at most 10 s) until every thing has `n` accepted updates.
async fn wait_accepted(h: &Hub, things: &[String], n: usize) {
    for _ in 0..2000 {
        if things
            .iter()
            .all(|t| h.bus.on(&accepted_topic(t)).len() >= n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn send_update(h: &Hub, thing: &str, i: u64) {
    let body = json!({"state": {"reported": {"i": i}}, "clientToken": format!("{thing}-{i}")});
    h.shadows
        .handle_mqtt(
            thing,
            "default",
            ShadowOp::Update,
            Bytes::from(body.to_string()),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_things_updates_are_accepted_in_its_order_across_shards() {
    const SHARDS: usize = 4;
    const UPDATES: u64 = 40;
    let things = things_on_every_shard(SHARDS, 16);
    let names: Vec<&str> = things.iter().map(String::as_str).collect();
    let h = Arc::new(
        hub_with_things(
            Limits {
                shadow_requests_per_sec: 10_000,
                max_in_flight: 10_000,
                ..Limits::default()
            },
            SHARDS,
            &names,
        )
        .await,
    );
    // Every thing sends its updates in order, all things at once.
    let senders: Vec<_> = things
        .iter()
        .cloned()
        .map(|thing| {
            let h = h.clone();
            tokio::spawn(async move {
                for i in 0..UPDATES {
                    send_update(&h, &thing, i).await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    wait_accepted(&h, &things, UPDATES as usize).await;
    for thing in &things {
        let accepted = h.bus.on(&accepted_topic(thing));
        let seen: Vec<(u64, String)> = accepted
            .iter()
            .map(|m| {
                (
                    m[field::VERSION].as_u64().unwrap(),
                    m[field::CLIENT_TOKEN].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected: Vec<(u64, String)> = (0..UPDATES)
            .map(|i| (i + 1, format!("{thing}-{i}")))
            .collect();
        assert_eq!(seen, expected, "{thing}: replies out of its send order");
    }
    h.shadows.shutdown().await;
    for thing in &things {
        let stored = h.store.inner.get_shadow(thing, "default").await.unwrap();
        assert_eq!(stored.map(|s| s.version), Some(UPDATES), "{thing}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_limit_is_exact_for_every_thing_on_every_shard() {
    const SHARDS: usize = 4;
    const LIMIT: u32 = 3;
    let things = things_on_every_shard(SHARDS, 12);
    let names: Vec<&str> = things.iter().map(String::as_str).collect();
    let h = hub_with_things(
        Limits {
            shadow_requests_per_sec: 1000,
            max_in_flight: LIMIT,
            ..Limits::default()
        },
        SHARDS,
        &names,
    )
    .await;
    // Nothing becomes durable, so nothing is answered and every slot stays taken.
    h.store.hold.store(true, Ordering::SeqCst);
    for thing in &things {
        for i in 0..u64::from(LIMIT) + 2 {
            send_update(&h, thing, i).await;
        }
    }
    let rejected = h.bus.wait_for(things.len() * 2).await;
    for thing in &things {
        let codes: Vec<(u64, Value)> = rejected
            .iter()
            .filter(|(t, _, _)| t.starts_with(&format!("$iothub/things/{thing}/")))
            .map(|(_, v, _)| (code(v), v[field::CLIENT_TOKEN].clone()))
            .collect();
        let limit = u64::from(LIMIT);
        assert_eq!(
            codes,
            vec![
                (429, json!(format!("{thing}-{limit}"))),
                (429, json!(format!("{thing}-{}", limit + 1))),
            ],
            "{thing}: exactly the requests past the limit are refused"
        );
    }
    h.store.hold.store(false, Ordering::SeqCst);
    h.store.permits.add_permits(10_000);
    wait_accepted(&h, &things, LIMIT as usize).await;
    for thing in &things {
        assert_eq!(
            h.bus.on(&accepted_topic(thing)).len(),
            LIMIT as usize,
            "{thing}"
        );
    }
    h.shadows.shutdown().await;
}
