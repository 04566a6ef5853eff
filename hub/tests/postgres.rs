//! The real hub binary on a real PostgreSQL (`--database-url postgres://…`): things created over
//! REST, shadow updates over MQTT accepted, the hub killed and started again, everything still
//! there, and the optimistic concurrency of S-3.4 across a restart.

mod support;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_on_postgres_keeps_things_and_shadows_across_a_restart() {
    let url = support::postgres::shared().fresh_database();
    let mut hub = Hub::start_args(&["--database-url", &url]);
    assert_eq!(hub.get_text("/healthz").await.0, 200);

    let (id, secret, mut c) = hub.new_thing(Proto::V5, "pg").await;
    for (n, temp) in [(1, 21), (2, 22)] {
        let (accepted, reply) = c
            .update(
                &id,
                "default",
                json!({"state": {"reported": {"temp": temp}}}),
            )
            .await;
        assert!(accepted, "update {n}: {reply}");
        assert_eq!(reply["version"], n, "{reply}");
    }
    let (status, tagged) = hub
        .put(
            &format!("/things/{id}/tags"),
            json!({"tags": {"zone": "north"}}),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {tagged}");
    c.disconnect().await;

    // SIGKILL, same database.
    tokio::task::block_in_place(|| hub.restart());
    let (status, thing) = hub.rest_thing(&id).await;
    assert_eq!(status, 200, "{thing}");
    let (status, doc) = hub.rest_shadow(&id, "default").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["version"], 2, "{doc}");
    assert_eq!(doc["state"]["reported"]["temp"], 22, "{doc}");
    let (status, found) = hub
        .post(
            "/things/query",
            json!({"query": "SELECT * FROM things WHERE tags.zone = 'north' AND state.reported.temp > 21.5"}),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert!(
        found.to_string().contains(&id),
        "the query finds the thing: {found}"
    );

    // The secret's hash came back from PostgreSQL too; versions go on from 2.
    let mut c = hub.connect_thing(Proto::V5, &id, &secret).await;
    c.subscribe(&format!("{}/#", thing_topic(&id)))
        .await
        .expect("subscribe");
    let (accepted, reply) = c
        .update(
            &id,
            "default",
            json!({"state": {"reported": {"temp": 23}}, "version": 2}),
        )
        .await;
    assert!(accepted, "{reply}");
    assert_eq!(reply["version"], 3, "{reply}");
    let (accepted, reply) = c
        .update(
            &id,
            "default",
            json!({"state": {"reported": {"temp": 24}}, "version": 2}),
        )
        .await;
    assert!(!accepted, "a stale version is refused: {reply}");
    assert_eq!(reply["code"], 409, "{reply}");
}
