//! A short load run of the real simulator binary against the embedded reference hub: the
//! README's main command, scaled down (100 things, 10 s), with every interaction switched on:
//! shadow reports, desired changes converging through deltas, method calls, NTP, OTA jobs,
//! MQTT 3.1.1 and 5. Asserts the report's counts, not its timings.

use std::process::Command;

use serde_json::{Value, json};

fn count(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing: {report}"))
}

#[test]
fn short_run_against_the_embedded_hub_is_clean() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let csv_path = dir.path().join("report.csv");
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
            "--desired-per-sec",
            "20",
            "--methods-per-sec",
            "50",
            "--ntp-interval",
            "2",
            "--mqtt5-share",
            "0.5",
            "--ota-job-interval",
            "2",
            "--ota-job-things",
            "20",
        ])
        .arg("--report-json")
        .arg(&report_path)
        .arg("--report-csv")
        .arg(&csv_path)
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
    // Everyone connected, once.
    assert_eq!(report["things"], 100, "{report}");
    assert_eq!(count(&report, "/connected"), 100, "all things connect");
    assert_eq!(count(&report, "/connect_failures"), 0);
    assert_eq!(count(&report, "/lost"), 0, "no connection lost");
    assert_eq!(count(&report, "/latency/connect/count"), 100);

    // Every update accepted, in order. 100 things at 5 updates/s for 10 s: ~5,000 load
    // reports, plus one per converged desired change.
    let sent = count(&report, "/sent");
    assert!(sent >= 4_000, "the run sent too little: {report}");
    assert_eq!(count(&report, "/accepted"), sent, "every update accepted");
    assert_eq!(count(&report, "/latency/update_to_accepted/count"), sent);
    assert_eq!(report["rejected"], json!({}), "{report}");
    assert_eq!(count(&report, "/unanswered"), 0);
    assert_eq!(count(&report, "/aborted"), 0);
    assert_eq!(count(&report, "/out_of_order"), 0, "no reordered versions");

    // Every desired change reached the thing as a delta and came back as reported state.
    let desired = count(&report, "/desired_sent");
    assert!(desired >= 100, "too few desired changes: {report}");
    assert_eq!(count(&report, "/converged"), desired);
    assert_eq!(count(&report, "/unconverged"), 0);
    assert_eq!(count(&report, "/latency/convergence/count"), desired);
    assert!(count(&report, "/deltas") >= desired);

    // Every method call answered by the device, 200.
    let calls = count(&report, "/method_calls");
    assert!(calls >= 250, "too few method calls: {report}");
    assert_eq!(count(&report, "/method_ok"), calls, "every method answered");
    assert_eq!(report["method_errors"], json!({}), "{report}");
    assert_eq!(count(&report, "/latency/method_rtt/count"), calls);
    assert_eq!(count(&report, "/method_answers_sent"), calls);

    // Every NTP exchange answered.
    let ntp = count(&report, "/ntp_started");
    assert!(ntp >= 300, "too few NTP exchanges: {report}");
    assert_eq!(count(&report, "/ntp_done"), ntp);

    // Every OTA job ended with every task done (4 progress reports, then done).
    let jobs = count(&report, "/ota_jobs");
    assert!(jobs >= 4, "too few OTA jobs: {report}");
    assert_eq!(count(&report, "/ota_jobs_ended"), jobs);
    assert_eq!(report["ota_job_errors"], json!({}), "{report}");
    assert_eq!(
        report["ota_task_states"],
        json!({ "done": jobs * 20 }),
        "{report}"
    );
    assert_eq!(count(&report, "/ota_results/done"), jobs * 20);
    assert_eq!(count(&report, "/latency/ota_job/count"), jobs);

    // No protocol error of any kind.
    assert_eq!(report["protocol_errors"], json!({}), "{report}");
    assert_eq!(report["connect_errors"], json!({}), "{report}");

    assert!(
        stdout.contains("update->accepted") && stdout.contains("method round trip"),
        "human table printed:\n{stdout}"
    );
    let csv = std::fs::read_to_string(&csv_path).expect("csv written");
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&format!("updates_accepted,{sent},"))),
        "{csv}"
    );
}
