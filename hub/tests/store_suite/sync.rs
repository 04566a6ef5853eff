//! Registry sync storage (S-13.4, S-13.5, D-74): the task queue written with the registry's
//! changes, its order per thing, retries, outcomes with their events, the event filters and
//! the pruning.

use iothub_hub::store::sync::{EventFilter, NewSyncEvent, SyncStore, SyncTask, TaskOp};
use iothub_spec::code::SyncEventKind;

use crate::{Fixture, new_thing, tags};

fn sync(f: &Fixture) -> &dyn SyncStore {
    f.store.sync().expect("the store keeps sync tasks")
}

/// Far in the future: every task is due.
const LATER: u64 = u64::MAX / 4;

fn ev(kind: SyncEventKind, thing: &str, at: u64) -> NewSyncEvent {
    NewSyncEvent {
        kind,
        at,
        thing_id: Some(thing.to_owned()),
        attempt: Some(1),
        detail: Some("why".into()),
    }
}

async fn all_tasks(f: &Fixture) -> Vec<SyncTask> {
    // Finishing each due task in turn walks every thing's queue in order.
    let mut seen = Vec::new();
    let other = f.open_again().await;
    let s = other.sync().unwrap();
    loop {
        let due = s.due_tasks(LATER, 1000).await.unwrap();
        if due.is_empty() {
            return seen;
        }
        for t in due {
            s.finish_task(t.id, &ev(SyncEventKind::ExternalCreated, &t.thing_id, 1))
                .await
                .unwrap();
            seen.push(t);
        }
    }
}

fn ops(tasks: &[SyncTask]) -> Vec<(String, TaskOp)> {
    tasks.iter().map(|t| (t.thing_id.clone(), t.op)).collect()
}

/// With push on, each create, enable change and delete writes its task in its transaction;
/// with push off, none; a thing's tasks come due one at a time, in order.
pub async fn tasks_follow_registry_changes(f: Fixture) {
    let store = &f.store;
    store.create_thing(&new_thing("before"), 1).await.unwrap();
    sync(&f).set_push(true).await.unwrap();
    store.create_thing(&new_thing("a"), 2).await.unwrap();
    let mut off = new_thing("off");
    off.enabled = false;
    store.create_thing(&off, 2).await.unwrap();
    store
        .create_things(&[new_thing("b1"), new_thing("b2")], 3)
        .await
        .unwrap();
    store.set_enabled("a", false).await.unwrap();
    store.set_enabled("a", false).await.unwrap(); // no change: no task
    store.set_enabled("a", true).await.unwrap();
    store.delete_thing("b1").await.unwrap();
    store.delete_thing("off").await.unwrap(); // disabled: not in the external registry
    assert_eq!(sync(&f).pending_tasks().await.unwrap(), 6);

    // Only the first task of each thing is due.
    let due = sync(&f).due_tasks(LATER, 1000).await.unwrap();
    assert_eq!(
        ops(&due),
        [
            ("a".to_owned(), TaskOp::Create),
            ("b1".to_owned(), TaskOp::Create),
            ("b2".to_owned(), TaskOp::Create),
        ]
    );
    assert_eq!(due[0].tags, tags(serde_json::json!({"site": "b1"})));
    assert_eq!(due[0].attempts, 0);
    assert!(
        due[0].created_at > 1_600_000_000_000,
        "the database's clock"
    );
    assert!(
        sync(&f).due_tasks(0, 1000).await.unwrap().is_empty(),
        "not yet due"
    );

    sync(&f).set_push(false).await.unwrap();
    store.create_thing(&new_thing("quiet"), 4).await.unwrap();
    let walked = all_tasks(&f).await;
    assert_eq!(
        ops(&walked),
        [
            ("a".to_owned(), TaskOp::Create),
            ("b1".to_owned(), TaskOp::Create),
            ("b2".to_owned(), TaskOp::Create),
            ("a".to_owned(), TaskOp::Delete),
            ("b1".to_owned(), TaskOp::Delete),
            ("a".to_owned(), TaskOp::Create),
        ]
    );
    assert_eq!(sync(&f).pending_tasks().await.unwrap(), 0);
}

