//! The S-9.4 query on real data: the comparison and ordering rules of D-32 hold on every backend
//! (they are SQLite's `json_extract` rules; PostgreSQL reproduces them on `jsonb`).

use iothub_hub::query::ThingQuery;
use iothub_hub::store::{NewThing, ShadowWrite, SharedStore};
use serde_json::json;

use crate::{Fixture, new_thing, tags};

async fn ids(s: &SharedStore, query: &str) -> Vec<String> {
    let q = ThingQuery::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let (total, page) = s.query_things(&q, 0, 100).await.unwrap();
    assert_eq!(total as usize, page.len(), "{query}");
    page.into_iter().map(|t| t.thing_id).collect()
}

/// Things whose `tags.v` is of every JSON type, two with a default shadow.
async fn mixed(f: &Fixture) {
    let values = [
        ("n1", json!(1)),
        ("n2", json!(2.5)),
        ("s1", json!("abc")),
        ("s2", json!("10")),
        ("bt", json!(true)),
        ("bf", json!(false)),
        ("nl", json!(null)),
        ("ob", json!({"a": 1})),
        ("ar", json!([1, 2])),
    ];
    let mut things: Vec<NewThing> = values
        .iter()
        .map(|(id, v)| NewThing {
            tags: tags(json!({ "v": v })),
            ..new_thing(id)
        })
        .collect();
    things.push(NewThing {
        tags: tags(json!({})),
        ..new_thing("none")
    });
    f.store.create_things(&things, 1).await.unwrap();
    let shadow = |thing: &str, name: &str, fw: &str| ShadowWrite {
        thing_id: thing.into(),
        name: name.into(),
        expected_version: 0,
        new_version: 1,
        body: json!({"state": {"reported": {"fw": fw}}}).to_string(),
        updated_at: 1,
        expected_body: None,
    };
    let out = f
        .store
        .write_shadows(&[
            shadow("n1", "default", "1.9"),
            shadow("s1", "default", "2.1"),
            // A named shadow is not what `state.*` reads.
            shadow("n2", "other", "1.0"),
        ])
        .await
        .unwrap();
    assert!(out.iter().all(Result::is_ok));
}

pub async fn comparisons_follow_d32(f: Fixture) {
    mixed(&f).await;
    let s = &f.store;
    let cases: &[(&str, &[&str])] = &[
        // true is 1, false is 0.
        ("tags.v = 1", &["bt", "n1"]),
        ("tags.v = false", &["bf"]),
        ("tags.v = true", &["bt", "n1"]),
        // Text (strings, objects, arrays) sorts after every number.
        ("tags.v > 1", &["ar", "n2", "ob", "s1", "s2"]),
        ("tags.v >= 2.5", &["ar", "n2", "ob", "s1", "s2"]),
        ("tags.v < 2", &["bf", "bt", "n1"]),
        // Strings compare byte by byte; numbers sort before any string.
        ("tags.v < 'b'", &["ar", "bf", "bt", "n1", "n2", "s1", "s2"]),
        ("tags.v = '10'", &["s2"]),
        ("tags.v > 'abc'", &["ob"]),
        // NULL (JSON null or no such path) matches no comparison, not even !=.
        ("tags.v != 1", &["ar", "bf", "n2", "ob", "s1", "s2"]),
        ("NOT tags.v = 1", &["ar", "bf", "n2", "ob", "s1", "s2"]),
        ("tags.v IS NULL", &["nl", "none"]),
        (
            "tags.v IS NOT NULL",
            &["ar", "bf", "bt", "n1", "n2", "ob", "s1", "s2"],
        ),
        (
            "tags.missing.deeper IS NULL AND enabled = true",
            &["ar", "bf", "bt", "n1", "n2", "nl", "none", "ob", "s1", "s2"],
        ),
        (
            "thingId > 'n' AND thingId < 'o'",
            &["n1", "n2", "nl", "none"],
        ),
        ("thingId = 'N1'", &[]),
        ("connected = true", &[]),
        (
            "enabled = true AND (tags.v = 'abc' OR tags.v = 2.5)",
            &["n2", "s1"],
        ),
        // state.* reads the default shadow only.
        ("state.reported.fw < '2.0'", &["n1"]),
        ("state.reported.fw >= '2.0'", &["s1"]),
        (
            "state.desired.fw IS NULL AND state.reported.fw IS NOT NULL",
            &["n1", "s1"],
        ),
    ];
    for (filter, want) in cases {
        let got = ids(s, &format!("SELECT * FROM things WHERE {filter}")).await;
        assert_eq!(got, *want, "WHERE {filter} on {:?}", f.kind);
    }
}

