//! The MQTT bridge sink (S-14.4): QoS 1 publishes to another broker (a second hub's embedded
//! one, as its service user), in order; over TLS with a client certificate (mutual TLS).

use std::path::Path;

use serde_json::json;

use crate::support::*;
use crate::*;

/// Runs `iothub dev-certs` into `dir` with a client certificate `thing-bridge.pem`.
fn dev_certs(dir: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"))
        .arg("dev-certs")
        .arg("--out")
        .arg(dir)
        .args(["--thing", "bridge"])
        .output()
        .expect("run iothub dev-certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn bridged(tls: bool) {
    let certs = tempfile::tempdir().expect("temp dir");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let target = if tls {
        dev_certs(certs.path());
        Hub::start_args(&[
            "--mqtts-addr",
            "127.0.0.1:0",
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server.key"),
            "--tls-client-ca",
            &path("ca.pem"),
        ])
    } else {
        Hub::start()
    };
    let mut watcher = target.connect_service(Proto::V5).await;
    watcher
        .subscribe("$iothub/things/+/messages/property")
        .await
        .expect("subscribe");
    let hub = Hub::start();
    let route = unique("bridge");
    // The target's service user may publish on `$iothub/...` only (S-1.5): no topic prefix.
    let mut sink = json!({"type": "mqtt", "username": SVC_USER, "password": SVC_SECRET});
    if tls {
        let port = target.ready().mqtts.expect("mqtts").port();
        sink["url"] = json!(format!("mqtts://localhost:{port}"));
        sink["caFile"] = json!(path("ca.pem"));
        sink["certFile"] = json!(path("thing-bridge.pem"));
        sink["keyFile"] = json!(path("thing-bridge.key"));
    } else {
        sink["url"] = json!(format!("mqtt://{}", target.mqtt));
    }
    let created = create_route(
        &hub,
        json!({"id": route, "sources": ["telemetry"], "sink": sink, "batchDelayMs": 0,
               "retryInitialMs": 50, "retryMaxMs": 200}),
    )
    .await;
    assert_eq!(created["route"]["sink"]["password"], "****", "{created}");
    let (a, _, mut ca) = hub.new_thing(Proto::V311, "br").await;
    publish_range(&mut ca, &telemetry(&a), 0..20).await;
    let topic = telemetry(&a);
    let s = eventually(SLACK, || async {
        let s = route_status(&hub, &route).await;
        (s["delivered"] == 20).then_some(s)
    })
    .await;
    assert!(s.is_some(), "{}", route_status(&hub, &route).await);
    for n in 0..20u64 {
        let got = watcher.expect_message(&topic, SLACK).await;
        assert_eq!(got["n"], n, "in order");
    }
}

/// Plain MQTT to another broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_bridged_to_another_broker() {
    bridged(false).await;
}

/// MQTT over TLS with a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_bridged_over_mutual_tls() {
    bridged(true).await;
}
