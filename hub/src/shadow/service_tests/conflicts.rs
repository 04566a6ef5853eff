//! Updates that lose against another writer of the store (another hub instance, D-73): applied
//! again on the stored shadow, in order, never answered 409 without a stale `version` (D-85).

use super::*;

/// Another instance's write: `t1`'s default shadow from `expected` to `expected + 1`, with
/// `reported` = `state`.
async fn foreign_write(h: &Hub, expected: u64, state: Value) {
    let body = json!({"state": {"reported": state}}).to_string();
    let results = h
        .store
        .inner
        .write_shadows(&[ShadowWrite {
            thing_id: THING.into(),
            name: "default".into(),
            expected_version: expected,
            new_version: expected + 1,
            body,
            updated_at: 1,
            expected_body: None,
        }])
        .await
        .unwrap();
    assert_eq!(results, vec![Ok(())]);
}

/// (topic, clientToken, version or code) of every reply from `from` on.
fn replies(h: &Hub, from: usize) -> Vec<(String, Value, Value)> {
    h.bus.all()[from..]
        .iter()
        .filter(|(t, _, _)| t.ends_with("/accepted") || t.ends_with("/rejected"))
        .map(|(t, v, _)| {
            let outcome = if t.ends_with("/accepted") {
                v[field::VERSION].clone()
            } else {
                v[field::CODE].clone()
            };
            (t.clone(), v[field::CLIENT_TOKEN].clone(), outcome)
        })
        .collect()
}

#[tokio::test]
async fn updates_that_lose_against_another_writer_are_applied_again_in_order() {
    let h = shared_hub().await;
    h.update(
        "default",
        json!({"state": {"reported": {"a": 1}}, "clientToken": "a"}),
    )
    .await;
    let before = h.bus.wait_for(2).await.len();

    // Another instance stores version 2 behind this one's back; this one still caches 1.
    foreign_write(&h, 1, json!({"a": 1, "x": 9})).await;
    // Three updates and a get queue up while the store holds the first write, so the second
    // and third are merged on the first before it fails: the second expects version 2, which
    // the store has (the other instance's), and must not land on it.
    h.store.hold.store(true, Ordering::SeqCst);
    for (token, key) in [("b", "b"), ("c", "c")] {
        h.update(
            "default",
            json!({"state": {"reported": {key: 2}}, "clientToken": token}),
        )
        .await;
    }
    h.get("default", r#"{"clientToken":"g"}"#).await;
    h.update(
        "default",
        json!({"state": {"reported": {"d": 3}}, "clientToken": "d"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.store.hold.store(false, Ordering::SeqCst);
    h.store.permits.add_permits(1000);
    // Each update: accepted, then documents; the get: accepted.
    h.bus.wait_for(before + 3 * 2 + 1).await;
    let accepted = topic("update/accepted", "default");
    let got = topic("get/accepted", "default");
    assert_eq!(
        replies(&h, before),
        vec![
            (accepted.clone(), json!("b"), json!(3)),
            (accepted.clone(), json!("c"), json!(4)),
            (got.clone(), json!("g"), json!(4)),
            (accepted.clone(), json!("d"), json!(5)),
        ]
    );
    let get = h.bus.on(&got);
    assert_eq!(
        get[0][field::STATE][field::REPORTED],
        json!({"a": 1, "x": 9, "b": 2, "c": 2})
    );

    // The cache was refreshed: a current `version` is accepted, a stale one is a 409 against
    // the store, and an unversioned update goes on from there.
    let n = h.bus.all().len();
    h.update(
        "default",
        json!({"state": {"reported": {"e": 4}}, "version": 5, "clientToken": "e"}),
    )
    .await;
    h.update(
        "default",
        json!({"state": {"reported": {"f": 5}}, "version": 5, "clientToken": "f"}),
    )
    .await;
    h.bus.wait_for(n + 3).await;
    let rejected = topic("update/rejected", "default");
    assert_eq!(
        replies(&h, n),
        vec![
            (accepted.clone(), json!("e"), json!(6)),
            (rejected.clone(), json!("f"), json!(409)),
        ]
    );
    // Another instance writes again; the owner's next versioned write names what the store
    // has: accepted (checked against the store, not the stale cache).
    foreign_write(&h, 6, json!({"y": 1})).await;
    let n = h.bus.all().len();
    h.update(
        "default",
        json!({"state": {"reported": {"g": 6}}, "version": 7, "clientToken": "v7"}),
    )
    .await;
    h.bus.wait_for(n + 2).await;
    assert_eq!(
        replies(&h, n),
        vec![(accepted.clone(), json!("v7"), json!(8))]
    );
    let doc = h.shadows.get(THING, "default").await.unwrap();
    assert_eq!(doc[field::VERSION], json!(8));
    assert_eq!(doc[field::STATE][field::REPORTED], json!({"y": 1, "g": 6}));
    h.shadows.shutdown().await;
    assert_eq!(h.stored_version("default").await, Some(8));
}

#[tokio::test]
async fn an_update_that_keeps_losing_is_503_after_the_attempts_and_nothing_is_stored() {
    let h = shared_hub().await;
    // Every write of the next calls conflicts, as if another instance always wrote first.
    h.store.conflict_next.store(5, Ordering::SeqCst);
    h.update(
        "default",
        json!({"state": {"reported": {"a": 1}}, "clientToken": "lost"}),
    )
    .await;
    let msgs = h.bus.wait_for(1).await;
    assert_eq!(msgs[0].0, topic("update/rejected", "default"));
    assert_eq!(code(&msgs[0].1), 503);
    assert_eq!(msgs[0].1[field::CLIENT_TOKEN], json!("lost"));
    assert_eq!(h.stored_version("default").await, None);

    // Losing fewer times than that: accepted, REST and MQTT alike.
    h.store.conflict_next.store(3, Ordering::SeqCst);
    let rest = h
        .shadows
        .update_desired(THING, "default", br#"{"state":{"desired":{"r":1}}}"#)
        .await
        .unwrap();
    assert_eq!(rest[field::VERSION], json!(1));
    h.store.conflict_next.store(4, Ordering::SeqCst);
    h.update(
        "default",
        json!({"state": {"reported": {"m": 1}}, "clientToken": "m"}),
    )
    .await;
    let accepted = topic("update/accepted", "default");
    for _ in 0..2000 {
        if !h.bus.on(&accepted).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A versioned update that conflicts in the store is a 409 (its version was stale there).
    h.store.conflict_next.store(1, Ordering::SeqCst);
    h.update(
        "default",
        json!({"state": {"reported": {"v": 1}}, "version": 2, "clientToken": "v"}),
    )
    .await;
    h.shadows.shutdown().await;
    assert_eq!(
        replies(&h, 1),
        vec![
            (topic("update/accepted", "default"), json!("m"), json!(2)),
            (topic("update/rejected", "default"), json!("v"), json!(409)),
        ]
    );
    assert_eq!(h.stored_version("default").await, Some(2));
}
