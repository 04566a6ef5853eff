//! `--tls`: virtual things over MQTT over TLS. Against the embedded hub (the simulator makes the
//! run's CA and server certificate and starts the hub with a TLS listener) every thing
//! connects and every update is accepted; against an external hub's TLS listener, a CA that did
//! not sign the hub's certificate makes every connect fail with a TLS reason in the report
//! (so the things really speak TLS), and the right one connects them all.

mod support;

use std::path::Path;
use std::process::Command;

use iothub_launch::{HubCommand, HubProcess};
use serde_json::Value;
use support::{count, count_or_zero, run_report};

const TOKEN: &str = "tls-test-token";

#[test]
fn a_tls_run_against_the_embedded_hub_is_clean() {
    let (report, stdout) = run_report([
        "run",
        "--tls",
        "--things",
        "40",
        "--duration",
        "4",
        "--rate",
        "80",
        "--ramp",
        "200",
        "--mqtt5-share",
        "0.5",
        "--no-progress",
    ]);
    assert_eq!(count(&report, "/connected"), 40, "{stdout}");
    assert_eq!(count_or_zero(&report, "/connect_failures"), 0, "{stdout}");
    assert_eq!(count_or_zero(&report, "/lost"), 0, "{stdout}");
    assert!(
        report["connect_errors"]
            .as_object()
            .is_some_and(serde_json::Map::is_empty),
        "{report}"
    );
    let sent = count(&report, "/sent");
    assert!(sent > 0, "{report}");
    assert_eq!(count(&report, "/accepted"), sent, "{report}");
}

/// The real hub with a TLS listener (certificates by `iothub dev-certs` in `certs`).
fn tls_hub(dir: &Path, certs: &Path) -> HubProcess {
    let bin = iothub_launch::hub_binary().expect("iothub binary");
    let out = Command::new(&bin)
        .args(["dev-certs", "--out"])
        .arg(certs)
        .output()
        .expect("iothub dev-certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    HubCommand::new(bin)
        .args(["--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--mqtts-addr", "127.0.0.1:0", "--tls-cert"])
        .arg(certs.join("server.pem"))
        .arg("--tls-key")
        .arg(certs.join("server.key"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--admin-token",
            TOKEN,
            "--max-pending-connects-per-addr=1000",
        ])
        .env("RUST_LOG", "warn")
        .stderr_to(dir.join("hub.log"))
        .spawn()
        .expect("start iothub")
}

/// `iothub-sim run` against `hub`'s TLS listener trusting `ca`: exit code and JSON report.
fn sim(hub: &HubProcess, dir: &Path, name: &str, ca: &Path) -> (Option<i32>, Value, String) {
    let ready = hub.ready();
    let mqtts = ready.mqtts.expect("the hub serves mqtts");
    // A short wait for connections: with an untrusted CA none ever comes.
    let scenario = dir.join(format!("{name}.toml"));
    std::fs::write(
        &scenario,
        "duration_s = 2.0\n[population]\ncount = 10\n\
         [ramp]\nconnects_per_s = 100.0\nmax_wait_s = 4.0\n\
         [profile]\nreported_changes_per_s = 2.0\n",
    )
    .expect("write scenario");
    let report_path = dir.join(format!("{name}.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .arg("run")
        .arg("--scenario")
        .arg(&scenario)
        .args(["--mqtt", &mqtts.to_string()])
        .args(["--api", &ready.http.to_string()])
        .args(["--token", TOKEN, "--no-progress", "--id-prefix", name])
        .arg("--tls-ca")
        .arg(ca)
        .arg("--report-json")
        .arg(&report_path)
        .output()
        .expect("run iothub-sim");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read(&report_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (output.status.code(), report, text)
}

#[test]
fn an_external_hubs_tls_listener_is_reached_only_with_the_ca_that_signed_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let hub = tls_hub(dir.path(), &certs);

    // Another development CA: every handshake fails, for a TLS reason, and the run says so.
    let other = dir.path().join("other");
    let out = Command::new(iothub_launch::hub_binary().expect("iothub binary"))
        .args(["dev-certs", "--out"])
        .arg(&other)
        .output()
        .expect("iothub dev-certs");
    assert!(out.status.success());
    let (code, report, text) = sim(&hub, dir.path(), "untrusted", &other.join("ca.pem"));
    assert_ne!(code, Some(0), "{text}");
    assert_eq!(count_or_zero(&report, "/connected"), 0, "{text}");
    let errors = report["connect_errors"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        errors.keys().any(|k| k.starts_with("tls handshake: ")),
        "{errors:?}\n{text}"
    );

    // The CA that signed the hub's certificate: all connected, every update accepted.
    let (code, report, text) = sim(&hub, dir.path(), "trusted", &certs.join("ca.pem"));
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(count(&report, "/connected"), 10, "{text}");
    let sent = count(&report, "/sent");
    assert!(sent > 0, "{text}");
    assert_eq!(count(&report, "/accepted"), sent, "{text}");
}

#[test]
fn tls_with_an_external_hub_needs_its_ca() {
    let output = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .args([
            "run",
            "--tls",
            "--mqtt",
            "127.0.0.1:1",
            "--api",
            "127.0.0.1:1",
        ])
        .args(["--token", TOKEN, "--no-progress"])
        .output()
        .expect("run iothub-sim");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-ca"), "{stderr}");
}
