//! The hub's own TLS and WebSocket listeners (D-67..D-72), with certificates from
//! `iothub dev-certs`: the std SDK over MQTT over TLS (no terminator), mutual TLS, a client
//! that does not trust the CA, certificate reload on SIGHUP, HTTPS, and a browser-like MQTT
//! client over WebSocket `/mqtt` (and WSS) that reports and receives a delta.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use iothub_conformance::mqtt::Proto;
use iothub_conformance::raw::{ConnectOpts, Packet, codec};
use iothub_sdk::rustls::{self as sdk_rustls, CertificateError};
use iothub_sdk::{Error, Thing, ThingOptions, TlsError};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Runs `iothub dev-certs` into `dir` for `things`.
fn dev_certs(dir: &Path, things: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"));
    cmd.arg("dev-certs").arg("--out").arg(dir);
    for t in things {
        cmd.args(["--thing", t]);
    }
    let out = cmd.output().expect("run iothub dev-certs");
    assert!(
        out.status.success(),
        "dev-certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn arg(path: PathBuf) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// A hub with every TLS and WebSocket listener, using the certificates in `certs`.
fn tls_hub(certs: &Path, extra: &[&str]) -> Hub {
    let mut args = vec![
        "--mqtts-addr".to_owned(),
        "127.0.0.1:0".into(),
        "--ws-addr".into(),
        "127.0.0.1:0".into(),
        "--wss-addr".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        arg(certs.join("server.pem")),
        "--tls-key".into(),
        arg(certs.join("server.key")),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Hub::start_args(&args)
}

/// SDK options for `id` on the hub's MQTT over TLS listener, trusting `ca`.
fn mqtts_options(hub: &Hub, id: &str, secret: &str, ca: &[u8]) -> ThingOptions {
    let mqtts = hub.ready().mqtts.expect("the hub serves mqtts");
    ThingOptions::new(id, secret, "127.0.0.1", mqtts.port())
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .tls_ca_pem(ca)
        .expect("ca pem")
}

async fn report_and_get(hub: &Hub, thing: &Thing, id: &str, state: Value) {
    let shadow = thing.shadow("default");
    let version = shadow.report(&state).await.expect("report over tls");
    let doc = shadow.get().await.expect("get over tls");
    assert_eq!(doc.version, version);
    assert_eq!(doc.reported, Some(state.clone()));
    let (status, rest) = hub.rest_shadow(id, "default").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["state"]["reported"], state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reports_over_the_hubs_own_tls_listener_with_a_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let id = unique("mtls");
    dev_certs(certs.path(), &[&id]);
    let client_ca = arg(certs.path().join("ca.pem"));
    let hub = tls_hub(certs.path(), &["--tls-client-ca", &client_ca]);
    let ready = hub.ready();
    assert!(ready.mqtts.is_some() && ready.mqtt_ws.is_some() && ready.mqtt_wss.is_some());
    assert!(!ready.https, "{ready}");
    let secret = hub.create_thing(&id).await;
    let ca = read(certs.path().join("ca.pem"));

    // With the client certificate dev-certs made for the thing: connected, report, get.
    let opts = mqtts_options(&hub, &id, &secret, &ca)
        .tls_client_cert_pem(
            &read(certs.path().join(format!("thing-{id}.pem"))),
            &read(certs.path().join(format!("thing-{id}.key"))),
        )
        .expect("client cert");
    let thing = Thing::connect(opts).await.expect("connect with mTLS");
    report_and_get(&hub, &thing, &id, json!({"temp": 21.5})).await;
    thing.close().await;

    // Without one the handshake fails (D-71): TLS 1.3 reports it while reading CONNACK.
    let r = tokio::time::timeout(STEP, Thing::connect(mqtts_options(&hub, &id, &secret, &ca)))
        .await
        .expect("connect must end by itself");
    assert!(
        matches!(
            r,
            Err(Error::Tls(TlsError::Handshake(
                sdk_rustls::Error::AlertReceived(sdk_rustls::AlertDescription::CertificateRequired)
            )))
        ),
        "{r:?}"
    );

    // A client that trusts another CA refuses the hub's certificate.
    let other = tempfile::tempdir().expect("tempdir");
    dev_certs(other.path(), &[]);
    let r = tokio::time::timeout(
        STEP,
        Thing::connect(mqtts_options(
            &hub,
            &id,
            &secret,
            &read(other.path().join("ca.pem")),
        )),
    )
    .await
    .expect("connect must end by itself");
    assert!(
        matches!(
            r,
            Err(Error::Tls(TlsError::Handshake(
                sdk_rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            )))
        ),
        "{r:?}"
    );

    // The plain listener asks for no certificate.
    let plain = ThingOptions::new(&id, &secret, "127.0.0.1", hub.mqtt.port())
        .request_timeout(Duration::from_secs(5));
    let thing = Thing::connect(plain).await.expect("plain connect");
    let doc = thing.shadow("default").get().await.expect("get");
    assert_eq!(doc.reported, Some(json!({"temp": 21.5})));
    thing.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections_and_keeps_open_ones() {
    let old = tempfile::tempdir().expect("tempdir");
    dev_certs(old.path(), &[]);
    // The hub reads its files from here; they are replaced below.
    let live = tempfile::tempdir().expect("tempdir");
    for f in ["server.pem", "server.key"] {
        std::fs::copy(old.path().join(f), live.path().join(f)).expect("copy");
    }
    let hub = tls_hub(live.path(), &[]);
    // `early` stays connected across the reload; `id` makes the new connections (the same
    // thing would take the open connection over, S-1.4).
    let early = unique("early");
    let early_secret = hub.create_thing(&early).await;
    let id = unique("reload");
    let secret = hub.create_thing(&id).await;
    let old_ca = read(old.path().join("ca.pem"));
    let thing = Thing::connect(mqtts_options(&hub, &early, &early_secret, &old_ca))
        .await
        .expect("connect before the reload");
    report_and_get(&hub, &thing, &early, json!({"round": 1})).await;

    // A new CA and server certificate, then SIGHUP.
    let new = tempfile::tempdir().expect("tempdir");
    dev_certs(new.path(), &[]);
    for f in ["server.pem", "server.key"] {
        std::fs::copy(new.path().join(f), live.path().join(f)).expect("copy");
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(hub.pid()).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");

    // New connections get the new certificate (the reload is asynchronous: bounded wait).
    let new_ca = read(new.path().join("ca.pem"));
    let deadline = tokio::time::Instant::now() + STEP;
    let fresh = loop {
        match Thing::connect(mqtts_options(&hub, &id, &secret, &new_ca)).await {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never reloaded: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    fresh.close().await;
    // ... and a client that trusts only the old CA is refused now.
    let r = Thing::connect(mqtts_options(&hub, &id, &secret, &old_ca)).await;
    assert!(
        matches!(
            r,
            Err(Error::Tls(TlsError::Handshake(
                sdk_rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            )))
        ),
        "{r:?}"
    );
    assert!(hub.stderr().contains("TLS certificate and key reloaded"));
    // The connection opened before the reload is untouched: same session, still serving.
    report_and_get(&hub, &thing, &early, json!({"round": 2})).await;
    let (status, doc) = hub.rest_thing(&early).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["connected"], json!(true), "{doc}");
    thing.close().await;

    // A reload that fails keeps the certificate in use.
    std::fs::write(live.path().join("server.key"), "not a key").expect("break key");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    let deadline = tokio::time::Instant::now() + STEP;
    while !hub.stderr().contains("TLS reload failed") {
        assert!(tokio::time::Instant::now() < deadline, "{}", hub.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let thing = Thing::connect(mqtts_options(&hub, &id, &secret, &new_ca))
        .await
        .expect("the new certificate is still served");
    thing.close().await;
}

/// `--tls-client-ca` is read again on SIGHUP too (D-68): after the file names another CA, that
/// CA's client certificates are let in and the old CA's are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_client_ca() {
    let id = unique("ca-reload");
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    dev_certs(a.path(), &[&id]);
    dev_certs(b.path(), &[&id]);
    let live = tempfile::tempdir().expect("tempdir");
    let client_ca = live.path().join("client-ca.pem");
    std::fs::copy(a.path().join("ca.pem"), &client_ca).expect("copy");
    let hub = tls_hub(a.path(), &["--tls-client-ca", &arg(client_ca.clone())]);
    let secret = hub.create_thing(&id).await;
    let server_ca = read(a.path().join("ca.pem"));
    let with_cert_of = |dir: &Path| {
        mqtts_options(&hub, &id, &secret, &server_ca)
            .tls_client_cert_pem(
                &read(dir.join(format!("thing-{id}.pem"))),
                &read(dir.join(format!("thing-{id}.key"))),
            )
            .expect("client cert")
    };
    let thing = Thing::connect(with_cert_of(a.path()))
        .await
        .expect("CA A's certificate before the reload");
    thing.close().await;

    std::fs::copy(b.path().join("ca.pem"), &client_ca).expect("copy");
    let pid = rustix::process::Pid::from_raw(i32::try_from(hub.pid()).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");

    // The reload is asynchronous: bounded wait for CA B's certificate to be let in.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match Thing::connect(with_cert_of(b.path())).await {
            Ok(t) => {
                t.close().await;
                break;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "CA B never accepted: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let r = tokio::time::timeout(STEP, Thing::connect(with_cert_of(a.path())))
        .await
        .expect("connect must end by itself");
    assert!(matches!(r, Err(Error::Tls(_))), "CA A still let in: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_rest_api_and_nothing_in_plain_text() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &[]);
    let (cert, key) = (
        arg(certs.path().join("server.pem")),
        arg(certs.path().join("server.key")),
    );
    let hub = Hub::start_args(&["--https", "--tls-cert", &cert, "--tls-key", &key]);
    assert!(hub.ready().https, "{}", hub.ready());
    let ca = reqwest::Certificate::from_pem(&read(certs.path().join("ca.pem"))).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("client");
    let id = unique("https");
    let url = format!("https://localhost:{}/api/v1/things", hub.http.port());
    let created = client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"thingId": id}))
        .send()
        .await
        .expect("POST over https");
    assert_eq!(created.status().as_u16(), 201);
    let listed: Value = client
        .get(format!("{url}/{id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET over https")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"]["thingId"], json!(id), "{listed}");

    // Plain HTTP on the same port gets no answer.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("client");
    let r = plain
        .get(format!("http://127.0.0.1:{}/healthz", hub.http.port()))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
}

/// A TLS connection to `addr` as `localhost`, trusting the CA of `certs`.
async fn tls_connect(
    certs: &Path,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with the dev certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_hold_their_pending_slot_until_connack_and_obey_the_handshake_timeout() {
    use tokio::io::AsyncReadExt as _;
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &[]);
    let hub = tls_hub(
        certs.path(),
        &[
            "--max-pending-connects-per-addr",
            "1",
            "--handshake-timeout",
            "5",
        ],
    );
    let mqtts = hub.ready().mqtts.expect("mqtts");

    // TLS done, no CONNECT yet: the connection still holds the address's one pending slot
    // (S-2.9; the admission ticket goes with the TLS stream, vendor/README.md) ...
    let mut idle = tls_connect(certs.path(), mqtts).await;
    let mut second = TcpStream::connect(mqtts).await.expect("tcp");
    let mut byte = [0u8; 1];
    // Closed at accept: well before the 5 s handshake timeout would close an admitted one.
    let refused = tokio::time::timeout(Duration::from_secs(2), second.read(&mut byte))
        .await
        .expect("the second connection is closed at accept, not left waiting");
    assert!(matches!(refused, Ok(0) | Err(_)), "{refused:?}");

    // ... until the handshake timeout closes it.
    let closed = tokio::time::timeout(STEP, idle.read(&mut byte))
        .await
        .expect("closed by the handshake timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // Then the slot is free again: a thing connects over TLS.
    let id = unique("slot");
    let secret = hub.create_thing(&id).await;
    let thing = Thing::connect(mqtts_options(
        &hub,
        &id,
        &secret,
        &read(certs.path().join("ca.pem")),
    ))
    .await
    .expect("connect once the slot is free");
    thing.close().await;
}

/// An MQTT client over WebSocket, as a browser library would be: packets in binary frames.
struct WsMqtt<S> {
    ws: WebSocketStream<S>,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsMqtt<S> {
    async fn open(stream: S, url: &str) -> WsMqtt<S> {
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
        let (ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("WebSocket upgrade");
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.as_bytes()),
            Some(&b"mqtt"[..])
        );
        WsMqtt {
            ws,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send");
    }

    /// The next whole MQTT packet, however the frames split them.
    async fn packet(&mut self) -> Packet {
        loop {
            if let Some(p) = Packet::parse_frame(&self.buf, Proto::V5) {
                let header = 1 + varint_len(p.body.len());
                self.buf.drain(..header + p.body.len());
                return p;
            }
            let msg = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("a packet within STEP")
                .expect("connection open")
                .expect("frame");
            if let Message::Binary(b) = msg {
                self.buf.extend_from_slice(&b);
            }
        }
    }

    async fn connect(&mut self, id: &str, secret: &str) {
        self.send(ConnectOpts::new(id, id, secret).proto(Proto::V5).packet())
            .await;
        let ack = self.packet().await.connack().expect("CONNACK");
        assert_eq!(ack.reason, 0, "{ack:?}");
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_reports_and_receives_a_delta_through_mqtt_path() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &[]);
    let hub = tls_hub(certs.path(), &[]);
    let ready = hub.ready();
    let ws_addr = ready.mqtt_ws.expect("ws listener");
    let id = unique("ws");
    let secret = hub.create_thing(&id).await;

    // Only /mqtt serves MQTT (D-69).
    let tcp = TcpStream::connect(ws_addr).await.expect("tcp");
    let mut request = format!("ws://{ws_addr}/other")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    match tokio_tungstenite::client_async(request, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {:?}", other.map(|(_, r)| r.status())),
    }

    let tcp = TcpStream::connect(ws_addr).await.expect("tcp");
    let mut client = WsMqtt::open(tcp, &format!("ws://{ws_addr}/mqtt")).await;
    client.connect(&id, &secret).await;
    let delta = shadow_topic(&id, "default", "update/delta");
    client
        .send(codec::subscribe_packet(Proto::V5, 1, delta.as_bytes(), 1))
        .await;
    assert_eq!(client.packet().await.kind, 9, "SUBACK");
    let report = json!({"state": {"reported": {"led": "off"}}});
    client
        .send(codec::publish_packet(
            Proto::V5,
            shadow_topic(&id, "default", "update").as_bytes(),
            report.to_string().as_bytes(),
            (1, false, 2),
            &[],
        ))
        .await;
    assert_eq!(client.packet().await.kind, 4, "PUBACK");
    // The report is stored (the hub answers on update/accepted, which is not subscribed).
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, doc) = hub.rest_shadow(&id, "default").await;
        if status == 200 && doc["state"]["reported"]["led"] == json!("off") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {doc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = hub
        .put(
            &format!("/things/{id}/shadows/default/state/desired"),
            json!({"state": {"desired": {"led": "on"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let publish = loop {
        let p = client.packet().await;
        if let Some(publish) = p.publish().filter(|p| p.topic == delta) {
            break publish;
        }
    };
    let doc: Value = serde_json::from_slice(&publish.payload).expect("delta json");
    assert_eq!(doc["state"], json!({"led": "on"}), "{doc}");

    // The same over WSS, with the dev CA.
    let wss_addr = ready.mqtt_wss.expect("wss listener");
    let tls = tls_connect(certs.path(), wss_addr).await;
    let mut client = WsMqtt::open(tls, &format!("wss://localhost:{}/mqtt", wss_addr.port())).await;
    client.connect(&id, &secret).await;
    client
        .send(codec::subscribe_packet(Proto::V5, 1, delta.as_bytes(), 1))
        .await;
    assert_eq!(client.packet().await.kind, 9, "SUBACK");
}

#[test]
fn a_tls_listener_without_usable_files_stops_the_hub_with_an_error_naming_the_cause() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &[]);
    let data = tempfile::tempdir().expect("tempdir");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"))
            .args(["--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run iothub");
        assert!(!out.status.success(), "{extra:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("iothub ready"));
        stderr
    };
    let key = arg(certs.path().join("server.key"));
    let cert = arg(certs.path().join("server.pem"));
    let e = run(&["--wss-addr", "127.0.0.1:0", "--tls-cert", &cert]);
    assert!(
        e.contains("--wss-addr needs --tls-cert and --tls-key"),
        "{e}"
    );
    let missing = arg(certs.path().join("absent.pem"));
    let e = run(&["--https", "--tls-cert", &missing, "--tls-key", &key]);
    assert!(e.contains("cannot read") && e.contains("absent.pem"), "{e}");
    // The CA's key is not the server certificate's.
    let ca_key = arg(certs.path().join("ca.key"));
    let e = run(&[
        "--mqtts-addr",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &ca_key,
    ]);
    assert!(e.contains("does not fit the certificate"), "{e}");
}

/// A TCP stream that keeps a copy of everything it reads: the server's TLS records as sent.
struct Recording {
    inner: TcpStream,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            let read = &buf.filled()[before..];
            self.seen.lock().expect("lock").extend_from_slice(read);
        }
        polled
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The next whole MQTT packet read from `stream` (bytes after it stay in `buf`).
async fn next_packet<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Packet {
    use tokio::io::AsyncReadExt as _;
    loop {
        if let Some(p) = Packet::parse_frame(buf, Proto::V5) {
            let header = 1 + varint_len(p.body.len());
            buf.drain(..header + p.body.len());
            return p;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("a packet within STEP")
            .expect("read");
        assert!(n > 0, "the hub closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// D-91: a delta of 14,000 bytes reaches the device in records of at most 4,096 bytes before
/// encryption (4,113 on the wire), so a microcontroller's receive buffer of
/// `READ_RECORD_HUB` bytes holds any record the hub sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_tls_records_are_at_most_4096_bytes() {
    use tokio::io::AsyncWriteExt as _;
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &[]);
    let hub = tls_hub(certs.path(), &[]);
    let id = unique("d91");
    let secret = hub.create_thing(&id).await;

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.path().join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tcp = TcpStream::connect(hub.ready().mqtts.expect("mqtts"))
        .await
        .expect("tcp");
    let recording = Recording {
        inner: tcp,
        seen: seen.clone(),
    };
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), recording)
        .await
        .expect("TLS handshake");

    let mut buf = Vec::new();
    tls.write_all(
        &ConnectOpts::new(&id, &id, &secret)
            .proto(Proto::V5)
            .packet(),
    )
    .await
    .expect("CONNECT");
    let ack = next_packet(&mut tls, &mut buf)
        .await
        .connack()
        .expect("CONNACK");
    assert_eq!(ack.reason, 0, "{ack:?}");
    let delta = shadow_topic(&id, "default", "update/delta");
    tls.write_all(&codec::subscribe_packet(Proto::V5, 1, delta.as_bytes(), 1))
        .await
        .expect("SUBSCRIBE");
    assert_eq!(next_packet(&mut tls, &mut buf).await.kind, 9, "SUBACK");

    // Two writes (a REST request carries at most 8 KiB); the second delta holds both.
    for key in ["a", "b"] {
        let (status, body) = hub
            .put(
                &format!("/things/{id}/shadows/default/state/desired"),
                json!({"state": {"desired": {key: "x".repeat(7_000)}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let publish = loop {
        let p = next_packet(&mut tls, &mut buf).await;
        if let Some(publish) = p
            .publish()
            .filter(|p| p.topic == delta && p.payload.len() > 12_000)
        {
            break publish;
        }
    };
    assert!(publish.payload.len() > 14_000, "{}", publish.payload.len());

    // Every record the hub sent, handshake included: header (5 bytes) and body.
    let seen = seen.lock().expect("lock").clone();
    let (mut at, mut sizes) = (0, Vec::new());
    while at + 5 <= seen.len() {
        let len = usize::from(u16::from_be_bytes([seen[at + 3], seen[at + 4]]));
        sizes.push(5 + len);
        at += 5 + len;
    }
    assert_eq!(at, seen.len(), "whole records");
    // 4,096 bytes before encryption, header included, plus the content type and the tag.
    let limit = iothub_hub::tls::MQTT_MAX_RECORD + 1 + 16;
    assert_eq!(limit, 4_113);
    assert!(sizes.iter().all(|&s| s <= limit), "{sizes:?}");
    let full = sizes.iter().filter(|&&s| s == limit).count();
    assert!(full >= 2, "the delta spans several full records: {sizes:?}");
}