/// A retry postpones the task and keeps the thing's later tasks waiting; finishing removes it
/// with its event; both survive a reopen (another handle sees them).
pub async fn retries_and_outcomes_are_durable(f: Fixture) {
    sync(&f).set_push(true).await.unwrap();
    f.store.create_thing(&new_thing("r"), 1).await.unwrap();
    f.store.delete_thing("r").await.unwrap();
    let first = sync(&f).due_tasks(LATER, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    let t = &first[0];
    let next = t.created_at + 60_000;
    sync(&f)
        .retry_task(
            t.id,
            1,
            next,
            "503",
            &ev(SyncEventKind::ExternalCreateError, "r", 5),
        )
        .await
        .unwrap();
    let again = f.open_again().await;
    let s2 = again.sync().unwrap();
    assert!(
        s2.due_tasks(next - 1, 10).await.unwrap().is_empty(),
        "postponed, and the delete waits"
    );
    let due = s2.due_tasks(next, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].attempts, due[0].last_error.as_deref()),
        (1, Some("503"))
    );
    s2.finish_task(t.id, &ev(SyncEventKind::ExternalCreated, "r", 6))
        .await
        .unwrap();
    let due = sync(&f).due_tasks(LATER, 10).await.unwrap();
    assert_eq!(ops(&due), [("r".to_owned(), TaskOp::Delete)]);
    let events = sync(&f)
        .events(&EventFilter {
            thing: Some("r".into()),
            limit: 10,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    let kinds: Vec<SyncEventKind> = events.iter().map(|e| e.event.kind).collect();
    assert_eq!(
        kinds,
        [
            SyncEventKind::ExternalCreateError,
            SyncEventKind::ExternalCreated
        ]
    );
    assert_eq!(events[0].event.detail.as_deref(), Some("why"));
}

/// A write of the registry that fails commits neither the thing nor its task (D-74), and a
/// failed outcome write leaves the task as it was.
pub async fn failed_writes_leave_no_task(f: Fixture) {
    sync(&f).set_push(true).await.unwrap();
    f.faults.set("things commit");
    assert!(f.store.create_thing(&new_thing("x"), 1).await.is_err());
    assert!(
        f.store
            .create_things(&[new_thing("y1"), new_thing("y2")], 1)
            .await
            .is_err()
    );
    f.faults.set("");
    assert_eq!(sync(&f).pending_tasks().await.unwrap(), 0);
    assert!(f.store.get_thing("x").await.unwrap().is_none());
    f.store.create_thing(&new_thing("x"), 1).await.unwrap();
    let t = sync(&f).due_tasks(LATER, 10).await.unwrap().remove(0);
    f.faults.set("sync commit");
    let e = ev(SyncEventKind::ExternalCreated, "x", 1);
    assert!(sync(&f).finish_task(t.id, &e).await.is_err());
    f.faults.set("");
    assert_eq!(sync(&f).due_tasks(LATER, 10).await.unwrap(), vec![t]);
    assert!(
        sync(&f)
            .events(&EventFilter {
                limit: 10,
                ..EventFilter::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
}

/// Events filter by time, id, thing and kind, ascending; pruning keeps the newest `keep` and
/// drops the old.
pub async fn events_filter_and_prune(f: Fixture) {
    let s = sync(&f);
    let mut batch = Vec::new();
    for i in 0..50u64 {
        let kind = if i % 5 == 0 {
            SyncEventKind::HubDeleted
        } else {
            SyncEventKind::HubCreated
        };
        batch.push(ev(kind, &format!("t{}", i % 3), 1000 + i));
    }
    s.add_events(&batch).await.unwrap();
    let all = |filter: EventFilter| async move { s.events(&filter).await.unwrap() };
    let every = all(EventFilter {
        limit: 1000,
        ..EventFilter::default()
    })
    .await;
    assert_eq!(every.len(), 50);
    assert!(every.windows(2).all(|w| w[0].id < w[1].id));
    let deleted = all(EventFilter {
        kind: Some(SyncEventKind::HubDeleted),
        limit: 1000,
        ..EventFilter::default()
    })
    .await;
    assert_eq!(deleted.len(), 10);
    let t1_since = all(EventFilter {
        thing: Some("t1".into()),
        since: Some(1030),
        limit: 1000,
        ..EventFilter::default()
    })
    .await;
    assert!(
        t1_since
            .iter()
            .all(|e| e.event.thing_id.as_deref() == Some("t1") && e.event.at >= 1030)
    );
    assert_eq!(t1_since.len(), 7, "31, 34, ..., 49");
    let after = all(EventFilter {
        after: Some(every[47].id),
        limit: 1,
        ..EventFilter::default()
    })
    .await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, every[48].id);

    assert_eq!(
        s.prune_events(1000, 1010).await.unwrap(),
        10,
        "ten older than 1010"
    );
    assert_eq!(
        s.prune_events(15, 0).await.unwrap(),
        25,
        "the newest 15 kept"
    );
    let left = all(EventFilter {
        limit: 1000,
        ..EventFilter::default()
    })
    .await;
    assert_eq!(left.len(), 15);
    assert_eq!(left[0].event.at, 1035);
}

/// The batch removals of the scheduled sync (S-13.3) change only what exists (or is enabled),
/// in one transaction, and write a task per change like single ones (D-74).
pub async fn batch_removals_write_their_tasks(f: Fixture) {
    let store = &f.store;
    for id in ["k1", "k2", "k3", "k4"] {
        store.create_thing(&new_thing(id), 1).await.unwrap();
    }
    store.set_enabled("k4", false).await.unwrap();
    sync(&f).set_push(true).await.unwrap();
    let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let disabled = store
        .disable_things(&ids(&["k1", "k4", "absent"]))
        .await
        .unwrap();
    assert_eq!(disabled, ["k1"], "k4 was disabled already");
    assert!(!store.get_thing("k1").await.unwrap().unwrap().enabled);
    let deleted = store
        .delete_things(&ids(&["k2", "k3", "absent"]))
        .await
        .unwrap();
    assert_eq!(deleted, ["k2", "k3"]);
    assert!(store.get_thing("k2").await.unwrap().is_none());
    f.faults.set("things commit");
    assert!(store.delete_things(&ids(&["k1"])).await.is_err());
    f.faults.set("");
    assert!(
        store.get_thing("k1").await.unwrap().is_some(),
        "nothing deleted"
    );
    let walked = all_tasks(&f).await;
    assert_eq!(
        ops(&walked),
        [
            ("k1".to_owned(), TaskOp::Delete),
            ("k2".to_owned(), TaskOp::Delete),
            ("k3".to_owned(), TaskOp::Delete),
        ]
    );
}
