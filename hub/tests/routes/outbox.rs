//! The outbox's bounds, dead letters and store faults (S-14.3, D-78).

use std::time::Duration;

use serde_json::json;

use crate::support::*;
use crate::*;

/// S-14.3: a full outbox drops its oldest (counted) or refuses with PUBACK 0x97 (MQTT 5); an
/// MQTT 3.1.1 publisher is disconnected instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outboxes_drop_the_oldest_or_refuse() {
    let receiver = Receiver::start().await;
    let hub = Hub::start();
    let (a, _, mut ca) = hub.new_thing(Proto::V5, "da").await;
    let (b, secret_b, mut cb) = hub.new_thing(Proto::V5, "ra").await;
    let drop_route = unique("drop");
    let refuse_route = unique("refuse");
    create_route(
        &hub,
        webhook_route(
            &drop_route,
            &receiver.url(),
            json!({"topic": telemetry(&a), "outboxMax": 5, "paused": true}),
        ),
    )
    .await;
    create_route(
        &hub,
        webhook_route(
            &refuse_route,
            &receiver.url(),
            json!({"topic": telemetry(&b), "outboxMax": 3, "whenFull": "refuse", "paused": true}),
        ),
    )
    .await;

    publish_range(&mut ca, &telemetry(&a), 0..8).await;
    let s = route_status(&hub, &drop_route).await;
    assert_eq!(
        (s["outbox"].as_u64(), s["dropped"].as_u64()),
        (Some(5), Some(3)),
        "{s}"
    );

    publish_range(&mut cb, &telemetry(&b), 0..3).await;
    let rc = cb
        .publish(&telemetry(&b), br#"{"n":3}"#.to_vec())
        .await
        .expect("PUBACK");
    assert_eq!(rc, 0x97, "quota exceeded");
    let s = route_status(&hub, &refuse_route).await;
    assert_eq!(
        (s["outbox"].as_u64(), s["refused"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );
    // MQTT 3.1.1 has no negative PUBACK: the connection closes, no PUBACK.
    let mut old = hub.connect_thing(Proto::V311, &b, &secret_b).await;
    assert!(
        old.publish(&telemetry(&b), br#"{"n":4}"#.to_vec())
            .await
            .is_err()
    );
    let (_, _, metrics) = hub.get_text("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "iothub_route_refused_total{{route=\"{refuse_route}\"}} 2"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "iothub_route_dropped_total{{route=\"{drop_route}\"}} 3"
        )),
        "{metrics}"
    );

    for id in [&drop_route, &refuse_route] {
        let (status, body) = hub.post(&format!("/routes/{id}/resume"), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let got = receiver.wait_distinct(8, SLACK).await;
    assert_eq!(ns_of(&got, &a), vec![3, 4, 5, 6, 7], "the 5 newest");
    assert_eq!(
        ns_of(&got, &b),
        vec![0, 1, 2],
        "the refused one is not there"
    );
}

/// S-14.3: a batch that failed maxAttempts times becomes dead letters; a replay delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_become_dead_letters_and_replay_delivers() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let hub = Hub::start();
    let route = unique("dead");
    create_route(
        &hub,
        webhook_route(
            &route,
            &receiver.url(),
            json!({"maxAttempts": 2, "retryInitialMs": 20, "retryMaxMs": 50}),
        ),
    )
    .await;
    let (a, _, mut ca) = hub.new_thing(Proto::V5, "dl").await;
    publish_range(&mut ca, &telemetry(&a), 0..3).await;
    let letters = eventually(SLACK, || async {
        let (_, body) = hub.get(&format!("/routes/{route}/dead-letters")).await;
        (body["data"]["total"] == 3).then(|| body["data"]["content"].clone())
    })
    .await
    .expect("3 dead letters");
    let letters = letters.as_array().expect("content").clone();
    assert_eq!(ns_of(&letters, &a), vec![0, 1, 2]);
    assert_eq!(letters[0]["attempts"], 2);
    assert!(
        letters[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("500"))
    );
    let s = route_status(&hub, &route).await;
    assert_eq!(
        (s["outbox"].as_u64(), s["deadLettered"].as_u64()),
        (Some(0), Some(3)),
        "{s}"
    );

    receiver.set_status(200);
    let (status, body) = hub
        .post(&format!("/routes/{route}/dead-letters/replay"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["replayed"], 3);
    let got = receiver.wait_distinct(3, SLACK).await;
    assert_eq!(ns_of(&got, &a), vec![0, 1, 2]);
    let (_, body) = hub.get(&format!("/routes/{route}/dead-letters")).await;
    assert_eq!(body["data"]["total"], 0, "{body}");
}

/// D-88: the dead letters are bounded by count (the oldest beyond deleted) and by age, and what
/// is deleted is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_bounded_by_count_and_age() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let hub = Hub::start();
    let route = unique("deadmax");
    let mut spec = webhook_route(
        &route,
        &receiver.url(),
        json!({"maxAttempts": 1, "batchMax": 1, "batchDelayMs": 0, "retryInitialMs": 10,
               "retryMaxMs": 20, "deadLettersMax": 4}),
    );
    create_route(&hub, spec.clone()).await;
    let (a, _, mut ca) = hub.new_thing(Proto::V5, "dm").await;
    publish_range(&mut ca, &telemetry(&a), 0..10).await;
    let s = eventually(SLACK, || async {
        let s = route_status(&hub, &route).await;
        (s["deadLettered"] == 10).then_some(s)
    })
    .await
    .expect("10 dead-lettered");
    assert_eq!(s["deadLettersDropped"], 6, "{s}");
    let (_, body) = hub.get(&format!("/routes/{route}/dead-letters")).await;
    assert_eq!(body["data"]["total"], 4, "{body}");
    let letters = body["data"]["content"].as_array().expect("content").clone();
    assert_eq!(ns_of(&letters, &a), vec![6, 7, 8, 9], "the newest are kept");
    let (_, _, metrics) = hub.get_text("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "iothub_route_dead_letters_dropped_total{{route=\"{route}\"}} 6"
        )),
        "{metrics}"
    );

    // Age: a route that keeps dead letters one second trims the rest when it (re)starts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    spec["deadLetterMaxAgeS"] = json!(1);
    let (status, body) = hub.put(&format!("/routes/{route}"), spec).await;
    assert_eq!(status, 200, "{body}");
    let s = eventually(SLACK, || async {
        let s = route_status(&hub, &route).await;
        (s["deadLettersDropped"] == 10).then_some(s)
    })
    .await;
    assert!(s.is_some(), "{}", route_status(&hub, &route).await);
    let (_, body) = hub.get(&format!("/routes/{route}/dead-letters")).await;
    assert_eq!(body["data"]["total"], 0, "{body}");
}

/// D-78: a store failure while the outbox is written is no PUBACK success: 0x80 in MQTT 5, the
/// connection closed in 3.1.1; nothing of it is delivered, and the route works again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fault_in_the_outbox_refuses_the_puback() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("fault-rules");
    std::fs::write(&rules, "").expect("rules");
    let rules_env = rules.display().to_string();
    let hub = Hub::start_with_env(
        dir.path(),
        &[],
        &[("IOTHUB_FAULT_FILE", rules_env.as_str())],
    );
    let route = unique("fault");
    create_route(&hub, webhook_route(&route, &receiver.url(), json!({}))).await;
    let (a, secret, mut ca) = hub.new_thing(Proto::V5, "fa").await;
    ca.publish_json(&telemetry(&a), &json!({"n": 0})).await;

    for rule in ["routes statement 1", "routes commit"] {
        std::fs::write(&rules, rule).expect("rules");
        let rc = ca
            .publish(&telemetry(&a), br#"{"n":100}"#.to_vec())
            .await
            .expect("PUBACK");
        assert_eq!(rc, 0x80, "{rule}: unspecified error, not success");
        let mut old = hub.connect_thing(Proto::V311, &a, &secret).await;
        assert!(
            old.publish(&telemetry(&a), br#"{"n":101}"#.to_vec())
                .await
                .is_err(),
            "{rule}: MQTT 3.1.1 gets no PUBACK"
        );
        std::fs::write(&rules, "").expect("rules");
        // The 3.1.1 connection took the client id over; connect the MQTT 5 one again.
        ca = hub.connect_thing(Proto::V5, &a, &secret).await;
    }
    ca.publish_json(&telemetry(&a), &json!({"n": 1})).await;
    let got = receiver.wait_distinct(2, SLACK).await;
    tokio::time::sleep(QUIET).await;
    let got_all = distinct(receiver.messages());
    assert_eq!(ns_of(&got, &a), vec![0, 1]);
    assert_eq!(
        ns_of(&got_all, &a),
        vec![0, 1],
        "nothing refused was delivered"
    );
    let s = route_status(&hub, &route).await;
    assert!(s["accepted"].as_u64() == Some(2), "{s}");
}
