use super::*;
use crate::store::{NewThing, ShadowWrite, Store};
use serde_json::{Map, Value, json};
use tempfile::TempDir;

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}/nested/dir/hub.db", dir.path().display())
}

async fn temp_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    (dir, store)
}

fn tags(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn new_thing(id: &str) -> NewThing {
    NewThing {
        thing_id: id.to_owned(),
        password_hash: format!("$argon2id$fake${id}"),
        tags: tags(json!({"site": "b1"})),
        enabled: true,
    }
}

fn write(thing: &str, name: &str, expected: u64) -> ShadowWrite {
    ShadowWrite {
        thing_id: thing.to_owned(),
        name: name.to_owned(),
        expected_version: expected,
        new_version: expected + 1,
        body: format!(r#"{{"state":{{"reported":{{"v":{}}}}}}}"#, expected + 1),
        updated_at: 1000 + expected,
        expected_body: None,
    }
}

#[tokio::test]
async fn open_creates_parent_dirs_with_durable_pragmas() {
    let (dir, store) = temp_store().await;
    assert!(dir.path().join("nested/dir/hub.db").exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.writer)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.writer)
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous must be FULL");
    for pool in [&store.writer, &store.reader] {
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(fk, 1);
    }
    // Readers are query-only.
    let err = sqlx::query("DELETE FROM things")
        .execute(&store.reader)
        .await;
    assert!(err.is_err());
    store.close().await;
}

#[tokio::test]
async fn wal_is_preallocated_and_commits_overwrite_it() {
    let (dir, store) = temp_store().await;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&store.writer)
        .await
        .unwrap();
    assert_eq!(u64::try_from(page_size).unwrap(), ASSUMED_PAGE_SIZE);
    let wal = wal::wal_path(&dir.path().join("nested/dir/hub.db"));
    let full = wal::wal_bytes(WRITER_CHECKPOINT_PAGES + WAL_SLACK_PAGES, ASSUMED_PAGE_SIZE);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), full);

    let things: Vec<NewThing> = (0..200).map(|i| new_thing(&format!("t{i}"))).collect();
    store.create_things(&things, 1).await.unwrap();
    for t in &things {
        store
            .write_shadows(&[write(&t.thing_id, "default", 0)])
            .await
            .unwrap();
    }
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        full,
        "the log did not grow"
    );
    store.close().await;

    // Reopened (the close folded the log into the file): everything is there.
    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    let stored = store.get_shadow("t199", "default").await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    store.close().await;
}

