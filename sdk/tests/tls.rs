//! The `tls` feature against the real hub: a TLS terminator (tokio-rustls, with certificates
//! made by rcgen at test time) in front of the hub's plain MQTT port, and the SDK connecting
//! through it. Run with `cargo test -p iothub-sdk --features tls --test tls`.
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use iothub_sdk::rustls::crypto::{CryptoProvider, ring};
use iothub_sdk::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use iothub_sdk::rustls::server::WebPkiClientVerifier;
use iothub_sdk::rustls::{self, CertificateError, RootCertStore, ServerConfig};
use iothub_sdk::{Error, Protocol, Thing, ThingOptions, TlsError};
use serde_json::json;
use support::{Hub, STEP};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate and its key, made now.
struct Identity {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
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
        key_der: key.serialize_der(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A server configuration presenting `server`; with `client_ca`, client certificates signed by
/// it are required.
fn server_config(server: &Identity, client_ca: Option<&Identity>) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert_der.clone()).expect("client ca");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone()));
    builder
        .with_single_cert(vec![server.cert_der.clone()], key)
        .expect("server certificate")
}

/// A TLS terminator on a free loopback port forwarding the decrypted bytes to `upstream` (the
/// hub's plain MQTT port). Stops when dropped.
struct Terminator {
    addr: SocketAddr,
    /// Completed server handshakes.
    handshakes: Arc<AtomicUsize>,
    /// Failed server handshakes.
    failures: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Terminator {
    async fn start(config: ServerConfig, upstream: SocketAddr) -> Terminator {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let (ok, failed) = (handshakes.clone(), failures.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, ok, failed) = (acceptor.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut tls = match tokio::time::timeout(STEP, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    ok.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    // Ends when either side closes.
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Terminator {
            addr,
            handshakes,
            failures,
            task,
        }
    }

    /// Options for a thing of `hub`, reaching it through this terminator.
    fn options(&self, id: &str, secret: &str) -> ThingOptions {
        ThingOptions::new(id, secret, "127.0.0.1", self.addr.port())
            .request_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
    }
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
    let hub = Hub::start();
    let server = self_signed(&["127.0.0.1", "localhost"]);
    let term = Terminator::start(server_config(&server, None), hub.mqtt).await;
    let id = support::unique("tls");
    let secret = hub.create_thing(&id).await;

    let opts = term
        .options(&id, &secret)
        .tls_ca_pem(server.cert_pem.as_bytes())
        .expect("ca pem");
    assert!(opts.uses_tls());
    let thing = Thing::connect(opts).await.expect("connect over tls");
    assert_eq!(term.handshakes.load(Ordering::SeqCst), 1);
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
    let opts = term.options(&id, &secret).tls_config(Arc::new(config));
    let thing = Thing::connect(opts).await.expect("connect with tls_config");
    assert_eq!(term.handshakes.load(Ordering::SeqCst), 2);
    let doc = thing.shadow("default").get().await.expect("get");
    assert_eq!(doc.version, 1);
    assert_eq!(doc.reported, Some(json!({"temp": 21.5, "mode": "eco"})));
    thing.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_with_a_typed_error() {
    let hub = Hub::start();
    let server = self_signed(&["127.0.0.1"]);
    let other_ca = self_signed(&["127.0.0.1"]);
    let term = Terminator::start(server_config(&server, None), hub.mqtt).await;
    let id = support::unique("untrusted");
    let secret = hub.create_thing(&id).await;

    let opts = term
        .options(&id, &secret)
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
    assert_eq!(term.handshakes.load(Ordering::SeqCst), 0);
    // The server sees the failed handshake a moment after the client gave up (the alert
    // crosses the socket): wait for it, bounded.
    let deadline = tokio::time::Instant::now() + STEP;
    while term.failures.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the terminator never saw the failed handshake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(term.handshakes.load(Ordering::SeqCst), 0);

    // A certificate that does not name the host is refused too.
    let named = self_signed(&["hub.example"]);
    let term2 = Terminator::start(server_config(&named, None), hub.mqtt).await;
    let opts = term2
        .options(&id, &secret)
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
    let hub = Hub::start();
    let server = self_signed(&["127.0.0.1"]);
    let client = self_signed(&["thing.example"]);
    let term = Terminator::start(server_config(&server, Some(&client)), hub.mqtt).await;
    let id = support::unique("mtls");
    let secret = hub.create_thing(&id).await;

    // Without a client certificate the terminator refuses the connection (TLS 1.3: the alert
    // comes while the client reads CONNACK), with either MQTT version.
    for protocol in [Protocol::V311, Protocol::V5] {
        let opts = term
            .options(&id, &secret)
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
    assert_eq!(term.handshakes.load(Ordering::SeqCst), 0);

    let opts = term
        .options(&id, &secret)
        .protocol(Protocol::V5)
        .tls_ca_pem(server.cert_pem.as_bytes())
        .expect("ca pem")
        .tls_client_cert_pem(client.cert_pem.as_bytes(), client.key_pem.as_bytes())
        .expect("client cert");
    let thing = Thing::connect(opts).await.expect("connect with mTLS");
    assert_eq!(term.handshakes.load(Ordering::SeqCst), 1);
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
