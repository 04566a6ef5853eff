//! The hub side of the suite through Mosquitto (issue 23): PostgreSQL, a Mosquitto 2.0 with
//! dynamic security set up as docs/running-at-scale.md says, the real `iothub` joined to it
//! with `--broker` (external mode, D-60..D-66), then `iothub-conformance hub --external-broker`
//! with the devices on Mosquitto's port and REST on the hub's HTTP address. The result must
//! equal `expected/mosquitto.json` (any change, better or worse, fails).
//!
//! Needs Debian's `mosquitto` and `postgresql` packages (`scripts/test` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use iothub_launch::mosquitto::Mosquitto;
use iothub_launch::postgres::PgServer;
use iothub_launch::{HubCommand, HubProcess};

const ADMIN_TOKEN: &str = "conformance-admin-token";
/// The business side's account on the broker: the operator's, not the hub's (D-61).
const SERVICE_USER: &str = "$conformance";
const SERVICE_SECRET: &str = "conformance-secret";

/// A hub instance in external mode, with its data directory and log.
struct ExternalHub {
    process: HubProcess,
    dir: tempfile::TempDir,
}

impl ExternalHub {
    fn http(&self) -> String {
        self.process.ready().http.to_string()
    }

    fn log(&self) -> String {
        tail(&self.dir.path().join("hub.log"), 40)
    }
}

/// Starts one hub instance on `broker` per entry of `instances` (that instance's own extra
/// flags), all on the database `database_url` and with the same admin token, each with its own
/// HTTP port and data directory. The suite's devices only ever see the broker; several
/// instances split the things between them (D-73).
fn spawn_hubs(broker: &Mosquitto, database_url: &str, instances: &[&[&str]]) -> Vec<ExternalHub> {
    let bin = iothub_launch::hub_binary().expect("the iothub binary");
    instances
        .iter()
        .map(|extra| {
            let dir = tempfile::Builder::new()
                .prefix("iothub-external-")
                .tempdir()
                .expect("temp dir");
            let mut cmd = HubCommand::new(&bin);
            cmd.without_env_prefix("IOTHUB_")
                .args(["--http-addr", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path())
                .args(["--admin-token", ADMIN_TOKEN, "--database-url", database_url])
                .args(broker.hub_args())
                .args(extra.iter())
                .stderr_to(dir.path().join("hub.log"))
                .ready_timeout(Duration::from_secs(60));
            let process = cmd.spawn().unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e}\n{}",
                    bin.display(),
                    tail(&dir.path().join("hub.log"), 40)
                )
            });
            assert_eq!(
                process.ready().mqtt,
                broker.addr,
                "a hub in external mode sends devices to the broker"
            );
            ExternalHub { process, dir }
        })
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    last_lines(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET /healthz` of the hub at `http` (HOST:PORT): how many partitions it holds (D-73).
fn partitions(http: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).expect("connect to the hub");
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    json["data"]["partitions"].as_u64().unwrap_or(0)
}

#[test]
fn hub_side_suite_through_mosquitto_matches_expected_results() {
    run_through_mosquitto(&[&[]]);
}

/// Two instances (D-73): half of the things' requests and presence are handled by the instance
/// the suite's REST calls do not reach, the other half and the fleet engines by the one they do.
/// The results are the same as with one instance, `s3_concurrent_writers_no_lost_update`
/// included (D-85).
#[test]
fn hub_side_suite_through_two_instances_matches_expected_results() {
    run_through_mosquitto(&[&["--instance-id", "a"], &["--instance-id", "b"]]);
}

fn run_through_mosquitto(instances: &[&[&str]]) {
    let pg = PgServer::start_new();
    let database_url = pg.fresh_database();
    let broker = Mosquitto::start();
    broker.add_service_account(SERVICE_USER, SERVICE_SECRET);
    let hubs = spawn_hubs(&broker, &database_url, instances);
    let share = 64 / hubs.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hubs.iter().all(|h| partitions(&h.http()) == share) {
        assert!(
            Instant::now() < deadline,
            "the instances did not split the partitions"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let expected = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("expected/mosquitto.json");
    let began = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_iothub-conformance"))
        .arg("hub")
        .args(["--mqtt", &broker.addr.to_string()])
        .args(["--api", &hubs[0].http()])
        .args(["--token", ADMIN_TOKEN])
        .arg(format!("--service-user={SERVICE_USER}:{SERVICE_SECRET}"))
        .arg("--external-broker")
        .arg("--expect")
        .arg(&expected)
        .env_remove("IOTHUB_ADMIN_TOKEN")
        .output()
        .expect("running iothub-conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "suite run through Mosquitto ({} hub instances) took {:?}",
        hubs.len(),
        began.elapsed()
    );
    assert!(
        out.status.success() && stdout.contains("expected-results diff: 0 change(s)"),
        "the run differs from {}:\n{stdout}\n{stderr}\n--- hub log ---\n{}\n--- mosquitto log ---\n{}",
        expected.display(),
        hubs.iter()
            .map(ExternalHub::log)
            .collect::<Vec<_>>()
            .join("\n--- next hub ---\n"),
        last_lines(&broker.log(), 40)
    );
}