pub async fn order_by_follows_d32(f: Fixture) {
    mixed(&f).await;
    let s = &f.store;
    let cases: &[(&str, &[&str])] = &[
        // NULL first, then numbers (booleans as 0/1), then text byte by byte; ties by thingId.
        (
            "ORDER BY tags.v",
            &["nl", "none", "bf", "bt", "n1", "n2", "s2", "ar", "s1", "ob"],
        ),
        (
            "ORDER BY tags.v DESC",
            &["ob", "s1", "ar", "s2", "n2", "bt", "n1", "bf", "nl", "none"],
        ),
        (
            "ORDER BY tags.v NULLS LAST",
            &["bf", "bt", "n1", "n2", "s2", "ar", "s1", "ob", "nl", "none"],
        ),
        (
            "ORDER BY tags.v DESC NULLS FIRST",
            &["nl", "none", "ob", "s1", "ar", "s2", "n2", "bt", "n1", "bf"],
        ),
        (
            "ORDER BY thingId DESC",
            &["s2", "s1", "ob", "none", "nl", "n2", "n1", "bt", "bf", "ar"],
        ),
        (
            "ORDER BY state.reported.fw DESC, thingId",
            &["s1", "n1", "ar", "bf", "bt", "n2", "nl", "none", "ob", "s2"],
        ),
    ];
    for (order, want) in cases {
        let got = ids(s, &format!("SELECT * FROM things {order}")).await;
        assert_eq!(got, *want, "{order} on {:?}", f.kind);
    }
}

pub async fn filters_pages_and_counts(f: Fixture) {
    let s = &f.store;
    let batch: Vec<_> = (0..6)
        .map(|i| NewThing {
            tags: tags(json!({"site": if i % 2 == 0 { "b1" } else { "b2" }})),
            ..new_thing(&format!("q{i}"))
        })
        .collect();
    s.create_things(&batch, 1).await.unwrap();
    s.write_shadows(&[
        crate::write("q0", "default", 0),
        crate::write("q2", "default", 0),
    ])
    .await
    .unwrap();
    let q = ThingQuery::parse("SELECT * FROM things WHERE tags.site = 'b1' ORDER BY thingId DESC")
        .unwrap();
    let (total, page) = s.query_things(&q, 0, 2).await.unwrap();
    assert_eq!(total, 3);
    let got: Vec<_> = page.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(got, ["q4", "q2"]);
    let (total, page) = s.query_things(&q, 1, 2).await.unwrap();
    assert_eq!((total, page.len(), page[0].thing_id.as_str()), (3, 1, "q0"));
    assert!(
        s.query_things(&q, u64::MAX, u64::MAX)
            .await
            .unwrap()
            .1
            .is_empty()
    );
    // The page carries whole records (tags included).
    assert_eq!(page[0].tags, tags(json!({"site": "b1"})));
    let q =
        ThingQuery::parse("SELECT * FROM things WHERE state.reported.v = 1 AND tags.site = 'b1'")
            .unwrap();
    let (total, page) = s.query_things(&q, 0, 10).await.unwrap();
    assert_eq!(total, 2);
    let got: Vec<_> = page.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(got, ["q0", "q2"]);
    let q = ThingQuery::parse("SELECT * FROM things").unwrap();
    let (total, page) = s.query_things(&q, 0, 0).await.unwrap();
    assert_eq!((total, page.len()), (6, 0));
}
