//! End-to-end tests of the REST API (S-9): registry, tags, shadows over REST, query, system
//! routes and the error envelope.

#[path = "../support/mod.rs"]
mod support;

mod shadows_query;
mod system;
mod things;

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
