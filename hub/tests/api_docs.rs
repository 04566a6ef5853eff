//! The API's description over real HTTP: `GET /api/v1/openapi.json` without a token, and
//! Swagger UI at `/api/docs` with every asset its page loads, served from the binary.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_open_and_tool_friendly() {
    let hub = Hub::start();
    let (status, ctype, text) = hub.get_text("/api/v1/openapi.json").await;
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let doc: Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["servers"][0]["url"], "/", "servers: {}", doc["servers"]);
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        }
    }
    // A token does not change the answer, and the admin routes still need one.
    let (status, with_token) = hub.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(with_token, doc);
    let (status, _) = hub.call_as(None, "GET", "/limits", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_page_and_assets() {
    let hub = Hub::start();
    let (status, ctype, page) = hub.get_text("/api/docs").await;
    assert_eq!(status, 200, "{page}");
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(page.contains("id=\"swagger-ui\""), "{page}");
    // Every asset the page references is served, with its type, and none from elsewhere.
    let assets: Vec<&str> = page
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
        .collect();
    assert_eq!(assets.len(), 3, "{assets:?}");
    for asset in assets {
        assert!(asset.starts_with("/api/docs/"), "{asset} is not the hub's");
        let (status, ctype, body) = hub.get_text(asset).await;
        assert_eq!(status, 200, "{asset}");
        let want = if asset.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(ctype.starts_with(want), "{asset}: {ctype}");
        assert!(!body.is_empty(), "{asset} is empty");
    }
    // The initializer points at the hub's own document; the bundle is Swagger UI's.
    let (_, _, init) = hub.get_text("/api/docs/swagger-initializer.js").await;
    assert!(init.contains("/api/v1/openapi.json"), "{init}");
    let (_, _, bundle) = hub.get_text("/api/docs/swagger-ui-bundle.js").await;
    assert!(
        bundle.contains("SwaggerUIBundle"),
        "not the Swagger UI bundle"
    );
    let (status, _, _) = hub.get_text("/api/docs/nope.js").await;
    assert_eq!(status, 404);
}
