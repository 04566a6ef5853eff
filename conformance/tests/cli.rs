//! The suite as a tool, against the real reference hub started as its own process: the
//! preflight stops an unreachable hub and a wrong token with one line and exit status 2; a run
//! by address deletes every thing it created, also when interrupted with SIGINT mid-run; the
//! JUnit file validates against the JUnit XML schema (`tests/fixtures/junit.xsd`, python3
//! `xmlschema`, installed by scripts/test when missing) and the HTML page lists the clauses;
//! every binary answers `--help` without its environment; unusable `--tls` input stops the run
//! with one line and exit status 2, before any connection.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iothub_conformance::api::Api;
use iothub_conformance::spawn::SpawnedHub;

const SUITE: &str = env!("CARGO_BIN_EXE_iothub-conformance");

fn hub_binary() -> PathBuf {
    let exe = PathBuf::from(SUITE);
    let profile_dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let bin = profile_dir.join("iothub");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
            .args(["build", "-p", "iothub-hub", "--bin", "iothub"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo build").success(), "hub build");
    }
    bin
}

/// Things on the hub whose id contains `run`.
async fn things_of(api: &Api, run: &str) -> Vec<String> {
    let r = api
        .get("/api/v1/things?pageIndex=0&pageSize=1000")
        .await
        .expect("list things");
    r.data()["content"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["thingId"].as_str())
        .filter(|id| id.contains(run))
        .map(str::to_owned)
        .collect()
}

/// The run id in the preflight line (`... (run id cfXXXX)`).
fn run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.split("(run id ").nth(1))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no run id in {stderr}"))
        .to_owned()
}

#[test]
fn preflight_stops_an_unreachable_hub_with_one_line() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let began = Instant::now();
    let out = Command::new(SUITE)
        .args(["hub", "--mqtt", &format!("127.0.0.1:{port}")])
        .args(["--api", &format!("127.0.0.1:{port}"), "--token", "t"])
        .env_remove("IOTHUB_ADMIN_TOKEN")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr
            .starts_with("iothub-conformance: preflight: the hub's REST API at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no case ran");
    assert!(began.elapsed() < Duration::from_secs(30));
}

