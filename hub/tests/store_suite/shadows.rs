//! Shadows: compare-and-swap writes, batches, names, deletes, the group committer on top.

use std::sync::Arc;

use iothub_hub::store::StoreError;
use iothub_hub::store::commit::GroupCommitter;

use crate::{Fixture, new_thing, write};

pub async fn cas_get_names_and_delete(f: Fixture) {
    let s = &f.store;
    s.create_thing(&new_thing("t1"), 1).await.unwrap();
    assert!(s.get_shadow("t1", "default").await.unwrap().is_none());
    assert_eq!(
        s.write_shadows(&[write("t1", "default", 0)]).await.unwrap(),
        [Ok(())]
    );
    let got = s.get_shadow("t1", "default").await.unwrap().unwrap();
    assert_eq!((got.version, got.updated_at), (1, 1000));
    assert_eq!(got.body, r#"{"state":{"reported":{"v":1}}}"#);
    // Stale versions and a second creation are conflicts; nothing changes.
    assert_eq!(
        s.write_shadows(&[write("t1", "default", 0)]).await.unwrap(),
        [Err(StoreError::VersionConflict)]
    );
    assert_eq!(
        s.write_shadows(&[write("t1", "default", 5)]).await.unwrap(),
        [Err(StoreError::VersionConflict)]
    );
    assert_eq!(
        s.get_shadow("t1", "default")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        s.write_shadows(&[write("t1", "default", 1)]).await.unwrap(),
        [Ok(())]
    );
    s.write_shadows(&[
        write("t1", "zeta", 0),
        write("t1", "Alpha", 0),
        write("t1", "b", 0),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.shadow_names("t1").await.unwrap(),
        ["Alpha", "b", "default", "zeta"],
        "sorted byte by byte"
    );
    assert!(s.shadow_names("nope").await.unwrap().is_empty());
    s.delete_shadow("t1", "zeta").await.unwrap();
    assert_eq!(
        s.delete_shadow("t1", "zeta").await.unwrap_err(),
        StoreError::NotFound
    );
    assert!(s.get_shadow("t1", "zeta").await.unwrap().is_none());
    // A deleted shadow starts again at version 1.
    assert_eq!(
        s.write_shadows(&[write("t1", "zeta", 0)]).await.unwrap(),
        [Ok(())]
    );
    assert!(s.write_shadows(&[]).await.unwrap().is_empty());
}

pub async fn batch_fails_only_bad_writes(f: Fixture) {
    let s = &f.store;
    s.create_things(&[new_thing("a"), new_thing("b")], 1)
        .await
        .unwrap();
    s.write_shadows(&[write("b", "default", 0)]).await.unwrap();
    let out = s
        .write_shadows(&[
            write("a", "default", 0),     // creates v1
            write("a", "default", 1),     // builds on the previous write: v2
            write("ghost", "default", 0), // no such thing
            write("b", "default", 0),     // exists already
            write("b", "default", 1),     // fine: v2
            write("a", "default", 1),     // stale by now
            write("a", "default", 2),     // v3
            write("ghost", "default", 3), // no such thing
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            Ok(()),
            Ok(()),
            Err(StoreError::NotFound),
            Err(StoreError::VersionConflict),
            Ok(()),
            Err(StoreError::VersionConflict),
            Ok(()),
            Err(StoreError::NotFound),
        ]
    );
    assert_eq!(
        s.get_shadow("a", "default").await.unwrap().unwrap().version,
        3
    );
    assert_eq!(
        s.get_shadow("b", "default").await.unwrap().unwrap().version,
        2
    );
    // A chain whose first write fails fails as a whole, as it would alone.
    let out = s
        .write_shadows(&[write("a", "default", 7), write("a", "default", 8)])
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            Err(StoreError::VersionConflict),
            Err(StoreError::VersionConflict)
        ]
    );
}

pub async fn delete_thing_cascades(f: Fixture) {
    let s = &f.store;
    s.create_things(&[new_thing("a"), new_thing("b")], 1)
        .await
        .unwrap();
    s.write_shadows(&[
        write("a", "default", 0),
        write("a", "x", 0),
        write("b", "default", 0),
    ])
    .await
    .unwrap();
    s.delete_thing("a").await.unwrap();
    assert!(s.get_thing("a").await.unwrap().is_none());
    assert!(s.shadow_names("a").await.unwrap().is_empty());
    assert_eq!(s.delete_thing("a").await.unwrap_err(), StoreError::NotFound);
    assert_eq!(
        s.write_shadows(&[write("a", "default", 0)]).await.unwrap(),
        [Err(StoreError::NotFound)]
    );
    // A thing created again with the same id starts without shadows.
    s.create_thing(&new_thing("a"), 2).await.unwrap();
    assert!(s.get_shadow("a", "default").await.unwrap().is_none());
    assert_eq!(
        s.get_shadow("b", "default").await.unwrap().unwrap().version,
        1
    );
}

/// 20 shadows × 50 versions submitted back to back without waiting: every CAS succeeds only if
/// the committer keeps FIFO order, and batches hold more than one write.
pub async fn group_commit_keeps_fifo_and_batches(f: Fixture) {
    const THINGS: usize = 20;
    const VERSIONS: u64 = 50;
    let things: Vec<_> = (0..THINGS)
        .map(|i| new_thing(&format!("t{i:02}")))
        .collect();
    f.store.create_things(&things, 1).await.unwrap();
    let committer = GroupCommitter::spawn(Arc::clone(&f.store), 512, 1024);
    let mut producers = Vec::new();
    for i in 0..THINGS {
        let committer = committer.clone();
        producers.push(tokio::spawn(async move {
            let thing = format!("t{i:02}");
            let mut pending = Vec::new();
            for v in 0..VERSIONS {
                pending.push(committer.submit(write(&thing, "default", v)).await);
            }
            let mut results = Vec::new();
            for rx in pending {
                results.push(rx.await.unwrap());
            }
            results
        }));
    }
    for p in producers {
        let results = p.await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let stats = committer.stats();
    assert_eq!(stats.writes, THINGS as u64 * VERSIONS);
    assert_eq!(stats.failed_batches, 0);
    assert!(stats.batches < stats.writes, "no batching: {stats:?}");
    committer.shutdown().await;
    let again = f.open_again().await;
    for i in 0..THINGS {
        let sh = again
            .get_shadow(&format!("t{i:02}"), "default")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sh.version, VERSIONS);
    }
}
