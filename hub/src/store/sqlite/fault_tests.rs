//! Failed writes must leave the single write connection in a known state (issue 14).
//!
//! SQLite ends a transaction by itself when COMMIT fails with `SQLITE_FULL` (disk full), and
//! keeps it open when one statement fails. Both are reproduced here without a full disk, with
//! triggers that raise `ROLLBACK` (the whole transaction is gone) or `ABORT` (one statement
//! failed, the transaction stays open). Whatever the failure, a later write that reports `Ok`
//! must be committed: visible to another connection and still there after a reopen.

use super::*;
use crate::store::{NewThing, ShadowWrite, Store};
use tempfile::TempDir;

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}/hub.db", dir.path().display())
}

fn new_thing(id: &str) -> NewThing {
    NewThing {
        thing_id: id.to_owned(),
        password_hash: format!("$argon2id$fake${id}"),
        tags: serde_json::Map::new(),
        enabled: true,
    }
}

fn write(thing: &str, expected: u64) -> ShadowWrite {
    ShadowWrite {
        thing_id: thing.to_owned(),
        name: "default".to_owned(),
        expected_version: expected,
        new_version: expected + 1,
        body: format!(r#"{{"state":{{"reported":{{"v":{}}}}}}}"#, expected + 1),
        updated_at: 1000 + expected,
        expected_body: None,
    }
}

/// Installs triggers that make writes of the things `poison-rollback` / `poison-abort` (and
/// shadow writes of those ids) fail inside SQLite.
async fn poison(store: &SqliteStore) {
    sqlx::raw_sql(
        "CREATE TRIGGER poison_rollback BEFORE INSERT ON things \
           WHEN NEW.thing_id = 'poison-rollback' \
           BEGIN SELECT RAISE(ROLLBACK, 'injected: transaction rolled back'); END; \
         CREATE TRIGGER poison_abort BEFORE INSERT ON things \
           WHEN NEW.thing_id = 'poison-abort' \
           BEGIN SELECT RAISE(ABORT, 'injected: statement aborted'); END; \
         CREATE TRIGGER poison_shadow_rollback BEFORE UPDATE ON shadows \
           WHEN NEW.body LIKE '%\"v\":666%' \
           BEGIN SELECT RAISE(ROLLBACK, 'injected: transaction rolled back'); END; \
         CREATE TRIGGER poison_shadow_abort BEFORE UPDATE ON shadows \
           WHEN NEW.body LIKE '%\"v\":667%' \
           BEGIN SELECT RAISE(ABORT, 'injected: statement aborted'); END;",
    )
    .execute(&store.writer)
    .await
    .unwrap();
}

/// Whether `id` is committed, seen through a connection of its own (not the store's writer).
async fn committed_thing(dir: &TempDir, id: &str) -> bool {
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url(dir))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM things WHERE thing_id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n == 1
}

#[tokio::test]
async fn after_a_rolled_back_and_an_aborted_transaction_every_ok_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    poison(&store).await;

    // Twice: the first round leaves SQLite outside a transaction that the caller believed open,
    // the second inside one that the caller believed closed.
    for round in 0..2 {
        for id in ["poison-rollback", "poison-abort"] {
            let err = store.create_thing(&new_thing(id), 1).await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{id}: {err:?}");
        }
        let id = format!("after-{round}");
        store.create_thing(&new_thing(&id), 2).await.unwrap();
        assert!(
            committed_thing(&dir, &id).await,
            "round {round}: {id} was acknowledged but is not committed"
        );
    }

    // The other writers after the same sequence: each Ok is committed.
    store
        .create_things(&[new_thing("batch-a"), new_thing("batch-b")], 3)
        .await
        .unwrap();
    assert!(committed_thing(&dir, "batch-b").await);
    store.write_shadows(&[write("after-0", 0)]).await.unwrap();
    for v in [666, 667] {
        // Bodies carrying the poisoned versions fail; the write after them commits.
        let mut w = write("after-0", 1);
        w.body = format!(r#"{{"state":{{"reported":{{"v":{v}}}}}}}"#);
        let err = store.write_shadows(&[w]).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{v}: {err:?}");
        store
            .create_thing(&new_thing(&format!("after-{v}")), 4)
            .await
            .unwrap();
        assert!(
            committed_thing(&dir, &format!("after-{v}")).await,
            "after {v}"
        );
    }
    store.write_shadows(&[write("after-0", 1)]).await.unwrap();
    store.set_enabled("after-1", false).await.unwrap();
    store.close().await;

    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    let shadow = store
        .get_shadow("after-0", "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        shadow.version, 2,
        "both acknowledged shadow writes survive a reopen"
    );
    let thing = store.get_thing("after-1").await.unwrap().unwrap();
    assert!(!thing.enabled, "the acknowledged disable survives a reopen");
    for id in ["poison-rollback", "poison-abort"] {
        assert!(
            store.get_thing(id).await.unwrap().is_none(),
            "{id} failed, never stored"
        );
    }
    store.close().await;
}