#[tokio::test]
async fn open_refuses_memory_and_other_schemes() {
    assert!(matches!(
        SqliteStore::open("sqlite::memory:").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        crate::store::open("postgres://localhost/x").await,
        Err(StoreError::Unavailable(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let shared = crate::store::open(&url(&dir)).await.unwrap();
    assert!(shared.get_thing("a").await.unwrap().is_none());
    shared.close().await;
}

#[tokio::test]
async fn create_get_and_duplicate_thing() {
    let (_dir, store) = temp_store().await;
    let rec = store.create_thing(&new_thing("t1"), 42).await.unwrap();
    assert_eq!(rec.thing_id, "t1");
    assert!(rec.enabled);
    assert_eq!(rec.tags_version, 1);
    assert!(!rec.connected);
    assert_eq!(rec.created_at, 42);

    let got = store.get_thing("t1").await.unwrap().unwrap();
    assert_eq!(got.tags, tags(json!({"site": "b1"})));
    assert_eq!(got.tags_version, 1);
    assert_eq!(got.created_at, 42);
    assert_eq!((got.connected_at, got.disconnected_at), (None, None));
    assert!(store.get_thing("nope").await.unwrap().is_none());

    assert_eq!(
        store.create_thing(&new_thing("t1"), 43).await.unwrap_err(),
        StoreError::AlreadyExists
    );
    // The record never carries the hash.
    let text = serde_json::to_string(&got).unwrap();
    assert!(!text.contains("argon2"));
}

#[tokio::test]
async fn batch_create_with_duplicates_in_the_middle() {
    let (_dir, store) = temp_store().await;
    store.create_thing(&new_thing("b"), 1).await.unwrap();
    let batch = ["a", "b", "c", "a", "d"].map(new_thing);
    let results = store.create_things(&batch, 2).await.unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err(), &StoreError::AlreadyExists);
    assert!(results[2].is_ok());
    assert_eq!(results[3].as_ref().unwrap_err(), &StoreError::AlreadyExists);
    assert_eq!(results[4].as_ref().unwrap().thing_id, "d");
    let (total, page) = store.list_things(0, 10, None).await.unwrap();
    assert_eq!(total, 4);
    let ids: Vec<_> = page.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    assert_eq!(page[1].created_at, 1, "the existing thing is untouched");
    assert!(store.create_things(&[], 3).await.unwrap().is_empty());
}

#[tokio::test]
async fn password_hash_and_enabled_flag() {
    let (_dir, store) = temp_store().await;
    store.create_thing(&new_thing("t1"), 1).await.unwrap();
    assert_eq!(
        store.password_hash("t1").await.unwrap(),
        Some(("$argon2id$fake$t1".to_owned(), true))
    );
    let rec = store.set_enabled("t1", false).await.unwrap();
    assert!(!rec.enabled);
    assert_eq!(rec.tags, tags(json!({"site": "b1"})));
    assert!(!store.password_hash("t1").await.unwrap().unwrap().1);
    assert_eq!(store.password_hash("nope").await.unwrap(), None);
    assert_eq!(
        store.set_enabled("nope", true).await.unwrap_err(),
        StoreError::NotFound
    );
}

#[tokio::test]
async fn list_things_pages_filters_and_caps() {
    let (_dir, store) = temp_store().await;
    let batch: Vec<_> = (0..1005)
        .map(|i| {
            let mut t = new_thing(&format!("t{i:04}"));
            t.enabled = i % 3 != 0;
            t
        })
        .collect();
    assert!(
        store
            .create_things(&batch, 1)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );

    let (total, page) = store.list_things(0, 10, None).await.unwrap();
    assert_eq!(total, 1005);
    assert_eq!(page.len(), 10);
    assert_eq!(page[0].thing_id, "t0000");
    let (_, page) = store.list_things(2, 10, None).await.unwrap();
    assert_eq!(page[0].thing_id, "t0020");
    assert_eq!(page[9].thing_id, "t0029");
    let (_, last) = store.list_things(100, 10, None).await.unwrap();
    assert_eq!(last.len(), 5);
    let (_, past) = store.list_things(101, 10, None).await.unwrap();
    assert!(past.is_empty());
    let (_, huge) = store.list_things(u64::MAX, u64::MAX, None).await.unwrap();
    assert!(huge.is_empty());

    let (_, capped) = store.list_things(0, 5000, None).await.unwrap();
    assert_eq!(capped.len(), MAX_PAGE_SIZE as usize);

    let (disabled_total, disabled) = store.list_things(0, 3, Some(false)).await.unwrap();
    assert_eq!(disabled_total, 335);
    let ids: Vec<_> = disabled.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["t0000", "t0003", "t0006"]);
    assert!(disabled.iter().all(|t| !t.enabled));
    let (enabled_total, enabled) = store.list_things(1, 2, Some(true)).await.unwrap();
    assert_eq!(enabled_total, 670);
    let ids: Vec<_> = enabled.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["t0004", "t0005"]);
}

#[tokio::test]
async fn replace_tags_is_compare_and_swap() {
    let (_dir, store) = temp_store().await;
    store.create_thing(&new_thing("t1"), 1).await.unwrap();
    let v = store
        .replace_tags("t1", &tags(json!({"floor": 3})), 1)
        .await
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        store
            .replace_tags("t1", &tags(json!({"floor": 4})), 1)
            .await
            .unwrap_err(),
        StoreError::VersionConflict
    );
    let got = store.get_thing("t1").await.unwrap().unwrap();
    assert_eq!(got.tags, tags(json!({"floor": 3})));
    assert_eq!(got.tags_version, 2);
    assert_eq!(
        store
            .replace_tags("nope", &Map::new(), 1)
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
}

#[tokio::test]
async fn presence_columns_and_restart_reset() {
    let (_dir, store) = temp_store().await;
    store
        .create_things(&[new_thing("a"), new_thing("b")], 1)
        .await
        .unwrap();
    store.set_connected("a", true, 100).await.unwrap();
    store.set_connected("b", true, 100).await.unwrap();
    let a = store.get_thing("a").await.unwrap().unwrap();
    assert!(a.connected);
    assert_eq!(a.connected_at, Some(100));

    // Session takeover: the new connection (t=200) is reported before the old one's
    // disconnect (t=150); the thing stays connected.
    store.set_connected("a", true, 200).await.unwrap();
    store.set_connected("a", false, 150).await.unwrap();
    let a = store.get_thing("a").await.unwrap().unwrap();
    assert!(a.connected);
    assert_eq!(a.disconnected_at, Some(150));
    store.set_connected("a", false, 300).await.unwrap();
    let a = store.get_thing("a").await.unwrap().unwrap();
    assert!(!a.connected);
    assert_eq!((a.connected_at, a.disconnected_at), (Some(200), Some(300)));

    store.mark_all_disconnected(400).await.unwrap();
    let b = store.get_thing("b").await.unwrap().unwrap();
    assert!(!b.connected);
    assert_eq!(b.disconnected_at, Some(400));
    let a = store.get_thing("a").await.unwrap().unwrap();
    assert_eq!(
        a.disconnected_at,
        Some(300),
        "only connected things are touched"
    );

    assert_eq!(
        store.set_connected("nope", true, 1).await.unwrap_err(),
        StoreError::NotFound
    );
}

#[tokio::test]
async fn shadow_cas_get_names_and_delete() {
    let (_dir, store) = temp_store().await;
    store.create_thing(&new_thing("t1"), 1).await.unwrap();
    assert!(store.get_shadow("t1", "default").await.unwrap().is_none());

    let r = store
        .write_shadows(&[write("t1", "default", 0), write("t1", "cfg", 0)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(()), Ok(())]);
    let s = store.get_shadow("t1", "default").await.unwrap().unwrap();
    assert_eq!((s.version, s.updated_at), (1, 1000));
    assert_eq!(s.body, r#"{"state":{"reported":{"v":1}}}"#);
    assert_eq!((s.thing_id.as_str(), s.name.as_str()), ("t1", "default"));

    // Creating again, or updating from a stale or future version, conflicts.
    let r = store
        .write_shadows(&[
            write("t1", "default", 0),
            write("t1", "default", 2),
            write("t1", "missing", 1),
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![Err(StoreError::VersionConflict); 3]);
    assert_eq!(
        store
            .get_shadow("t1", "default")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );

    assert_eq!(
        store
            .write_shadows(&[write("t1", "default", 1)])
            .await
            .unwrap(),
        vec![Ok(())]
    );
    let s = store.get_shadow("t1", "default").await.unwrap().unwrap();
    assert_eq!(s.version, 2);
    assert_eq!(s.body, r#"{"state":{"reported":{"v":2}}}"#);

    assert_eq!(store.shadow_names("t1").await.unwrap(), ["cfg", "default"]);
    assert!(store.shadow_names("nope").await.unwrap().is_empty());

    store.delete_shadow("t1", "cfg").await.unwrap();
    assert_eq!(
        store.delete_shadow("t1", "cfg").await.unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(store.shadow_names("t1").await.unwrap(), ["default"]);
    assert!(store.write_shadows(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn write_shadows_mixed_batch_fails_only_bad_writes() {
    let (_dir, store) = temp_store().await;
    store
        .create_things(&[new_thing("a"), new_thing("b")], 1)
        .await
        .unwrap();
    store
        .write_shadows(&[write("b", "default", 0)])
        .await
        .unwrap();

    let batch = [
        write("a", "default", 0),     // ok: create
        write("b", "default", 0),     // conflict: exists
        write("a", "default", 1),     // ok: builds on the first write of this batch
        write("ghost", "default", 0), // no such thing
        write("b", "default", 5),     // conflict: stale
        write("ghost", "default", 3), // no such thing
        write("b", "default", 1),     // ok
        write("a", "default", 1),     // conflict: now at 2
    ];
    let r = store.write_shadows(&batch).await.unwrap();
    assert_eq!(
        r,
        vec![
            Ok(()),
            Err(StoreError::VersionConflict),
            Ok(()),
            Err(StoreError::NotFound),
            Err(StoreError::VersionConflict),
            Err(StoreError::NotFound),
            Ok(()),
            Err(StoreError::VersionConflict),
        ]
    );
    assert_eq!(
        store
            .get_shadow("a", "default")
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        store
            .get_shadow("b", "default")
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
    assert!(
        store
            .get_shadow("ghost", "default")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn delete_thing_cascades_to_shadows() {
    let (_dir, store) = temp_store().await;
    store
        .create_things(&[new_thing("a"), new_thing("b")], 1)
        .await
        .unwrap();
    store
        .write_shadows(&[
            write("a", "default", 0),
            write("a", "x", 0),
            write("b", "default", 0),
        ])
        .await
        .unwrap();
    store.delete_thing("a").await.unwrap();
    assert!(store.get_thing("a").await.unwrap().is_none());
    assert!(store.get_shadow("a", "default").await.unwrap().is_none());
    assert!(store.shadow_names("a").await.unwrap().is_empty());
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shadows")
        .fetch_one(&store.reader)
        .await
        .unwrap();
    assert_eq!(left, 1, "only b's shadow remains");
    assert_eq!(
        store.delete_thing("a").await.unwrap_err(),
        StoreError::NotFound
    );
    // Re-created with the same id, the thing starts without shadows.
    store.create_thing(&new_thing("a"), 2).await.unwrap();
    assert!(store.get_shadow("a", "default").await.unwrap().is_none());
}

#[tokio::test]
async fn query_things_filters_pages_and_counts() {
    let (_dir, store) = temp_store().await;
    let batch: Vec<_> = (0..6)
        .map(|i| {
            let mut t = new_thing(&format!("q{i}"));
            t.tags = tags(json!({"site": if i % 2 == 0 { "b1" } else { "b2" }}));
            t
        })
        .collect();
    store.create_things(&batch, 1).await.unwrap();
    // q0 and q2 get a default shadow with reported.v = 1, q4 has none.
    store
        .write_shadows(&[write("q0", "default", 0), write("q2", "default", 0)])
        .await
        .unwrap();

    let q = crate::query::ThingQuery::parse(
        "SELECT * FROM things WHERE tags.site = 'b1' ORDER BY thingId DESC",
    )
    .unwrap();
    let (total, page) = store.query_things(&q, 0, 2).await.unwrap();
    assert_eq!(total, 3);
    let ids: Vec<_> = page.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["q4", "q2"]);
    let (_, page) = store.query_things(&q, 1, 2).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].thing_id, "q0");

    let q = crate::query::ThingQuery::parse(
        "SELECT * FROM things WHERE state.reported.v = 1 AND tags.site = 'b1'",
    )
    .unwrap();
    let (total, page) = store.query_things(&q, 0, 10).await.unwrap();
    assert_eq!(total, 2);
    let ids: Vec<_> = page.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["q0", "q2"]);
}

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        store.create_thing(&new_thing("t1"), 7).await.unwrap();
        store
            .write_shadows(&[write("t1", "default", 0), write("t1", "default", 1)])
            .await
            .unwrap();
        store
            .replace_tags("t1", &tags(json!({"k": "v"})), 1)
            .await
            .unwrap();
        store.close().await;
        assert!(matches!(
            store.get_thing("t1").await,
            Err(StoreError::Unavailable(_))
        ));
    }
    // Reopening runs the migrations again (a no-op) and sees everything.
    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    let t = store.get_thing("t1").await.unwrap().unwrap();
    assert_eq!((t.created_at, t.tags_version), (7, 2));
    assert_eq!(t.tags, tags(json!({"k": "v"})));
    let s = store.get_shadow("t1", "default").await.unwrap().unwrap();
    assert_eq!(s.version, 2);
    store.close().await;
}
