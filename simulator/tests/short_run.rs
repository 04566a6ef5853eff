//! A short load run of the real simulator binary against the embedded reference hub: the
//! README's main command, scaled down (100 things, 10 s), with every interaction switched on:
//! shadow reports, desired changes converging through deltas, method calls, NTP, OTA jobs,
//! MQTT 3.1.1 and 5. Asserts the report's counts, not its timings; that the hub ran as a child
//! process of the simulator and is gone, with its data directory, afterwards; and scrapes the
//! Prometheus endpoint (`--metrics-addr`) while the run goes on.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Sim, cmdline, count, http_get, metric, parent_pid, process_state};

#[test]
fn short_run_against_the_embedded_hub_is_clean() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let csv_path = dir.path().join("report.csv");
    let mut args: Vec<std::ffi::OsString> = [
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
        "--metrics-addr",
        "127.0.0.1:0",
        "--no-progress",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.extend(["--report-json".into(), report_path.clone().into()]);
    args.extend(["--report-csv".into(), csv_path.clone().into()]);
    let mut sim = Sim::spawn(&args);

    // The hub is a child process of the simulator: this same executable, hidden subcommand.
    let hub = sim.hub_line();
    assert_eq!(parent_pid(hub.pid), Some(sim.child.id()), "{hub:?}");
    assert!(
        cmdline(hub.pid).iter().any(|a| a == "embedded-hub"),
        "{:?}",
        cmdline(hub.pid)
    );
    assert!(
        hub.data_dir.join("iothub.db").exists(),
        "the hub keeps its database in {:?}",
        hub.data_dir
    );

    // The metrics endpoint shows the live run: every thing connected, updates accepted, the
    // hub's memory.
    let line = sim.wait_line("metrics: ");
    let addr = line
        .strip_prefix("metrics: http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bound address in {line:?}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let scraped = loop {
        let text = http_get(addr, "/metrics");
        let connected = metric(&text, "iothub_sim_connected_things").unwrap_or(0.0);
        let accepted = metric(&text, "iothub_sim_updates_accepted_total").unwrap_or(0.0);
        if connected == 100.0 && accepted > 0.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the run:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(metric(&scraped, "iothub_sim_things"), Some(100.0));
    assert_eq!(
        metric(&scraped, "iothub_sim_phase{phase=\"measure\"}"),
        Some(1.0),
        "{scraped}"
    );
    assert!(
        metric(
            &scraped,
            "iothub_sim_process_resident_memory_bytes{process=\"hub\"}"
        )
        .is_some_and(|b| b > 0.0),
        "{scraped}"
    );
    let scraped_accepted = metric(&scraped, "iothub_sim_updates_accepted_total").expect("accepted");
    assert!(
        metric(
            &scraped,
            "iothub_sim_latency_seconds_count{interaction=\"update_to_accepted\"}"
        )
        .is_some_and(|n| n > 0.0),
        "{scraped}"
    );

    let (status, stdout, stderr) = sim.wait(Duration::from_secs(120));
    assert!(status.success(), "iothub-sim failed:\n{stdout}\n{stderr}");
    // The hub stopped with the run, and its temporary data went with it.
    assert_eq!(process_state(hub.pid), None, "hub process {} left", hub.pid);
    assert!(!hub.data_dir.exists(), "{:?} left behind", hub.data_dir);

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
    assert!(scraped_accepted as u64 <= count(&report, "/accepted"));
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

    // CPU and memory of both processes, each on its own.
    assert_eq!(count(&report, "/resources/hub/pid"), u64::from(hub.pid));
    for side in ["hub", "simulator"] {
        assert!(count(&report, &format!("/resources/{side}/peak_rss_bytes")) > 0);
        count(&report, &format!("/resources/{side}/per_thing_bytes"));
        assert!(
            report
                .pointer(&format!("/resources/{side}/cpu_s"))
                .and_then(Value::as_f64)
                .is_some_and(|s| s > 0.0),
            "{report}"
        );
    }
    assert!(
        stdout.contains("update->accepted") && stdout.contains("method round trip"),
        "human table printed:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("pid {}: cpu", hub.pid)),
        "hub resources in the table:\n{stdout}"
    );
    let csv = std::fs::read_to_string(&csv_path).expect("csv written");
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&format!("counter,updates_accepted,{sent},"))),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("resource,hub_peak_rss_bytes,")),
        "{csv}"
    );
}
