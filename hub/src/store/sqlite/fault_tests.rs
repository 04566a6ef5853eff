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
