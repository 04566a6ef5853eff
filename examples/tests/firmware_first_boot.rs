//! First boot of the firmware-style thermostat (`no_std` core, minimq adapter) as the
//! `firmware_host` binary against the real `iothub` binary: with only a claim credential it
//! provisions itself (S-10, `iothub_sdk_nostd::minimq::provision`), keeps the credentials it
//! got, applies the enrollment's initial desired state and reports with its new identity; the
//! next boot uses the kept credentials and does not provision again; a wrong claim secret
//! ends the process with an error and keeps nothing.
//!
//! Nothing sleeps to synchronize: every wait polls with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

mod support;

use support::{Proc, Rest, STEP, spawn_hub};

const ENROLLMENT: &str = "fwboot";

/// Starts `firmware_host` with a claim and a credentials file; its stderr goes to `log`.
fn boot(dir: &Path, mqtt: SocketAddr, claim_secret: &str, log: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firmware_host"));
    cmd.args(["--mqtt", &mqtt.to_string(), "--tick-ms", "200"])
        .arg("--credentials")
        .arg(dir.join("credentials"))
        .args(["--enrollment", ENROLLMENT, "--serial", "SN-0042"])
        .env("IOTHUB_CLAIM_SECRET", claim_secret)
        .env_remove("IOTHUB_THING_SECRET")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(dir.join(format!("{log}.out"))).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{log}.err"))).unwrap(),
        ));
    cmd
}

/// Everything a device process printed.
fn output(dir: &Path, log: &str) -> String {
    let read = |ext| std::fs::read_to_string(dir.join(format!("{log}.{ext}"))).unwrap_or_default();
    format!("{}{}", read("out"), read("err"))
}

/// The enrollment's `uses`.
async fn uses(rest: &Rest) -> u64 {
    let (status, body) = rest
        .call(Method::GET, &format!("/enrollments/{ENROLLMENT}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["uses"].as_u64().expect("uses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_firmware_provisions_itself_then_reports_and_keeps_its_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_hub, mqtt, http) = spawn_hub(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let rest = Rest::new(http);
    let (status, created) = rest
        .call(
            Method::POST,
            "/enrollments",
            Some(json!({
                "enrollmentId": ENROLLMENT,
                "idRule": {"kind": "prefix", "value": "fw-"},
                "template": {"desired": {"setpoint": 19, "mode": "heat"}},
                "maxUses": 5,
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let claim = created["data"]["claimSecret"].as_str().unwrap().to_owned();
    let creds_file = dir.path().join("credentials");

    // A wrong claim secret: the process gives up (the hub refuses the CONNECT) and keeps
    // nothing.
    let mut wrong = Proc(
        boot(dir.path(), mqtt, "not-the-claim", "wrong")
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = wrong.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{}", output(dir.path(), "wrong"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{}", output(dir.path(), "wrong"));
    assert!(
        output(dir.path(), "wrong").contains("provisioning failed: Handshake"),
        "{}",
        output(dir.path(), "wrong")
    );
    assert!(!creds_file.exists());
    assert_eq!(uses(&rest).await, 0);

    // First boot: provisions, writes the credentials, then runs as the new thing.
    let first = Proc(boot(dir.path(), mqtt, &claim, "first").spawn().unwrap());
    let deadline = Instant::now() + STEP;
    while !creds_file.exists() {
        assert!(Instant::now() < deadline, "{}", output(dir.path(), "first"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = std::fs::read_to_string(&creds_file).unwrap();
    let mut lines = kept.lines();
    let (thing, secret) = (lines.next().unwrap().to_owned(), lines.next().unwrap());
    assert_eq!(thing, "fw-SN-0042", "the prefix rule and the serial");
    assert_eq!(secret.len(), 32, "the hub's generated secret");
    assert_eq!(uses(&rest).await, 1);

    // The enrollment's initial desired state is applied and reported with the new identity,
    // and a change made over REST afterwards too.
    let deadline = Instant::now() + STEP;
    loop {
        let reported = rest.reported(&thing).await;
        if reported["setpoint"] == 19 && reported["mode"] == "heat" {
            assert_eq!(reported["boots"], 1, "{reported}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{reported}\n{}",
            output(dir.path(), "first")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reported = rest.converge(&thing, json!({"setpoint": 23})).await;
    assert_eq!(reported["mode"], "heat", "{reported}");

    // Next boot: the kept credentials, no second provisioning.
    drop(first);
    let _second = Proc(boot(dir.path(), mqtt, &claim, "second").spawn().unwrap());
    let reported = rest
        .converge(&thing, json!({"setpoint": 25, "mode": "cool"}))
        .await;
    assert_eq!(reported["setpoint"], 25, "{}", output(dir.path(), "second"));
    assert_eq!(std::fs::read_to_string(&creds_file).unwrap(), kept);
    assert_eq!(uses(&rest).await, 1, "the second boot did not provision");
    assert!(
        output(dir.path(), "second").contains(&format!("credentials kept thing={thing}")),
        "{}",
        output(dir.path(), "second")
    );
}
