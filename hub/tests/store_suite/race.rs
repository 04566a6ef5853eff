//! Two handles on one database, as two hub instances have: a version is accepted at most once
//! (S-3.4), whichever instance, and the loser is told so ([`StoreError::VersionConflict`]).

use std::sync::Arc;

use iothub_hub::store::commit::GroupCommitter;
use iothub_hub::store::{ShadowWrite, StoreError};
use serde_json::json;

use crate::{Fixture, new_thing, tags};

const THINGS: usize = 6;
const VERSIONS: u64 = 40;

fn body(who: &str, v: u64) -> String {
    format!(r#"{{"state":{{"reported":{{"by":"{who}","v":{v}}}}}}}"#)
}

/// For every version of every thing both instances submit an update against it at the same
/// time, through their own group committers (so the race also runs across batches): exactly one
/// is accepted, the other gets the conflict, and the stored document is the winner's.
pub async fn two_handles_never_accept_one_version_twice(f: Fixture) {
    let things: Vec<_> = (0..THINGS).map(|i| new_thing(&format!("r{i}"))).collect();
    f.store.create_things(&things, 1).await.unwrap();
    let other = f.open_again().await;
    let a = GroupCommitter::spawn(Arc::clone(&f.store), 64, 256);
    let b = GroupCommitter::spawn(Arc::clone(&other), 64, 256);
    let mut tasks = Vec::new();
    for i in 0..THINGS {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let thing = format!("r{i}");
            let mut winners = Vec::new();
            for v in 0..VERSIONS {
                let w = |who: &str| ShadowWrite {
                    thing_id: thing.clone(),
                    name: "default".into(),
                    expected_version: v,
                    new_version: v + 1,
                    body: body(who, v + 1),
                    updated_at: v + 1,
                    expected_body: None,
                };
                let (ra, rb) = tokio::join!(a.write(w("a")), b.write(w("b")));
                match (ra, rb) {
                    (Ok(()), Err(StoreError::VersionConflict)) => winners.push("a"),
                    (Err(StoreError::VersionConflict), Ok(())) => winners.push("b"),
                    other => panic!("{thing} v{v}: expected one acceptance, got {other:?}"),
                }
            }
            (thing, winners)
        }));
    }
    let mut wins = [0usize; 2];
    for t in tasks {
        let (thing, winners) = t.await.unwrap();
        let stored = f
            .store
            .get_shadow(&thing, "default")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.version, VERSIONS);
        let last = winners.last().copied().unwrap();
        assert_eq!(
            stored.body,
            body(last, VERSIONS),
            "the stored document is the winner's"
        );
        for w in winners {
            wins[usize::from(w == "b")] += 1;
        }
    }
    assert_eq!(wins[0] + wins[1], THINGS * VERSIONS as usize);
    a.shutdown().await;
    b.shutdown().await;
    // Both handles see the same final state.
    let seen = other.get_shadow("r0", "default").await.unwrap().unwrap();
    assert_eq!(seen.version, VERSIONS);
}

/// The same for tags: concurrent replacements against one version, one wins.
pub async fn two_handles_race_tag_replacements(f: Fixture) {
    f.store.create_thing(&new_thing("t"), 1).await.unwrap();
    let other = f.open_again().await;
    for v in 1..=30u64 {
        let ta = tags(json!({"by": "a", "v": v}));
        let tb = tags(json!({"by": "b", "v": v}));
        let (ra, rb) = tokio::join!(
            f.store.replace_tags("t", &ta, v),
            other.replace_tags("t", &tb, v)
        );
        let winner = match (ra, rb) {
            (Ok(n), Err(StoreError::VersionConflict)) => (n, ta),
            (Err(StoreError::VersionConflict), Ok(n)) => (n, tb),
            other => panic!("v{v}: expected one acceptance, got {other:?}"),
        };
        assert_eq!(winner.0, v + 1);
        let stored = other.get_thing("t").await.unwrap().unwrap();
        assert_eq!((stored.tags_version, stored.tags), (v + 1, winner.1));
    }
}

