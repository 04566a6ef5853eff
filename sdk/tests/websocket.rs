//! The `websocket` feature against the real hub's own MQTT over WebSocket listeners (`/mqtt`,
//! D-69): plain (`--ws-addr`) and, with `tls` too, secure (`--wss-addr`, certificates made by
//! `iothub dev-certs`), both MQTT versions, report and delta round trips, and the option
//! combinations that are refused before connecting. Run with
//! `cargo test -p iothub-sdk --features tls,websocket --test websocket`.
#![cfg(feature = "websocket")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use iothub_sdk::{Error, Protocol, Thing, ThingOptions};
use serde_json::json;
use support::{Hub, STEP, next};

/// Report, get, then a desired change over REST arriving as a delta, through `opts`.
async fn round_trip(hub: &Hub, id: &str, opts: ThingOptions) {
    let thing = Thing::connect(opts).await.expect("connect over websocket");
    let shadow = thing.shadow("default");
    let state = json!({"temp": 19.5});
    let v1 = shadow.report(&state).await.expect("report");
    assert_eq!(v1, 1);
    let doc = shadow.get().await.expect("get");
    assert_eq!((doc.version, doc.reported), (1, Some(state.clone())));

    let mut deltas = shadow.deltas().expect("deltas");
    let (status, body) = hub
        .set_desired(id, "default", json!({"setpoint": 21}))
        .await;
    assert_eq!(status, 200, "{body}");
    let delta = tokio::time::timeout(STEP, async {
        loop {
            let d = next(&mut deltas).await;
            if !d.state.is_empty() {
                break d;
            }
        }
    })
    .await
    .expect("a delta within STEP");
    assert_eq!(delta.version, 2);
    assert_eq!(
        serde_json::Value::Object(delta.state),
        json!({"setpoint": 21})
    );

    // Stored by the hub, as REST sees it.
    let (status, rest) = hub.shadow(id, "default").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["state"]["reported"], state);
    thing.close().await;
}

fn ws_options(id: &str, secret: &str, url: &str, protocol: Protocol) -> ThingOptions {
    ThingOptions::new(id, secret, "unused", 0)
        .protocol(protocol)
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .websocket(url)
        .expect("websocket url")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_delta_over_plain_websocket_in_both_mqtt_versions() {
    let hub = Hub::start_with(&["--ws-addr", "127.0.0.1:0"]);
    let ws = hub.ready.mqtt_ws.expect("the hub serves ws");
    for protocol in [Protocol::V311, Protocol::V5] {
        let id = support::unique("ws");
        let secret = hub.create_thing(&id).await;
        let url = format!("ws://{ws}/mqtt");
        round_trip(&hub, &id, ws_options(&id, &secret, &url, protocol)).await;
    }

    // A wrong secret is refused over WebSocket as over TCP (S-1.3), within the connect timeout.
    let id = support::unique("ws-bad");
    hub.create_thing(&id).await;
    let url = format!("ws://{ws}/mqtt");
    let r = tokio::time::timeout(
        STEP,
        Thing::connect(ws_options(&id, "wrong-secret", &url, Protocol::V311)),
    )
    .await
    .expect("connect ends by itself");
    assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");

    // Another path is not the MQTT endpoint: no connection.
    let url = format!("ws://{ws}/other");
    let r = tokio::time::timeout(
        STEP,
        Thing::connect(ws_options(&id, "wrong-secret", &url, Protocol::V311)),
    )
    .await
    .expect("connect ends by itself");
    assert!(r.is_err(), "a path other than /mqtt: {r:?}");
}

#[tokio::test]
async fn invalid_websocket_options_are_refused_before_connecting() {
    for bad in ["http://127.0.0.1:1/mqtt", "ws://", "ws://h:port/mqtt"] {
        let r = ThingOptions::new("t", "s", "h", 1).websocket(bad);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad}: {r:?}");
    }
    // wss:// without TLS settings: refused at connect, before any I/O.
    #[cfg(feature = "tls")]
    {
        let opts = ThingOptions::new("t", "s", "h", 1)
            .websocket("wss://127.0.0.1:1/mqtt")
            .expect("url");
        let r = Thing::connect(opts).await;
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_delta_over_secure_websocket_with_and_without_a_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let id = support::unique("wss");
    let bin = iothub_launch::hub_binary().expect("iothub binary");
    let out = std::process::Command::new(bin)
        .args(["dev-certs", "--out"])
        .arg(certs.path())
        .args(["--thing", &id])
        .output()
        .expect("run iothub dev-certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = |name: &str| certs.path().join(name).to_str().expect("utf-8").to_owned();
    let read = |name: &str| std::fs::read(certs.path().join(name)).expect("read pem");
    let hub = Hub::start_with(&[
        "--wss-addr",
        "127.0.0.1:0",
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
    ]);
    let wss = hub.ready.mqtt_wss.expect("the hub serves wss");
    let secret = hub.create_thing(&id).await;
    // dev-certs names the server `localhost` and 127.0.0.1; the URL's host is what is checked.
    let url = format!("wss://localhost:{}/mqtt", wss.port());
    let ca = read("ca.pem");

    let opts = ws_options(&id, &secret, &url, Protocol::V5)
        .tls_ca_pem(&ca)
        .expect("ca");
    round_trip(&hub, &id, opts).await;

    // With the thing's client certificate as well: connects, and the state reads back.
    let opts = ws_options(&id, &secret, &url, Protocol::V311)
        .tls_ca_pem(&ca)
        .expect("ca")
        .tls_client_cert_pem(
            &read(&format!("thing-{id}.pem")),
            &read(&format!("thing-{id}.key")),
        )
        .expect("client cert");
    let thing = Thing::connect(opts)
        .await
        .expect("connect over wss with mTLS");
    let doc = thing.shadow("default").get().await.expect("get");
    assert_eq!(doc.reported, Some(json!({"temp": 19.5})));
    thing.close().await;

    // A CA that did not sign the hub's certificate: the handshake fails, typed.
    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(iothub_launch::hub_binary().expect("bin"))
        .args(["dev-certs", "--out"])
        .arg(other.path())
        .output()
        .expect("dev-certs");
    assert!(out.status.success());
    let opts = ws_options(&id, &secret, &url, Protocol::V311)
        .tls_ca_pem(&std::fs::read(other.path().join("ca.pem")).expect("pem"))
        .expect("ca");
    let r = tokio::time::timeout(STEP, Thing::connect(opts))
        .await
        .expect("connect ends by itself");
    assert!(r.is_err(), "untrusted CA over wss: {r:?}");

    // ws:// with TLS settings is refused before connecting.
    let opts = ws_options(
        &id,
        &secret,
        &format!("ws://127.0.0.1:{}/mqtt", wss.port()),
        Protocol::V311,
    )
    .tls_ca_pem(&ca)
    .expect("ca");
    let r = Thing::connect(opts).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
}
