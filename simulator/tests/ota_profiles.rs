//! OTA profiles of a scenario against the embedded reference hub: tasks that fail with a chosen
//! S-7.2 code, and tasks whose thing drops its connection after the first progress report and
//! finishes after reconnecting. The hub's job counts must agree with what the things reported.

mod support;

use serde_json::json;
use support::{count_or_zero as count, run_report};

#[test]
fn failing_and_disconnecting_ota_tasks_end_with_matching_counts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario = dir.path().join("ota.toml");
    std::fs::write(
        &scenario,
        r#"
seed = 11
duration_s = 6.0

[population]
count = 20
id_pattern = "otap-{i:03}"
mqtt5_share = 0.5

[profile]
reported_changes_per_s = 0.0
ota_steps = 3
ota_step_ms = 100
ota_failure_rate = 0.5
ota_failure_code = 1404
ota_disconnect_rate = 0.5

[business]
ota_job_interval_s = 1000.0
ota_job_things = 20
"#,
    )
    .expect("scenario written");
    let (report, _) = run_report([
        std::ffi::OsStr::new("run"),
        "--scenario".as_ref(),
        scenario.as_os_str(),
    ]);

    assert_eq!(count(&report, "/ota_jobs"), 1, "{report}");
    assert_eq!(count(&report, "/ota_jobs_ended"), 1, "{report}");
    assert_eq!(report["ota_job_errors"], json!({}), "{report}");

    // What the things sent...
    let done = count(&report, "/ota_results/done");
    let failed = count(&report, "/ota_results/failed");
    let dropped = count(&report, "/ota_results/connection dropped mid-task");
    assert_eq!(done + failed, 20, "one final result per task: {report}");
    assert!(done > 0 && failed > 0, "both outcomes drawn: {report}");
    assert!(dropped > 0, "some tasks dropped their connection: {report}");
    assert!(
        count(&report, "/churned") >= dropped,
        "each drop is a disconnect: {report}"
    );
    // ... is what the hub counted for the job.
    assert_eq!(
        report["ota_task_states"],
        json!({ "done": done, "failed": failed }),
        "{report}"
    );
    assert_eq!(report["protocol_errors"], json!({}), "{report}");
}
