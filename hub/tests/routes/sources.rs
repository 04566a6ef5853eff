//! Hub sources to a file, and managing routes over REST (S-14.1, S-14.2).

use serde_json::{Value, json};

use crate::support::*;
use crate::*;

/// S-14.2: hub sources: the shadow document of an accepted update, lifecycle and presence
/// events, to a JSON-lines file; the REST management routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sources_to_a_file_and_route_management() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("out").join("routes.jsonl");
    let route = unique("file");
    create_route(
        &hub,
        json!({"id": route, "sources": ["shadow", "lifecycle", "presence"],
               "sink": {"type": "file", "path": path.display().to_string()},
               "batchDelayMs": 0}),
    )
    .await;
    let (thing, _, mut client) = hub.new_thing(Proto::V5, "fs").await;
    let (ok, _) = client
        .update(
            &thing,
            "default",
            json!({"state": {"reported": {"temp": 21}}}),
        )
        .await;
    assert!(ok);
    let lines = eventually(SLACK, || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let sources: Vec<&str> = lines.iter().filter_map(|l| l["source"].as_str()).collect();
        (sources.contains(&"shadow")
            && sources.contains(&"lifecycle")
            && sources.contains(&"presence"))
        .then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("file {}", path.display()));
    let shadow = lines
        .iter()
        .find(|l| l["source"] == "shadow")
        .expect("shadow line");
    assert_eq!(shadow["thingId"], thing.as_str());
    assert_eq!(
        shadow["payload"]["current"]["state"]["reported"]["temp"], 21,
        "{shadow}"
    );

    // Management: list, replace (the secret placeholder keeps the secret), pause, delete.
    let (_, list) = hub.get("/routes").await;
    assert!(
        list["data"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["route"]["id"] == route.as_str()))
    );
    let (status, _) = hub
        .post(
            "/routes",
            json!({"id": route, "sources": ["shadow"], "sink": {"type": "stdout"}}),
        )
        .await;
    assert_eq!(status, 409, "the id is taken");
    let (status, body) = hub
        .call(
            "PUT",
            &format!("/routes/{route}"),
            Some(json!({"id": route, "sources": ["shadow"], "sink": {"type": "stdout"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["route"]["sink"]["type"], "stdout");
    let (status, body) = hub
        .post(
            "/routes",
            json!({"id": "bad id", "sources": ["shadow"], "sink": {"type": "stdout"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = hub
        .post(
            "/routes",
            json!({"id": "x", "sources": [], "sink": {"type": "stdout"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = hub.post(&format!("/routes/{route}/pause"), json!({})).await;
    assert_eq!(
        (status, body["data"]["paused"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (status, _) = hub.delete(&format!("/routes/{route}")).await;
    assert_eq!(status, 200);
    let (status, _) = hub.get(&format!("/routes/{route}")).await;
    assert_eq!(status, 404);
    let (_, doc) = hub.get("/openapi.json").await;
    assert!(doc["paths"]["/api/v1/routes/{id}/dead-letters/replay"].is_object());
}
