//! End-to-end tests of the REST API (S-9): registry, tags, shadows over REST, query, system
//! routes and the error envelope.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::*;

fn ids_of(page: &Value) -> BTreeSet<String> {
    page["content"]
        .as_array()
        .unwrap_or_else(|| panic!("S-9.2 page has content: {page}"))
        .iter()
        .map(|t| t["thingId"].as_str().expect("thingId").to_string())
        .collect()
}

fn is_valid_thing_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// S-9.1: admin calls need the bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_missing_or_wrong_bearer_401() {
    let hub = Hub::start();
    for (method, path, body) in [
        ("GET", "/things", None),
        ("POST", "/things", Some(json!({"thingId": "x"}))),
        ("GET", "/things/x", None),
        (
            "POST",
            "/things/query",
            Some(json!({"query": "SELECT * FROM things"})),
        ),
    ] {
        let (status, resp) = hub.call_as(None, method, path, body.clone()).await;
        assert_eq!(
            status, 401,
            "S-9.1 missing bearer on {method} {path}: {resp}"
        );
        assert_envelope(status, &resp);
        let (status, resp) = hub.call_as(Some("wrong-token"), method, path, body).await;
        assert!(
            status == 401 || status == 403,
            "S-9.1 wrong bearer on {method} {path}: {status} {resp}"
        );
        assert_envelope(status, &resp);
    }
    // Nothing was created by the refused POST.
    let (status, _) = hub.get("/things/x").await;
    assert_eq!(status, 404);
}

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

