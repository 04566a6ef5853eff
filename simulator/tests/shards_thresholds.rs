//! Thresholds, shards, workers and `merge`, with the real binary against the embedded hub:
//! a failed threshold sets exit status 99 and is named; `--workers 3` merges three processes'
//! reports into counts equal to the sum of the shards; two `--shard` runs merged by
//! `iothub-sim merge` give the percentiles of the union of their recorded histograms; a
//! non-terminal run prints plain progress lines; the report echoes the scenario and versions and
//! carries a time series.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use iothub_sim::report::{Percentiles, Report, histogram_of};
use support::Sim;

fn read_report(path: &Path) -> Report {
    let bytes = std::fs::read(path).expect("report written");
    serde_json::from_slice(&bytes).expect("a report")
}

#[test]
fn failed_threshold_sets_exit_status_and_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("r.json");
    let mut sim = Sim::spawn([
        "run",
        "--things",
        "10",
        "--duration",
        "2s",
        "--rate",
        "50",
        // Cannot hold: no update is answered within a microsecond.
        "--threshold",
        "update.p99<1us",
        "--threshold",
        "errors==0",
        "--progress",
        "plain",
        "--progress-interval",
        "1s",
        "--report-json",
        json.to_str().expect("utf-8 path"),
    ]);
    sim.wait_line("embedded hub: ");
    let (status, stdout, stderr) = sim.wait(Duration::from_secs(120));
    assert_eq!(status.code(), Some(99), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("iothub-sim: threshold FAILED: update.p99<1us"),
        "{stderr}"
    );
    assert!(!stderr.contains("threshold FAILED: errors==0"), "{stderr}");
    // Outside a terminal, plain status lines (phase, connected, rate, p99, errors).
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("measure ") && l.contains("| conn 10/10 |")),
        "{stderr}"
    );
    let r = read_report(&json);
    assert_eq!(r.thresholds.len(), 2);
    assert!(
        !r.thresholds[0].passed && r.thresholds[1].passed,
        "{:?}",
        r.thresholds
    );
    assert_eq!(r.thresholds[1].actual, Some(0.0));
    assert!(stdout.contains("FAILED: update.p99<1us"), "{stdout}");
    // The report echoes the scenario and the versions, and has a time series.
    assert_eq!(r.scenario.population.count, 10);
    assert_eq!(r.scenario.duration_s, 2.0);
    assert_eq!(r.versions.simulator, env!("CARGO_PKG_VERSION"));
    assert!(r.versions.hub.is_some(), "{:?}", r.versions);
    assert!(r.series.len() >= 2, "{:?}", r.series);
    let accepted: u64 = r.series.iter().map(|p| p.accepted).sum();
    assert!(accepted > 0 && accepted <= r.accepted, "{:?}", r.series);
    assert!(r.series.iter().any(|p| p.update_p99_ms.is_some()));
    assert!(
        stdout.contains("versions") && stdout.contains("scenario"),
        "{stdout}"
    );
}

#[test]
fn workers_merge_into_the_sum_of_their_shards() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("merged.json");
    let out = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .args([
            "run",
            "--workers",
            "3",
            "--things",
            "60",
            "--duration",
            "2s",
        ])
        .args(["--rate", "120", "--progress", "none", "--report-json"])
        .arg(&json)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = read_report(&json);
    assert_eq!(r.shards.len(), 3, "{:?}", r.shards);
    assert_eq!(r.things, 60);
    assert_eq!(r.connected, 60);
    assert_eq!(r.shards.iter().map(|p| p.things).sum::<usize>(), 60);
    assert_eq!(r.shards.iter().map(|p| p.connected).sum::<u64>(), 60);
    assert_eq!(r.shards.iter().map(|p| p.sent).sum::<u64>(), r.sent);
    assert_eq!(r.shards.iter().map(|p| p.accepted).sum::<u64>(), r.accepted);
    assert!(r.sent > 0 && r.accepted == r.sent, "{}", r.table());
    assert_eq!(r.latency.update_to_accepted.count, r.sent);
    assert_eq!(r.latency.connect.count, 60);
    // Three worker processes, each with its own pid.
    let pids: std::collections::BTreeSet<u32> = r
        .shards
        .iter()
        .filter_map(|p| p.simulator.as_ref().map(|u| u.pid))
        .collect();
    assert_eq!(pids.len(), 3, "{:?}", r.shards);
    for i in 0..3 {
        assert!(stderr.contains(&format!("worker {i}/3: pid ")), "{stderr}");
    }
}

#[test]
fn merge_command_gives_the_percentiles_of_the_union() {
    let dir = tempfile::tempdir().expect("temp dir");
    let part = |i: usize| dir.path().join(format!("shard-{i}.json"));
    for i in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
            .args(["run", "--things", "20", "--duration", "2s", "--rate", "60"])
            .args([
                "--progress",
                "none",
                "--shard",
                &format!("{i}/2"),
                "--report-json",
            ])
            .arg(part(i))
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = read_report(&part(0));
    let b = read_report(&part(1));
    // Disjoint slices of one fleet.
    assert_eq!((a.things, b.things), (10, 10));
    let merged = dir.path().join("merged.json");
    let out = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .arg("merge")
        .args([part(0), part(1)])
        .arg("--report-json")
        .arg(&merged)
        .args(["--threshold", "update.count>0"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = read_report(&merged);
    assert_eq!(m.sent, a.sent + b.sent);
    assert_eq!(m.things, 20);
    assert_eq!(m.thresholds.len(), 1);
    // The union of the recorded samples, histogram by histogram.
    for (name, _) in m.latency_fields() {
        let mut union = histogram_of(a.histograms.get(name).map_or(&[][..], |v| v));
        union
            .add(histogram_of(b.histograms.get(name).map_or(&[][..], |v| v)))
            .expect("same bounds");
        let want = Percentiles::of(&union);
        let got = m
            .latency_fields()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
            .expect("row");
        assert_eq!(
            (got.count, got.p50_ms, got.p99_ms, got.max_ms),
            (want.count, want.p50_ms, want.p99_ms, want.max_ms),
            "{name}"
        );
    }
    assert!(m.latency.update_to_accepted.count > 0);
    // Two copies of one shard are refused.
    let out = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .arg("merge")
        .args([part(0), part(0)])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard 0/2 appears twice"));
}
