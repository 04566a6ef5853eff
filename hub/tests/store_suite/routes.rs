//! Routes (S-14): definitions, outboxes with drop-oldest, delivery, dead letters and replay, and
//! the message history with its retention, the same on every backend; a failed outbox write
//! stores nothing.

use iothub_hub::store::StoreError;
use iothub_hub::store::routes::{Append, NewMessage, StoredRoute};

use crate::Fixture;

fn route(id: &str) -> StoredRoute {
    StoredRoute {
        route_id: id.into(),
        spec: format!(r#"{{"id":"{id}"}}"#),
        paused: false,
        from_file: true,
        updated_at: 5,
    }
}

fn msg(thing: &str, n: u64) -> NewMessage {
    NewMessage {
        thing_id: thing.into(),
        source: "telemetry".into(),
        topic: format!("$iothub/things/{thing}/messages/property"),
        payload: vec![0, 159, 146, 150, n as u8],
        received_at: 1000 + n,
    }
}

fn append(route: &str, drop_oldest: u64, messages: Vec<NewMessage>) -> Append {
    Append {
        route_id: route.into(),
        drop_oldest,
        messages,
    }
}

pub async fn outbox_dead_letters_and_history_round_trip(f: Fixture) {
    let rs = f.store.routes().expect("route store");
    rs.put_route(&route("b")).await.unwrap();
    rs.put_route(&route("a")).await.unwrap();
    let mut paused = route("a");
    paused.paused = true;
    rs.put_route(&paused).await.unwrap();
    let all = rs.routes().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], paused);

    let dropped = rs
        .enqueue(&[
            append("a", 0, (0..5).map(|n| msg("t1", n)).collect()),
            append("b", 0, vec![msg("t2", 0)]),
        ])
        .await
        .unwrap();
    assert_eq!(dropped, vec![0, 0]);
    // drop-oldest: two out, one in.
    let dropped = rs
        .enqueue(&[append("a", 2, vec![msg("t1", 5)])])
        .await
        .unwrap();
    assert_eq!(dropped, vec![2]);
    let mut depths = rs.outbox_depths().await.unwrap();
    depths.sort();
    assert_eq!(depths, vec![("a".into(), 4), ("b".into(), 1)]);
    let head = rs.outbox("a", 3).await.unwrap();
    let ns: Vec<u8> = head.iter().map(|m| m.message.payload[4]).collect();
    assert_eq!(ns, vec![2, 3, 4], "oldest first, the dropped ones gone");
    assert!(head.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(head[0].message, msg("t1", 2), "bytes round-trip");

    assert_eq!(rs.delivered("a", head[1].seq).await.unwrap(), 2);
    let moved = rs.dead_letter("a", u64::MAX, 3, "boom", 77).await.unwrap();
    assert_eq!(moved, 2);
    assert!(rs.outbox("a", 10).await.unwrap().is_empty());
    let (total, letters) = rs.dead_letters("a", 0, 1).await.unwrap();
    assert_eq!((total, letters.len()), (2, 1));
    assert_eq!(
        (
            letters[0].attempts,
            letters[0].error.as_str(),
            letters[0].failed_at
        ),
        (3, "boom", 77)
    );
    assert_eq!(letters[0].stored.message, msg("t1", 4));
    let (_, rest) = rs
        .dead_letters("a", letters[0].stored.seq, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rs.replay_dead_letters("a", 1).await.unwrap(), 1);
    assert_eq!(rs.replay_dead_letters("a", 10).await.unwrap(), 1);
    assert_eq!(rs.replay_dead_letters("a", 10).await.unwrap(), 0);
    let back: Vec<u8> = rs
        .outbox("a", 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message.payload[4])
        .collect();
    assert_eq!(back, vec![4, 5], "replayed in order");

    rs.delete_route("a").await.unwrap();
    assert_eq!(rs.delete_route("a").await, Err(StoreError::NotFound));
    assert_eq!(rs.outbox_depths().await.unwrap(), vec![("b".into(), 1)]);
    // One batch alone past the bound: the drop takes the oldest, just appended ones included.
    let dropped = rs
        .enqueue(&[append("b", 3, (0..4).map(|n| msg("t3", n)).collect())])
        .await
        .unwrap();
    assert_eq!(dropped, vec![3]);
    let left: Vec<u8> = rs
        .outbox("b", 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message.payload[4])
        .collect();
    assert_eq!(left, vec![2, 3]);

    let history: Vec<NewMessage> = (0..6)
        .map(|n| msg("t1", n))
        .chain((0..2).map(|n| msg("t2", n)))
        .collect();
    rs.append_history(&history).await.unwrap();
    let page = rs.history("t1", 1002, 1005, 10).await.unwrap();
    let ns: Vec<u8> = page.iter().map(|m| m.message.payload[4]).collect();
    assert_eq!(ns, vec![2, 3, 4]);
    assert_eq!(
        rs.history("t1", 0, u64::MAX >> 1, 2).await.unwrap().len(),
        2
    );
    // Older than 1001 goes; then at most 3 per thing, the newest.
    let gone = rs.prune_history(1001, Some(3)).await.unwrap();
    assert_eq!(gone, 1 + 1 + 2);
    let left: Vec<u8> = rs
        .history("t1", 0, u64::MAX >> 1, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message.payload[4])
        .collect();
    assert_eq!(left, vec![3, 4, 5]);
    assert_eq!(
        rs.history("t2", 0, u64::MAX >> 1, 10).await.unwrap().len(),
        1
    );
}

