//! S-9.2 and S-9.3 registry routes: create, get, patch, delete, bad bodies, batch, paging and
//! tags.

use super::*;

/// S-9.2: create (with and without a thingId), get (never the secret), duplicate 409, patch,
/// delete, delete again 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_things_crud() {
    let hub = Hub::start();
    let id = unique("crud");
    let (status, body) = hub
        .post(
            "/things",
            json!({"thingId": id, "password": "my-own-secret-123", "tags": {"model": "x1"}}),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "S-9.2 create: {status} {body}"
    );
    assert_envelope(status, &body);
    assert_eq!(body["data"]["thingId"], json!(id));
    assert_eq!(
        body["data"]["password"], "my-own-secret-123",
        "S-9.2 secret shown once"
    );
    // The given password works for MQTT.
    let _c = hub
        .connect_thing(Proto::V311, &id, "my-own-secret-123")
        .await;

    let (status, body) = hub.get(&format!("/things/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_envelope(status, &body);
    let t = &body["data"];
    assert_eq!(t["thingId"], json!(id));
    assert_eq!(t["enabled"], true);
    assert_eq!(t["tags"], json!({"model": "x1"}));
    assert!(t.get("password").is_none(), "S-9.2: never the secret: {t}");
    assert!(
        !body.to_string().contains("my-own-secret-123"),
        "S-1.6: the secret never appears again: {body}"
    );
    assert!(t["connected"].is_boolean(), "S-9.2 connection status: {t}");

    let (status, body) = hub.post("/things", json!({"thingId": id})).await;
    assert_eq!(status, 409, "S-9.2 duplicate: {body}");
    assert_envelope(status, &body);

    // Without a thingId the hub picks one (valid per S-1.1) and a secret.
    let (status, body) = hub.post("/things", json!({})).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let gen_id = body["data"]["thingId"].as_str().expect("generated thingId");
    assert!(is_valid_thing_id(gen_id), "S-1.1: {gen_id}");
    let gen_secret = body["data"]["password"].as_str().expect("generated secret");
    assert!(
        gen_secret.len() >= 16,
        "S-9.2 generated secret: {gen_secret}"
    );
    let _c2 = hub.connect_thing(Proto::V5, gen_id, gen_secret).await;

    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["enabled"], false, "{body}");
    let (_, body) = hub.get(&format!("/things/{id}")).await;
    assert_eq!(body["data"]["enabled"], false);

    let (status, body) = hub.delete(&format!("/things/{id}")).await;
    assert!((200..300).contains(&status), "{status} {body}");
    if !body.is_null() {
        assert_envelope(status, &body);
    }
    let (status, body) = hub.get(&format!("/things/{id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_envelope(status, &body);
    let (status, body) = hub.delete(&format!("/things/{id}")).await;
    assert_eq!(status, 404, "S-9.2 delete absent: {body}");
    assert_envelope(status, &body);
    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({"enabled": true}))
        .await;
    assert_eq!(status, 404, "{body}");
}

/// S-9.1/S-9.2: missing or wrong fields in REST bodies → 400 with the envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_bad_bodies_400() {
    let hub = Hub::start();
    let id = unique("t");
    hub.create_thing(&id).await;
    let long_id = "a".repeat(65);
    let cases: Vec<(&str, String, Value)> = vec![
        ("POST", "/things".into(), json!({"thingId": "bad id!"})),
        ("POST", "/things".into(), json!({"thingId": long_id})),
        ("POST", "/things".into(), json!({"thingId": "$svc"})),
        ("POST", "/things".into(), json!({"thingId": 5})),
        ("POST", "/things".into(), json!({"tags": "not-an-object"})),
        ("POST", "/things".into(), json!([1, 2])),
        ("PATCH", format!("/things/{id}"), json!({})),
        ("PATCH", format!("/things/{id}"), json!({"enabled": "yes"})),
        ("PUT", format!("/things/{id}/tags"), json!({})),
        ("PUT", format!("/things/{id}/tags"), json!({"tags": [1]})),
        (
            "PUT",
            format!("/things/{id}/tags"),
            json!({"tags": {}, "version": "1"}),
        ),
        ("POST", "/things/query".into(), json!({})),
        ("POST", "/things/query".into(), json!({"query": 5})),
        ("POST", "/things/batch".into(), json!({"things": "x"})),
        (
            "PUT",
            format!("/things/{id}/shadows/default/state/desired"),
            json!({}),
        ),
        (
            "PUT",
            format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": 5}}),
        ),
        (
            "PUT",
            format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": {"a": 1}}, "version": "x"}),
        ),
        (
            "PUT",
            format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": {"a": 1}}, "clientToken": "t".repeat(65)}),
        ),
    ];
    for (method, path, body) in cases {
        let (status, resp) = hub.call(method, &path, Some(body.clone())).await;
        assert_eq!(status, 400, "S-9.1/S-9.3 {method} {path} {body}: {resp}");
        assert_envelope(status, &resp);
    }
    // Malformed JSON and a missing body.
    for (method, path) in [
        ("POST", "/things".to_string()),
        ("PUT", format!("/things/{id}/tags")),
        ("PUT", format!("/things/{id}/shadows/default/state/desired")),
    ] {
        let (status, resp) = hub
            .call_raw(
                Some(ADMIN_TOKEN),
                method,
                &path,
                Some(b"{\"oops\":".to_vec()),
                "application/json",
            )
            .await;
        assert_eq!(status, 400, "malformed JSON on {method} {path}: {resp}");
        assert_envelope(status, &resp);
    }
    // The thing is still intact.
    let (status, body) = hub.get(&format!("/things/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["enabled"], true);
}

/// S-9.2: batch creation (per-item results, duplicates reported per item) and the 1000 cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_batch() {
    let hub = Hub::start();
    let existing = unique("dup");
    hub.create_thing(&existing).await;
    let ids: Vec<String> = (0..5).map(|_| unique("batch")).collect();
    let mut items: Vec<Value> = ids.iter().map(|i| json!({"thingId": i})).collect();
    items.push(json!({"thingId": existing}));
    let (status, body) = hub.post("/things/batch", json!({"things": items})).await;
    assert_eq!(status, 200, "{body}");
    assert_envelope(status, &body);
    let results = body["data"].as_array().expect("per-item results");
    assert_eq!(results.len(), 6, "{body}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(results[i]["data"]["thingId"], json!(id), "{body}");
        let secret = results[i]["data"]["password"].as_str().expect("secret");
        if i == 0 {
            let _c = hub.connect_thing(Proto::V5, id, secret).await;
        }
        let (status, _) = hub.get(&format!("/things/{id}")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(results[5]["code"], 409, "duplicate inside a batch: {body}");

    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"thingId": format!("m{i}")}))
        .collect();
    let (status, body) = hub.post("/things/batch", json!({"things": many})).await;
    assert!(
        status == 400 || status == 413,
        "S-9.2 up to 1000 per batch: {status} {body}"
    );
    assert_envelope(status, &body);
    let (status, _) = hub.get("/things/m0").await;
    assert_eq!(status, 404, "a refused batch creates nothing");
}

