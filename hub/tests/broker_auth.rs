//! D-57 over real HTTP: `POST /api/v1/broker/authn` and `/authz` as EMQX 5 calls them, plain
//! JSON requests with the broker's own bearer token, against a real hub process.

mod support;

use serde_json::{Value, json};
use support::*;

/// The `--broker-auth-token` of the test hubs.
const BROKER_TOKEN: &str = "test-broker-token";

const ALLOW: &str = "allow";
const DENY: &str = "deny";

fn broker_hub() -> Hub {
    Hub::start_args(&["--broker-auth-token", BROKER_TOKEN])
}

/// A POST to `/api/v1/broker/{route}` with the broker token: status and body.
async fn ask(hub: &Hub, route: &str, body: Value) -> (u16, Value) {
    hub.call_as(
        Some(BROKER_TOKEN),
        "POST",
        &format!("/broker/{route}"),
        Some(body),
    )
    .await
}

/// The authentication result EMQX would read, checking the body's whole shape.
async fn authn(hub: &Hub, clientid: &str, username: &str, password: &str) -> String {
    let request = json!({
        "clientid": clientid, "username": username, "password": password, "peerhost": "127.0.0.1"
    });
    let (status, body) = ask(hub, "authn", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["is_superuser"], json!(false), "{body}");
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "only result and is_superuser: {body}"
    );
    body["result"].as_str().unwrap_or_default().to_owned()
}

/// The authorization result for `username` (client id = user name) doing `action` on `topic`.
async fn authz(hub: &Hub, username: &str, action: &str, topic: &str) -> String {
    authz_as(hub, username, username, action, topic).await
}

async fn authz_as(hub: &Hub, clientid: &str, username: &str, action: &str, topic: &str) -> String {
    let request = json!({
        "clientid": clientid, "username": username, "topic": topic, "action": action, "qos": 1
    });
    let (status, body) = ask(hub, "authz", request).await;
    assert_eq!(status, 200, "{body}");
    body["result"].as_str().unwrap_or_default().to_owned()
}

/// S-1.2, S-1.3, S-1.5 and D-33 decide the answer, as they decide a CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authn_allows_only_what_connect_allows() {
    let hub = broker_hub();
    let id = unique("ba");
    let secret = hub.create_thing(&id).await;

    assert_eq!(authn(&hub, &id, &id, &secret).await, ALLOW, "right secret");
    assert_eq!(authn(&hub, &id, &id, "wrong").await, DENY, "wrong secret");
    assert_eq!(
        authn(&hub, "other-client", &id, &secret).await,
        DENY,
        "client id differs from the user name"
    );
    assert_eq!(
        authn(&hub, "nobody-here", "nobody-here", &secret).await,
        DENY,
        "unknown thing: deny, never ignore"
    );
    assert_eq!(authn(&hub, &id, "", &secret).await, DENY, "no user name");
    // Service users (S-1.5) as configured; never superusers.
    assert_eq!(authn(&hub, "svc-1", SVC_USER, SVC_SECRET).await, ALLOW);
    assert_eq!(authn(&hub, "svc-1", SVC_USER, "wrong").await, DENY);
    assert_eq!(authn(&hub, "x", "$nobody", SVC_SECRET).await, DENY);

    // A disabled thing is refused with its right secret, and let in again once enabled.
    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({ "enabled": false }))
        .await;
    assert_eq!(status, 200, "disable: {body}");
    assert_eq!(authn(&hub, &id, &id, &secret).await, DENY, "disabled thing");
    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({ "enabled": true }))
        .await;
    assert_eq!(status, 200, "enable: {body}");
    assert_eq!(authn(&hub, &id, &id, &secret).await, ALLOW, "enabled again");

    // A deleted thing is unknown.
    let (status, body) = hub.delete(&format!("/things/{id}")).await;
    assert!((200..300).contains(&status), "delete: {status} {body}");
    assert_eq!(authn(&hub, &id, &id, &secret).await, DENY, "deleted thing");
}

