//! The shipped plain-MQTT scenario (the simulator's side of `simulator/bench/tsung-compare`),
//! scaled down, against the embedded reference hub: QoS 1 telemetry whose every PUBLISH is
//! acknowledged and timed. Asserts counts, not timings.

use std::process::Command;

use serde_json::{Value, json};

fn count(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing: {report}"))
}

#[test]
fn qos1_telemetry_is_acknowledged_and_timed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/plain-mqtt.toml"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .args([
            "run",
            "--scenario",
            scenario,
            "--things",
            "20",
            "--duration",
            "3",
        ])
        .arg("--report-json")
        .arg(&report_path)
        .output()
        .expect("run iothub-sim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "iothub-sim failed:\n{stdout}\n{stderr}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report written"))
            .expect("JSON report");

    assert_eq!(count(&report, "/connected"), 20, "{report}");
    let sent = count(&report, "/telemetry_sent");
    // Every thing's first tick falls within one interval (0.5 s) of the 3 s period's start.
    assert!(sent >= 20, "every thing published: {report}");
    assert_eq!(count(&report, "/telemetry_acked"), sent, "{report}");
    assert_eq!(count(&report, "/telemetry_unacked"), 0, "{report}");
    assert_eq!(
        count(&report, "/latency/telemetry_ack/count"),
        sent,
        "one PUBLISH -> PUBACK sample per message: {report}"
    );
    assert_eq!(count(&report, "/sent"), 0, "no shadow updates: {report}");
    assert_eq!(report["protocol_errors"], json!({}), "{report}");
    assert!(stdout.contains("telemetry->puback"), "{stdout}");
}
