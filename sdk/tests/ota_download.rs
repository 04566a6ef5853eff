//! `OtaTask::download` against the real hub's OTA jobs (S-7, S-9.6) and a firmware file served
//! by a tiny HTTP server in the test: verified file and `done`, wrong checksum → `failed` 1403,
//! missing file → 1400, too large → 1404, as the hub records them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use iothub_sdk::{DownloadError, DownloadOptions, OtaErrorCode, Thing};
use md5::Md5;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Hub, next};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The firmware: 40 KiB of a repeating pattern.
fn firmware() -> Vec<u8> {
    (0..40 * 1024u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `GET /fw.bin` (in 4 KiB writes) and 404 for anything else, on a free port.
async fn file_server(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve_file(sock, body.clone()));
        }
    });
    format!("http://{addr}")
}

/// One HTTP/1.1 exchange on `sock`: `GET /fw.bin` gets `body`, anything else 404.
async fn serve_file<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, body: Vec<u8>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req);
    if line.starts_with("GET /fw.bin ") {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = sock.write_all(head.as_bytes()).await;
        for chunk in body.chunks(4096) {
            let _ = sock.write_all(chunk).await;
            let _ = sock.flush().await;
        }
    } else {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
    }
    let _ = sock.shutdown().await;
}

async fn create_job(hub: &Hub, thing: &str, url: &str, meta: Value) -> String {
    let (s, b) = hub
        .call(
            reqwest::Method::POST,
            "/ota/jobs",
            Some(json!({"targets": {"thingIds": [thing]},
                        "task": {"type": "app", "meta": meta, "fileUrl": url}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    b["data"]["jobId"].as_str().unwrap().to_string()
}

/// The thing's task of the job once it has ended.
async fn ended_task(hub: &Hub, job: &str, thing: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = hub
            .call(
                reqwest::Method::GET,
                &format!("/ota/jobs/{job}/tasks/{thing}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let status = b["data"]["status"].as_str().unwrap_or_default().to_string();
        if !["queued", "sent", "ongoing"].contains(&status.as_str()) {
            return b["data"].clone();
        }
        assert!(Instant::now() < deadline, "task never ended: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn statuses(task: &Value) -> Vec<String> {
    task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_verifies_reports_and_hands_over_the_file() {
    let hub = Hub::start();
    let (id, opts) = hub.new_thing("dl").await;
    let thing = Thing::connect(opts).await.expect("connect");
    let mut tasks = thing.ota().tasks();
    let fw = firmware();
    let base = file_server(fw.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let md5 = hex(&Md5::digest(&fw));
    let sha = hex(&Sha256::digest(&fw));
    let dl = DownloadOptions::new(dir.path()).progress_step(25);

    // A good file: progress reports, verified, `done`.
    let meta = json!({"version": "2.0", "md5": md5, "sha256": sha.to_uppercase(), "content-length": fw.len()});
    let job = create_job(&hub, &id, &format!("{base}/fw.bin"), meta).await;
    let task = next(&mut tasks).await;
    let file = task.download(&dl).await.expect("download");
    assert_eq!(file.size, fw.len() as u64);
    assert_eq!(
        (file.md5.as_str(), file.sha256.as_str()),
        (md5.as_str(), sha.as_str())
    );
    // Downloaded and verified is not installed: `done` is the application's call.
    task.done().await.expect("done after install");
    assert_eq!(
        std::fs::read(&file.path).unwrap(),
        fw,
        "the file handed over is the firmware"
    );
    let t = ended_task(&hub, &job, &id).await;
    assert_eq!(t["status"], "done", "{t}");
    assert_eq!(statuses(&t), ["queued", "sent", "ongoing", "done"], "{t}");

    // A wrong checksum: failed 1403, no file left behind.
    let meta = json!({"version": "2.1", "sha256": "00".repeat(32)});
    let job = create_job(&hub, &id, &format!("{base}/fw.bin"), meta).await;
    let task = next(&mut tasks).await;
    let err = task.download(&dl).await.expect_err("wrong checksum");
    assert!(matches!(err, DownloadError::ContentWrong(_)), "{err:?}");
    assert_eq!(err.code(), Some(OtaErrorCode::FileContentWrong));
    let t = ended_task(&hub, &job, &id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["errCode"], 1403, "{t}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 1, "only the first, verified file: {left:?}");

    // A wrong size is wrong content too.
    let meta = json!({"version": "2.2", "content-length": fw.len() + 1});
    let job = create_job(&hub, &id, &format!("{base}/fw.bin"), meta).await;
    let err = next(&mut tasks)
        .await
        .download(&dl)
        .await
        .expect_err("wrong size");
    assert_eq!(err.code(), Some(OtaErrorCode::FileContentWrong), "{err:?}");
    assert_eq!(ended_task(&hub, &job, &id).await["errCode"], 1403);

    // A missing file: 1400.
    let job = create_job(
        &hub,
        &id,
        &format!("{base}/missing.bin"),
        json!({"version": "3"}),
    )
    .await;
    let err = next(&mut tasks).await.download(&dl).await.expect_err("404");
    assert_eq!(err.code(), Some(OtaErrorCode::FileUrlUnusable), "{err:?}");
    assert_eq!(ended_task(&hub, &job, &id).await["errCode"], 1400);

    // Not enough space: 1404 (known from the HTTP Content-Length).
    let job = create_job(
        &hub,
        &id,
        &format!("{base}/fw.bin"),
        json!({"version": "4"}),
    )
    .await;
    let small = DownloadOptions::new(dir.path()).max_bytes(1024);
    let err = next(&mut tasks)
        .await
        .download(&small)
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Some(OtaErrorCode::NoSpace), "{err:?}");
    assert_eq!(ended_task(&hub, &job, &id).await["errCode"], 1404);
    thing.close().await;
}

/// `https://` file URLs (feature `tls`): trusted through [`DownloadOptions::tls`], refused with
/// 1400 without it.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_file_urls_need_a_trusted_certificate() {
    use iothub_sdk::rustls::{self, RootCertStore};
    use std::sync::Arc;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("names")
        .self_signed(&key)
        .expect("rcgen");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let fw = firmware();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let body = fw.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(sock).await {
                    serve_file(tls, body).await;
                }
            });
        }
    });
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();

    let hub = Hub::start();
    let (id, opts) = hub.new_thing("dls").await;
    let thing = Thing::connect(opts).await.expect("connect");
    let mut tasks = thing.ota().tasks();
    let dir = tempfile::tempdir().unwrap();
    let meta = json!({"version": "5", "sha256": hex(&Sha256::digest(&fw))});

    let job = create_job(&hub, &id, &format!("{base}/fw.bin"), meta.clone()).await;
    let trusting = DownloadOptions::new(dir.path()).tls(Arc::new(client));
    let task = next(&mut tasks).await;
    let file = task.download(&trusting).await.expect("download over https");
    assert_eq!(std::fs::read(&file.path).unwrap(), fw);
    task.done().await.expect("done after install");
    assert_eq!(ended_task(&hub, &job, &id).await["status"], "done");

    let job = create_job(&hub, &id, &format!("{base}/fw.bin"), meta).await;
    let err = next(&mut tasks)
        .await
        .download(&DownloadOptions::new(dir.path()))
        .await
        .expect_err("no trusted roots");
    assert_eq!(err.code(), Some(OtaErrorCode::FileUrlUnusable), "{err:?}");
    assert_eq!(ended_task(&hub, &job, &id).await["errCode"], 1400);
    thing.close().await;
}
