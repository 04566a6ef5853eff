//! Store failures: reported to the caller, visible in `health()`, nothing half-stored, and the
//! store recovers by itself once writes work again.

use std::time::{Duration, Instant};

use iothub_hub::store::StoreError;

use crate::{Fixture, new_thing, write};

fn unavailable<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Err(StoreError::Unavailable(reason)) => reason,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

pub async fn failed_writes_are_reported_and_health_recovers(f: Fixture) {
    let s = &f.store;
    s.create_thing(&new_thing("t1"), 1).await.unwrap();
    assert!(s.health().healthy);

    // A failed commit: the caller gets the error, nothing is stored, health says why.
    f.faults.set("shadows commit");
    let reason = unavailable(s.write_shadows(&[write("t1", "default", 0)]).await);
    assert!(reason.contains("injected"), "{reason}");
    let h = s.health();
    assert!(!h.healthy);
    assert!(h.reason.unwrap().contains("injected"));
    assert!(h.failing_since.is_some());
    assert!(s.get_shadow("t1", "default").await.unwrap().is_none());

    // A batch that fails at its second statement leaves nothing of its first.
    f.faults.set("things statement 2\nshadows statement 2");
    unavailable(
        s.write_shadows(&[write("t1", "default", 0), write("t1", "default", 1)])
            .await,
    );
    assert!(s.get_shadow("t1", "default").await.unwrap().is_none());
    f.faults.set("things statement 1");
    unavailable(s.create_thing(&new_thing("t2"), 1).await);
    assert!(s.get_thing("t2").await.unwrap().is_none());
    // Reads keep working while writes fail.
    assert!(s.get_thing("t1").await.unwrap().is_some());

    // Faults gone: the store's own probe brings health back without a client's write.
    f.faults.set("");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.health().healthy {
        assert!(
            Instant::now() < deadline,
            "health did not recover: {:?}",
            s.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = s.health();
    assert!(h.write_failures >= 3, "{h:?}");
    assert_eq!((h.reason, h.failing_since), (None, None));
    // And writes work on the same store (no connection left in a failed transaction).
    assert_eq!(
        s.write_shadows(&[write("t1", "default", 0), write("t1", "default", 1)])
            .await
            .unwrap(),
        [Ok(()), Ok(())]
    );
    s.create_thing(&new_thing("t2"), 1).await.unwrap();
    // Answers about the data are not failures.
    assert_eq!(
        s.create_thing(&new_thing("t2"), 1).await.unwrap_err(),
        StoreError::AlreadyExists
    );
    assert!(s.health().healthy);
}

pub async fn closed_store_is_unavailable(f: Fixture) {
    let s = &f.store;
    s.create_thing(&new_thing("t1"), 1).await.unwrap();
    s.close().await;
    unavailable(s.get_thing("t1").await);
    unavailable(s.write_shadows(&[write("t1", "default", 0)]).await);
    unavailable(s.list_things(0, 10, None).await);
}
