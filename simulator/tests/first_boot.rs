//! Provision on first boot (S-10, issue 18) end to end: the real `iothub` hub started by the test
//! (its own process, a temporary SQLite directory, free loopback ports) and the real
//! `iothub-sim` binary against it with `--first-boot --keep`. Every one of 50 things holds only
//! the enrollment's claim credential, provisions itself over MQTT, connects as the thing it got
//! and reports; afterwards the hub's registry holds exactly those 50 things, tagged by the
//! enrollment, and the report's provisioning counts add up. A second run on the same hub, where
//! one thing's id is already taken, shows that a final refusal is counted by reason and makes
//! the run unclean instead of passing silently; and things whose claim connections cannot get
//! through retry until their deadline, then give up, each attempt and each thing counted.
#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use iothub_launch::{HubCommand, HubProcess};
use serde_json::{Value, json};
use support::{count, count_or_zero};

const TOKEN: &str = "first-boot-test-token";
const THINGS: u64 = 50;

/// The real hub on free loopback ports, its data in `dir`. Its per-address cap on pending
/// CONNECTs is raised as the simulator's embedded hub raises it (all things share 127.0.0.1).
fn spawn_hub(dir: &Path) -> HubProcess {
    HubCommand::new(iothub_launch::hub_binary().expect("iothub binary"))
        .args(["--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
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

/// One admin REST call over plain HTTP/1.1: (status, JSON body).
fn rest(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the hub's API");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        conn,
        "{method} /api/v1{path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    // The API may answer chunked: the JSON is between the first `{` and the last `}`.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// Runs `iothub-sim run --keep` against `hub` with `args`; returns its exit code, JSON report
/// and output.
fn sim(hub: &HubProcess, dir: &Path, name: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let ready = hub.ready();
    let mut all = vec!["--keep"];
    all.extend_from_slice(args);
    sim_at(ready.mqtt, ready.http, dir, name, &all)
}

/// Runs `iothub-sim run --first-boot` with MQTT at `mqtt` and the REST API at `api`.
fn sim_at(
    mqtt: SocketAddr,
    api: SocketAddr,
    dir: &Path,
    name: &str,
    args: &[&str],
) -> (Option<i32>, Value, String) {
    let report_path = dir.join(format!("{name}.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .arg("run")
        .args(["--mqtt", &mqtt.to_string()])
        .args(["--api", &api.to_string()])
        .args(["--token", TOKEN, "--first-boot", "--no-progress"])
        .args(args)
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
        .unwrap_or_else(|| panic!("no JSON report:\n{text}"));
    (output.status.code(), report, text)
}

/// The sum of a `{kind: count}` map in the report.
fn sum(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or_else(|| panic!("{pointer} missing: {report}"))
}

#[test]
fn every_thing_provisions_itself_and_the_registry_holds_exactly_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = spawn_hub(dir.path());
    let api = hub.ready().http;

    let (code, report, out) = sim(
        &hub,
        dir.path(),
        "clean",
        &[
            "--things",
            "50",
            "--id-pattern",
            "fb-{i:04}",
            "--enrollment",
            "fb-run",
            "--ramp",
            "200",
            "--duration",
            "2",
            "--rate",
            "50",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    // Every thing provisioned, connected and had its first report accepted.
    let p = |k: &str| count(&report, &format!("/provisioning/{k}"));
    assert_eq!(p("things"), THINGS, "{out}");
    assert_eq!(p("accepted"), THINGS, "{out}");
    assert_eq!(p("first_reports"), THINGS, "{out}");
    assert_eq!(sum(&report, "/provisioning/failed"), 0, "{out}");
    assert_eq!(
        sum(&report, "/provisioning/first_report_errors"),
        0,
        "{out}"
    );
    // Every attempt has one outcome; every attempt after a thing's first is a retry.
    let answered_or_failed = p("accepted")
        + sum(&report, "/provisioning/rejected")
        + sum(&report, "/provisioning/errors");
    assert_eq!(p("attempts"), answered_or_failed, "{out}");
    assert_eq!(p("retries"), p("attempts") - THINGS, "{out}");
    assert_eq!(count(&report, "/connected"), THINGS, "{out}");
    assert_eq!(count(&report, "/connect_failures"), 0, "{out}");
    assert_eq!(
        count(&report, "/sent"),
        count(&report, "/accepted"),
        "{out}"
    );
    // One sample per thing in both histograms; a thing's first report comes after its
    // provisioning, so every percentile of the one is at least that of the other.
    let lat = |name: &str, stat: &str| {
        report
            .pointer(&format!("/latency/{name}/{stat}"))
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("latency {name} {stat}: {out}"))
    };
    assert_eq!(lat("provision", "count"), THINGS as f64, "{out}");
    assert_eq!(lat("first_report", "count"), THINGS as f64, "{out}");
    for stat in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(
            lat("first_report", stat) >= lat("provision", stat),
            "{stat}: {out}"
        );
    }
    assert!(out.contains("claim->accepted"), "{out}");
    assert!(
        out.contains("50 first-boot things: 50 provisioned"),
        "{out}"
    );

    // The registry: exactly the scenario's ids, each tagged with its serial, the enrollment,
    // and the enrollment template's tag.
    let (status, page) = rest(api, "GET", "/things?pageSize=1000", None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(count(&page, "/data/total"), THINGS, "{page}");
    let things = page
        .pointer("/data/content")
        .and_then(Value::as_array)
        .expect("content");
    let ids: BTreeSet<String> = things
        .iter()
        .filter_map(|t| t["thingId"].as_str().map(str::to_owned))
        .collect();
    let expected: BTreeSet<String> = (0..THINGS).map(|i| format!("fb-{i:04}")).collect();
    assert_eq!(ids, expected);
    for t in things {
        let id = t["thingId"].as_str().expect("id");
        let index: u64 = id["fb-".len()..].parse().expect("index");
        assert_eq!(
            t["tags"],
            json!({
                "enrollment": "fb-run",
                "serial": format!("SN{index:08}"),
                "simulator": "fb-run",
            }),
            "{t}"
        );
    }
    // Kept (--keep): the enrollment counts one use per thing.
    let (status, e) = rest(api, "GET", "/enrollments/fb-run", None);
    assert_eq!((status, count(&e, "/data/uses")), (200, THINGS), "{e}");

    // A thing id taken by a thing no serial provisioned: that one thing's claim is refused
    // with 409 (S-10.5), final, counted by reason; the others provision; the run is unclean.
    let (status, created) = rest(
        api,
        "POST",
        "/things",
        Some(&json!({ "thingId": "fb2-0003" })),
    );
    assert_eq!(status, 201, "{created}");
    let (code, report, out) = sim(
        &hub,
        dir.path(),
        "taken",
        &[
            "--things",
            "5",
            "--id-pattern",
            "fb2-{i:04}",
            "--enrollment",
            "fb-run2",
            "--duration",
            "1",
        ],
    );
    assert_eq!(code, Some(1), "the run is not clean: {out}");
    assert_eq!(count(&report, "/provisioning/accepted"), 4, "{out}");
    assert_eq!(
        count_or_zero(&report, "/provisioning/rejected/409"),
        1,
        "{out}"
    );
    assert_eq!(
        count_or_zero(&report, "/provisioning/failed/rejected 409: thing id taken"),
        1,
        "{out}"
    );
    assert_eq!(count(&report, "/connect_failures"), 1, "{out}");
    assert!(
        out.contains("gave up {\"rejected 409: thing id taken\": 1}"),
        "{out}"
    );
}

#[test]
fn unreachable_claims_are_retried_until_the_deadline_then_counted_as_failed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = spawn_hub(dir.path());
    let api = hub.ready().http;
    // MQTT on a loopback port nobody listens on: every claim CONNECT is refused by the kernel,
    // a transport failure, so retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let scenario = dir.path().join("deadline.toml");
    std::fs::write(
        &scenario,
        "duration_s = 1.0\n\
         [population]\ncount = 5\nid_pattern = \"dl-{i:02}\"\nfirst_boot = true\n\
         enrollment = \"fb-deadline\"\nprovision_deadline_s = 2.0\n\
         [profile]\nreconnect_backoff_ms = 100\nmax_reconnect_backoff_ms = 400\n",
    )
    .expect("write the scenario");
    let scenario = scenario.to_str().expect("utf-8 path");
    let (code, report, out) = sim_at(
        closed,
        api,
        dir.path(),
        "deadline",
        &["--scenario", scenario],
    );
    assert_eq!(code, Some(1), "the run is not clean: {out}");
    let p = |k: &str| count(&report, &format!("/provisioning/{k}"));
    assert_eq!((p("things"), p("accepted")), (5, 0), "{out}");
    // Every attempt failed in transport; all but each thing's first were retries; every thing
    // gave up at its deadline, naming the last failure.
    assert_eq!(sum(&report, "/provisioning/errors"), p("attempts"), "{out}");
    assert_eq!(p("retries"), p("attempts") - 5, "{out}");
    assert!(
        p("retries") >= 5,
        "at least one retry per thing in 2 s: {out}"
    );
    let failed = report
        .pointer("/provisioning/failed")
        .and_then(Value::as_object)
        .expect("failed");
    assert_eq!(failed.len(), 1, "{out}");
    let (reason, n) = failed.iter().next().expect("one reason");
    assert!(
        reason.starts_with("deadline passed (last: tcp connect: ConnectionRefused"),
        "{reason}"
    );
    assert_eq!(n.as_u64(), Some(5), "{out}");
    assert_eq!(count(&report, "/connect_failures"), 5, "{out}");
    assert!(out.contains("gave up {\"deadline passed"), "{out}");
    // Without --keep the run removes its enrollment.
    let (status, _) = rest(api, "GET", "/enrollments/fb-deadline", None);
    assert_eq!(status, 404);
}
