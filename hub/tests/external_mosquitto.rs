//! The hub on an external Mosquitto 2.0 (issue 23, D-60..D-66): a real Mosquitto with its
//! dynamic-security plugin, started by each test on a free loopback port in a temp dir, set up
//! exactly as docs/running-at-scale.md says, and the real hub joined to it with `--broker`.
//! Devices (the SDK and raw MQTT clients) connect to Mosquitto only.
//!
//! Needs `/usr/sbin/mosquitto` and `mosquitto_ctrl` (Debian's `mosquitto` package; `scripts/test`
//! installs it).

#[allow(unused_imports)]
mod support;

use serde_json::json;
use support::mosquitto::{HubOnBroker as _, Mosquitto};
use support::{Client, ConnectError, Hub, Proto, QUIET, STEP, eventually, thing_topic, unique};

/// Creates a thing over REST and waits until Mosquitto lets it in (its account is applied
/// before the REST answer, so the first attempt should do).
async fn new_thing(hub: &Hub, prefix: &str) -> (String, String) {
    let id = unique(prefix);
    let secret = hub.create_thing(&id).await;
    (id, secret)
}

async fn connect(m: &Mosquitto, id: &str, secret: &str) -> Result<Client, ConnectError> {
    Client::connect(Proto::V5, m.addr, id, id, secret).await
}

