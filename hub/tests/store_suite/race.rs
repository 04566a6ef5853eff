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