pub async fn failed_outbox_writes_store_nothing(f: Fixture) {
    let rs = f.store.routes().expect("route store");
    rs.put_route(&route("a")).await.unwrap();
    // On PostgreSQL statement 1 is the outbox lock (D-92), on SQLite the first append.
    for rule in ["routes statement 1", "routes statement 2", "routes commit"] {
        f.faults.set(rule);
        let result = rs
            .enqueue(&[append("a", 0, vec![msg("t1", 0), msg("t1", 1)])])
            .await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "{rule}");
        f.faults.set("");
        assert!(rs.outbox("a", 10).await.unwrap().is_empty(), "{rule}");
    }
    rs.enqueue(&[append("a", 0, vec![msg("t1", 0)])])
        .await
        .unwrap();
    assert_eq!(rs.outbox("a", 10).await.unwrap().len(), 1);
}

/// D-88: dead letters trimmed by age (failed before a time) and by count (the newest kept),
/// only the route's own, the number deleted returned.
pub async fn dead_letters_are_trimmed_by_age_and_count(f: Fixture) {
    let rs = f.store.routes().expect("route store");
    rs.put_route(&route("a")).await.unwrap();
    rs.put_route(&route("b")).await.unwrap();
    // a: 3 letters failed at 100, then 4 at 200; b: 2 at 100.
    rs.enqueue(&[append("a", 0, (0..3).map(|n| msg("t1", n)).collect())])
        .await
        .unwrap();
    rs.dead_letter("a", u64::MAX, 1, "old", 100).await.unwrap();
    rs.enqueue(&[append("a", 0, (3..7).map(|n| msg("t1", n)).collect())])
        .await
        .unwrap();
    rs.dead_letter("a", u64::MAX, 1, "new", 200).await.unwrap();
    rs.enqueue(&[append("b", 0, (0..2).map(|n| msg("t2", n)).collect())])
        .await
        .unwrap();
    rs.dead_letter("b", u64::MAX, 1, "old", 100).await.unwrap();

    // Nothing beyond either bound: nothing deleted.
    assert_eq!(rs.trim_dead_letters("a", 10, 50).await.unwrap(), 0);
    // Age: the three that failed before 150 go.
    assert_eq!(rs.trim_dead_letters("a", 10, 150).await.unwrap(), 3);
    // Count: the newest two of the four left stay.
    assert_eq!(rs.trim_dead_letters("a", 2, 150).await.unwrap(), 2);
    let (total, letters) = rs.dead_letters("a", 0, 10).await.unwrap();
    assert_eq!(total, 2);
    let ns: Vec<u8> = letters
        .iter()
        .map(|l| l.stored.message.payload[4])
        .collect();
    assert_eq!(ns, vec![5, 6], "the newest are kept");
    assert_eq!(rs.trim_dead_letters("a", 2, 150).await.unwrap(), 0);
    // The other route's letters were not touched.
    assert_eq!(rs.dead_letters("b", 0, 10).await.unwrap().0, 2);
}

/// D-92: two handles (two instances) enqueue into one route's outbox at the same time while a
/// third reads it and removes what it read, as a delivery does (`delivered(last)`): every
/// message is read, none is removed unread, and each writer's messages are read in the order it
/// enqueued them. On PostgreSQL a row's `seq` is taken at insert and seen at commit, so without
/// the outbox lock a lower `seq` can appear after a higher one was removed, and go with it.
pub async fn concurrent_enqueues_are_never_removed_unread(f: Fixture) {
    const WRITERS: u64 = 4;
    const EACH: u64 = 150;
    let rs = f.store.routes().expect("route store");
    rs.put_route(&route("a")).await.unwrap();
    let mut handles = vec![f.store.clone()];
    for _ in 1..WRITERS {
        handles.push(f.open_again().await);
    }
    let mut writers = Vec::new();
    for (w, store) in handles.into_iter().enumerate() {
        writers.push(tokio::spawn(async move {
            let rs = store.routes().expect("route store");
            for n in 0..EACH {
                let mut m = msg(&format!("w{w}"), 0);
                m.payload = format!("{w}:{n}").into_bytes();
                rs.enqueue(&[append("a", 0, vec![m])]).await.unwrap();
            }
        }));
    }
    let reader = f.open_again().await;
    let rs = reader.routes().expect("route store");
    let mut read: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    while (read.len() as u64) < WRITERS * EACH {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "read {} of {} messages: the rest were removed unread",
            read.len(),
            WRITERS * EACH
        );
        let batch = rs.outbox("a", 7).await.unwrap();
        let Some(last) = batch.last().map(|m| m.seq) else {
            if writers.iter().all(|w| w.is_finished())
                && rs.outbox("a", 1).await.unwrap().is_empty()
            {
                break;
            }
            tokio::task::yield_now().await;
            continue;
        };
        read.extend(
            batch
                .iter()
                .map(|m| String::from_utf8(m.message.payload.clone()).unwrap()),
        );
        // A sink's round trip, during which other transactions commit.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        rs.delivered("a", last).await.unwrap();
    }
    for w in writers {
        w.await.unwrap();
    }
    for w in 0..WRITERS {
        let mine: Vec<u64> = read
            .iter()
            .filter_map(|p| p.strip_prefix(&format!("{w}:")))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            mine,
            (0..EACH).collect::<Vec<_>>(),
            "writer {w}: every message read once, in order ({} read in all)",
            read.len()
        );
    }
}