/// S-9.3: shadows over REST: PUT desired (accepted document, delta to the device), GET, version
/// conflict 409, `reported` refused, oversized 413, DELETE and 404s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_3_rest_shadow() {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(Proto::V311, "t").await;
    let path = format!("/things/{id}/shadows/default/state/desired");
    let (status, body) = hub.get(&format!("/things/{id}/shadows/default")).await;
    assert_eq!(status, 404, "S-3.2 never written: {body}");
    assert_envelope(status, &body);

    let (status, body) = hub
        .put(
            &path,
            json!({"state": {"desired": {"led": "on", "cfg": {"r": 1}}}, "clientToken": "rest-1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_envelope(status, &body);
    assert_eq!(body["data"]["version"], 1, "S-3.5 via REST: {body}");
    assert_eq!(body["data"]["clientToken"], "rest-1", "{body}");
    assert!(
        body["data"]["metadata"]["desired"]["led"]["timestamp"].is_u64(),
        "{body}"
    );
    let delta = c
        .expect_message(&shadow_topic(&id, "default", "update/delta"), STEP)
        .await;
    assert_eq!(
        delta["state"],
        json!({"led": "on", "cfg": {"r": 1}}),
        "S-3.6: {delta}"
    );
    assert_eq!(delta["clientToken"], "rest-1");
    let docs = c
        .expect_message(&shadow_topic(&id, "default", "update/documents"), STEP)
        .await;
    assert_eq!(docs["current"]["version"], 1, "S-3.7: {docs}");

    let (status, body) = hub.get(&format!("/things/{id}/shadows/default")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["state"]["desired"],
        json!({"led": "on", "cfg": {"r": 1}})
    );
    assert_eq!(
        body["data"]["state"]["delta"],
        json!({"led": "on", "cfg": {"r": 1}})
    );

    let (status, body) = hub
        .put(
            &path,
            json!({"state": {"desired": {"led": "off"}}, "version": 5}),
        )
        .await;
    assert_eq!(status, 409, "S-3.4/S-9.3: {body}");
    assert_envelope(status, &body);

    let (status, body) = hub
        .put(&path, json!({"state": {"reported": {"led": "off"}}}))
        .await;
    assert_eq!(status, 400, "S-3.3 REST writes desired only: {body}");

    let big = "x".repeat(9 * 1024);
    let (status, body) = hub
        .put(&path, json!({"state": {"desired": {"blob": big}}}))
        .await;
    assert_eq!(status, 413, "S-9.3 oversized request keeps its 413: {body}");
    assert_envelope(status, &body);

    let (status, body) = hub
        .put(
            &path,
            json!({"state": {"desired": {"led": null}}, "version": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["version"], 2);

    let (status, body) = hub
        .put(
            &format!("/things/{}/shadows/default/state/desired", unique("ghost")),
            json!({"state": {"desired": {"a": 1}}}),
        )
        .await;
    assert_eq!(status, 404, "unknown thing: {body}");
    let (status, body) = hub
        .put(
            &format!("/things/{id}/shadows/bad%20name/state/desired"),
            json!({"state": {"desired": {"a": 1}}}),
        )
        .await;
    assert_eq!(status, 400, "S-2 shadowName pattern: {body}");

    let (status, body) = hub.delete(&format!("/things/{id}/shadows/default")).await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, _) = hub.get(&format!("/things/{id}/shadows/default")).await;
    assert_eq!(status, 404);
    let (status, body) = hub.delete(&format!("/things/{id}/shadows/default")).await;
    assert_eq!(status, 404, "{body}");
    assert_envelope(status, &body);
    let (ok, r) = c.get(&id, "default").await;
    assert!(!ok && r["code"] == 404, "deleted shadow over MQTT: {r}");
}

/// S-9.4: queries over tags and `state.reported`, AND/OR/NOT, IS NULL, ORDER BY, paging; bad
/// queries → 400; injection attempts are not executed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_4_query() {
    let hub = Hub::start();
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for (building, temp) in [("b1", 25), ("b1", 15), ("b2", 30)] {
        let (id, _s, mut c) = hub.new_thing(Proto::V5, "q").await;
        let (s, b) = hub
            .put(
                &format!("/things/{id}/tags"),
                json!({"tags": {"location": {"building": building}}}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let (ok, r) = c
            .update(
                &id,
                "default",
                json!({"state": {"reported": {"temp": temp, "fw": "1.5"}}}),
            )
            .await;
        assert!(ok, "{r}");
        ids.push(id);
        clients.push(c);
    }
    let untagged = unique("q");
    hub.create_thing(&untagged).await;

    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let cases: Vec<(String, BTreeSet<String>)> = vec![
        (
            "SELECT * FROM things WHERE tags.location.building = 'b1'".into(),
            set(&[&ids[0], &ids[1]]),
        ),
        (
            "SELECT * FROM things WHERE state.reported.temp > 20".into(),
            set(&[&ids[0], &ids[2]]),
        ),
        (
            "SELECT * FROM things WHERE tags.location.building = 'b1' AND state.reported.fw < '2.0' AND state.reported.temp >= 20".into(),
            set(&[&ids[0]]),
        ),
        (
            "SELECT * FROM things WHERE tags.location.building = 'b2' OR state.reported.temp < 20".into(),
            set(&[&ids[1], &ids[2]]),
        ),
        (
            "SELECT * FROM things WHERE NOT (tags.location.building = 'b1') AND tags.location IS NOT NULL".into(),
            set(&[&ids[2]]),
        ),
        (
            "SELECT * FROM things WHERE tags.location IS NULL".into(),
            set(&[&untagged]),
        ),
        (
            format!("SELECT * FROM things WHERE thingId = '{}'", ids[1]),
            set(&[&ids[1]]),
        ),
        (
            "SELECT * FROM things WHERE connected = true".into(),
            ids.iter().cloned().collect(),
        ),
    ];
    for (q, want) in cases {
        let (status, body) = hub
            .post("/things/query?pageSize=100", json!({"query": q}))
            .await;
        assert_eq!(status, 200, "S-9.4 {q}: {body}");
        assert_envelope(status, &body);
        assert_eq!(ids_of(&body["data"]), want, "S-9.4 {q}: {body}");
        assert_eq!(body["data"]["total"], want.len(), "S-9.4 total for {q}");
    }

    // ORDER BY and paging.
    let (status, body) = hub
        .post(
            "/things/query?pageIndex=0&pageSize=2",
            json!({"query": "SELECT * FROM things WHERE state.reported.temp IS NOT NULL ORDER BY state.reported.temp DESC"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["total"], 3, "{body}");
    let order: Vec<&str> = body["data"]["content"]
        .as_array()
        .expect("content")
        .iter()
        .map(|t| t["thingId"].as_str().expect("id"))
        .collect();
    assert_eq!(
        order,
        vec![ids[2].as_str(), ids[0].as_str()],
        "ORDER BY temp DESC: {body}"
    );

    for bad in [
        "SELEKT * FROM things",
        "SELECT * FROM things WHERE",
        "SELECT * FROM users",
        "DROP TABLE things",
        "SELECT * FROM things WHERE tags.x = 'a'; DROP TABLE things; --",
        "SELECT * FROM things WHERE password = 'x'",
        "",
    ] {
        let (status, body) = hub.post("/things/query", json!({"query": bad})).await;
        assert_eq!(status, 400, "S-9.4 bad query {bad:?}: {body}");
        assert_envelope(status, &body);
    }
    // A quote inside a literal is data, not SQL.
    let (status, body) = hub
        .post(
            "/things/query",
            json!({"query": "SELECT * FROM things WHERE tags.location.building = 'b1'' OR ''1''=''1'"}),
        )
        .await;
    assert!(status == 200 || status == 400, "{status} {body}");
    if status == 200 {
        assert_eq!(body["data"]["total"], 0, "injection matched things: {body}");
    }
    let (_, body) = hub.get("/things?pageSize=100").await;
    assert_eq!(body["data"]["total"], 4, "things survive: {body}");
}

/// S-9.7: `/healthz`, `/api/v1/limits` (defaults of S-3.9), `/metrics` (Prometheus text),
/// `/api/v1/openapi.json` (JSON with `paths`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_7_system_routes() {
    let hub = Hub::start();
    let (status, _ctype, text) = hub.get_text("/healthz").await;
    assert_eq!(status, 200, "{text}");

    let (status, body) = hub.get("/limits").await;
    assert_eq!(status, 200, "{body}");
    assert_envelope(status, &body);
    let mut numbers: Vec<u64> = body["data"]
        .as_object()
        .expect("S-9.7 limits object")
        .values()
        .filter_map(Value::as_u64)
        .collect();
    numbers.sort_unstable();
    for default in [8 * 1024, 32 * 1024, 8, 64, 20, 10] {
        assert!(
            numbers.contains(&default),
            "S-3.9 default {default} missing from limits: {body}"
        );
    }
    assert_eq!(
        numbers.iter().filter(|n| **n == 10).count(),
        2,
        "S-3.9: 10 in flight and 10 named shadows: {body}"
    );

    let (status, ctype, text) = hub.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        ctype.starts_with("text/plain"),
        "S-9.7 Prometheus text: {ctype}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE ")),
        "S-9.7 Prometheus exposition: {text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "not a Prometheus sample line: {line:?}"
        );
    }

    let (status, body) = hub.get("/openapi.json").await;
    assert_eq!(status, 200, "{body}");
    let paths = body["paths"].as_object().expect("S-9.1 OpenAPI has paths");
    assert!(
        paths.keys().any(|p| p.ends_with("/things")),
        "OpenAPI lists /things: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
}

/// S-9.1: every error body is the envelope with `code` == HTTP status, including unknown
/// routes and unknown things.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_error_envelopes() {
    let hub = Hub::start();
    let ghost = unique("ghost");
    for (method, path, body) in [
        ("GET", format!("/things/{ghost}"), None),
        ("DELETE", format!("/things/{ghost}"), None),
        (
            "PATCH",
            format!("/things/{ghost}"),
            Some(json!({"enabled": true})),
        ),
        ("GET", format!("/things/{ghost}/shadows/default"), None),
        ("DELETE", format!("/things/{ghost}/shadows/default"), None),
        ("GET", "/no/such/route".to_string(), None),
    ] {
        let (status, resp) = hub.call(method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {resp}");
        assert_envelope(status, &resp);
    }
}

/// S-9.7: `/metrics` counts real traffic: connected things, accepted and rejected shadow
/// updates by code, and group-commit transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_7_metrics_count_traffic() {
    let hub = Hub::start();
    let (id, _secret, mut c) = hub.new_thing(Proto::V5, "m").await;
    let (ok, reply) = c
        .update(&id, "default", json!({"state": {"reported": {"x": 1}}}))
        .await;
    assert!(ok, "{reply}");
    let (ok, reply) = c
        .update(
            &id,
            "default",
            json!({"state": {"reported": {"x": 2}}, "version": 9}),
        )
        .await;
    assert!(!ok && reply["code"] == 409, "{reply}");

    let (status, _ctype, text) = hub.get_text("/metrics").await;
    assert_eq!(status, 200);
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
    };
    assert_eq!(sample("iothub_connected_things"), 1.0);
    assert_eq!(sample("iothub_shadow_updates_accepted_total"), 1.0);
    assert_eq!(
        sample("iothub_shadow_updates_rejected_total{code=\"409\"}"),
        1.0
    );
    assert!(sample("iothub_group_commit_batches_total") >= 1.0);
    assert!(sample("iothub_group_commit_writes_total") >= 1.0);
    assert!(sample("iothub_mqtt_messages_in_total") >= 2.0);
}
