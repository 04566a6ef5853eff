//! The `tls` feature against the real hub's own MQTT over TLS listener (`--mqtts-addr`, D-67),
//! with certificates made by rcgen at test time; no terminator in between. Run with
//! `cargo test -p iothub-sdk --features tls --test tls` (the workspace build turns the feature
//! on too: the hub's tests use it).
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iothub_sdk::rustls::crypto::{CryptoProvider, ring};
use iothub_sdk::rustls::pki_types::CertificateDer;
use iothub_sdk::rustls::{self, CertificateError, RootCertStore};
use iothub_sdk::{Error, Protocol, Thing, ThingOptions, TlsError};
use serde_json::json;
use support::{Hub, STEP};

/// A self-signed certificate and its key, made now.
struct Identity {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

/// A self-signed certificate for `names` (DNS names or IP addresses), with its own common name
/// so that two of them are never mistaken for each other.
fn self_signed(names: &[&str]) -> Identity {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).expect("names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, support::unique("test-ca"));
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("rcgen");
    Identity {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key_pem: key.serialize_pem(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A hub serving MQTT over TLS with `server`'s certificate and key (written into `dir`); with
/// `client_ca`, client certificates signed by it are required (D-71).
fn tls_hub(dir: &Path, server: &Identity, client_ca: Option<&Identity>) -> Hub {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write pem");
        path.to_str().expect("utf-8 path").to_owned()
    };
    let cert = write("server.pem", &server.cert_pem);
    let key = write("server.key", &server.key_pem);
    let mut args = vec![
        "--mqtts-addr".to_owned(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        cert,
        "--tls-key".into(),
        key,
    ];
    if let Some(ca) = client_ca {
        args.push("--tls-client-ca".into());
        args.push(write("client-ca.pem", &ca.cert_pem));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hub = Hub::start_with(&args);
    assert!(hub.ready.mqtts.is_some(), "{}", hub.ready);
    hub
}

/// Options for a thing of `hub`, on its MQTT over TLS listener.
fn options(hub: &Hub, id: &str, secret: &str) -> ThingOptions {
    let mqtts = hub.ready.mqtts.expect("mqtts");
    ThingOptions::new(id, secret, "127.0.0.1", mqtts.port())
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
}

/// Report then get through TLS; checks the accepted version and the stored state.
async fn report_and_get(hub: &Hub, thing: &Thing, id: &str) {
    let shadow = thing.shadow("default");
    let state = json!({"temp": 21.5, "mode": "eco"});
    let version = shadow.report(&state).await.expect("report over tls");
    assert_eq!(version, 1);
    let doc = shadow.get().await.expect("get over tls");
    assert_eq!(doc.version, 1);
    assert_eq!(doc.reported, Some(state.clone()));
    // Stored by the hub, as REST sees it.
    let (status, rest) = hub.shadow(id, "default").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["state"]["reported"], state);
    assert_eq!(rest["version"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_round_trip_through_tls_with_a_custom_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = self_signed(&["127.0.0.1", "localhost"]);
    let hub = tls_hub(dir.path(), &server, None);
    let id = support::unique("tls");
    let secret = hub.create_thing(&id).await;

    let opts = options(&hub, &id, &secret)
        .tls_ca_pem(server.cert_pem.as_bytes())
        .expect("ca pem");
    assert!(opts.uses_tls());
    let thing = Thing::connect(opts).await.expect("connect over tls");
    report_and_get(&hub, &thing, &id).await;
    thing.close().await;

    // The same through a ready rustls configuration: the stored state reads back.
    let mut roots = RootCertStore::empty();
    roots.add(server.cert_der.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let opts = options(&hub, &id, &secret).tls_config(Arc::new(config));
    let thing = Thing::connect(opts).await.expect("connect with tls_config");
    let doc = thing.shadow("default").get().await.expect("get");
    assert_eq!(doc.version, 1);
    assert_eq!(doc.reported, Some(json!({"temp": 21.5, "mode": "eco"})));
    thing.close().await;

    // The TLS port speaks only TLS: a plain MQTT client gets no CONNACK.
    let plain = ThingOptions::new(
        &id,
        &secret,
        "127.0.0.1",
        hub.ready.mqtts.expect("mqtts").port(),
    )
    .connect_timeout(Duration::from_secs(2));
    let r = tokio::time::timeout(STEP, Thing::connect(plain))
        .await
        .expect("connect must end by itself");
    assert!(r.is_err(), "plain MQTT on the TLS port: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_with_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = self_signed(&["127.0.0.1"]);
    let other_ca = self_signed(&["127.0.0.1"]);
    let hub = tls_hub(dir.path(), &server, None);
    let id = support::unique("untrusted");
    let secret = hub.create_thing(&id).await;

    let opts = options(&hub, &id, &secret)
        .tls_ca_pem(other_ca.cert_pem.as_bytes())
        .expect("ca pem");
    // Bounded by the SDK's own connect timeout (5 s); STEP only guards against a hang.
    let r = tokio::time::timeout(STEP, Thing::connect(opts))
        .await
        .expect("connect must end by itself");
    match r {
        Err(Error::Tls(TlsError::Handshake(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )))) => {}
        other => panic!("expected an untrusted-certificate error, got {other:?}"),
    }

    // A certificate that does not name the host is refused too.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let named = self_signed(&["hub.example"]);
    let hub2 = tls_hub(dir2.path(), &named, None);
    let secret2 = hub2.create_thing(&id).await;
    let opts = options(&hub2, &id, &secret2)
        .tls_ca_pem(named.cert_pem.as_bytes())
        .expect("ca pem");
    let r = tokio::time::timeout(STEP, Thing::connect(opts))
        .await
        .expect("connect must end by itself");
    assert!(
        matches!(
            r,
            Err(Error::Tls(TlsError::Handshake(
                rustls::Error::InvalidCertificate(_)
            )))
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_without_and_accepts_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = self_signed(&["127.0.0.1"]);
    let client = self_signed(&["thing.example"]);
    let hub = tls_hub(dir.path(), &server, Some(&client));
    let id = support::unique("mtls");
    let secret = hub.create_thing(&id).await;

    // Without a client certificate the hub refuses the connection (TLS 1.3: the alert comes
    // while the client reads CONNACK), with either MQTT version.
    for protocol in [Protocol::V311, Protocol::V5] {
        let opts = options(&hub, &id, &secret)
            .protocol(protocol)
            .tls_ca_pem(server.cert_pem.as_bytes())
            .expect("ca pem");
        let r = tokio::time::timeout(STEP, Thing::connect(opts))
            .await
            .expect("connect must end by itself");
        assert!(
            matches!(
                r,
                Err(Error::Tls(TlsError::Handshake(
                    rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
                )))
            ),
            "{protocol:?}: {r:?}"
        );
    }

    let opts = options(&hub, &id, &secret)
        .protocol(Protocol::V5)
        .tls_ca_pem(server.cert_pem.as_bytes())
        .expect("ca pem")
        .tls_client_cert_pem(client.cert_pem.as_bytes(), client.key_pem.as_bytes())
        .expect("client cert");
    let thing = Thing::connect(opts).await.expect("connect with mTLS");
    report_and_get(&hub, &thing, &id).await;
    thing.close().await;
}

#[test]
fn bad_pem_and_mismatched_keys_are_typed_errors() {
    let opts = || ThingOptions::new("t", "s", "127.0.0.1", 1);
    let a = self_signed(&["a.example"]);
    let b = self_signed(&["b.example"]);

    assert!(matches!(
        opts().tls_ca_pem(b"no pem here"),
        Err(Error::Tls(TlsError::NoCertificate))
    ));
    assert!(matches!(
        opts().tls_ca_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
        Err(Error::Tls(TlsError::Pem(_)))
    ));
    assert!(matches!(
        opts().tls_client_cert_pem(a.cert_pem.as_bytes(), a.key_pem.as_bytes()),
        Err(Error::Tls(TlsError::NoCa))
    ));
    let with_ca = opts().tls_ca_pem(a.cert_pem.as_bytes()).expect("ca");
    assert!(matches!(
        with_ca
            .clone()
            .tls_client_cert_pem(a.cert_pem.as_bytes(), b"no key"),
        Err(Error::Tls(TlsError::NoPrivateKey))
    ));
    assert!(matches!(
        with_ca
            .clone()
            .tls_client_cert_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()),
        Err(Error::Tls(TlsError::ClientAuth(_)))
    ));
    assert!(
        with_ca
            .tls_client_cert_pem(a.cert_pem.as_bytes(), a.key_pem.as_bytes())
            .is_ok()
    );
}

/// A receiver handler that hands each message's thing and payload to a channel.
struct ToChannel(tokio::sync::mpsc::UnboundedSender<(String, serde_json::Value)>);

impl iothub_sdk::service::Handler for ToChannel {
    fn name(&self) -> &str {
        "to-channel"
    }

    async fn handle(
        &self,
        msg: Arc<iothub_sdk::service::Message>,
    ) -> Result<(), iothub_sdk::service::HandlerError> {
        let _ = self
            .0
            .send((msg.thing.clone(), msg.json().unwrap_or_default()));
        Ok(())
    }
}

/// A receiver running in a task: its messages, its subscribed flag, its stop, its end.
struct RunningReceiver {
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    subscribed: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<
        Result<iothub_sdk::service::ReceiverStats, iothub_sdk::service::ReceiverError>,
    >,
}

/// Runs a receiver with `opts` until `stop` fires; its messages come to `rx`.
fn run_receiver(opts: iothub_sdk::service::ReceiverOptions) -> RunningReceiver {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let receiver = iothub_sdk::service::Receiver::new(opts).handler(ToChannel(tx));
    let subscribed = receiver.subscribed();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(receiver.run(async move {
        let _ = stopped.await;
    }));
    RunningReceiver {
        rx,
        subscribed,
        stop,
        task,
    }
}

/// The service receiver (`iothub_sdk::service`) over the hub's own MQTT over TLS listener:
/// with the server's CA only, and with a client certificate when the hub asks for one; a
/// receiver that does not trust the hub's certificate ends with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_receiver_connects_over_tls() {
    use iothub_sdk::service::{ReceiverError, ReceiverOptions, Stream};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = self_signed(&["127.0.0.1", "localhost"]);
    let client = self_signed(&["backend.example"]);
    for client_ca in [None, Some(&client)] {
        let hub = tls_hub(dir.path(), &server, client_ca);
        let mqtts = hub.ready.mqtts.expect("mqtts");
        let mut opts = ReceiverOptions::new(
            "localhost",
            mqtts.port(),
            support::SVC_USER,
            support::SVC_SECRET,
        )
        .expect("service user")
        .streams([Stream::Telemetry])
        .tls_ca_pem(server.cert_pem.as_bytes())
        .expect("ca pem");
        if client_ca.is_some() {
            opts = opts
                .tls_client_cert_pem(client.cert_pem.as_bytes(), client.key_pem.as_bytes())
                .expect("client cert");
        }
        assert!(opts.uses_tls());
        let RunningReceiver {
            mut rx,
            mut subscribed,
            stop,
            task,
        } = run_receiver(opts);
        tokio::time::timeout(STEP, subscribed.wait_for(|s| *s))
            .await
            .expect("subscribed over TLS in time")
            .expect("receiver running");

        // A thing on the hub's plain listener; its telemetry reaches the TLS receiver.
        let (id, thing_opts) = hub.new_thing("rx-tls").await;
        let thing = Thing::connect(thing_opts).await.expect("thing connects");
        for n in 0..5 {
            thing
                .send_telemetry(&json!({ "n": n }))
                .await
                .expect("telemetry");
        }
        for n in 0..5 {
            let (from, payload) = tokio::time::timeout(STEP, rx.recv())
                .await
                .expect("telemetry over TLS in time")
                .expect("receiver running");
            assert_eq!(from, id);
            assert_eq!(payload, json!({ "n": n }), "in order");
        }
        thing.close().await;
        let _ = stop.send(());
        let stats = task.await.expect("join").expect("clean stop");
        assert_eq!(stats.received, 5, "mutual TLS: {}", client_ca.is_some());

        if client_ca.is_some() {
            // Without a client certificate the hub refuses the receiver: a typed error.
            let opts = ReceiverOptions::new(
                "localhost",
                mqtts.port(),
                support::SVC_USER,
                support::SVC_SECRET,
            )
            .expect("service user")
            .tls_ca_pem(server.cert_pem.as_bytes())
            .expect("ca pem");
            let running = run_receiver(opts);
            let r = tokio::time::timeout(STEP, running.task)
                .await
                .expect("the receiver must end by itself")
                .expect("join");
            assert!(
                matches!(
                    r,
                    Err(ReceiverError::Tls(TlsError::Handshake(
                        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
                    )))
                ),
                "{r:?}"
            );
        }

        // Not trusting the hub's certificate: a typed error, not endless retries.
        let stranger = self_signed(&["127.0.0.1", "localhost"]);
        let opts = ReceiverOptions::new(
            "localhost",
            mqtts.port(),
            support::SVC_USER,
            support::SVC_SECRET,
        )
        .expect("service user")
        .tls_ca_pem(stranger.cert_pem.as_bytes())
        .expect("ca pem");
        let running = run_receiver(opts);
        let r = tokio::time::timeout(STEP, running.task)
            .await
            .expect("the receiver must end by itself")
            .expect("join");
        assert!(
            matches!(
                r,
                Err(ReceiverError::Tls(TlsError::Handshake(
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                )))
            ),
            "{r:?}"
        );
    }
}
