//! A short load run of the real simulator binary against the embedded reference hub: the
//! README's main command, scaled down. Asserts the report's counts, not its timings.

use std::process::Command;

use serde_json::Value;

#[test]
fn short_run_against_the_embedded_hub_is_clean() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .args([
            "run",
            "--things",
            "100",
            "--duration",
            "10",
            "--rate",
            "500",
            "--ramp",
            "500",
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
    assert_eq!(report["things"], 100, "{report}");
    assert_eq!(report["connected"], 100, "all things connect: {report}");
    assert_eq!(report["connect_failures"], 0, "{report}");
    let sent = report["sent"].as_u64().expect("sent");
    // 100 things at 5 updates/s for 10 s: about 5,000 updates.
    assert!(sent >= 4_000, "the run sent too little: {report}");
    assert_eq!(
        report["accepted"].as_u64(),
        Some(sent),
        "every update accepted: {report}"
    );
    assert_eq!(report["rejected"], serde_json::json!({}), "{report}");
    assert_eq!(report["unanswered"], 0, "{report}");
    assert_eq!(
        report["out_of_order"], 0,
        "no lost or reordered versions: {report}"
    );
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(
        report["update_to_accepted"]["count"].as_u64(),
        Some(sent),
        "{report}"
    );
    assert!(
        stdout.contains("update->accepted"),
        "human table printed:\n{stdout}"
    );
}
