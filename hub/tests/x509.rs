//! X.509 device identity (D-82): a client certificate registered on a thing over REST
//! authenticates it on the hub's MQTT over TLS listener without a secret. Certificates are made
//! here with rcgen (a CA, the hub's server certificate, device certificates); the clients are
//! rumqttc over rustls, MQTT 3.1.1.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use support::*;

/// The test's CA, which the hub trusts for client certificates.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// A device certificate and its key (PEM).
struct Device {
    cert: String,
    key: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "x509 test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// The hub's certificate for 127.0.0.1: (certificate PEM, key PEM).
    fn server(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).expect("names");
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with CN `cn`; `expired`: valid only in 2020.
    fn device(&self, cn: &str, expired: bool) -> Device {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("device key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("device certificate");
        Device {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A hub serving MQTT over TLS that asks for client certificates chaining to `ca`.
fn x509_hub(ca: &Ca) -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.server();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write pem");
        path.to_str().expect("utf-8 path").to_owned()
    };
    let (cert, key, client_ca) = (
        write("server.pem", &cert),
        write("server.key", &key),
        write("ca.pem", &ca.cert.pem()),
    );
    let hub = Hub::start_args(&[
        "--mqtts-addr",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &client_ca,
    ]);
    (hub, dir)
}

/// rumqttc options for `client_id` over TLS with `device`'s certificate; `username`: the user
/// name to send (never a password).
fn options(
    hub: &Hub,
    ca: &Ca,
    client_id: &str,
    username: Option<&str>,
    device: &Device,
) -> MqttOptions {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let chain = vec![CertificateDer::from_pem_slice(device.cert.as_bytes()).expect("cert pem")];
    let key = PrivateKeyDer::from_pem_slice(device.key.as_bytes()).expect("key pem");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    let port = hub.ready().mqtts.expect("the hub serves mqtts").port();
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some(user) = username {
        // rumqttc leaves an empty password out of the CONNECT.
        o.set_credentials(user, "");
    }
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    o
}

/// Connects; `Ok` once the CONNACK accepted, `Err` with how it failed.
async fn connect(o: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut events) = AsyncClient::new(o, 16);
    let result = tokio::time::timeout(STEP, async {
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    assert_eq!(ack.code, ConnectReturnCode::Success);
                    return Ok(());
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("connect must end by itself");
    result.map(|()| (client, events))
}

/// Registers `device` on `thing`; returns its fingerprint.
async fn register(hub: &Hub, thing: &str, device: &Device) -> String {
    let (status, body) = hub
        .post(
            &format!("/things/{thing}/certificates"),
            json!({ "certificatePem": device.cert }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_envelope(status, &body);
    let fp = body["data"]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    assert_eq!(fp.len(), 64, "{body}");
    assert_eq!(body["data"]["thingId"], thing);
    fp
}

fn refused_as_bad_credentials(r: Result<(AsyncClient, EventLoop), ConnectionError>) {
    match r {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)) => {}
        Err(e) => panic!("expected CONNACK 4, got {e:?}"),
        Ok(_) => panic!("expected CONNACK 4, got a connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_certificate_authenticates_its_thing_and_only_it() {
    let ca = Ca::new();
    let (hub, _dir) = x509_hub(&ca);
    let (a, b) = (unique("x509-a"), unique("x509-b"));
    hub.create_thing(&a).await;
    hub.create_thing(&b).await;
    let cert_a = ca.device(&a, false);
    let fp = register(&hub, &a, &cert_a).await;

    // The list shows it.
    let (status, body) = hub.get(&format!("/things/{a}/certificates")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["fingerprint"], fp.as_str());
    assert_eq!(body["data"][0]["commonName"], a.as_str());

    // A's certificate, no password: connected; a shadow report is applied.
    let (client, mut events) = connect(options(&hub, &ca, &a, Some(&a), &cert_a))
        .await
        .expect("A connects with its certificate");
    let state = json!({"temp": 20.5});
    client
        .publish(
            shadow_topic(&a, "default", "update"),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&json!({"state": {"reported": state}})).expect("json"),
        )
        .await
        .expect("publish");
    let poll = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let reported = eventually(STEP, || async {
        let (status, doc) = hub.rest_shadow(&a, "default").await;
        (status == 200 && doc["state"]["reported"] == state).then_some(doc)
    })
    .await;
    assert!(reported.is_some(), "A's report never reached the shadow");
    client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(STEP, poll).await;

    // No user name at all stands for the client id.
    let (client, _events) = connect(options(&hub, &ca, &a, None, &cert_a))
        .await
        .expect("A connects without user name");
    client.disconnect().await.ok();

    // A certificate that chains to the CA but is registered nowhere, no password: refused.
    let unknown = ca.device(&a, false);
    refused_as_bad_credentials(connect(options(&hub, &ca, &a, Some(&a), &unknown)).await);

    // A's certificate for thing B (client id = user name = B, even CN = B would not help).
    refused_as_bad_credentials(connect(options(&hub, &ca, &b, Some(&b), &cert_a)).await);
    let cn_b = ca.device(&b, false);
    register(&hub, &a, &cn_b).await;
    refused_as_bad_credentials(connect(options(&hub, &ca, &b, Some(&b), &cn_b)).await);

    // An expired certificate, registered: the TLS handshake refuses it before any CONNECT.
    let expired = ca.device(&a, true);
    register(&hub, &a, &expired).await;
    match connect(options(&hub, &ca, &a, Some(&a), &expired)).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            panic!("an expired certificate must fail the handshake, not get CONNACK {code:?}")
        }
        Err(_) => {}
        Ok(_) => panic!("an expired certificate was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_certificate_kicks_the_live_connection_and_refuses_the_next() {
    let ca = Ca::new();
    let (hub, _dir) = x509_hub(&ca);
    let a = unique("x509-revoke");
    hub.create_thing(&a).await;
    let cert = ca.device(&a, false);
    let fp = register(&hub, &a, &cert).await;

    let (_client, mut events) = connect(options(&hub, &ca, &a, Some(&a), &cert))
        .await
        .expect("connects with its certificate");
    let ended = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) => return "disconnect",
                Ok(_) => continue,
                Err(_) => return "closed",
            }
        }
    });

    // Revoke (the path accepts upper case hex too).
    let (status, body) = hub
        .delete(&format!("/things/{a}/certificates/{}", fp.to_uppercase()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_envelope(status, &body);
    let how = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the live connection must end within 5 s of the revocation")
        .expect("poll task");
    assert!(["disconnect", "closed"].contains(&how));

    refused_as_bad_credentials(connect(options(&hub, &ca, &a, Some(&a), &cert)).await);
    let (status, body) = hub.get(&format!("/things/{a}/certificates")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!([]));
    // Revoking again: 404 in the envelope.
    let (status, body) = hub.delete(&format!("/things/{a}/certificates/{fp}")).await;
    assert_eq!(status, 404, "{body}");
    assert_envelope(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_errors_use_the_envelope() {
    let ca = Ca::new();
    let (hub, _dir) = x509_hub(&ca);
    let a = unique("x509-rest");
    hub.create_thing(&a).await;
    let path = format!("/things/{a}/certificates");

    let cases: [(Value, u16); 4] = [
        (json!({"certificatePem": "not a certificate"}), 400),
        (
            json!({"certificatePem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}),
            400,
        ),
        (json!({"pem": "x"}), 400),
        (json!({"certificatePem": 5}), 400),
    ];
    for (body, want) in cases {
        let (status, answer) = hub.post(&path, body.clone()).await;
        assert_eq!(status, want, "{body} -> {answer}");
        assert_envelope(status, &answer);
    }

    let device = ca.device(&a, false);
    let (status, body) = hub
        .post(
            "/things/no-such-thing/certificates",
            json!({"certificatePem": device.cert}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_envelope(status, &body);
    register(&hub, &a, &device).await;
    let (status, body) = hub
        .post(&path, json!({"certificatePem": device.cert}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_envelope(status, &body);
    let (status, body) = hub.get("/things/no-such-thing/certificates").await;
    assert_eq!(status, 404, "{body}");
    assert_envelope(status, &body);

    // The routes are in the OpenAPI document.
    let (status, doc) = hub.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    let list = &doc["paths"]["/api/v1/things/{id}/certificates"];
    assert!(
        list["get"].is_object() && list["post"].is_object(),
        "{list}"
    );
    let one = &doc["paths"]["/api/v1/things/{id}/certificates/{fingerprint}"];
    assert!(one["delete"].is_object(), "{one}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_over_mqtt5_reports_with_its_certificate_and_an_empty_secret() {
    let ca = Ca::new();
    let (hub, _dir) = x509_hub(&ca);
    let a = unique("x509-sdk");
    hub.create_thing(&a).await;
    let cert = ca.device(&a, false);
    register(&hub, &a, &cert).await;

    let port = hub.ready().mqtts.expect("the hub serves mqtts").port();
    let opts = iothub_sdk::ThingOptions::new(&a, "", "127.0.0.1", port)
        .protocol(iothub_sdk::Protocol::V5)
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .tls_ca_pem(ca.cert.pem().as_bytes())
        .expect("ca pem")
        .tls_client_cert_pem(cert.cert.as_bytes(), cert.key.as_bytes())
        .expect("client cert");
    let thing = iothub_sdk::Thing::connect(opts)
        .await
        .expect("MQTT 5 connect with the certificate");
    let state = json!({"fw": "1.2.3"});
    let version = thing
        .shadow("default")
        .report(&state)
        .await
        .expect("report");
    let (status, doc) = hub.rest_shadow(&a, "default").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["state"]["reported"], state);
    assert_eq!(doc["version"], version);
    thing.close().await;
}
