//! End to end: the firmware-style thermostat (`no_std` application core, minimq adapter) runs as
//! the `firmware_host` binary against the real `iothub` binary over TCP on loopback. It must
//! apply a desired change set made over REST and report it back, answer a method invoked over
//! REST, sync its clock (NTP), download and verify OTA files served by a tiny test HTTP server
//! (right file `done` with rising progress; wrong checksum 1403, missing file 1400, too large
//! 1404), and converge again after the hub restarts (same data directory, new process).
//!
//! Nothing sleeps to synchronize: every wait polls with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iothub_sdk_nostd::spec::code::OtaErrorCode;
use iothub_sdk_nostd::spec::payload::{self, field};
use serde_json::{Value, json};

mod support;

use support::{Proc, Rest, STEP, device_log, ota, spawn_device, spawn_hub};

/// The test firmware file: 20,000 deterministic bytes.
fn firmware_file() -> Vec<u8> {
    (0..20_000u32).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}
/// Digests of [`firmware_file`], computed independently (Python's hashlib).
const FILE_MD5: &str = "4a6989f25338745123c5b2bc3b8fd0e0";
const FILE_SHA256: &str = "2f7c06c11ae8773025de62a6eee9c83c0638a2b80c2b47363227d4676f1a9eff";

/// A tiny HTTP/1.0 file server on an ephemeral port: `GET /fw.bin` answers [`firmware_file`]
/// (written in 1,000-byte pieces), `GET /stall.bin` its first piece and then nothing while
/// keeping the connection open, any other path 404.
fn serve_files() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind file server");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut byte = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && req.len() < 8192 {
                    match conn.read(&mut byte) {
                        Ok(1) => req.push(byte[0]),
                        _ => return,
                    }
                }
                let req = String::from_utf8_lossy(&req);
                let path = req.split_whitespace().nth(1);
                if path == Some("/stall.bin") {
                    let file = firmware_file();
                    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", file.len());
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&file[..1000]);
                    // Held open, silent, until the device gives up and closes it.
                    let _ = conn.set_read_timeout(Some(STEP * 2));
                    let _ = conn.read(&mut byte);
                    return;
                }
                if path != Some("/fw.bin") {
                    let _ = conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let file = firmware_file();
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", file.len());
                let _ = conn.write_all(head.as_bytes());
                for piece in file.chunks(1000) {
                    if conn.write_all(piece).and_then(|()| conn.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The task's `meta` for the test file, with `md5` replaced.
fn meta(md5: &str, len: u64) -> payload::OtaMeta<'_> {
    payload::OtaMeta {
        version: "2.0.0",
        md5: Some(md5),
        sha256: Some(FILE_SHA256),
        content_type: Some("application/octet-stream"),
        content_length: Some(len),
    }
}

/// The final result's `errCode`.
fn err_code(results: &[Value]) -> Option<u64> {
    let last = results.last()?;
    (last[field::STATUS] == "failed")
        .then(|| last[field::ERR_CODE].as_u64())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_host_syncs_answers_and_survives_a_hub_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hub, mqtt, http) = spawn_hub(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let rest = Rest::new(http);
    let thing = format!("fw-{}", std::process::id());
    let secret = rest.create_thing(&thing).await;
    let _device: Proc = spawn_device(dir.path(), mqtt, &thing, &secret, &["--tick-ms", "200"]);
    let log = || device_log(dir.path());

    // A desired change set made over REST is applied and reported back.
    let reported = rest
        .converge(&thing, json!({"setpoint": 23, "mode": "cool"}))
        .await;
    assert_eq!(reported["boots"], 1, "{reported}\n{}", log());
    assert_eq!(reported["firmware"], env!("CARGO_PKG_VERSION"));

    // The method the firmware registered is answered; any other one gets 404 from the core.
    let reply = rest.invoke(&thing, "reboot").await;
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["data"], json!({"boots": 2}));
    let reply = rest.invoke(&thing, "selfdestruct").await;
    assert_eq!(reply["code"], 404, "{reply}");
    // The reboot is reported too.
    rest.converge(&thing, json!({"setpoint": 23})).await;
    let deadline = Instant::now() + STEP;
    while rest.reported(&thing).await["boots"] != 2 {
        assert!(Instant::now() < deadline, "boots never reported\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // NTP answered (the device reports it), and an OTA task sent by a service user is
    // downloaded from the test file server, verified and reported `done` with rising progress.
    let deadline = Instant::now() + STEP;
    while rest.reported(&thing).await["time_synced"] != true {
        assert!(Instant::now() < deadline, "time never synced\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files = serve_files();
    let url = format!("http://{files}/fw.bin");
    let len = firmware_file().len() as u64;
    let results = ota(mqtt, &thing, "fw-task-1", &url, meta(FILE_MD5, len)).await;
    let progress: Vec<u64> = results
        .iter()
        .filter(|r| r[field::STATUS] == "ongoing")
        .filter_map(|r| r[field::PROGRESS].as_u64())
        .collect();
    assert!(progress.len() >= 3, "progress: {results:?}\n{}", log());
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&100), "{results:?}");
    let last = results.last().unwrap();
    assert_eq!(last[field::STATUS], "done", "{results:?}\n{}", log());

    // The same file against a wrong MD5 fails 1403; a missing file 1400; a file larger than
    // the firmware's update slot 1404 before any byte is read.
    let code = |c: OtaErrorCode| Some(u64::from(c.as_u16()));
    let wrong_md5 = "0".repeat(32);
    let results = ota(mqtt, &thing, "fw-task-2", &url, meta(&wrong_md5, len)).await;
    assert_eq!(
        err_code(&results),
        code(OtaErrorCode::FileContentWrong),
        "{results:?}"
    );
    let missing = format!("http://{files}/missing.bin");
    let results = ota(mqtt, &thing, "fw-task-3", &missing, meta(FILE_MD5, len)).await;
    assert_eq!(
        err_code(&results),
        code(OtaErrorCode::FileUrlUnusable),
        "{results:?}"
    );
    let huge = iothub_firmware_app::ota::OTA_CAPACITY + 1;
    let results = ota(mqtt, &thing, "fw-task-4", &url, meta(FILE_MD5, huge)).await;
    assert_eq!(
        err_code(&results),
        code(OtaErrorCode::NoSpace),
        "{results:?}"
    );

    // A server that stops sending mid-file: the download gives up after `READ_TIMEOUT` (per
    // chunk, however often the application's ticker wins the select meanwhile) with 1400.
    let stall = format!("http://{files}/stall.bin");
    let results = ota(mqtt, &thing, "fw-task-5", &stall, meta(FILE_MD5, len)).await;
    assert_eq!(
        err_code(&results),
        code(OtaErrorCode::FileUrlUnusable),
        "{results:?}\n{}",
        log()
    );

    // The hub restarts on the same data directory and ports; the device reconnects, resyncs
    // and applies what is desired after the restart.
    drop(hub);
    let (_hub, mqtt2, http2) = spawn_hub(dir.path(), &mqtt.to_string(), &http.to_string());
    assert_eq!((mqtt2, http2), (mqtt, http));
    let reported = rest
        .converge(&thing, json!({"setpoint": 17, "mode": "heat"}))
        .await;
    assert_eq!(reported["boots"], 2, "{reported}");
    let reply = rest.invoke(&thing, "reboot").await;
    assert_eq!(reply["data"], json!({"boots": 3}), "{}", log());
}
