//! REST token scopes (D-58, issue 18 item 3c): a `registry` token creates and deletes things and
//! nothing else, a `read-only` token reads and changes nothing; refusals are 403 (a known token
//! without the scope) or 401 (no known token), in the envelope. Real hub, real HTTP.

#[allow(unused_imports)]
mod support;

use serde_json::json;
use support::{Hub, assert_envelope, unique};

const REGISTRY: &str = "registry-token-0123456789";
const READER: &str = "reader-token-0123456789ab";

fn hub() -> Hub {
    Hub::start_args(&[
        "--api-token",
        &format!("registry:{REGISTRY}"),
        "--api-token",
        &format!("read-only:{READER}"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_token_creates_and_deletes_things_and_nothing_else() {
    let hub = hub();
    let id = unique("reg");
    let as_registry = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let hub = &hub;
        async move { hub.call_as(Some(REGISTRY), method, &path, body).await }
    };

    let (status, body) = as_registry("POST", "/things".into(), Some(json!({"thingId": id}))).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["data"]["password"].is_string(),
        "the secret comes back once: {body}"
    );
    let batch = [unique("reg"), unique("reg")];
    let (status, body) = as_registry(
        "POST",
        "/things/batch".into(),
        Some(json!({"things": [{"thingId": batch[0]}, {"thingId": batch[1]}]})),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");

    // Everything else is 403, in the envelope, and changes nothing.
    for (method, path, body) in [
        ("GET", "/things".to_owned(), None),
        ("GET", format!("/things/{id}"), None),
        (
            "PATCH",
            format!("/things/{id}"),
            Some(json!({"enabled": false})),
        ),
        (
            "PUT",
            format!("/things/{id}/tags"),
            Some(json!({"tags": {"a": 1}})),
        ),
        (
            "PUT",
            format!("/things/{id}/shadows/default/state/desired"),
            Some(json!({"state": {"desired": {"x": 1}}})),
        ),
        (
            "POST",
            format!("/things/{id}/methods/reboot"),
            Some(json!({"timeout": 1})),
        ),
        (
            "POST",
            "/things/query".to_owned(),
            Some(json!({"query": "SELECT * FROM things"})),
        ),
        ("GET", "/jobs".to_owned(), None),
        ("DELETE", "/configurations/c1".to_owned(), None),
    ] {
        let (status, body) = as_registry(method, path.clone(), body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_envelope(status, &body);
    }
    let (_, thing) = hub.rest_thing(&id).await;
    assert_eq!(thing["enabled"], true, "the refused PATCH changed nothing");

    let (status, body) = as_registry("DELETE", format!("/things/{id}"), None).await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, _) = hub.rest_thing(&id).await;
    assert_eq!(status, 404, "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_reads_and_changes_nothing_and_unknown_tokens_are_401() {
    let hub = hub();
    let id = unique("ro");
    hub.create_thing(&id).await;
    for path in [
        "/things".to_owned(),
        format!("/things/{id}"),
        "/jobs".to_owned(),
        "/limits".to_owned(),
    ] {
        let (status, body) = hub.call_as(Some(READER), "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = hub
        .call_as(
            Some(READER),
            "POST",
            "/things/query",
            Some(json!({"query": format!("SELECT * FROM things WHERE thingId = '{id}'")})),
        )
        .await;
    assert_eq!(status, 200, "a query is a read: {body}");
    for (method, path, body) in [
        (
            "POST",
            "/things".to_owned(),
            Some(json!({"thingId": unique("ro")})),
        ),
        ("DELETE", format!("/things/{id}"), None),
        (
            "PATCH",
            format!("/things/{id}"),
            Some(json!({"enabled": false})),
        ),
    ] {
        let (status, body) = hub.call_as(Some(READER), method, &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_envelope(status, &body);
    }
    let (status, _) = hub.rest_thing(&id).await;
    assert_eq!(status, 200, "still there");

    for token in [None, Some("registry-token-0123456780"), Some("")] {
        let (status, body) = hub.call_as(token, "GET", "/things", None).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_envelope(status, &body);
    }
}

#[test]
fn bad_scoped_tokens_stop_the_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"))
        .args(["--api-token", "root:0123456789abcdef0123"])
        .output()
        .expect("run iothub");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown scope"), "{stderr}");
}