#[test]
fn unusable_tls_input_stops_the_run_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("writing the file");
    let missing = dir.path().join("missing.pem");
    // Nothing is contacted: the addresses may as well be unreachable.
    let run = |extra: &[&std::ffi::OsStr]| {
        let out = Command::new(SUITE)
            .args(["hub", "--mqtt", "127.0.0.1:1", "--api", "127.0.0.1:1"])
            .args(["--token", "t", "--tls"])
            .args(extra)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(out.stdout.is_empty(), "no case ran");
        stderr
    };
    let ca = std::ffi::OsStr::new("--ca-file");
    let stderr = run(&[ca, missing.as_os_str()]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("iothub-conformance: --tls: reading the CA file ")
            && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let stderr = run(&[ca, garbage.as_os_str()]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("garbage.pem holds no PEM certificate"),
        "{stderr}"
    );
    // A good CA file, then a client key that is none, then a server name that is none.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, params.self_signed(&key).expect("CA").pem()).expect("writing the CA");
    let stderr = run(&[
        ca,
        good.as_os_str(),
        std::ffi::OsStr::new("--client-cert"),
        good.as_os_str(),
        std::ffi::OsStr::new("--client-key"),
        garbage.as_os_str(),
    ]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("garbage.pem holds no PEM private key"),
        "{stderr}"
    );
    let stderr = run(&[
        ca,
        good.as_os_str(),
        std::ffi::OsStr::new("--tls-server-name"),
        std::ffi::OsStr::new("not a name"),
    ]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("\"not a name\" is not a valid TLS server name"),
        "{stderr}"
    );
    // clap's own refusals: --tls needs --ca-file, a client certificate needs its key.
    let stderr = run(&[]);
    assert!(stderr.contains("--ca-file"), "{stderr}");
    let stderr = run(&[
        ca,
        garbage.as_os_str(),
        std::ffi::OsStr::new("--client-cert"),
        garbage.as_os_str(),
    ]);
    assert!(stderr.contains("--client-key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_refuses_a_wrong_token_and_a_run_cleans_up() {
    let hub = SpawnedHub::start(&hub_binary()).await.expect("hub starts");
    let api_url = format!("http://{}", hub.http);
    let api = Api::new(&api_url, &hub.token).expect("client");

    // A wrong token: one line, exit 2, no case.
    let out = Command::new(SUITE)
        .args(["hub", "--mqtt", &hub.mqtt, "--api", &hub.http])
        .args(["--token", "not-the-token"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refuses the admin token (HTTP 401"),
        "{stderr}"
    );

    // A run by address (URL forms this time), with JUnit and HTML reports: afterwards the hub
    // holds none of its things.
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("junit.xml");
    let html = dir.path().join("report.html");
    let out = Command::new(SUITE)
        .args([
            "hub",
            "--mqtt",
            &format!("mqtt://{}", hub.mqtt),
            "--api",
            &api_url,
        ])
        .args(["--only", "S-1", "--only", "S-9.2"])
        .env("IOTHUB_ADMIN_TOKEN", &hub.token)
        .arg("--junit")
        .arg(&junit)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" passed, "), "{stdout}\n{stderr}");
    let run = run_id(&stderr);
    assert!(stderr.contains("preflight: hub 0.1.0 at mqtt="), "{stderr}");
    let deleted: usize = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("deleted the ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no clean-up line: {stderr}"));
    assert!(deleted > 0, "the run created things: {stderr}");
    assert_eq!(things_of(&api, &run).await, Vec::<String>::new());
    let all = api.get("/api/v1/things").await.expect("list");
    assert_eq!(all.data()["total"], 0, "nothing left: {}", all.text);

    // The JUnit file validates against the schema, one test case per case.
    let xsd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit.xsd");
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, xmlschema; xmlschema.XMLSchema(sys.argv[1]).validate(sys.argv[2])",
        ])
        .arg(&xsd)
        .arg(&junit)
        .output()
        .expect("python3 runs (scripts/test installs it with xmlschema)");
    assert!(
        check.status.success(),
        "JUnit XML invalid: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let cases = stdout
        .lines()
        .filter(|l| l.contains(" pass ") || l.contains(" fail ") || l.contains(" skip "))
        .count();
    assert_eq!(xml.matches("<testcase ").count(), cases, "{xml}\n{stdout}");
    assert!(xml.contains("classname=\"S-1."), "{xml}");
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(
        page.contains("<h3>S-9.2</h3>") && page.contains(&run),
        "{page}"
    );

    // Interrupted mid-run: the things created so far are deleted too, exit status 130.
    let mut child = Command::new(SUITE)
        .args(["hub", "--mqtt", &hub.mqtt, "--api", &hub.http])
        .env("IOTHUB_ADMIN_TOKEN", &hub.token)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let mut run = None;
    // Wait until a few cases have run (and created things).
    while let Some(Ok(line)) = lines.next() {
        if line.contains("(run id ") {
            run = Some(run_id(&line));
        }
        if line.starts_with("pass ") || line.starts_with("fail ") {
            seen.push(line);
            if seen.len() >= 6 {
                break;
            }
        }
    }
    let run = run.expect("run id printed");
    assert!(
        !things_of(&api, &run).await.is_empty(),
        "things exist mid-run"
    );
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("ends");
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("deleted the ")),
        "{rest:?}"
    );
    assert_eq!(things_of(&api, &run).await, Vec::<String>::new());
}

#[test]
fn every_binary_answers_help_without_its_environment() {
    for (bin, words) in [
        (SUITE, "Conformance suite"),
        (env!("CARGO_BIN_EXE_shim-std"), "Usage"),
        (env!("CARGO_BIN_EXE_shim-nostd"), "Usage"),
    ] {
        let out = Command::new(bin)
            .arg("--help")
            .env_remove("IOTHUB_MQTT_ADDR")
            .env_remove("IOTHUB_THING_ID")
            .env_remove("IOTHUB_THING_SECRET")
            .env_remove("IOTHUB_ADMIN_TOKEN")
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{bin} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(words), "{bin}: {text}");
    }
}

#[test]
fn a_device_that_exits_at_start_up_is_reported_at_once() {
    let out = Command::new(SUITE)
        .args(["device", "--exec"])
        .arg("sh -c 'echo starting >&2; echo cannot open /dev/ttyX >&2; exit 3'")
        .args([
            "--only",
            "dev_s2_subscribes_before_requests",
            "--report",
            "json",
        ])
        .output()
        .expect("runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let r = &report["results"][0];
    assert_eq!(r["result"], "fail", "{report}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("exit status: 3"), "{reason}");
    assert!(
        reason.contains("starting | cannot open /dev/ttyX"),
        "the last stderr lines: {reason}"
    );
    let millis = r["millis"].as_u64().unwrap_or(u64::MAX);
    assert!(millis < 2000, "reported after {millis} ms");
}
