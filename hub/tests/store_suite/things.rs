//! The thing registry: create, read, page, enable, tags, presence, durability.

use iothub_hub::store::StoreError;
use serde_json::{Map, json};

use crate::{Fixture, new_thing, tags, write};

pub async fn create_get_and_duplicate(f: Fixture) {
    let s = &f.store;
    let created = s.create_thing(&new_thing("t1"), 42).await.unwrap();
    assert_eq!(
        (created.tags_version, created.created_at, created.connected),
        (1, 42, false)
    );
    let got = s.get_thing("t1").await.unwrap().unwrap();
    assert_eq!(got.thing_id, "t1");
    assert_eq!(got.tags, tags(json!({"site": "b1"})));
    assert_eq!((got.connected_at, got.disconnected_at), (None, None));
    assert_eq!(
        s.create_thing(&new_thing("t1"), 43).await.unwrap_err(),
        StoreError::AlreadyExists
    );
    assert!(s.get_thing("nope").await.unwrap().is_none());
}

pub async fn batch_create_with_duplicates(f: Fixture) {
    let s = &f.store;
    s.create_thing(&new_thing("b"), 1).await.unwrap();
    let mut second_a = new_thing("a");
    second_a.password_hash = "other".into();
    let out = s
        .create_things(
            &[new_thing("a"), new_thing("b"), new_thing("c"), second_a],
            5,
        )
        .await
        .unwrap();
    assert!(out[0].is_ok() && out[2].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err(), &StoreError::AlreadyExists);
    // A duplicate inside the batch: the first entry wins.
    assert_eq!(out[3].as_ref().unwrap_err(), &StoreError::AlreadyExists);
    let (hash, _) = s.password_hash("a").await.unwrap().unwrap();
    assert_eq!(hash, "$argon2id$fake$a");
    let (total, _) = s.list_things(0, 10, None).await.unwrap();
    assert_eq!(total, 3);
    assert!(s.create_things(&[], 1).await.unwrap().is_empty());
}

pub async fn password_hash_and_enabled_flag(f: Fixture) {
    let s = &f.store;
    let mut t = new_thing("t1");
    t.enabled = false;
    s.create_thing(&t, 1).await.unwrap();
    assert_eq!(
        s.password_hash("t1").await.unwrap(),
        Some(("$argon2id$fake$t1".to_owned(), false))
    );
    let rec = s.set_enabled("t1", true).await.unwrap();
    assert!(rec.enabled);
    assert!(s.password_hash("t1").await.unwrap().unwrap().1);
    assert!(s.password_hash("nope").await.unwrap().is_none());
    assert_eq!(
        s.set_enabled("nope", true).await.unwrap_err(),
        StoreError::NotFound
    );
}

pub async fn list_pages_filters_and_caps(f: Fixture) {
    let s = &f.store;
    let batch: Vec<_> = (0..1005)
        .map(|i| {
            let mut t = new_thing(&format!("t{i:04}"));
            t.enabled = i % 3 != 0;
            t
        })
        .collect();
    assert!(
        s.create_things(&batch, 1)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    let (total, page) = s.list_things(0, 10, None).await.unwrap();
    assert_eq!((total, page.len()), (1005, 10));
    assert_eq!(page[0].thing_id, "t0000");
    let (_, page) = s.list_things(2, 10, None).await.unwrap();
    assert_eq!(
        (page[0].thing_id.as_str(), page[9].thing_id.as_str()),
        ("t0020", "t0029")
    );
    assert_eq!(s.list_things(100, 10, None).await.unwrap().1.len(), 5);
    assert!(s.list_things(101, 10, None).await.unwrap().1.is_empty());
    assert!(
        s.list_things(u64::MAX, u64::MAX, None)
            .await
            .unwrap()
            .1
            .is_empty()
    );
    assert_eq!(s.list_things(0, 5000, None).await.unwrap().1.len(), 1000);

    let (disabled_total, disabled) = s.list_things(0, 3, Some(false)).await.unwrap();
    assert_eq!(disabled_total, 335);
    let ids: Vec<_> = disabled.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["t0000", "t0003", "t0006"]);
    let (enabled_total, enabled) = s.list_things(1, 2, Some(true)).await.unwrap();
    assert_eq!(enabled_total, 670);
    let ids: Vec<_> = enabled.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["t0004", "t0005"]);
}

