//! API tests: the real router over a real SQLite store in a tempdir, the real shadow service
//! and a recording fake [`Bus`], driven with `tower::ServiceExt::oneshot` (no sockets).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use bytes::Bytes;
use iothub_spec::limits::Limits;
use iothub_spec::topic::Topic;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, router};
use crate::auth::CredentialCache;
use crate::bus::Bus;
use crate::method::Methods;
use crate::metrics::Metrics;
use crate::shadow::ShadowService;
use crate::store::commit::GroupCommitter;
use crate::things::Things;

mod things;

const TOKEN: &str = "test-admin-token";

/// Records everything the hub sends out.
#[derive(Default)]
struct FakeBus {
    published: Mutex<Vec<(String, Vec<u8>, bool)>>,
    disconnected: Mutex<Vec<String>>,
    connected: Mutex<HashSet<String>>,
}

#[async_trait::async_trait]
impl Bus for FakeBus {
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        self.published
            .lock()
            .unwrap()
            .push((topic.to_owned(), payload.to_vec(), retain));
    }
    async fn disconnect(&self, client_id: &str) {
        self.connected.lock().unwrap().remove(client_id);
        self.disconnected.lock().unwrap().push(client_id.to_owned());
    }
    fn is_connected(&self, client_id: &str) -> bool {
        self.connected.lock().unwrap().contains(client_id)
    }
}

impl FakeBus {
    /// Lifecycle events published for `thing`, as their JSON bodies.
    fn lifecycle(&self, thing: &str) -> Vec<Value> {
        let topic = Topic::LifecycleEvent { thing }.to_string();
        self.published
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| *t == topic)
            .map(|(_, p, _)| serde_json::from_slice(p).unwrap())
            .collect()
    }
}

struct Harness {
    app: Router,
    bus: Arc<FakeBus>,
    credentials: Arc<CredentialCache>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let store = crate::store::open(&url).await.unwrap();
    let bus = Arc::new(FakeBus::default());
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let committer = GroupCommitter::spawn(store.clone(), 64, 1024);
    let limits = Limits::default();
    let shadows = ShadowService::spawn(
        store.clone(),
        committer,
        dyn_bus.clone(),
        limits,
        Default::default(),
    );
    let metrics = Metrics::new();
    let credentials = Arc::new(CredentialCache::new(16));
    let things = Things::new(
        store.clone(),
        dyn_bus.clone(),
        shadows.clone(),
        credentials.clone(),
        metrics.clone(),
    );
    let state = AppState::new(
        store,
        shadows,
        Methods::new(dyn_bus),
        things,
        limits,
        TOKEN,
        metrics,
    );
    Harness {
        app: router(state),
        bus,
        credentials,
        _dir: dir,
    }
}

impl Harness {
    async fn raw(&self, req: Request<Body>) -> (StatusCode, Option<String>, Bytes) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, ctype, body)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(body.unwrap_or_else(Body::empty)).unwrap();
        let (status, ctype, bytes) = self.raw(req).await;
        assert_eq!(
            ctype.as_deref(),
            Some("application/json"),
            "{method} {path}: not JSON"
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_envelope(status, &v);
        (status, v)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(
            method,
            path,
            Some(TOKEN),
            body.map(|b| Body::from(b.to_string())),
        )
        .await
    }

    async fn create(&self, id: &str) -> Value {
        let (s, b) = self
            .call("POST", "/api/v1/things", Some(json!({ "thingId": id })))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["data"].clone()
    }
}

/// S-9.1: `{"code","message","data"}` with `code` == HTTP status.
fn assert_envelope(status: StatusCode, v: &Value) {
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 3, "envelope has exactly code/message/data: {v}");
    assert_eq!(v["code"], json!(status.as_u16()), "{v}");
    assert!(v["message"].is_string(), "{v}");
    assert!(obj.contains_key("data"), "{v}");
}

