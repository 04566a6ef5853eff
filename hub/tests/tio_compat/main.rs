//! tio compatibility, proven against tio's own requests: the fixtures in `fixtures.json` are what
//! tio's clients (its demo device and server, its integration tests, its web console; ruffjs/tio
//! 1.3.0) send, transcribed by hand with the tio file each comes from. They are replayed against
//! the real hub, and each test checks what the tio client expects back. Where the hub answers
//! differently on purpose, the test pins our answer and `docs/tio-compatibility.md` says why.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const FIXTURES: &str = include_str!("fixtures.json");

fn fixture(name: &str) -> Value {
    let all: Value = serde_json::from_str(FIXTURES).expect("fixtures.json is JSON");
    let f = all[name].clone();
    assert!(
        f["source"].is_string(),
        "fixture {name} names its tio source"
    );
    f
}

/// The fixture's text with `{thingId}` and `{token}` filled in.
fn fill(v: &Value, thing: &str, token: &str) -> Value {
    let text = v
        .to_string()
        .replace("{thingId}", thing)
        .replace("{token}", token);
    serde_json::from_str(&text).expect("filled fixture")
}

/// How a tio client authenticates.
enum Auth {
    /// `req.SetBasicAuth(user, password)`, as tio's demo server does.
    Basic(&'static str, &'static str),
    /// Our bearer token.
    Bearer,
}