/// Ids are ordered byte by byte whatever the database's locale.
pub async fn byte_order_of_ids(f: Fixture) {
    let s = &f.store;
    for id in ["b", "B", "a-1", "a_1", "A"] {
        s.create_thing(&new_thing(id), 1).await.unwrap();
    }
    let (_, page) = s.list_things(0, 10, None).await.unwrap();
    let ids: Vec<_> = page.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(ids, ["A", "B", "a-1", "a_1", "b"]);
}

pub async fn replace_tags_is_compare_and_swap(f: Fixture) {
    let s = &f.store;
    s.create_thing(&new_thing("t1"), 1).await.unwrap();
    let v = s
        .replace_tags("t1", &tags(json!({"floor": 3})), 1)
        .await
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        s.replace_tags("t1", &tags(json!({"floor": 4})), 1)
            .await
            .unwrap_err(),
        StoreError::VersionConflict
    );
    let got = s.get_thing("t1").await.unwrap().unwrap();
    assert_eq!((got.tags, got.tags_version), (tags(json!({"floor": 3})), 2));
    assert_eq!(
        s.replace_tags("nope", &Map::new(), 1).await.unwrap_err(),
        StoreError::NotFound
    );
}

pub async fn presence_and_restart_reset(f: Fixture) {
    let s = &f.store;
    s.create_things(&[new_thing("a"), new_thing("b")], 1)
        .await
        .unwrap();
    s.set_connected("a", true, 100).await.unwrap();
    s.set_connected("b", true, 100).await.unwrap();
    let a = s.get_thing("a").await.unwrap().unwrap();
    assert!(a.connected);
    assert_eq!(a.connected_at, Some(100));
    // Session takeover: the new connection (t=200) is reported before the old one's
    // disconnect (t=150); the thing stays connected.
    s.set_connected("a", true, 200).await.unwrap();
    s.set_connected("a", false, 150).await.unwrap();
    let a = s.get_thing("a").await.unwrap().unwrap();
    assert!(a.connected);
    assert_eq!(a.disconnected_at, Some(150));
    s.set_connected("a", false, 300).await.unwrap();
    let a = s.get_thing("a").await.unwrap().unwrap();
    assert!(!a.connected);
    assert_eq!((a.connected_at, a.disconnected_at), (Some(200), Some(300)));
    s.mark_all_disconnected(400).await.unwrap();
    let b = s.get_thing("b").await.unwrap().unwrap();
    assert!(!b.connected);
    assert_eq!(b.disconnected_at, Some(400));
    let a = s.get_thing("a").await.unwrap().unwrap();
    assert_eq!(
        a.disconnected_at,
        Some(300),
        "only connected things are touched"
    );
    assert_eq!(
        s.set_connected("nope", true, 1).await.unwrap_err(),
        StoreError::NotFound
    );
}

pub async fn data_survives_close_and_reopen(f: Fixture) {
    let s = &f.store;
    s.create_thing(&new_thing("t1"), 7).await.unwrap();
    s.write_shadows(&[write("t1", "default", 0), write("t1", "default", 1)])
        .await
        .unwrap();
    s.replace_tags("t1", &tags(json!({"k": "v"})), 1)
        .await
        .unwrap();
    s.close().await;
    assert!(matches!(
        s.get_thing("t1").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.create_thing(&new_thing("t2"), 1).await,
        Err(StoreError::Unavailable(_))
    ));
    // Reopening runs the migrations again (a no-op) and sees everything.
    let s = f.open_again().await;
    let t = s.get_thing("t1").await.unwrap().unwrap();
    assert_eq!((t.created_at, t.tags_version), (7, 2));
    assert_eq!(t.tags, tags(json!({"k": "v"})));
    let sh = s.get_shadow("t1", "default").await.unwrap().unwrap();
    assert_eq!(sh.version, 2);
    assert_eq!(
        sh.body, r#"{"state":{"reported":{"v":2}}}"#,
        "stored text comes back as written"
    );
    s.close().await;
}
