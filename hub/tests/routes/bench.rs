//! Throughput through a webhook route (the figure of the report).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;
use crate::*;

/// The throughput figure of the report: `cargo test -p iothub-hub --test routes -- --ignored
/// --nocapture webhook_throughput` (ROUTES_BENCH_THINGS, ROUTES_BENCH_MESSAGES per thing;
/// ROUTES_BENCH_HUB: another `iothub` binary, e.g. a release build; ROUTES_BENCH_BASELINE=1:
/// no route, only the PUBACK rate, for comparison).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn webhook_throughput() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (things, per_thing) = (
        env("ROUTES_BENCH_THINGS", 10),
        env("ROUTES_BENCH_MESSAGES", 500),
    );
    let receiver = Receiver::start().await;
    let hub = match std::env::var("ROUTES_BENCH_HUB") {
        Ok(bin) => Hub::start_bin(std::path::Path::new(&bin), &[]),
        Err(_) => Hub::start(),
    };
    let baseline = std::env::var("ROUTES_BENCH_BASELINE").is_ok_and(|v| v == "1");
    let route = unique("bench");
    if !baseline {
        create_route(
            &hub,
            webhook_route(&route, &receiver.url(), json!({"batchMax": 500})),
        )
        .await;
    }
    let mut clients = Vec::new();
    for _ in 0..things {
        clients.push(hub.new_thing(Proto::V5, "bench").await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (thing, _, mut client) in clients {
        tasks.push(tokio::spawn(async move {
            let topic = telemetry(&thing);
            for n in 0..per_thing {
                client.publish_json(&topic, &json!({ "n": n })).await;
            }
            thing
        }));
    }
    let mut names = Vec::new();
    for t in tasks {
        names.push(t.await.expect("publisher"));
    }
    let acked = started.elapsed();
    let total = (things * per_thing) as usize;
    if baseline {
        println!(
            "no route: {total} QoS 1 messages from {things} things: all PUBACKed in {:.2} s = {:.0} messages/s",
            acked.as_secs_f64(),
            total as f64 / acked.as_secs_f64()
        );
        return;
    }
    let got = receiver
        .wait_distinct(total, Duration::from_secs(600))
        .await;
    let all = started.elapsed();
    let mut by_thing: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for name in &names {
        by_thing.insert(name, ns_of(&got, name));
    }
    for (name, ns) in by_thing {
        assert_eq!(ns, (0..per_thing).collect::<Vec<_>>(), "{name}");
    }
    println!(
        "webhook route: {total} QoS 1 messages from {things} things: all PUBACKed in {:.2} s, all delivered in {:.2} s = {:.0} messages/s ({} POSTs)",
        acked.as_secs_f64(),
        all.as_secs_f64(),
        total as f64 / all.as_secs_f64(),
        receiver.posts().len()
    );
}
