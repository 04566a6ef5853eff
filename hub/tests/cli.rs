//! The admin CLI (`iothub things|shadow|method|ota|query`) against a real hub started by the test:
//! each subcommand's `--json` output parsed back, exit codes per outcome, and the completion
//! scripts and man page generated from the clap definitions.

mod support;

use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_iothub");

/// `iothub ARGS` against `hub` with the admin token in `IOTHUB_TOKEN`.
fn cli(hub: &Hub, args: &[&str]) -> Output {
    cli_as(hub, Some(ADMIN_TOKEN), args)
}

fn cli_as(hub: &Hub, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("IOTHUB_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("IOTHUB_URL", hub.base_url());
    if let Some(token) = token {
        cmd.env("IOTHUB_TOKEN", token);
    }
    cmd.args(args).output().expect("run iothub")
}

/// Runs a `--json` command that must succeed and returns its parsed output.
fn json_of(hub: &Hub, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli(hub, &all);
    assert!(
        out.status.success(),
        "iothub {all:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iothub {all:?} --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

/// `cli` on a blocking thread, so the test's runtime keeps driving the MQTT device meanwhile.
fn cli_async(hub: &Hub, args: &[&str]) -> impl std::future::Future<Output = Output> + 'static {
    let base = hub.base_url();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    async move {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .env("IOTHUB_URL", base)
                .env("IOTHUB_TOKEN", ADMIN_TOKEN)
                .args(&args)
                .output()
                .expect("run iothub")
        })
        .await
        .expect("join")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn things_commands_round_trip() {
    let hub = Hub::start();
    let id = unique("cli");
    let created = json_of(
        &hub,
        &[
            "things",
            "create",
            &id,
            "--tag",
            "room=\"lab\"",
            "--tag",
            "floor=2",
        ],
    );
    assert_eq!(created["thingId"], id.as_str());
    let secret = created["password"]
        .as_str()
        .expect("password shown once")
        .to_owned();
    assert_eq!(created["tags"], json!({"room": "lab", "floor": 2}));

    // The secret printed by the CLI lets the device connect.
    let _device = hub.connect_thing(Proto::V5, &id, &secret).await;

    let got = json_of(&hub, &["things", "get", &id]);
    assert_eq!(got["thingId"], id.as_str());
    assert!(
        got.get("password").is_none(),
        "the secret is never shown again"
    );
    let page = json_of(&hub, &["things", "list", "--page-size", "1000"]);
    assert!(
        page["content"]
            .as_array()
            .expect("content")
            .iter()
            .any(|t| t["thingId"] == id.as_str()),
        "{page}"
    );
    let disabled = json_of(&hub, &["things", "disable", &id]);
    assert_eq!(disabled["enabled"], false);
    let listed = json_of(&hub, &["things", "list", "--enabled", "false"]);
    assert_eq!(listed["total"], 1, "{listed}");
    let enabled = json_of(&hub, &["things", "enable", &id]);
    assert_eq!(enabled["enabled"], true);
    let found = json_of(
        &hub,
        &["query", "SELECT * FROM things WHERE tags.room = 'lab'"],
    );
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["content"][0]["thingId"], id.as_str());

    // Human output: a table with the thing in it.
    let out = cli(&hub, &["things", "list"]);
    assert_eq!(code(&out), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("THING"), "{text}");
    assert!(text.contains(&id), "{text}");

    // Exit codes per outcome.
    assert_eq!(
        code(&cli(&hub, &["things", "create", &id])),
        4,
        "409 exists"
    );
    json_of(&hub, &["things", "delete", &id]);
    assert_eq!(
        code(&cli(&hub, &["things", "get", &id])),
        3,
        "404 after delete"
    );
    assert_eq!(
        code(&cli_as(&hub, Some("wrong"), &["things", "list"])),
        6,
        "401"
    );
    assert_eq!(
        code(&cli_as(&hub, None, &["things", "list"])),
        6,
        "no token"
    );
    assert_eq!(
        code(&cli(&hub, &["query", "DROP TABLE things"])),
        5,
        "400 refused"
    );
    let unreachable = Command::new(BIN)
        .env("IOTHUB_TOKEN", ADMIN_TOKEN)
        .args(["things", "list", "--url", "http://127.0.0.1:1"])
        .output()
        .expect("run");
    assert_eq!(code(&unreachable), 8, "hub unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_and_method_commands_reach_the_device() {
    let hub = Hub::start();
    let (id, _secret, mut device) = hub.new_thing(Proto::V311, "clisd").await;

    let accepted = json_of(&hub, &["shadow", "set-desired", &id, r#"{"led":"on"}"#]);
    assert_eq!(accepted["version"], 1, "{accepted}");
    let delta = device
        .expect_message(&shadow_topic(&id, "default", "update/delta"), STEP)
        .await;
    assert_eq!(delta["state"], json!({"led": "on"}));
    let shadow = json_of(&hub, &["shadow", "get", &id]);
    assert_eq!(shadow["state"]["desired"], json!({"led": "on"}));
    assert_eq!(
        code(&cli(
            &hub,
            &["shadow", "set-desired", &id, "{}", "--version", "7"]
        )),
        4,
        "stale version: 409"
    );
    assert_eq!(
        code(&cli(&hub, &["shadow", "set-desired", &id, "not json"])),
        2,
        "bad JSON argument"
    );
    json_of(&hub, &["shadow", "delete", &id]);
    assert_eq!(code(&cli(&hub, &["shadow", "get", &id])), 3);

    // A method call answered by the device, then one it answers with an error code.
    let req_topic = format!("{}/methods/reboot/req", thing_topic(&id));
    let resp_topic = format!("{}/methods/reboot/resp", thing_topic(&id));
    for device_code in [200, 500] {
        let answer = async {
            let req = device.expect_message(&req_topic, STEP).await;
            assert_eq!(req["data"], json!({"delay": 1}));
            device
                .publish_json(
                    &resp_topic,
                    &json!({"clientToken": req["clientToken"], "code": device_code,
                            "message": "m", "data": {"up": true}}),
                )
                .await;
        };
        let call = cli_async(
            &hub,
            &[
                "method",
                "call",
                &id,
                "reboot",
                "--payload",
                r#"{"delay":1}"#,
                "--timeout",
                "10",
                "--json",
            ],
        );
        let (out, ()) = tokio::join!(call, answer);
        let result: Value = serde_json::from_slice(&out.stdout).expect("--json output");
        assert_eq!(result["code"], device_code, "{result}");
        assert_eq!(result["data"], json!({"up": true}));
        assert_eq!(code(&out), if device_code == 200 { 0 } else { 9 });
    }
    // Nobody answers: the hub's 504 is exit code 7.
    let out = cli_async(&hub, &["method", "call", &id, "reboot", "--timeout", "1"]).await;
    assert_eq!(code(&out), 7, "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_commands_create_follow_and_cancel_a_job() {
    let hub = Hub::start();
    let id = unique("cliota");
    hub.create_thing(&id).await;
    let job = json_of(
        &hub,
        &[
            "ota",
            "create",
            "--thing",
            &id,
            "--file-url",
            "http://files.invalid/fw.bin",
            "--file-version",
            "1.2.3",
            "--retries",
            "1",
        ],
    );
    let job_id = job["jobId"].as_str().expect("jobId").to_owned();
    assert_eq!(job["status"], "running");
    assert_eq!(job["total"], 1);
    let status = json_of(&hub, &["ota", "status", &job_id, "--tasks"]);
    assert_eq!(status["jobId"], job_id.as_str());
    assert_eq!(
        status["tasks"]["content"][0]["thingId"],
        id.as_str(),
        "{status}"
    );
    let canceled = json_of(&hub, &["ota", "cancel", &job_id]);
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert_eq!(code(&cli(&hub, &["ota", "status", "no-such-job"])), 3);
    let out = cli(
        &hub,
        &["ota", "create", "--file-url", "x", "--file-version", "1"],
    );
    assert_eq!(code(&out), 2, "a target is required");
}

#[test]
fn completions_are_valid_shell_and_the_man_page_renders() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("things"));
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .expect("bash");
    use std::io::Write as _;
    bash.stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("write script");
    assert!(
        bash.wait().expect("bash -n").success(),
        "bash -n refused the script"
    );
    for shell in ["zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = Command::new(BIN).arg("man").output().expect("run");
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        man.starts_with(".ie") || man.contains(".TH iothub"),
        "{man}"
    );
}
