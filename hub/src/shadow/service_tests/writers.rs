//! Shadow pipeline tests of concurrent writers, failed writes, the REST operations, deletes, the
//! named-shadow quota, shutdown and cache eviction.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rest_and_mqtt_writers_never_both_win_one_version() {
    let h = Arc::new(hub().await);
    h.update("default", json!({"state": {"desired": {"w": "init"}}}))
        .await;
    h.bus.wait_for(3).await;
    let mut expected_version = 1u64;
    let mut total_accepted_mqtt = 0;
    for round in 0..10 {
        let mut tasks = Vec::new();
        for w in 0..8 {
            let h = h.clone();
            let body = json!({"state": {"desired": {"w": format!("{round}-{w}")}},
                              "version": expected_version, "clientToken": format!("{round}-{w}")});
            tasks.push(tokio::spawn(async move {
                if w % 2 == 0 {
                    let r = h
                        .shadows
                        .update_desired(THING, "default", body.to_string().as_bytes())
                        .await;
                    match r {
                        Ok(_) => Some(true),
                        Err(e) => {
                            assert_eq!(e.code, ErrorCode::Conflict, "{e}");
                            Some(false)
                        }
                    }
                } else {
                    h.update("default", body).await;
                    None
                }
            }));
        }
        let mut rest_wins = 0;
        for t in tasks {
            if t.await.unwrap() == Some(true) {
                rest_wins += 1;
            }
        }
        // Wait until all four MQTT writers of this round are answered.
        let answered = |h: &Hub| {
            h.bus
                .all()
                .iter()
                .filter(|(t, v, _)| {
                    (t.ends_with("/update/accepted") || t.ends_with("/update/rejected"))
                        && v[field::CLIENT_TOKEN]
                            .as_str()
                            .is_some_and(|c| c.starts_with(&format!("{round}-")))
                })
                .count()
        };
        for _ in 0..2000 {
            if answered(&h) == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(answered(&h), 4);
        let mqtt_wins = h
            .bus
            .on(&topic("update/accepted", "default"))
            .iter()
            .filter(|v| {
                v[field::CLIENT_TOKEN]
                    .as_str()
                    .is_some_and(|c| c.starts_with(&format!("{round}-")))
            })
            .count();
        total_accepted_mqtt += mqtt_wins;
        assert_eq!(rest_wins + mqtt_wins, 1, "round {round}");
        expected_version += 1;
        assert_eq!(h.stored_version("default").await, Some(expected_version));
    }
    assert!(total_accepted_mqtt <= 10);
    // Versions of the delta messages strictly increase: one accepted update per version.
    let versions: Vec<u64> = h
        .bus
        .on(&topic("update/documents", "default"))
        .iter()
        .map(|v| v[field::CURRENT][field::VERSION].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=11).collect::<Vec<_>>());
    h.shadows.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_unversioned_writers_all_land_in_order() {
    let h = Arc::new(hub().await);
    let mut tasks = Vec::new();
    for w in 0..40 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"state": {"desired": {format!("k{w}"): w}}});
            if w % 2 == 0 {
                h.shadows
                    .update_desired(THING, "default", body.to_string().as_bytes())
                    .await
                    .map(|v| v[field::VERSION].as_u64().unwrap())
                    .unwrap();
            } else {
                h.update("default", body).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for _ in 0..2000 {
        if h.bus.on(&topic("update/accepted", "default")).len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.shadows.shutdown().await;
    assert_eq!(h.stored_version("default").await, Some(40));
    let doc = h.shadows.get(THING, "default").await;
    // After shutdown the service refuses; read the store instead.
    assert_eq!(doc.map_err(|e| e.code), Err(ErrorCode::Unavailable));
    let stored = h
        .store
        .inner
        .get_shadow(THING, "default")
        .await
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_str(&stored.body).unwrap();
    assert_eq!(
        body[field::STATE][field::DESIRED]
            .as_object()
            .unwrap()
            .len(),
        40
    );
}

#[tokio::test]
async fn failed_write_is_503_and_the_shadow_reloads_from_the_store() {
    let h = hub().await;
    h.update("default", json!({"state": {"reported": {"a": 1}}}))
        .await;
    h.bus.wait_for(2).await;

    // Hold the store; queue an update, a get that shows it, and an update built on it.
    h.store.hold.store(true, Ordering::SeqCst);
    h.update(
        "default",
        json!({"state": {"reported": {"a": 2}}, "clientToken": "lost"}),
    )
    .await;
    h.get("default", r#"{"clientToken":"g"}"#).await;
    h.update(
        "default",
        json!({"state": {"reported": {"b": 3}}, "clientToken": "chained"}),
    )
    .await;
    // Let the committer pick up the first write before failing it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.store.fail_next.store(1, Ordering::SeqCst);
    h.store.hold.store(false, Ordering::SeqCst);
    h.store.permits.add_permits(100);
    let msgs = h.bus.wait_for(5).await;
    let rest = &msgs[2..5];
    assert_eq!(rest[0].0, topic("update/rejected", "default"));
    assert_eq!(code(&rest[0].1), 503);
    assert_eq!(rest[0].1[field::CLIENT_TOKEN], json!("lost"));
    // The get showed the lost write: it is answered 503, not with state that was never stored.
    assert_eq!(rest[1].0, topic("get/rejected", "default"));
    assert_eq!(code(&rest[1].1), 503);
    assert_eq!(rest[1].1[field::CLIENT_TOKEN], json!("g"));
    // Built on the lost version: refused by the store's CAS (or the same failed batch).
    assert_eq!(rest[2].0, topic("update/rejected", "default"));
    assert!([409, 503].contains(&code(&rest[2].1)), "{:?}", rest[2]);
    assert_eq!(h.stored_version("default").await, Some(1));

    // The next update starts from the store (version 1), not from the lost version 3.
    h.update("default", json!({"state": {"reported": {"c": 4}}}))
        .await;
    let msgs = h.bus.wait_for(7).await;
    assert_eq!(msgs[5].0, topic("update/accepted", "default"));
    assert_eq!(msgs[5].1[field::VERSION], json!(2));
    let doc = h.shadows.get(THING, "default").await.unwrap();
    assert_eq!(doc[field::STATE], json!({"reported": {"a": 1, "c": 4}}));
    assert_eq!(doc[field::VERSION], json!(2));
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn rest_update_get_and_delete() {
    let h = hub().await;
    assert_eq!(
        h.shadows.get(THING, "default").await.map_err(|e| e.code),
        Err(ErrorCode::NotFound)
    );
    let accepted = h
        .shadows
        .update_desired(
            THING,
            "default",
            br#"{"state":{"desired":{"fan":"on"}},"clientToken":"rest-1"}"#,
        )
        .await
        .unwrap();
    assert_eq!(accepted[field::VERSION], json!(1));
    assert_eq!(accepted[field::CLIENT_TOKEN], json!("rest-1"));
    assert_eq!(accepted[field::STATE], json!({"desired": {"fan": "on"}}));
    // The thing hears delta and documents, not the REST caller's accepted.
    let msgs = h.bus.wait_for(2).await;
    assert_eq!(msgs[0].0, topic("update/delta", "default"));
    assert_eq!(msgs[0].1[field::STATE], json!({"fan": "on"}));
    assert_eq!(msgs[1].0, topic("update/documents", "default"));
    assert_eq!(h.bus.all().len(), 2);

    let doc = h.shadows.get(THING, "default").await.unwrap();
    assert_eq!(
        doc[field::STATE],
        json!({"desired": {"fan": "on"}, "delta": {"fan": "on"}})
    );
    for (body, want) in [
        (
            &br#"{"state":{"reported":{"a":1}}}"#[..],
            ErrorCode::BadRequest,
        ),
        (
            br#"{"state":{"desired":{"a":1}},"version":7}"#,
            ErrorCode::Conflict,
        ),
        (b"{", ErrorCode::BadRequest),
    ] {
        assert_eq!(
            h.shadows
                .update_desired(THING, "default", body)
                .await
                .map_err(|e| e.code),
            Err(want)
        );
    }

    h.shadows.delete(THING, "default").await.unwrap();
    assert_eq!(
        h.shadows.delete(THING, "default").await.map_err(|e| e.code),
        Err(ErrorCode::NotFound)
    );
    assert_eq!(
        h.shadows.get(THING, "default").await.map_err(|e| e.code),
        Err(ErrorCode::NotFound)
    );
    assert_eq!(h.stored_version("default").await, None);
    let accepted = h
        .shadows
        .update_desired(THING, "default", br#"{"state":{"desired":{"fan":"off"}}}"#)
        .await
        .unwrap();
    assert_eq!(accepted[field::VERSION], json!(1));
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn delete_waits_for_queued_writes() {
    let h = hub().await;
    h.store.hold.store(true, Ordering::SeqCst);
    h.update("default", json!({"state": {"reported": {"a": 1}}}))
        .await;
    let shadows = h.shadows.clone();
    let delete = tokio::spawn(async move { shadows.delete(THING, "default").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!delete.is_finished());
    h.store.hold.store(false, Ordering::SeqCst);
    h.store.permits.add_permits(100);
    delete.await.unwrap().unwrap();
    assert_eq!(h.stored_version("default").await, None);
    assert_eq!(
        h.bus.on(&topic("update/accepted", "default")).len(),
        1,
        "the update was accepted before the delete"
    );
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn named_shadow_quota_leaves_default_out_and_is_403() {
    let h = hub_with(Limits {
        max_named_shadows: 2,
        shadow_requests_per_sec: 1000,
        max_in_flight: 1000,
        ..Limits::default()
    })
    .await;
    for name in ["default", "a", "b", "c"] {
        h.update(
            name,
            json!({"state": {"reported": {"x": 1}}, "clientToken": name}),
        )
        .await;
    }
    h.bus.wait_for(7).await;
    assert_eq!(h.bus.on(&topic("update/accepted", "default")).len(), 1);
    assert_eq!(h.bus.on(&topic("update/accepted", "b")).len(), 1);
    let rejected = h.bus.on(&topic("update/rejected", "c"));
    assert_eq!(rejected.len(), 1);
    assert_eq!(code(&rejected[0]), 403);
    assert_eq!(rejected[0][field::CLIENT_TOKEN], json!("c"));
    // Existing shadows stay writable; a get of the missing one stays 404.
    h.update("a", json!({"state": {"reported": {"x": 2}}}))
        .await;
    h.get("c", "").await;
    h.bus.wait_for(10).await;
    assert_eq!(h.bus.on(&topic("update/accepted", "a")).len(), 2);
    assert_eq!(code(&h.bus.on(&topic("get/rejected", "c"))[0]), 404);
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_everything_queued_then_refuses() {
    let h = hub().await;
    for i in 0..20 {
        h.update("default", json!({"state": {"reported": {"i": i}}}))
            .await;
    }
    h.shadows.shutdown().await;
    assert_eq!(h.bus.on(&topic("update/accepted", "default")).len(), 20);
    assert_eq!(h.stored_version("default").await, Some(20));
    h.update("default", json!({"state": {"reported": {"i": 99}}}))
        .await;
    let last = h.bus.all().pop().unwrap();
    assert_eq!(last.0, topic("update/rejected", "default"));
    assert_eq!(code(&last.1), 503);
    h.shadows.shutdown().await;
}

#[tokio::test]
async fn forget_thing_drops_cached_shadows() {
    let h = hub().await;
    h.update("default", json!({"state": {"reported": {"a": 1}}}))
        .await;
    h.bus.wait_for(2).await;
    h.store.inner.delete_thing(THING).await.unwrap();
    h.shadows.forget_thing(THING);
    assert_eq!(
        h.shadows.get(THING, "default").await.map_err(|e| e.code),
        Err(ErrorCode::NotFound)
    );
    // A write for the deleted thing is refused by the store, answered 404.
    h.update("default", json!({"state": {"reported": {"a": 2}}}))
        .await;
    let msgs = h.bus.wait_for(3).await;
    assert_eq!(msgs[2].0, topic("update/rejected", "default"));
    assert_eq!(code(&msgs[2].1), 404);
    h.shadows.shutdown().await;
}
