//! The `no_std` TLS transport (`iothub_sdk_nostd::minimq::TlsTransport`, embedded-tls, the
//! firmware's code; D-90) against the real hub's MQTT over TLS listener, certificates from
//! `iothub dev-certs`: the firmware-style thermostat (`firmware_host --tls-ca`) applies a
//! desired change set made over REST, reports it back and answers a method, once with its
//! secret over server-authenticated TLS and once with a registered client certificate and a
//! wrong secret (D-82). A device that does not trust the hub's CA, or expects another server
//! name, fails the handshake and never connects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use iothub_launch::HubProcess;
use serde_json::json;
use support::{Proc, Rest, dev_certs, device_log, path_arg as path, spawn_device, spawn_tls_hub};

/// A hub with MQTT over TLS; returns (hub, mqtts, http).
fn tls_hub(dir: &Path, certs: &Path, client_ca: bool) -> (HubProcess, SocketAddr, SocketAddr) {
    let h = spawn_tls_hub(dir, certs, client_ca);
    (h.hub, h.mqtts, h.http)
}

/// The thermostat's checks: a desired change set applied and reported, the method answered.
async fn converges_and_answers(rest: &Rest, thing: &str, dir: &Path) {
    let log = || device_log(dir);
    let reported = rest
        .converge(thing, json!({"setpoint": 24, "mode": "cool"}))
        .await;
    assert_eq!(reported["boots"], 1, "{reported}\n{}", log());
    assert_eq!(reported["firmware"], env!("CARGO_PKG_VERSION"));
    let reply = rest.invoke(thing, "reboot").await;
    assert_eq!(reply["code"], 200, "{reply}\n{}", log());
    assert_eq!(reply["data"], json!({"boots": 2}));
    let reported = rest.converge(thing, json!({"setpoint": 19})).await;
    assert_eq!(reported["setpoint"], 19, "{reported}");
}

/// Whether the hub shows `thing` connected.
async fn connected(rest: &Rest, thing: &str) -> bool {
    let (status, body) = rest
        .call(reqwest::Method::GET, &format!("/things/{thing}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["connected"] == true
}

/// Waits until the hub shows `thing` disconnected.
async fn until_disconnected(rest: &Rest, thing: &str) {
    let deadline = Instant::now() + support::STEP;
    while connected(rest, thing).await {
        assert!(Instant::now() < deadline, "{thing} stays connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the device's log holds `needle`.
async fn log_shows(dir: &Path, needle: &str) {
    let deadline = Instant::now() + support::STEP;
    while !device_log(dir).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never logged\n{}",
            device_log(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_host_over_tls_with_its_secret_and_refuses_an_untrusted_hub() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    dev_certs(&certs, &[]);
    let (_hub, mqtts, http) = tls_hub(dir.path(), &certs, false);
    let rest = Rest::new(http);
    let thing = format!("fw-tls-{}", std::process::id());
    let secret = rest.create_thing(&thing).await;
    let ca = path(certs.join("ca.pem"));

    {
        let _device: Proc = spawn_device(
            dir.path(),
            mqtts,
            &thing,
            &secret,
            &["--tick-ms", "200", "--tls-ca", &ca],
        );
        converges_and_answers(&rest, &thing, dir.path()).await;
        assert!(connected(&rest, &thing).await);
    }
    until_disconnected(&rest, &thing).await;

    // Another CA: the hub's certificate does not verify; nothing reaches the broker.
    let other = dir.path().join("other");
    dev_certs(&other, &[]);
    let other_ca = path(other.join("ca.pem"));
    let _device: Proc = spawn_device(
        dir.path(),
        mqtts,
        &thing,
        &secret,
        &["--tick-ms", "200", "--tls-ca", &other_ca],
    );
    log_shows(dir.path(), "connect failed: Handshake(InvalidCertificate)").await;
    assert!(!connected(&rest, &thing).await);
    drop(_device);

    // The right CA, but a name the certificate does not carry (it has localhost, 127.0.0.1).
    let _device: Proc = spawn_device(
        dir.path(),
        mqtts,
        &thing,
        &secret,
        &[
            "--tick-ms",
            "200",
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "hub.example",
        ],
    );
    log_shows(dir.path(), "connect failed: Handshake(InvalidCertificate)").await;
    assert!(!connected(&rest, &thing).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_host_authenticates_with_a_registered_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let thing = format!("fw-x509-{}", std::process::id());
    dev_certs(&certs, &[&thing]);
    let (_hub, mqtts, http) = tls_hub(dir.path(), &certs, true);
    let rest = Rest::new(http);
    rest.create_thing(&thing).await;
    let pem = std::fs::read_to_string(certs.join(format!("thing-{thing}.pem"))).unwrap();
    let (status, body) = rest
        .call(
            reqwest::Method::POST,
            &format!("/things/{thing}/certificates"),
            Some(json!({"certificatePem": pem})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // The secret is wrong: only the certificate (D-82) lets the thing in.
    let _device: Proc = spawn_device(
        dir.path(),
        mqtts,
        &thing,
        "not-the-secret",
        &[
            "--tick-ms",
            "200",
            "--tls-ca",
            &path(certs.join("ca.pem")),
            "--tls-cert",
            &path(certs.join(format!("thing-{thing}.pem"))),
            "--tls-key",
            &path(certs.join(format!("thing-{thing}.key"))),
        ],
    );
    converges_and_answers(&rest, &thing, dir.path()).await;
    assert!(device_log(dir.path()).contains("client_certificate=true"));
}
