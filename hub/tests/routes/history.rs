//! The history sink and a query filter (S-14.4, D-77).

use std::time::Duration;

use serde_json::json;

use crate::support::*;
use crate::*;

/// S-14.4: the history sink with from/to/limit and per-thing retention; D-77: a query filter
/// over the thing's tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_with_from_to_limit_and_retention() {
    let hub = Hub::start();
    let run = unique("hist");
    let things = vec![
        (format!("{run}-in"), json!({"zone": "a"})),
        (format!("{run}-out"), json!({"zone": "b"})),
    ];
    let secrets = hub.create_tagged_things(&things).await;
    let route = json!({
        "id": run,
        "sources": ["telemetry"],
        "query": "SELECT * FROM things WHERE tags.zone = 'a'",
        "sink": {"type": "history", "maxPerThing": 4},
        "batchDelayMs": 0,
    });
    create_route(&hub, route).await;
    let (inside, outside) = (&things[0].0, &things[1].0);
    let mut c_in = hub.connect_thing(Proto::V5, inside, &secrets[inside]).await;
    let mut c_out = hub
        .connect_thing(Proto::V311, outside, &secrets[outside])
        .await;
    let t0 = now_ms();
    for n in 0..6u64 {
        c_in.publish_json(&telemetry(inside), &json!({ "n": n }))
            .await;
        c_out
            .publish_json(&telemetry(outside), &json!({ "n": n }))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Retention keeps the newest 4 of the thing; the other thing matches no query.
    let kept = eventually(SLACK, || async {
        let (_, body) = hub.get(&format!("/things/{inside}/messages")).await;
        let items = body["data"].as_array().cloned().unwrap_or_default();
        (ns_of(&items, inside) == vec![2, 3, 4, 5]).then_some(items)
    })
    .await
    .unwrap_or_else(|| panic!("history of {inside}"));
    let (_, body) = hub.get(&format!("/things/{outside}/messages")).await;
    assert_eq!(body["data"], json!([]), "{body}");
    for m in &kept {
        assert!(m["receivedAt"].as_u64() >= Some(t0), "{m}");
        assert_eq!(m["source"], "telemetry");
    }
    let at = |i: usize| kept[i]["receivedAt"].as_u64().unwrap_or(0);
    let (_, body) = hub.get(&format!("/things/{inside}/messages?limit=2")).await;
    assert_eq!(
        ns_of(body["data"].as_array().expect("list"), inside),
        vec![2, 3]
    );
    let (_, body) = hub
        .get(&format!(
            "/things/{inside}/messages?from={}&to={}",
            at(1),
            at(3)
        ))
        .await;
    assert_eq!(
        ns_of(body["data"].as_array().expect("list"), inside),
        vec![3, 4]
    );
    let (status, _) = hub.get(&format!("/things/{inside}/messages?limit=0")).await;
    assert_eq!(status, 400);
}