/// S-9.2: paging (`pageIndex`, `pageSize`, `{"total","content"}`) and the `enabled` filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_paging_and_enabled_filter() {
    let hub = Hub::start();
    let mut all = BTreeSet::new();
    for _ in 0..7 {
        let id = unique("p");
        hub.create_thing(&id).await;
        all.insert(id);
    }
    let disabled: Vec<String> = all.iter().take(2).cloned().collect();
    for id in &disabled {
        let (s, b) = hub
            .patch(&format!("/things/{id}"), json!({"enabled": false}))
            .await;
        assert_eq!(s, 200, "{b}");
    }

    // Walk the pages (the hub numbers them from 0).
    let mut seen = BTreeSet::new();
    for page_index in 0..4 {
        let (status, body) = hub
            .get(&format!("/things?pageIndex={page_index}&pageSize=3"))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["total"], 7, "S-9.2 total: {body}");
        let ids = ids_of(&body["data"]);
        assert!(ids.len() <= 3, "S-9.2 pageSize: {body}");
        for id in ids {
            assert!(seen.insert(id.clone()), "{id} on two pages");
        }
    }
    assert_eq!(seen, all, "every thing on exactly one page");

    let (_, body) = hub.get("/things?enabled=false&pageSize=100").await;
    assert_eq!(body["data"]["total"], 2, "{body}");
    assert_eq!(
        ids_of(&body["data"]),
        disabled.iter().cloned().collect::<BTreeSet<_>>()
    );
    let (_, body) = hub.get("/things?enabled=true&pageSize=100").await;
    assert_eq!(body["data"]["total"], 5, "{body}");
    for t in body["data"]["content"].as_array().expect("content") {
        assert_eq!(t["enabled"], true);
    }
    for bad in ["pageSize=abc", "pageIndex=-1", "enabled=maybe"] {
        let (status, body) = hub.get(&format!("/things?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_envelope(status, &body);
    }
}

/// S-9.3: tags: PUT sets, `null` deletes one tag (others stay), `version` conflict → 409; tags
/// are never sent to the device (S-3.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_3_tags() {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(Proto::V5, "t").await;
    let (status, body) = hub
        .put(
            &format!("/things/{id}/tags"),
            json!({"tags": {"location": {"building": "b1", "floor": 2}, "owner": "ops"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_envelope(status, &body);
    let (_, thing) = hub.rest_thing(&id).await;
    assert_eq!(
        thing["tags"],
        json!({"location": {"building": "b1", "floor": 2}, "owner": "ops"})
    );
    let v1 = thing["tagsVersion"]
        .as_u64()
        .or_else(|| body["data"]["version"].as_u64())
        .expect("tags version");

    let (status, body) = hub
        .put(
            &format!("/things/{id}/tags"),
            json!({"tags": {"owner": null}, "version": v1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, thing) = hub.rest_thing(&id).await;
    assert_eq!(
        thing["tags"],
        json!({"location": {"building": "b1", "floor": 2}}),
        "S-9.3 null deletes a tag, others stay"
    );

    let (status, body) = hub
        .put(
            &format!("/things/{id}/tags"),
            json!({"tags": {"owner": "late"}, "version": v1}),
        )
        .await;
    assert_eq!(status, 409, "S-9.3 tags version conflict: {body}");
    assert_envelope(status, &body);
    let (_, thing) = hub.rest_thing(&id).await;
    assert!(
        thing["tags"].get("owner").is_none(),
        "409 changed nothing: {thing}"
    );

    let (status, body) = hub
        .put(
            &format!("/things/{}/tags", unique("ghost")),
            json!({"tags": {}}),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // S-3.1: tags are never sent to the device.
    let (ok, doc) = c
        .update(&id, "default", json!({"state": {"reported": {"a": 1}}}))
        .await;
    assert!(ok);
    assert!(!doc.to_string().contains("b1"), "{doc}");
    let (_, doc) = c.get(&id, "default").await;
    assert!(!doc.to_string().contains("b1"), "S-3.1 tags leaked: {doc}");
}
