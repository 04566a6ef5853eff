//! Fleet operations of the business side (issue 19 item 4) with the real binary against the
//! embedded hub, no mocks: a configuration rollout to 50 things converges on every one of them
//! (each thing's report of the value accepted, and the hub's own counts: targeted, applied and
//! succeeded 50), and a method job over the same 50 things completes with counts that add up,
//! agree with the per-thing records read back, and show the device's failures; its pacing shows
//! in the per-thing latencies. Split over two worker processes, each shard rolls out its own
//! configuration and runs its own job over its own things, and the merged figures add up.

mod support;

use std::path::Path;
use std::time::Duration;

use iothub_sim::report::Report;
use support::Sim;

fn read_report(path: &Path) -> Report {
    let bytes = std::fs::read(path).expect("report written");
    serde_json::from_slice(&bytes).expect("a report")
}

/// 50 things (half MQTT 5) with a light reporting load; deltas applied after 5 ms; one method
/// call in five answered 500 by the device.
const SCENARIO: &str = r#"
seed = 19
duration_s = 2.0

[population]
count = 50
id_pattern = "fo-{i:04}"
mqtt5_share = 0.5
tag = "fo"

[ramp]
connects_per_s = 200.0

[profile]
reported_changes_per_s = 1.0
delta_apply_delay_ms = 5
methods = ["echo", "reboot"]
method_failure_rate = 0.2

[business]
method = "reboot"
configuration_name = "fo-rollout"
configuration_value = 15
"#;

#[test]
fn configuration_rollout_and_method_job_over_50_things() {
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario = dir.path().join("fleet.toml");
    std::fs::write(&scenario, SCENARIO).expect("scenario written");
    let json = dir.path().join("r.json");
    let html = dir.path().join("r.html");
    let csv = dir.path().join("r.csv");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let sim = Sim::spawn([
        "run".to_owned(),
        "--scenario".to_owned(),
        path(&scenario),
        "--configuration-rollout".to_owned(),
        "--method-job".to_owned(),
        "--method-job-per-minute".to_owned(),
        "3000".to_owned(),
        "--no-progress".to_owned(),
        "--report-json".to_owned(),
        path(&json),
        "--report-html".to_owned(),
        path(&html),
        "--report-csv".to_owned(),
        path(&csv),
    ]);
    let (status, stdout, stderr) = sim.wait(Duration::from_secs(180));
    assert!(status.success(), "iothub-sim failed:\n{stdout}\n{stderr}");
    let r = read_report(&json);
    assert_eq!((r.things, r.connected), (50, 50), "{stdout}");
    assert_eq!(r.errors(), 0, "{stdout}");

    // The rollout: every thing reported the value, and the hub counts every thing applied and
    // succeeded.
    let c = r.rollout.as_ref().expect("a rollout in the report");
    assert_eq!(c.configuration, "fo-rollout");
    assert_eq!((c.value, c.things, c.converged), (15, 50, 50), "{c:?}");
    assert_eq!(r.latency.rollout.count, 50, "one sample per thing");
    for key in ["targeted", "applied", "succeeded"] {
        assert_eq!(c.counts.get(key), Some(&50), "{key}: {c:?}");
    }
    assert_eq!(c.counts.get("failed"), Some(&0), "{c:?}");
    assert_eq!(c.counts.get("pending"), Some(&0), "{c:?}");
    let (applied, succeeded) = (
        c.all_applied_s.expect("all applied"),
        c.all_succeeded_s.expect("all succeeded"),
    );
    assert!(applied <= succeeded, "{c:?}");
    assert!(c.errors.is_empty(), "{c:?}");
    assert!(c.hub_cpu_s.is_some_and(|s| s > 0.0), "{c:?}");

    // The method job: completed, the counts add up to the things and agree with the records;
    // the device's 500s are `failed`, nothing timed out.
    let j = r.method_job.as_ref().expect("a method job in the report");
    assert_eq!((j.method.as_str(), j.max_per_minute), ("reboot", 3000));
    assert_eq!(
        (j.status.as_str(), j.things, j.records),
        ("completed", 50, 50)
    );
    assert_eq!(j.counts.values().sum::<u64>(), 50, "{j:?}");
    let (ok, failed) = (j.count("succeeded"), j.count("failed"));
    assert_eq!(ok + failed, 50, "{j:?}");
    assert!(failed > 0 && ok > failed, "one in five fails: {j:?}");
    assert_eq!(j.count("timed_out") + j.count("canceled"), 0, "{j:?}");
    assert!(j.errors.is_empty(), "{j:?}");
    assert_eq!(
        r.latency.job_thing.count, ok,
        "one sample per thing succeeded"
    );
    assert_eq!(r.latency.job_call.count, 50, "every call answered");
    let duration = j.duration_s.expect("created->ended");
    assert!(duration >= 0.9, "50 sends 20 ms apart: {j:?}");
    // D-52: spaced 20 ms apart with at most one interval of catch-up, so 50 sends span at least
    // 48 intervals (and the later things wait for their turn).
    let rate = j.achieved_per_minute.expect("achieved rate");
    assert!(rate <= 3000.0 * 49.0 / 48.0 + 10.0, "{j:?}");
    assert!(
        r.latency.job_thing.max_ms >= 900.0,
        "{:?}",
        r.latency.job_thing
    );
    // The device answered each call once.
    assert_eq!(r.method_calls_received, 50, "{stdout}");

    // In the text, HTML and CSV reports too.
    for needle in [
        "rollout  ",
        "fo-rollout telemetryInterval=15: 50 of 50 things converged",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in\n{stdout}");
    }
    assert!(
        stdout.contains("method job") && stdout.contains("at 3000/min): completed"),
        "{stdout}"
    );
    assert!(stdout.contains("rollout->reported") && stdout.contains("job start->succeeded"));
    let page = std::fs::read_to_string(&html).expect("html written");
    for needle in [
        "<h2>Fleet operations</h2>",
        r#"<table id="rollout">"#,
        r#"<table id="method-job">"#,
        "<td>converged (reported)</td><td>50</td>",
        "<td>per-thing records</td><td>50</td>",
    ] {
        assert!(page.contains(needle), "{needle:?} not in the HTML report");
    }
    let csv = std::fs::read_to_string(&csv).expect("csv written");
    for row in [
        "counter,rollout_converged,50,",
        "counter,method_job_things,50,",
        "latency,rollout,,50,",
    ] {
        assert!(csv.lines().any(|l| l.starts_with(row)), "{row} in\n{csv}");
    }
}