async fn wait_connected(hub: &Hub, id: &str, want: bool) -> bool {
    eventually(STEP, || async {
        let (_, t) = hub.rest_thing(id).await;
        (t["connected"] == want).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_shadow_delta_method_and_presence_through_mosquitto() {
    let m = Mosquitto::start();
    let hub = m.hub();
    let (id, secret) = new_thing(&hub, "ext-sdk").await;
    let options = iothub_sdk::ThingOptions::with_addr(&id, &secret, &m.addr.to_string())
        .expect("options")
        .on_method(
            "reboot",
            |req| async move { Ok(json!({ "asked": req.data })) },
        )
        .expect("method handler");
    let device = iothub_sdk::Thing::connect(options)
        .await
        .unwrap_or_else(|e| panic!("device connects: {e}\n{}\n{}", hub.stderr(), m.log()));
    assert!(
        wait_connected(&hub, &id, true).await,
        "presence online: {}",
        hub.stderr()
    );

    // Report, then a desired change from REST arrives as a delta and is reported back.
    let shadow = device.shadow("default");
    shadow
        .report(&json!({"fw": "1.0"}))
        .await
        .unwrap_or_else(|e| panic!("report: {e}\n{}", hub.stderr()));
    let mut deltas = shadow.deltas().expect("deltas");
    let (status, body) = hub
        .put(
            &format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": {"led": "on"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let delta = tokio::time::timeout(STEP, async {
        use iothub_sdk::StreamExt as _;
        loop {
            let d = deltas.next().await.expect("delta stream open");
            if d.state.get("led").is_some() {
                return d;
            }
        }
    })
    .await
    .expect("delta through mosquitto");
    shadow.report(&delta.state).await.expect("report delta");
    let (_, doc) = hub.rest_shadow(&id, "default").await;
    assert_eq!(doc["state"]["reported"], json!({"fw": "1.0", "led": "on"}));

    // A direct method through the broker.
    let (status, body) = hub
        .post(
            &format!("/things/{id}/methods/reboot"),
            json!({"data": {"delay": 1}, "timeout": 5}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["data"], json!({"asked": {"delay": 1}}));

    // Presence follows the broker's log: offline once the device leaves.
    device.close().await;
    assert!(
        wait_connected(&hub, &id, false).await,
        "presence offline: {}",
        hub.stderr()
    );
}

/// Presence comes from Mosquitto's log, some milliseconds after the CONNACK (D-63). A method
/// called right after the CONNACK (connectTimeout 0) still reaches the thing instead of a 409
/// (S-5.3), and both presence events carry the connection's address (S-8.1), which only the
/// connect line names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_connect_reaches_the_thing_and_presence_names_its_address() {
    let m = Mosquitto::start();
    m.add_service_account("$watcher", "watcher-secret");
    let hub = m.hub();
    let mut watcher = Client::connect(
        Proto::V5,
        m.addr,
        "$watcher-1",
        "$watcher",
        "watcher-secret",
    )
    .await
    .expect("the operator's account connects");
    for _ in 0..3 {
        let (id, secret) = new_thing(&hub, "ext-call").await;
        let events = format!("$iothub/events/things/{id}/presence");
        assert!(watcher.subscribe(&events).await.expect("suback") < 0x80);
        let mut device = connect(&m, &id, &secret).await.expect("connects");
        let requests = format!("{}/methods/+/req", thing_topic(&id));
        assert!(device.subscribe(&requests).await.expect("suback") < 0x80);
        let call = {
            let path = format!("/things/{id}/methods/ping");
            let hub = &hub;
            async move { hub.post(&path, json!({"timeout": 5})).await }
        };
        let request_topic = format!("{}/methods/ping/req", thing_topic(&id));
        let answer = async {
            let request = device
                .wait_message(STEP, |m| m.topic == request_topic)
                .await?
                .json();
            let response = json!({"clientToken": request["clientToken"], "code": 200});
            device
                .publish_json(
                    &format!("{}/methods/ping/resp", thing_topic(&id)),
                    &response,
                )
                .await;
            Some(())
        };
        let ((status, body), answered) = tokio::join!(call, answer);
        assert_eq!(
            (status, answered),
            (200, Some(())),
            "{body}\n{}",
            hub.stderr()
        );
        device.disconnect().await;
        for event in ["connected", "disconnected"] {
            let presence = watcher
                .expect_json(&events, STEP, |v| v["eventType"] == event)
                .await;
            let addr = presence["remoteAddr"].as_str().unwrap_or_default();
            assert!(
                addr.parse::<std::net::SocketAddr>().is_ok(),
                "{event} event without ip:port: {presence}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_thing_attempts_get_no_successes_through_mosquitto() {
    let m = Mosquitto::start();
    let hub = m.hub();
    let (a, secret_a) = new_thing(&hub, "ext-a").await;
    let (b, secret_b) = new_thing(&hub, "ext-b").await;
    let mut victim = connect(&m, &b, &secret_b).await.expect("b connects");
    assert!(
        victim
            .subscribe(&format!("{}/#", thing_topic(&b)))
            .await
            .expect("sub")
            < 0x80
    );
    let mut attacker = connect(&m, &a, &secret_a).await.expect("a connects");
    assert!(
        attacker
            .subscribe(&format!("{}/#", thing_topic(&a)))
            .await
            .expect("sub")
            < 0x80
    );

    let mut successes = Vec::new();
    for filter in [
        format!("{}/#", thing_topic(&b)),
        format!("{}/shadows/name/default/update/delta", thing_topic(&b)),
        "$iothub/things/+/shadows/name/+/update/delta".to_string(),
        format!("$iothub/user/things/{b}/#"),
        "$iothub/#".to_string(),
        "#".to_string(),
        format!("$share/g/{}/#", thing_topic(&b)),
    ] {
        let rc = attacker.subscribe(&filter).await.expect("suback");
        if rc < 0x80 {
            successes.push(format!("SUBSCRIBE {filter}: {rc:#x}"));
        }
    }
    let attacked = [
        format!("{}/shadows/name/default/update", thing_topic(&b)),
        format!("{}/methods/reboot/resp", thing_topic(&b)),
        format!("{}/messages/property", thing_topic(&b)),
        format!("$iothub/user/things/{b}/x"),
        format!("{}/shadows/name/default/update/delta", thing_topic(&b)),
    ];
    for topic in &attacked {
        let rc = attacker
            .publish(topic, br#"{"state":{"reported":{"owned":true}}}"#.to_vec())
            .await
            .expect("puback");
        if rc < 0x80 {
            successes.push(format!("PUBLISH {topic}: {rc:#x}"));
        }
    }
    // Nothing of it reached b (which hears only the hub's presence of itself), nor the hub.
    while let Some(msg) = victim.next_message(QUIET).await {
        if attacked.contains(&msg.topic) || !msg.topic.ends_with("/presence") {
            successes.push(format!("b received {}", msg.topic));
        }
    }
    let (status, _) = hub.rest_shadow(&b, "default").await;
    if status != 404 {
        successes.push(format!("b's shadow exists: HTTP {status}"));
    }
    // Nor can a connect as b with a's secret, or as a under another client id.
    if connect(&m, &b, &secret_a).await.is_ok() {
        successes.push("CONNECT as b with a's secret".into());
    }
    if Client::connect(Proto::V5, m.addr, &b, &a, &secret_a)
        .await
        .is_ok()
    {
        successes.push("CONNECT as a with b's client id".into());
    }
    assert_eq!(
        successes,
        Vec::<String>::new(),
        "cross-thing attempts that succeeded"
    );
    // The allow-list still lets a do its own work.
    let (ok, _) = attacker
        .update(&a, "default", json!({"state": {"reported": {"mine": 1}}}))
        .await;
    assert!(ok, "own update: {}", hub.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_kicks_and_refuses_delete_removes() {
    let m = Mosquitto::start();
    let hub = m.hub();
    let (id, secret) = new_thing(&hub, "ext-dis").await;
    let mut c = connect(&m, &id, &secret).await.expect("connects");
    assert!(wait_connected(&hub, &id, true).await);

    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, 200, "{body}\n{}\n{}", hub.stderr(), m.log());
    assert!(
        c.is_disconnected(STEP).await,
        "disable closes the connection"
    );
    assert!(wait_connected(&hub, &id, false).await);
    assert!(
        matches!(
            connect(&m, &id, &secret).await,
            Err(ConnectError::Refused(_))
        ),
        "a disabled thing is refused"
    );
    let (status, _) = hub
        .patch(&format!("/things/{id}"), json!({"enabled": true}))
        .await;
    assert_eq!(status, 200);
    let c = connect(&m, &id, &secret).await.expect("enabled again");

    let (status, _) = hub.delete(&format!("/things/{id}")).await;
    assert!((200..300).contains(&status), "delete: {status}");
    let mut c = c;
    assert!(
        c.is_disconnected(STEP).await,
        "delete closes the connection"
    );
    assert!(
        matches!(
            connect(&m, &id, &secret).await,
            Err(ConnectError::Refused(_))
        ),
        "a deleted thing is refused"
    );
    assert!(
        !m.ctrl(&["listClients"]).lines().any(|l| l.trim() == id),
        "account removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reconciles_the_accounts_with_the_registry() {
    let m = Mosquitto::start();
    let mut hub = m.hub();
    let (kept, secret_kept) = new_thing(&hub, "ext-kept").await;
    let (off, secret_off) = new_thing(&hub, "ext-off").await;
    let (status, _) = hub
        .patch(&format!("/things/{off}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, 200);

    // While the hub is down, the broker drifts from the registry.
    hub.kill();
    m.ctrl(&["disableClient", &kept]);
    m.ctrl(&["enableClient", &off]);
    m.ctrl(&["createRole", "iothub-thing-ghost"]);
    m.ctrl(&["createClient", "ghost", "-p", "ghost-secret"]);
    m.ctrl(&["addClientRole", "ghost", "iothub-thing-ghost"]);
    m.ctrl(&["createClient", "operator", "-p", "operator-secret"]);
    hub.restart();

    let reconciled = eventually(STEP, || async {
        let clients = m.ctrl(&["listClients"]);
        let names: Vec<&str> = clients.lines().map(str::trim).collect();
        (!names.contains(&"ghost")).then_some(())
    })
    .await;
    assert!(
        reconciled.is_some(),
        "ghost account removed: {}",
        hub.stderr()
    );
    assert!(
        m.ctrl(&["listClients"])
            .lines()
            .any(|l| l.trim() == "operator"),
        "foreign account kept"
    );
    assert!(
        connect(&m, &kept, &secret_kept).await.is_ok(),
        "kept enabled again"
    );
    assert!(
        matches!(
            connect(&m, &off, &secret_off).await,
            Err(ConnectError::Refused(_))
        ),
        "off disabled again"
    );
}

/// An injected failure on the write path: with the broker gone, creating or disabling a thing is
/// answered 503, and a thing the broker never took is not left in the registry (D-61).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_writes_fail_with_503_while_the_broker_is_down() {
    let mut m = Mosquitto::start();
    let hub = m.hub();
    let (id, _) = new_thing(&hub, "ext-down").await;
    m.kill();
    let lost = unique("ext-lost");
    let (status, body) = hub.post("/things", json!({ "thingId": lost })).await;
    assert_eq!(status, 503, "create without a broker: {body}");
    let (status, _) = hub.rest_thing(&lost).await;
    assert_eq!(status, 404, "the refused thing is not in the registry");
    let (status, body) = hub
        .patch(&format!("/things/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, 503, "disable without a broker: {body}");
    let (_, thing) = hub.rest_thing(&id).await;
    assert_eq!(
        thing["enabled"], false,
        "the registry keeps the change for reconciliation"
    );
}