fn ids(page: &Value) -> Vec<String> {
    page["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["thingId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn query_happy_path_and_errors() {
    let h = harness().await;
    for (id, building, temp) in [("q1", "b1", 25), ("q2", "b1", 15), ("q3", "b2", 30)] {
        h.create(id).await;
        let (s, b) = h
            .call(
                "PUT",
                &format!("/api/v1/things/{id}/tags"),
                Some(json!({"tags": {"location": {"building": building}}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = h
            .call(
                "PUT",
                &format!("/api/v1/things/{id}/shadows/default/state/desired"),
                Some(json!({"state": {"desired": {"temp": temp, "fw": "1.5"}}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    h.create("q4").await;
    let q = |text: &str| json!({ "query": text });
    let cases = [
        (
            "SELECT * FROM things WHERE tags.location.building = 'b1'",
            vec!["q1", "q2"],
        ),
        (
            "SELECT * FROM things WHERE state.desired.temp > 20",
            vec!["q1", "q3"],
        ),
        (
            "SELECT * FROM things WHERE tags.location.building = 'b1' AND state.desired.fw < '2.0' AND state.desired.temp >= 20",
            vec!["q1"],
        ),
        (
            "SELECT * FROM things WHERE NOT (tags.location.building = 'b1') AND tags.location IS NOT NULL",
            vec!["q3"],
        ),
        (
            "SELECT * FROM things WHERE tags.location IS NULL",
            vec!["q4"],
        ),
        (
            "SELECT * FROM things WHERE thingId = 'q2' OR thingId = 'q4'",
            vec!["q2", "q4"],
        ),
        (
            "SELECT * FROM things WHERE enabled = true AND connected = false",
            vec!["q1", "q2", "q3", "q4"],
        ),
        (
            "SELECT * FROM things ORDER BY state.desired.temp DESC NULLS LAST",
            vec!["q3", "q1", "q2", "q4"],
        ),
    ];
    for (text, want) in cases {
        let (s, b) = h.call("POST", "/api/v1/things/query", Some(q(text))).await;
        assert_eq!(s, StatusCode::OK, "{text}: {b}");
        assert_eq!(ids(&b["data"]), want, "{text}: {b}");
        assert_eq!(b["data"]["total"], json!(want.len()));
    }
    // Paging from the query string and from the body.
    let (_, b) = h
        .call(
            "POST",
            "/api/v1/things/query?pageIndex=1&pageSize=1",
            Some(q(
                "SELECT * FROM things WHERE tags.location.building = 'b1'",
            )),
        )
        .await;
    assert_eq!(ids(&b["data"]), ["q2"]);
    assert_eq!(b["data"]["total"], json!(2));
    let (_, b) = h
        .call(
            "POST",
            "/api/v1/things/query",
            Some(json!({"query": "SELECT * FROM things", "pageIndex": 1, "pageSize": 3})),
        )
        .await;
    assert_eq!(ids(&b["data"]), ["q4"]);

    for bad in [
        "SELEKT * FROM things",
        "SELECT * FROM users",
        "SELECT * FROM things WHERE thingId = 'a'; DROP TABLE things",
        "SELECT * FROM things WHERE tags.\"x') OR 1=1 --\" = 1",
        "SELECT * FROM things WHERE password_hash = 'x'",
    ] {
        let (s, b) = h.call("POST", "/api/v1/things/query", Some(q(bad))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
    }
    // A quote inside a literal is data.
    let (s, b) = h
        .call(
            "POST",
            "/api/v1/things/query",
            Some(q(
                "SELECT * FROM things WHERE thingId = 'q1'' OR ''1''=''1'",
            )),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["total"], json!(0));
    let (_, all) = h.call("GET", "/api/v1/things", None).await;
    assert_eq!(all["data"]["total"], json!(4), "things survive");
}

#[tokio::test]
async fn shadow_routes_keep_their_codes() {
    let h = harness().await;
    h.create("s1").await;
    let base = "/api/v1/things/s1/shadows/default";
    let (s, _) = h.call("GET", base, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = h
        .call(
            "PUT",
            &format!("{base}/state/desired"),
            Some(json!({"state": {"desired": {"led": "on"}}, "clientToken": "c1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["version"], json!(1));
    let (s, b) = h.call("GET", base, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["state"]["desired"], json!({"led": "on"}));
    let (s, _) = h
        .call(
            "PUT",
            &format!("{base}/state/desired"),
            Some(json!({"state": {"desired": {"led": "off"}}, "version": 7})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let big = "x".repeat(Limits::default().max_request_payload + 1);
    let (s, _) = h
        .call(
            "PUT",
            &format!("{base}/state/desired"),
            Some(json!({"state": {"desired": {"b": big}}})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = h
        .call(
            "PUT",
            "/api/v1/things/s1/shadows/bad.name/state/desired",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h.call("DELETE", base, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.call("DELETE", base, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn method_errors() {
    let h = harness().await;
    h.create("m1").await;
    let (s, _) = h
        .call(
            "POST",
            "/api/v1/things/ghost/methods/reboot",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(
            "POST",
            "/api/v1/things/m1/methods/bad:name",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for t in [0, 301] {
        let (s, _) = h
            .call(
                "POST",
                "/api/v1/things/m1/methods/reboot",
                Some(json!({"timeout": t})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "timeout {t}");
    }
    let (s, _) = h
        .call(
            "POST",
            "/api/v1/things/m1/methods/reboot",
            Some(json!({"connectTimeout": 301})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, b) = h
        .call(
            "POST",
            "/api/v1/things/m1/methods/reboot",
            Some(json!({"data": {"x": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "offline: {b}");
}

#[tokio::test]
async fn bad_bodies_are_400_envelopes() {
    let h = harness().await;
    h.create("b1").await;
    let raw = |s: &'static str| Some(Body::from(s));
    for (method, path, body) in [
        ("POST", "/api/v1/things", raw("{not json")),
        ("POST", "/api/v1/things", raw("")),
        ("POST", "/api/v1/things", raw("{\"thingId\": 5}")),
        ("POST", "/api/v1/things", raw("{\"tags\": \"x\"}")),
        ("PATCH", "/api/v1/things/b1", raw("{}")),
        ("PATCH", "/api/v1/things/b1", raw("{\"enabled\": \"yes\"}")),
        ("PUT", "/api/v1/things/b1/tags", raw("{\"tags\": [1]}")),
        (
            "PUT",
            "/api/v1/things/b1/tags",
            raw("{\"tags\": {}, \"version\": \"1\"}"),
        ),
        ("POST", "/api/v1/things/query", raw("{\"query\": 5}")),
        ("POST", "/api/v1/things/batch", raw("{\"things\": \"x\"}")),
        (
            "POST",
            "/api/v1/things/b1/methods/m",
            raw("{\"timeout\": \"x\"}"),
        ),
    ] {
        let (s, b) = h.send(method, path, Some(TOKEN), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {b}");
    }
}

#[tokio::test]
async fn auth_routes_and_limits() {
    let h = harness().await;
    // Missing and wrong token → 401 envelope, on every /api/v1 route but the API description.
    for path in [
        "/api/v1/things",
        "/api/v1/limits",
        "/api/v1/things/t1/shadows/tags",
    ] {
        let (s, _) = h.send("GET", path, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        let (s, _) = h.send("GET", path, Some("nope"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (s, _) = h
        .send("POST", "/api/v1/things", None, Some(Body::from("{}")))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Unknown route and wrong method → envelopes.
    let (s, _) = h.call("GET", "/api/v1/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.send("GET", "/nope", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.call("PUT", "/api/v1/things", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    // Body over the limit → 413 envelope.
    let big = format!("{{\"thingId\":\"{}\"}}", "x".repeat(super::MAX_BODY));
    let (s, _) = h
        .send("POST", "/api/v1/things", Some(TOKEN), Some(Body::from(big)))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Limits.
    let (s, b) = h.call("GET", "/api/v1/limits", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"], serde_json::to_value(Limits::default()).unwrap());
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let h = harness().await;
    let (s, b) = h.send("GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["status"], json!("ok"));

    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let (s, ctype, text) = h.raw(req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.unwrap().starts_with("text/plain"));
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(text.contains("# TYPE iothub_rest_requests_total counter"));
    assert!(
        text.contains("iothub_rest_requests_total{class=\"2xx\"} 1"),
        "{text}"
    );

    // No token: the document describes the API and discloses nothing.
    let req = Request::get("/api/v1/openapi.json")
        .body(Body::empty())
        .unwrap();
    let (s, _, bytes) = h.raw(req).await;
    assert_eq!(s, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["servers"][0]["url"], json!("/"));
    let mut ids = std::collections::BTreeSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.clone()), "operationId {id} is not unique");
        }
    }
    assert!(operations >= 24, "{operations} operations");
    assert!(doc["paths"]["/api/v1/openapi.json"]["get"]["security"].is_null());
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/things",
        "/api/v1/things/batch",
        "/api/v1/things/query",
        "/api/v1/things/{id}",
        "/api/v1/things/{id}/tags",
        "/api/v1/things/{id}/shadows/{name}",
        "/api/v1/things/{id}/shadows/{name}/state/desired",
        "/api/v1/things/{id}/methods/{method}",
        "/api/v1/limits",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "OpenAPI lacks {p}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[test]
fn basic_auth_only_when_enabled_and_only_with_the_token() {
    use base64::Engine as _;
    let basic = |cred: &str| {
        let mut h = HeaderMap::new();
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(cred)
        );
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    };
    let good = basic(&format!("admin:{TOKEN}"));
    assert!(!super::admin_ok(&good, TOKEN, false), "off by default");
    assert!(super::admin_ok(&good, TOKEN, true));
    // Any user name; the password must be the token, whole.
    assert!(super::admin_ok(&basic(&format!("x:{TOKEN}")), TOKEN, true));
    assert!(!super::admin_ok(&basic("admin:public"), TOKEN, true));
    assert!(!super::admin_ok(
        &basic(&format!("admin:{TOKEN}x")),
        TOKEN,
        true
    ));
    assert!(!super::admin_ok(&basic(TOKEN), TOKEN, true), "no colon");
    let mut garbage = HeaderMap::new();
    garbage.insert(header::AUTHORIZATION, "Basic %%%".parse().unwrap());
    assert!(!super::admin_ok(&garbage, TOKEN, true));
    // An empty admin token never matches.
    assert!(!super::admin_ok(&basic("admin:"), "", true));
    let mut bearer = HeaderMap::new();
    bearer.insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    assert!(super::admin_ok(&bearer, TOKEN, false));
}
