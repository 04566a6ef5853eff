//! S-9.3 shadows over REST and S-9.4 queries.

use super::*;

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