/// Replays a REST fixture; returns the HTTP status and the body.
async fn replay(hub: &Hub, name: &str, thing: &str, auth: Auth) -> (u16, Value) {
    let f = fill(&fixture(name), thing, "");
    let method = reqwest::Method::from_bytes(f["method"].as_str().expect("method").as_bytes())
        .expect("http method");
    let url = format!("{}{}", hub.base_url(), f["path"].as_str().expect("path"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("client");
    let mut req = client.request(method, url);
    req = match auth {
        Auth::Basic(user, password) => req.basic_auth(user, Some(password)),
        Auth::Bearer => req.bearer_auth(ADMIN_TOKEN),
    };
    if !f["body"].is_null() {
        req = req
            .header("content-type", "application/json")
            .body(f["body"].to_string());
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Publishes an MQTT fixture as the thing `thing`.
async fn publish(c: &mut Client, name: &str, thing: &str, token: &str) {
    let f = fill(&fixture(name), thing, token);
    let topic = f["topic"].as_str().expect("topic");
    c.publish_json(topic, &f["payload"]).await;
}

/// tio's demo device reports its state with `"desired": null` and `"version": 0` every time.
/// On a hub started as S-3 says (no `--tio-compat`) the first report is accepted and every later
/// one is refused with 409 (the shadow is no longer at version 0), never silently erasing the
/// desired state; the refusal carries the request's token so a tio client can log it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tio_device_reports_on_a_default_hub_get_409_after_the_first() {
    let hub = Hub::start();
    let (id, _secret, mut dev) = hub.new_thing(Proto::V311, "tio-dev").await;
    publish(&mut dev, "report_state", &id, "tk-1").await;
    let (accepted, reply) = dev.shadow_reply(&id, "default", "update", "tk-1").await;
    assert!(accepted, "{reply}");
    assert_eq!(reply["version"], 1, "{reply}");
    publish(&mut dev, "report_state", &id, "tk-2").await;
    let (accepted, reply) = dev.shadow_reply(&id, "default", "update", "tk-2").await;
    assert!(!accepted, "{reply}");
    assert_eq!(reply["code"], 409, "{reply}");
    // tio's Basic auth is refused unless the hub runs with --tio-compat.
    let (status, body) = replay(&hub, "create_thing", "", Auth::Basic("admin", ADMIN_TOKEN)).await;
    assert_eq!(status, 401, "{body}");
}

/// With `--tio-compat`, a thing's update is read as tio reads it: `reported` only, and
/// `"version": 0` is no version check. A desired state set over REST (tio's own REST fixture)
/// survives every report, and the device sees it as a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tio_device_reports_with_tio_compat() {
    let hub = Hub::start_args(&["--tio-compat"]);
    let (id, _secret, mut dev) = hub.new_thing(Proto::V311, "tio-dev").await;
    // The device's first report, then the operator's desired colour (TestShadowSetDesired).
    publish(&mut dev, "report_state", &id, "tk-1").await;
    let (accepted, reply) = dev.shadow_reply(&id, "default", "update", "tk-1").await;
    assert!(accepted, "{reply}");
    let (status, body) = replay(&hub, "set_desired", &id, Auth::Bearer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 200, "tio checks the envelope's code: {body}");
    let delta = dev
        .expect_message(&shadow_topic(&id, "default", "update/delta"), STEP)
        .await;
    assert_eq!(delta["state"]["color"], "red-for-set-desired", "{delta}");
    assert_eq!(delta["clientToken"], "test-token", "{delta}");
    let docs = dev
        .expect_json(
            &shadow_topic(&id, "default", "update/documents"),
            STEP,
            |d| d["clientToken"] == "test-token",
        )
        .await;
    assert_eq!(
        docs["current"]["state"]["desired"]["color"], "red-for-set-desired",
        "{docs}"
    );
    assert!(
        docs["previous"]["state"]["desired"]["color"].is_null(),
        "{docs}"
    );
    // Every later report is accepted (version 0 is no check) and leaves desired alone.
    for (n, token) in ["tk-2", "tk-3"].into_iter().enumerate() {
        publish(&mut dev, "report_state", &id, token).await;
        let (accepted, reply) = dev.shadow_reply(&id, "default", "update", token).await;
        assert!(accepted, "{reply}");
        assert_eq!(reply["version"], json!(n as u64 + 3), "{reply}");
        assert_eq!(reply["state"]["reported"]["power"], "off", "{reply}");
        assert!(reply["state"].get("desired").is_none(), "{reply}");
    }
    let (status, shadow) = hub.rest_shadow(&id, "default").await;
    assert_eq!(status, 200);
    assert_eq!(
        shadow["state"]["desired"]["color"], "red-for-set-desired",
        "a tio report erased the desired state: {shadow}"
    );
    // A thing still cannot write desired: alone, it is refused (tio answers 400 too).
    let topic = shadow_topic(&id, "default", "update");
    dev.publish_json(
        &topic,
        &json!({"state": {"desired": {"color": "x"}}, "clientToken": "tk-d"}),
    )
    .await;
    let (accepted, reply) = dev.shadow_reply(&id, "default", "update", "tk-d").await;
    assert!(!accepted, "{reply}");
    assert_eq!(reply["code"], 400, "{reply}");
}

/// tio's REST client (its demo server and web console): Basic auth, things listed with the
/// trailing slash and 1-based pages, tags on tio's route with `"version": 0`, and tio's query
/// route and spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tio_rest_client_with_tio_compat() {
    let hub = Hub::start_args(&["--tio-compat"]);
    let basic = || Auth::Basic("admin", ADMIN_TOKEN);
    let (status, body) = replay(&hub, "create_thing", "", basic()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["thingId"], "example", "{body}");
    // tio's default admin password is not the token: refused.
    let (status, _) = replay(&hub, "create_thing", "", Auth::Basic("admin", "public")).await;
    assert_eq!(status, 401);
    // Its password works as a thing's MQTT secret (S-1.2).
    let mut dev = hub.connect_thing(Proto::V311, "example", "example").await;
    let rc = dev
        .subscribe(&format!("{}/#", thing_topic("example")))
        .await
        .expect("subscribe");
    assert!(rc < 0x80, "{rc:#x}");
    // The registry records the connection shortly after CONNACK (S-8.2).
    let page = eventually(STEP, || async {
        let (status, page) = replay(&hub, "list_things", "", basic()).await;
        assert_eq!(status, 200, "{page}");
        (page["data"]["content"][0]["connected"] == true).then_some(page)
    })
    .await
    .expect("the tio list shows the thing connected");
    assert_eq!(page["data"]["total"], 1, "{page}");
    assert_eq!(page["data"]["content"][0]["thingId"], "example", "{page}");

    // Tags with tio's version 0, twice: no version check.
    for _ in 0..2 {
        let (status, body) = replay(&hub, "set_tags", "example", basic()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["code"], 200, "{body}");
    }
    let (_, thing) = hub.rest_thing("example").await;
    assert_eq!(thing["tags"]["zone"], "Shanghai", "{thing}");
    hub.create_thing("elsewhere").await;
    let (status, page) = replay(&hub, "query_shadows", "", basic()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"]["total"], 1, "{page}");
    assert_eq!(page["data"]["content"][0]["thingId"], "example", "{page}");
    assert_eq!(
        page["data"]["content"][0]["tags"]["zone"], "Shanghai",
        "{page}"
    );
    // Page 2 of tio's 1-based paging is empty; 0 is not a tio page.
    let (status, body) = hub
        .post(
            "/things/shadows/query?pageIndex=2&pageSize=10",
            json!({"query": "select * from shadow"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["content"], json!([]), "{body}");
    let (status, _) = hub
        .post(
            "/things/shadows/query?pageIndex=0",
            json!({"query": "select * from shadow"}),
        )
        .await;
    assert_eq!(status, 400);
    // A named shadow called `tags` stays reachable behind tio's tags route.
    let (ok, reply) = dev
        .update("example", "tags", json!({"state": {"reported": {"a": 1}}}))
        .await;
    assert!(ok, "{reply}");
    let (status, shadow) = hub.rest_shadow("example", "tags").await;
    assert_eq!(status, 200);
    assert_eq!(shadow["state"]["reported"]["a"], 1, "{shadow}");
}

/// tio's method call (TestMethodInvoke): `respTimeout` is read as our `timeout`, the device's
/// answer comes back in `data`. A device that stays silent makes the call end after
/// `respTimeout` (1 s), not after our default 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tio_method_invoke() {
    let hub = Hub::start();
    let (id, _secret, mut dev) = hub.new_thing(Proto::V311, "tio-m").await;
    let call = {
        let (id, http) = (id.clone(), hub.http);
        tokio::spawn(async move { replay_detached(http, "invoke_method", &id).await })
    };
    let req = dev
        .expect_message(&format!("{}/methods/hello/req", thing_topic(&id)), STEP)
        .await;
    assert_eq!(req["data"]["hello"], "world", "{req}");
    let token = req["clientToken"]
        .as_str()
        .expect("request token")
        .to_owned();
    publish(&mut dev, "method_response", &id, &token).await;
    let (status, body) = call.await.expect("call task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 200, "{body}");
    assert_eq!(body["data"]["code"], 200, "{body}");
    assert_eq!(body["data"]["message"], "OK from device", "{body}");
    assert_eq!(body["data"]["data"]["hello"], "world", "{body}");

    // Silent device: respTimeout (1 s) applies. Our answer is HTTP 504 (tio: HTTP 200 with
    // code 504 in the envelope; see docs/tio-compatibility.md).
    let started = Instant::now();
    let (status, body) = replay(&hub, "invoke_method", &id, Auth::Bearer).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "respTimeout was not read: the call took {:?}",
        started.elapsed()
    );
    // Both names at once is ambiguous: 400.
    let (status, body) = hub
        .post(
            &format!("/things/{id}/methods/hello"),
            json!({"respTimeout": 1, "timeout": 2}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// `replay` for a spawned task (the hub stays with the test).
async fn replay_detached(http: std::net::SocketAddr, name: &str, thing: &str) -> (u16, Value) {
    let f = fill(&fixture(name), thing, "");
    let url = format!("http://{http}{}", f["path"].as_str().expect("path"));
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(f["body"].to_string())
        .send()
        .await
        .expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// tio's device topics that need nothing from us: NTP, property messages and presence, as its
/// demo server subscribes to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tio_ntp_property_and_presence() {
    let hub = Hub::start();
    let mut svc = hub.connect_service(Proto::V311).await;
    let subs = fixture("service_subscriptions");
    for filter in subs["filters"].as_array().expect("filters") {
        let rc = svc
            .subscribe(filter.as_str().expect("filter"))
            .await
            .expect("subscribe");
        assert!(rc < 0x80, "{filter}: {rc:#x}");
    }
    let (id, _secret, mut dev) = hub.new_thing(Proto::V311, "tio-n").await;
    let presence = svc
        .expect_json(&format!("{}/presence", thing_topic(&id)), STEP, |p| {
            p["eventType"] == "connected"
        })
        .await;
    for field in fixture("presence_fields")["fields"]
        .as_array()
        .expect("fields")
    {
        let field = field.as_str().expect("field");
        assert!(
            presence.get(field).is_some(),
            "presence lacks {field}: {presence}"
        );
    }
    assert_eq!(presence["thingId"], id.as_str());

    publish(&mut dev, "property", &id, "").await;
    let prop = svc
        .expect_message(&format!("{}/messages/property", thing_topic(&id)), STEP)
        .await;
    assert_eq!(prop, fixture("property")["payload"]);

    publish(&mut dev, "ntp_request", &id, "").await;
    let resp = dev
        .expect_message(&format!("{}/ntp/resp", thing_topic(&id)), STEP)
        .await;
    assert_eq!(resp["clientSendTime"], 1_700_000_000_000u64, "{resp}");
    let recv = resp["serverRecvTime"].as_u64().expect("serverRecvTime");
    let send = resp["serverSendTime"].as_u64().expect("serverSendTime");
    assert!(recv <= send, "{resp}");
}