/// D-85: a write built on another one not yet known to be durable names that one's body. When
/// another instance stored a different document under the same version meanwhile (the write it
/// was built on lost), the write fails instead of landing on that document and erasing it, in
/// one batch and across batches alike.
pub async fn a_write_built_on_a_lost_one_does_not_land(f: Fixture) {
    f.store.create_thing(&new_thing("e1"), 1).await.unwrap();
    let other = f.open_again().await;
    let ours = |expected: u64, body: String, after: Option<String>| ShadowWrite {
        thing_id: "e1".into(),
        name: "default".into(),
        expected_version: expected,
        new_version: expected + 1,
        body,
        updated_at: 1,
        expected_body: after,
    };
    // The other instance stores version 1 first.
    assert_eq!(
        other
            .write_shadows(&[ours(0, body("b", 1), None)])
            .await
            .unwrap(),
        [Ok(())]
    );
    // Ours: 0 → 1 (lost), then 1 → 2 built on it, in the same batch, then 2 → 3 in the next.
    let results = f
        .store
        .write_shadows(&[
            ours(0, body("a", 1), None),
            ours(1, body("a", 2), Some(body("a", 1))),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            Err(StoreError::VersionConflict),
            Err(StoreError::VersionConflict)
        ]
    );
    assert_eq!(
        f.store
            .write_shadows(&[ours(2, body("a", 3), Some(body("a", 2)))])
            .await
            .unwrap(),
        [Err(StoreError::VersionConflict)]
    );
    let stored = f.store.get_shadow("e1", "default").await.unwrap().unwrap();
    assert_eq!((stored.version, stored.body), (1, body("b", 1)));
    // Built on what is stored: it lands.
    assert_eq!(
        f.store
            .write_shadows(&[ours(1, body("a", 2), Some(body("b", 1)))])
            .await
            .unwrap(),
        [Ok(())]
    );
}

/// D-85: `rewrite_shadow` reads the shadow and stores what is built on it in one transaction;
/// a write of another instance at the same time never lands in between (S-3.4). On PostgreSQL
/// the shadow is held from the read to the commit, so the rewrite always wins; SQLite has no
/// second instance, and there the usual compare-and-swap decides.
pub async fn rewrite_reads_and_writes_in_one_transaction(f: Fixture) {
    f.store.create_thing(&new_thing("w1"), 1).await.unwrap();
    let other = f.open_again().await;
    let w = |expected: u64, who: &str| ShadowWrite {
        thing_id: "w1".into(),
        name: "default".into(),
        expected_version: expected,
        new_version: expected + 1,
        body: body(who, expected + 1),
        updated_at: 1,
        expected_body: None,
    };
    // Nothing stored: `build` sees nothing and may write nothing.
    let (read, results) = f
        .store
        .rewrite_shadow("w1", "default", &|stored| {
            assert!(stored.is_none());
            Vec::new()
        })
        .await
        .unwrap();
    assert!(read.is_none() && results.is_empty());
    f.store.write_shadows(&[w(0, "a")]).await.unwrap();

    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let store = Arc::clone(&f.store);
    let rewrite = tokio::spawn(async move {
        store
            .rewrite_shadow("w1", "default", &|stored| {
                let v = stored.map_or(0, |s| s.version);
                let _ = started_tx.lock().unwrap().send(());
                // Long enough for the other instance's write to arrive meanwhile.
                std::thread::sleep(std::time::Duration::from_millis(300));
                // The second write is built on the first: it names its body (as the shadow
                // pipeline does), so it cannot land on another document of the same version.
                let second = ShadowWrite {
                    expected_body: Some(body("rewrite", v + 1)),
                    ..w(v + 1, "rewrite")
                };
                vec![w(v, "rewrite"), second]
            })
            .await
            .unwrap()
    });
    tokio::task::spawn_blocking(move || started.recv().unwrap())
        .await
        .unwrap();
    let theirs = other.write_shadows(&[w(1, "other")]).await.unwrap();
    let (read, results) = rewrite.await.unwrap();
    let read = read.unwrap();
    let stored = f.store.get_shadow("w1", "default").await.unwrap().unwrap();
    match (theirs[0].clone(), results.as_slice()) {
        (Err(StoreError::VersionConflict), [Ok(()), Ok(())]) => {
            assert_eq!(read.version, 1);
            assert_eq!((stored.version, stored.body), (3, body("rewrite", 3)));
        }
        (
            Ok(()),
            [
                Err(StoreError::VersionConflict),
                Err(StoreError::VersionConflict),
            ],
        ) => {
            assert_eq!(f.kind, crate::Kind::Sqlite, "PostgreSQL holds the row");
            assert_eq!((stored.version, stored.body), (2, body("other", 2)));
        }
        other => panic!("both or neither landed: {other:?}"),
    }
}
