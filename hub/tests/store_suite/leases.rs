//! Partition leases for several hub instances (D-73). A store either has none (`leases()` is
//! `None`: it serves one hub, as SQLite does) or keeps them so that, whatever the instances do
//! concurrently, no partition is ever held by two instances.

use std::collections::BTreeSet;
use std::time::Duration;

use iothub_hub::store::SharedStore;
use iothub_hub::store::lease::{LeaseRound, PARTITIONS};

use crate::{Fixture, Kind};

const LONG: u64 = 60_000;

async fn round(store: &SharedStore, who: &str, ttl: u64, give_back: &[u16]) -> LeaseRound {
    store
        .leases()
        .expect("leases")
        .lease_round(who, ttl, give_back)
        .await
        .unwrap()
}

fn all() -> Vec<u16> {
    (0..PARTITIONS).collect()
}

/// Instances join, rebalance, crash and leave; after every step the partitions they hold are
/// disjoint.
pub async fn partitions_are_leased_to_one_instance_at_a_time(f: Fixture) {
    if f.kind == Kind::Sqlite {
        assert!(
            f.store.leases().is_none(),
            "SQLite serves one hub: no leases"
        );
        return;
    }
    let a = &f.store;
    let b = &f.open_again().await;
    let c = &f.open_again().await;

    let first = round(a, "a", 300, &[]).await;
    assert_eq!(first.held, all());
    assert_eq!(first.taken, all());
    assert_eq!((first.live, first.share), (1, 64));

    // b joins: nothing is free, but a sees two instances and gives back the upper half.
    let joined = round(b, "b", LONG, &[]).await;
    assert_eq!((joined.held.len(), joined.live, joined.share), (0, 2, 32));
    let renewed = round(a, "a", 300, &[]).await;
    assert_eq!((renewed.held, renewed.taken.len()), (all(), 0));
    let upper: Vec<u16> = (32..64).collect();
    let halved = round(a, "a", 300, &upper).await;
    assert_eq!(halved.held, (0..32).collect::<Vec<_>>());
    let took = round(b, "b", LONG, &[]).await;
    assert_eq!(took.held, upper);
    assert_eq!(took.taken, upper);

    // Concurrent rounds never take one partition twice.
    let (ra, rb, rc) = tokio::join!(
        round(a, "a", 300, &[]),
        round(b, "b", LONG, &[]),
        round(c, "c", LONG, &[])
    );
    assert_eq!(rc.share, 22);
    disjoint(&[&ra.held, &rb.held, &rc.held]);

    // a crashes (stops renewing): once its leases expired, the others share its partitions.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rb = round(b, "b", LONG, &[]).await;
    let rc = round(c, "c", LONG, &[]).await;
    assert_eq!((rb.live, rb.share), (2, 32), "a no longer counts as alive");
    disjoint(&[&rb.held, &rc.held]);
    let held: BTreeSet<u16> = rb.held.iter().chain(&rc.held).copied().collect();
    assert_eq!(
        held.into_iter().collect::<Vec<_>>(),
        all(),
        "a's partitions were taken"
    );
    // a comes back: the leases it held are gone, it renews nothing.
    let back = round(a, "a", LONG, &[]).await;
    disjoint(&[&back.held, &rb.held, &rc.held]);

    // b leaves cleanly: its partitions are free at once.
    b.leases().unwrap().leave("b").await.unwrap();
    let rc = round(c, "c", LONG, &[]).await;
    let ra = round(a, "a", LONG, &[]).await;
    assert_eq!(rc.live, 2);
    disjoint(&[&ra.held, &rc.held]);
    assert_eq!(ra.held.len() + rc.held.len(), usize::from(PARTITIONS));
}

fn disjoint(sets: &[&Vec<u16>]) {
    let mut seen = BTreeSet::new();
    for set in sets {
        for p in *set {
            assert!(seen.insert(*p), "partition {p} held twice: {sets:?}");
        }
    }
}