/// A group commit failing at each of its steps: every write of the batch is answered
/// `Unavailable` (none is acknowledged), the store reports itself unhealthy with the reason, and
/// the same writes succeed once the fault is gone, without reopening; after a reopen exactly the
/// acknowledged writes are there.
#[tokio::test]
async fn group_commit_fails_whole_at_every_step_and_recovers() {
    use crate::store::commit::GroupCommitter;
    use crate::store::fault::{Faults, Step};

    let steps = [
        Step::Begin,
        Step::Statement(1),
        Step::Statement(2),
        Step::Statement(3),
        Step::Commit,
    ];
    for step in steps {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::programmed();
        let store = SqliteStore::open_with_faults(&url(&dir), faults.clone())
            .await
            .unwrap();
        store
            .create_things(&[new_thing("t0"), new_thing("t1")], 1)
            .await
            .unwrap();
        // t1's shadow exists, so its writes are updates; t0's first write creates its shadow.
        // Two writes per shadow make two rounds: an insert and an update, then one update of
        // both: three statements.
        store.write_shadows(&[write("t1", 0)]).await.unwrap();
        let shared: crate::store::SharedStore = std::sync::Arc::new(store.clone());
        let committer = GroupCommitter::spawn(shared, 64, 64);
        let batch = [
            write("t0", 0),
            write("t1", 1),
            write("t0", 1),
            write("t1", 2),
        ];

        faults.set(&format!("shadows {step}"));
        let mut pending = Vec::new();
        for w in &batch {
            pending.push(committer.submit(w.clone()).await);
        }
        for (w, rx) in batch.iter().zip(pending) {
            let r = rx.await.unwrap();
            assert!(
                matches!(r, Err(StoreError::Unavailable(_))),
                "{step}: write {}@{} answered {r:?}",
                w.thing_id,
                w.expected_version
            );
        }
        let report = Store::health(&store);
        assert!(!report.healthy, "{step}: {report:?}");
        assert!(
            report
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("injected"),
            "{step}: {report:?}"
        );
        assert!(
            store.get_shadow("t0", "default").await.unwrap().is_none(),
            "{step}: a failed batch left a shadow behind"
        );

        faults.set("");
        let mut pending = Vec::new();
        for w in &batch {
            pending.push(committer.submit(w.clone()).await);
        }
        for rx in pending {
            assert_eq!(rx.await.unwrap(), Ok(()), "{step}: after the fault");
        }
        assert!(Store::health(&store).healthy, "{step}");
        committer.shutdown().await;
        store.close().await;

        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        for (thing, version) in [("t0", 2), ("t1", 3)] {
            let s = store.get_shadow(thing, "default").await.unwrap().unwrap();
            assert_eq!(s.version, version, "{step}: {thing}");
        }
        store.close().await;
    }
}

/// While writes fail and nobody writes, the probe keeps failing; once the fault is gone the
/// probe alone brings health back.
#[tokio::test]
async fn the_probe_restores_health_without_client_writes() {
    use crate::store::fault::Faults;

    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::programmed();
    let store = SqliteStore::open_with_faults(&url(&dir), faults.clone())
        .await
        .unwrap();
    faults.set("* commit");
    assert!(store.create_thing(&new_thing("a"), 1).await.is_err());
    let failures = Store::health(&store).write_failures;
    // The probe runs every second and fails too.
    tokio::time::sleep(super::write::PROBE_EVERY * 2).await;
    let report = Store::health(&store);
    assert!(!report.healthy);
    assert!(
        report.write_failures > failures,
        "the probe tried: {report:?}"
    );
    faults.set("");
    let mut healthy = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if Store::health(&store).healthy {
            healthy = true;
            break;
        }
    }
    assert!(healthy, "the probe did not restore health within 5 s");
    store.close().await;
}