/// S-2.1: a thing's own topics, nothing of another thing's, nothing outside the contract;
/// publish and subscribe have their own lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_holds_things_to_their_allow_list() {
    let hub = broker_hub();
    let me = "dev-a";
    let t = thing_topic(me);
    let other = thing_topic("dev-b");
    let allowed = [
        ("publish", shadow_topic(me, "default", "update")),
        ("publish", shadow_topic(me, "cfg", "get")),
        ("publish", format!("{t}/methods/reboot/resp")),
        ("publish", format!("{t}/ntp/req")),
        ("publish", format!("{t}/ota/task/result")),
        ("publish", format!("{t}/messages/property")),
        ("publish", format!("{t}/messages/will")),
        ("publish", format!("$iothub/user/things/{me}/x/y")),
        ("subscribe", format!("{t}/#")),
        ("subscribe", shadow_topic(me, "default", "update/delta")),
        ("subscribe", format!("{t}/shadows/name/+/update/accepted")),
        ("subscribe", format!("$iothub/user/things/{me}/#")),
    ];
    for (action, topic) in &allowed {
        assert_eq!(
            authz(&hub, me, action, topic).await,
            ALLOW,
            "{action} {topic}"
        );
    }
    let denied = [
        // Another thing's topics.
        ("publish", shadow_topic("dev-b", "default", "update")),
        ("subscribe", format!("{other}/#")),
        ("subscribe", "$iothub/things/+/messages/property".to_owned()),
        // The hub's replies are not the thing's to publish; requests are no filters to hold.
        ("publish", shadow_topic(me, "default", "update/accepted")),
        ("publish", format!("{t}/presence")),
        ("publish", format!("{t}/#")),
        // Outside the contract.
        ("publish", "plain/topic".to_owned()),
        ("subscribe", "#".to_owned()),
        ("subscribe", "$SYS/#".to_owned()),
        // D-35: a thing never shares a subscription.
        ("subscribe", format!("$share/g/{t}/#")),
        // The bare T is not below T (D-8).
        ("subscribe", t.clone()),
    ];
    for (action, topic) in &denied {
        assert_eq!(
            authz(&hub, me, action, topic).await,
            DENY,
            "{action} {topic}"
        );
    }
    // The client must be the thing it names (S-1.2).
    let update = shadow_topic(me, "default", "update");
    assert_eq!(authz_as(&hub, "dev-b", me, "publish", &update).await, DENY);
    // Service users: anything under $iothub/, shared groups too, nothing else (S-1.5, D-35).
    assert_eq!(
        authz_as(&hub, "svc-9", SVC_USER, "publish", &update).await,
        ALLOW
    );
    let all_props = "$share/workers/$iothub/things/+/messages/property";
    assert_eq!(
        authz_as(&hub, "svc-9", SVC_USER, "subscribe", all_props).await,
        ALLOW
    );
    assert_eq!(
        authz_as(&hub, "svc-9", SVC_USER, "subscribe", "#").await,
        DENY
    );
}

/// The same decision as the embedded broker's: a thing connected to the hub itself gets the
/// SUBACK the authorization route predicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_agrees_with_the_embedded_broker() {
    let hub = broker_hub();
    let id = unique("same");
    let secret = hub.create_thing(&id).await;
    let mut client = hub.connect_thing(Proto::V5, &id, &secret).await;
    let t = thing_topic(&id);
    for filter in [
        format!("{t}/#"),
        format!("{t}/shadows/name/+/update/delta"),
        format!("$iothub/user/things/{id}/#"),
        thing_topic("someone-else") + "/#",
        "$iothub/things/+/presence".to_owned(),
        format!("$share/g/{t}/#"),
        "#".to_owned(),
    ] {
        let predicted = authz(&hub, &id, "subscribe", &filter).await;
        let code = client.subscribe(&filter).await.expect("still connected");
        let granted = if code < 0x80 { ALLOW } else { DENY };
        assert_eq!(predicted, granted, "{filter}: SUBACK {code:#x}");
    }
}

