//! Tags patched in place (issue 19 item 3, D-42): `PATCH /api/v1/things/{id}/tags` with an RFC
//! 7386 merge-patch, over real HTTP against the real hub. Expected documents are written by hand
//! from RFC 7386 and D-42.

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use support::*;

/// A PATCH of the tags with an optional `If-Match`: status, `ETag`, body.
async fn patch_tags(
    hub: &Hub,
    id: &str,
    if_match: Option<&str>,
    body: Value,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .patch(format!("{}/api/v1/things/{id}/tags", hub.base_url()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body);
    if let Some(v) = if_match {
        req = req.header("if-match", v);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("HTTP body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, etag, body)
}

async fn tags_of(hub: &Hub, id: &str) -> (Value, u64) {
    let (status, body) = hub.get(&format!("/things/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let t = &body["data"];
    (
        t["tags"].clone(),
        t["tagsVersion"].as_u64().expect("tagsVersion"),
    )
}

/// Nested merge, `null` deletes at any depth, arrays and scalars replace, empty objects stay
/// (RFC 7386); the answer carries all tags, the new version, and the version as `ETag`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d42_merge_patch_nested_and_null_deletes() {
    let hub = Hub::start();
    let id = unique("tagp");
    let (status, body) = hub
        .post(
            "/things",
            json!({"thingId": id, "tags": {
                "location": {"building": "b1", "floor": 2, "room": {"n": 7, "wing": "e"}},
                "owner": "ops",
                "zones": [1, 2],
            }}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, v0) = tags_of(&hub, &id).await;

    let (status, etag, body) = patch_tags(
        &hub,
        &id,
        None,
        json!({"tags": {
            "location": {"floor": 3, "room": {"wing": null}, "desk": {}},
            "owner": null,
            "zones": [9],
            "model": {"hw": "x1"},
        }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let want = json!({
        "location": {"building": "b1", "floor": 3, "room": {"n": 7}, "desk": {}},
        "zones": [9],
        "model": {"hw": "x1"},
    });
    assert_eq!(body["data"]["tags"], want);
    let v1 = body["data"]["version"].as_u64().expect("version");
    assert_eq!(v1, v0 + 1);
    assert_eq!(etag.as_deref(), Some(format!("\"{v1}\"").as_str()));
    // The registry shows the same tags and version.
    assert_eq!(tags_of(&hub, &id).await, (want.clone(), v1));

    // An object replaces a scalar; a scalar replaces an object.
    let (status, _, body) = patch_tags(
        &hub,
        &id,
        None,
        json!({"tags": {"zones": {"a": 1}, "location": "moved"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["tags"],
        json!({"location": "moved", "zones": {"a": 1}, "model": {"hw": "x1"}})
    );
}

/// The tags version as a precondition: a stale `If-Match` or body `version` is a 409 and
/// changes nothing; the current one applies; both given and different is a 400; `*` is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d42_version_precondition() {
    let hub = Hub::start();
    let id = unique("tagv");
    hub.create_thing(&id).await;
    let (_, v0) = tags_of(&hub, &id).await;

    let (status, etag, body) = patch_tags(
        &hub,
        &id,
        Some(&format!("\"{v0}\"")),
        json!({"tags": {"a": {"b": 1}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v1 = v0 + 1;
    assert_eq!(etag.as_deref(), Some(format!("\"{v1}\"").as_str()));

    // Stale If-Match (the version before the write): 409, envelope, nothing changed.
    let (status, _, body) = patch_tags(
        &hub,
        &id,
        Some(&format!("\"{v0}\"")),
        json!({"tags": {"a": null}}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], 409, "{body}");
    assert_eq!(tags_of(&hub, &id).await, (json!({"a": {"b": 1}}), v1));

    // Stale body version: 409 as well.
    let (status, _, body) =
        patch_tags(&hub, &id, None, json!({"tags": {"a": null}, "version": v0})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(tags_of(&hub, &id).await, (json!({"a": {"b": 1}}), v1));

    // Both, disagreeing: 400, nothing changed.
    let (status, _, body) = patch_tags(
        &hub,
        &id,
        Some(&format!("\"{v1}\"")),
        json!({"tags": {"a": null}, "version": v0}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // A malformed If-Match: 400.
    let (status, _, body) = patch_tags(&hub, &id, Some("\"x\""), json!({"tags": {}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(tags_of(&hub, &id).await, (json!({"a": {"b": 1}}), v1));

    // Current body version (weak ETag form in If-Match too): applies.
    let (status, _, body) = patch_tags(
        &hub,
        &id,
        Some(&format!("W/\"{v1}\"")),
        json!({"tags": {"a": {"c": 2}}, "version": v1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["tags"], json!({"a": {"b": 1, "c": 2}}));
    // `*`: no precondition.
    let (status, _, body) = patch_tags(&hub, &id, Some("*"), json!({"tags": {"a": null}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(tags_of(&hub, &id).await, (json!({}), v1 + 2));
}

/// Limits: the merged result must fit the tags limits of D-25 (16 KiB, 8 levels); a body whose
/// `tags` is not an object, or an unknown thing, is refused. Nothing is written on refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d42_limits_and_errors() {
    let hub = Hub::start();
    let id = unique("tagl");
    hub.create_thing(&id).await;
    let (_, v0) = tags_of(&hub, &id).await;

    // Two 9000-byte tags: each patch alone fits, the merged result (18 KB) does not.
    let big = "x".repeat(9000);
    let (status, _, body) = patch_tags(&hub, &id, None, json!({"tags": {"a": big}})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = patch_tags(&hub, &id, None, json!({"tags": {"b": big}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(tags_of(&hub, &id).await.1, v0 + 1);

    // Depth: the tags object is level 1, so 8 nested objects under a key make 9 levels.
    let mut deep = json!(1);
    for _ in 0..8 {
        deep = json!({ "d": deep });
    }
    let (status, _, body) = patch_tags(&hub, &id, None, json!({"tags": {"deep": deep}})).await;
    assert_eq!(status, 400, "{body}");
    // One level less fits.
    let deep = deep["d"].clone();
    let (status, _, body) = patch_tags(&hub, &id, None, json!({"tags": {"deep": deep}})).await;
    assert_eq!(status, 200, "{body}");

    for bad in [json!({}), json!({"tags": [1]}), json!({"tags": "x"})] {
        let (status, _, body) = patch_tags(&hub, &id, None, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], 400, "{body}");
    }
    let (status, _, body) = patch_tags(&hub, &unique("ghost"), None, json!({"tags": {}})).await;
    assert_eq!(status, 404, "{body}");
}

/// Concurrent unconditioned patches of different keys all land (the compare-and-swap retries),
/// and the version counts every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d42_concurrent_patches_all_apply() {
    let hub = Hub::start();
    let id = unique("tagc");
    hub.create_thing(&id).await;
    let (_, v0) = tags_of(&hub, &id).await;
    let writers = (0..8).map(|i| {
        let hub = &hub;
        let id = id.clone();
        async move {
            let (status, _, body) =
                patch_tags(hub, &id, None, json!({"tags": {"k": {format!("w{i}"): i}}})).await;
            assert_eq!(status, 200, "{body}");
        }
    });
    futures::future::join_all(writers).await;
    let (tags, v) = tags_of(&hub, &id).await;
    let want: serde_json::Map<String, Value> =
        (0..8).map(|i| (format!("w{i}"), json!(i))).collect();
    assert_eq!(tags, json!({ "k": want }));
    assert_eq!(v, v0 + 8);
}

/// `iothub things tag ID --patch JSON [--version N]`: the merged tags as JSON, exit code 4 on a
/// stale version (D-37), 2 for a patch that is not a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d42_cli_things_tag() {
    let hub = Hub::start();
    let id = unique("tagcli");
    let (status, body) = hub
        .post(
            "/things",
            json!({"thingId": id, "tags": {"loc": {"b": "b1", "f": 1}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, v0) = tags_of(&hub, &id).await;
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"));
        for (k, _) in std::env::vars() {
            if k.starts_with("IOTHUB_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("IOTHUB_URL", hub.base_url())
            .env("IOTHUB_TOKEN", ADMIN_TOKEN)
            .args(args)
            .output()
            .expect("run iothub")
    };
    let out = run(&[
        "things",
        "tag",
        &id,
        "--patch",
        r#"{"loc":{"f":2,"b":null},"owner":"ops"}"#,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("--json output");
    assert_eq!(got["tags"], json!({"loc": {"f": 2}, "owner": "ops"}));
    assert_eq!(got["version"], v0 + 1);

    let stale = v0.to_string();
    let out = run(&[
        "things",
        "tag",
        &id,
        "--patch",
        r#"{"owner":null}"#,
        "--version",
        &stale,
    ]);
    assert_eq!(out.status.code(), Some(4), "stale version is a 409");
    let out = run(&["things", "tag", &id, "--patch", "[1]"]);
    assert_eq!(out.status.code(), Some(2), "not an object");
    assert_eq!(
        tags_of(&hub, &id).await,
        (json!({"loc": {"f": 2}, "owner": "ops"}), v0 + 1)
    );
}
