//! The shipped plain-MQTT scenario (the simulator's side of `simulator/bench/tsung-compare`),
//! scaled down, against the embedded reference hub: QoS 1 telemetry whose every PUBLISH is
//! acknowledged and timed. Asserts counts, not timings.

mod support;

use serde_json::json;
use support::{count, run_report};

#[test]
fn qos1_telemetry_is_acknowledged_and_timed() {
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/plain-mqtt.toml"
    );
    let (report, stdout) = run_report([
        "run",
        "--scenario",
        scenario,
        "--things",
        "20",
        "--duration",
        "3",
    ]);

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