#[test]
fn fleet_operations_split_over_two_workers_add_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("r.json");
    let sim = Sim::spawn([
        "run",
        "--things",
        "40",
        "--duration",
        "2s",
        "--rate",
        "20",
        "--ramp",
        "200",
        "--workers",
        "2",
        "--configuration-rollout",
        "--method-job",
        "--method-job-per-minute",
        "6000",
        "--no-progress",
        "--report-json",
        json.to_str().expect("utf-8 path"),
    ]);
    let (status, stdout, stderr) = sim.wait(Duration::from_secs(180));
    assert!(status.success(), "iothub-sim failed:\n{stdout}\n{stderr}");
    let r = read_report(&json);
    assert_eq!(r.shards.len(), 2);
    assert_eq!(r.errors(), 0, "{stdout}");
    // Each shard's configuration targeted its own 20 things (a shared tag would have targeted
    // 40 twice).
    let c = r.rollout.as_ref().expect("rollout");
    assert_eq!((c.things, c.converged), (40, 40), "{c:?}");
    assert_eq!(c.counts.get("targeted"), Some(&40), "{c:?}");
    assert_eq!(c.counts.get("succeeded"), Some(&40), "{c:?}");
    assert_eq!(r.latency.rollout.count, 40);
    // Each shard's job went to its own 20 things at half the rate.
    let j = r.method_job.as_ref().expect("method job");
    assert_eq!(
        (j.things, j.records, j.max_per_minute),
        (40, 40, 6000),
        "{j:?}"
    );
    assert_eq!(j.count("succeeded"), 40, "{j:?}");
    assert_eq!(j.status, "completed");
    assert_eq!(r.latency.job_thing.count, 40);
}
