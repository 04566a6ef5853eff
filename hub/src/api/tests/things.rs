//! API tests of the thing registry routes (S-9.2, S-9.3): create, batch, list, disable,
//! delete and tags.

use super::*;

#[tokio::test]
async fn create_generates_id_and_shows_password_once() {
    let h = harness().await;
    let (s, b) = h.call("POST", "/api/v1/things", Some(json!({}))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let id = b["data"]["thingId"].as_str().unwrap().to_owned();
    let password = b["data"]["password"].as_str().unwrap().to_owned();
    assert!(iothub_spec::ids::is_valid_thing_id(&id));
    assert!(password.len() >= 16, "generated secret: {password}");
    assert_eq!(b["data"]["enabled"], json!(true));

    let (s, got) = h.call("GET", &format!("/api/v1/things/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["data"]["thingId"], json!(id));
    assert_eq!(got["data"]["connected"], json!(false));
    assert!(got["data"].get("password").is_none(), "{got}");
    assert!(!got.to_string().contains(&password), "secret shown again");
    let (_, list) = h.call("GET", "/api/v1/things", None).await;
    assert!(!list.to_string().contains(&password), "secret in list");

    let events = h.bus.lifecycle(&id);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["thingId"], json!(id));
    assert_eq!(events[0]["op"], json!("create"));
    assert!(events[0]["timestamp"].as_u64().unwrap() > 0);

    // A caller-chosen secret is echoed once too.
    let (s, b) = h
        .call(
            "POST",
            "/api/v1/things",
            Some(json!({"thingId": "mine", "password": "pw-1", "tags": {"a": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["data"]["password"], json!("pw-1"));
    assert_eq!(b["data"]["tags"], json!({"a": 1}));
}

#[tokio::test]
async fn created_secrets_are_remembered_so_first_connects_skip_argon2() {
    let h = harness().await;
    let (s, b) = h
        .call(
            "POST",
            "/api/v1/things",
            Some(json!({"thingId": "one", "password": "pw-one"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert!(h.credentials.check("one", b"pw-one"));
    assert!(!h.credentials.check("one", b"pw-other"));

    let (s, b) = h
        .call(
            "POST",
            "/api/v1/things/batch",
            Some(json!([{"thingId": "two"}, {"thingId": "one"}])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let secret = b["data"][0]["data"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(h.credentials.check("two", secret.as_bytes()));
    // The refused duplicate did not replace the first thing's secret.
    assert!(h.credentials.check("one", b"pw-one"));
}

#[tokio::test]
async fn duplicate_create_is_409() {
    let h = harness().await;
    h.create("dup").await;
    let (s, b) = h
        .call("POST", "/api/v1/things", Some(json!({"thingId": "dup"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(b["data"].is_null());
    assert_eq!(
        h.bus.lifecycle("dup").len(),
        1,
        "no event for the refused create"
    );
}

#[tokio::test]
async fn batch_reports_per_item_results() {
    let h = harness().await;
    h.create("old").await;
    let (s, b) = h
        .call(
            "POST",
            "/api/v1/things/batch",
            Some(json!({"things": [
                {"thingId": "b1"},
                {"thingId": "b1"},
                {"thingId": "old"},
                {"thingId": "bad id"},
                {},
                {"thingId": "b2", "password": "x"},
            ]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let codes: Vec<u64> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [201, 409, 409, 400, 201, 201], "{b}");
    assert_eq!(b["data"][0]["data"]["thingId"], json!("b1"));
    assert!(b["data"][0]["data"]["password"].is_string());
    assert_eq!(b["data"][5]["data"]["password"], json!("x"));
    assert!(b["data"][1]["data"].is_null());
    let (_, list) = h.call("GET", "/api/v1/things?pageSize=100", None).await;
    assert_eq!(list["data"]["total"], json!(4), "{list}");
    assert_eq!(h.bus.lifecycle("b1").len(), 1);

    // The bare-array form, and more than 1000 items refused whole.
    let (s, b) = h
        .call(
            "POST",
            "/api/v1/things/batch",
            Some(json!([{"thingId": "b3"}])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"thingId": format!("m{i}")}))
        .collect();
    let (s, _) = h
        .call(
            "POST",
            "/api/v1/things/batch",
            Some(json!({"things": many})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h.call("GET", "/api/v1/things/m0", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The batch route takes bodies over the general 1 MiB limit (items invalid on purpose so
    // nothing is hashed).
    let tags = json!({"pad": "p".repeat(2048)});
    let big: Vec<Value> = (0..600)
        .map(|_| json!({"thingId": "bad id", "tags": tags}))
        .collect();
    let body = json!({ "things": big });
    assert!(body.to_string().len() > crate::api::MAX_BODY);
    let (s, b) = h.call("POST", "/api/v1/things/batch", Some(body)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"][599]["code"], json!(400));
}

#[tokio::test]
async fn list_pages_and_filters() {
    let h = harness().await;
    for i in 0..5 {
        h.create(&format!("t{i}")).await;
    }
    let (s, _) = h
        .call(
            "PATCH",
            "/api/v1/things/t1",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, p0) = h
        .call("GET", "/api/v1/things?pageIndex=0&pageSize=2", None)
        .await;
    assert_eq!(p0["data"]["total"], json!(5));
    assert_eq!(ids(&p0["data"]), ["t0", "t1"]);
    let (_, p2) = h
        .call("GET", "/api/v1/things?pageIndex=2&pageSize=2", None)
        .await;
    assert_eq!(ids(&p2["data"]), ["t4"]);
    let (_, off) = h.call("GET", "/api/v1/things?enabled=false", None).await;
    assert_eq!(off["data"]["total"], json!(1));
    assert_eq!(ids(&off["data"]), ["t1"]);
    for bad in [
        "pageSize=0",
        "pageSize=1001",
        "pageSize=x",
        "pageIndex=-1",
        "enabled=maybe",
    ] {
        let (s, b) = h.call("GET", &format!("/api/v1/things?{bad}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
    }
}

#[tokio::test]
async fn disable_publishes_lifecycle_and_disconnects() {
    let h = harness().await;
    h.create("d1").await;
    h.bus.connected.lock().unwrap().insert("d1".into());
    let (s, b) = h
        .call(
            "PATCH",
            "/api/v1/things/d1",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["enabled"], json!(false));
    assert_eq!(*h.bus.disconnected.lock().unwrap(), ["d1"]);
    let ops: Vec<Value> = h
        .bus
        .lifecycle("d1")
        .iter()
        .map(|e| e["op"].clone())
        .collect();
    assert_eq!(ops, [json!("create"), json!("disable")]);

    // Disabling again changes nothing: no new event.
    h.call(
        "PATCH",
        "/api/v1/things/d1",
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(h.bus.lifecycle("d1").len(), 2);
    let (s, _) = h
        .call("PATCH", "/api/v1/things/d1", Some(json!({"enabled": true})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.bus.lifecycle("d1")[2]["op"], json!("enable"));
    let (s, _) = h
        .call(
            "PATCH",
            "/api/v1/things/ghost",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_kicks_and_then_404s() {
    let h = harness().await;
    h.create("x1").await;
    let (s, _) = h.call("DELETE", "/api/v1/things/x1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(*h.bus.disconnected.lock().unwrap(), ["x1"]);
    assert_eq!(h.bus.lifecycle("x1")[1]["op"], json!("delete"));
    let (s, _) = h.call("DELETE", "/api/v1/things/x1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.call("GET", "/api/v1/things/x1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.call("DELETE", "/api/v1/things/$bad", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tags_merge_and_compare_and_swap() {
    let h = harness().await;
    h.create("g1").await;
    let (s, b) = h
        .call(
            "PUT",
            "/api/v1/things/g1/tags",
            Some(json!({"tags": {"loc": {"b": "b1"}, "owner": "ops"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = b["data"]["version"].as_u64().unwrap();
    let (s, b) = h
        .call(
            "PUT",
            "/api/v1/things/g1/tags",
            Some(json!({"tags": {"owner": null}, "version": v})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["tags"], json!({"loc": {"b": "b1"}}));
    assert_eq!(b["data"]["version"], json!(v + 1));
    let (s, b) = h
        .call(
            "PUT",
            "/api/v1/things/g1/tags",
            Some(json!({"tags": {"owner": "late"}, "version": v})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (_, t) = h.call("GET", "/api/v1/things/g1", None).await;
    assert_eq!(t["data"]["tags"], json!({"loc": {"b": "b1"}}));
    assert_eq!(t["data"]["tagsVersion"], json!(v + 1));
    let (s, _) = h
        .call("PUT", "/api/v1/things/none/tags", Some(json!({"tags": {}})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_unversioned_tag_updates_all_land() {
    let h = Arc::new(harness().await);
    h.create("c1").await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                h.call(
                    "PUT",
                    "/api/v1/things/c1/tags",
                    Some(json!({ "tags": { format!("k{i}"): i } })),
                )
                .await
                .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let (_, t) = h.call("GET", "/api/v1/things/c1", None).await;
    assert_eq!(t["data"]["tags"].as_object().unwrap().len(), 10, "{t}");
    assert_eq!(t["data"]["tagsVersion"], json!(11));
}