/// The broker's token, not the admin's; 401 with a Bearer challenge otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_need_the_broker_token() {
    let hub = broker_hub();
    let body = json!({"clientid": "a", "username": "a", "password": "p"});
    for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
        for route in ["/broker/authn", "/broker/authz"] {
            let (status, answer) = hub.call_as(token, "POST", route, Some(body.clone())).await;
            assert_eq!(status, 401, "{route} with {token:?}: {answer}");
            assert_envelope(status, &answer);
        }
    }
    // The broker's token opens nothing else.
    let (status, _) = hub
        .call_as(Some(BROKER_TOKEN), "GET", "/things", None)
        .await;
    assert_eq!(status, 401);
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!("{}/api/v1/broker/authn", hub.base_url()))
        .json(&body)
        .send()
        .await
        .expect("HTTP");
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
}

/// Malformed requests: 400 (or 413) with the hub's envelope, which EMQX reads as `ignore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400() {
    let hub = broker_hub();
    let bad_bodies: [(&str, &[u8]); 7] = [
        ("authn", b"{not json"),
        ("authn", b""),
        ("authn", br#"{"clientid":"a","username":"a"}"#),
        ("authn", br#"{"clientid":"a","username":"a","password":7}"#),
        (
            "authn",
            br#"{"clientid":"a","username":"a","password":"p","peerhost":"not-an-ip"}"#,
        ),
        ("authz", br#"{"clientid":"a","username":"a","topic":"x"}"#),
        (
            "authz",
            br#"{"clientid":"a","username":"a","topic":"x","action":"all"}"#,
        ),
    ];
    for (route, raw) in bad_bodies {
        let (status, body) = hub
            .call_raw(
                Some(BROKER_TOKEN),
                "POST",
                &format!("/broker/{route}"),
                Some(raw.to_vec()),
                "application/json",
            )
            .await;
        assert_eq!(
            status,
            400,
            "{route} {}: {body}",
            String::from_utf8_lossy(raw)
        );
        assert_envelope(status, &body);
    }
    // Bounded: a body over 16 KiB is refused before it is parsed.
    let huge = json!({"clientid": "a", "username": "a", "password": "p".repeat(20_000)});
    let (status, body) = ask(&hub, "authn", huge).await;
    assert_eq!(status, 413, "{body}");
    assert_envelope(status, &body);
    // Fields EMQX may add are ignored.
    let extra = json!({"clientid": "a", "username": "a", "password": "p", "proto_name": "MQTT"});
    let (status, body) = ask(&hub, "authn", extra).await;
    assert_eq!(
        (status, body["result"].clone()),
        (200, json!(DENY)),
        "{body}"
    );
    // Only POST.
    let (status, _) = hub
        .call_as(Some(BROKER_TOKEN), "GET", "/broker/authn", None)
        .await;
    assert_eq!(status, 405);
}

/// Off by default: without `--broker-auth-token` the routes do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_routes_are_404() {
    let hub = Hub::start();
    let body = json!({"clientid": "a", "username": "a", "password": "p"});
    for token in [None, Some(BROKER_TOKEN), Some(ADMIN_TOKEN)] {
        for route in ["/broker/authn", "/broker/authz"] {
            let (status, answer) = hub.call_as(token, "POST", route, Some(body.clone())).await;
            assert_eq!(status, 404, "{route} with {token:?}: {answer}");
            assert_envelope(status, &answer);
        }
    }
}

/// The routes are in the OpenAPI document, with their own security scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_are_described() {
    let hub = broker_hub();
    let (status, doc) = hub.get("/openapi.json").await;
    assert_eq!(status, 200);
    for (path, id) in [
        ("/api/v1/broker/authn", "brokerAuthenticate"),
        ("/api/v1/broker/authz", "brokerAuthorize"),
    ] {
        let op = &doc["paths"][path]["post"];
        assert_eq!(op["operationId"], json!(id), "{path}: {op}");
        assert_eq!(op["security"], json!([{"broker": []}]), "{path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["broker"]["scheme"],
        json!("bearer")
    );
}
