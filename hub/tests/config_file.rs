//! `iothub serve --config FILE`: the real binary reads a TOML file, the environment and flags, in
//! that order of precedence; unknown keys are refused by name; `iothub config print` masks
//! credentials; the committed example file is what `iothub config example` prints.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use iothub_launch::HubCommand;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_iothub");

/// Runs `iothub ARGS` with no `IOTHUB_*` variables but `env`.
fn iothub(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("IOTHUB_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run iothub")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config file");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_environment_and_flags_combine_in_that_order() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    // Each limit is set by one more source than the one before it: the last source wins.
    let file = write(
        tmp.path(),
        "iothub.toml",
        &format!(
            "mqtt_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             admin_token = \"from-the-file\"\n\
             max_named_shadows = 3\nmax_json_depth = 5\nmax_client_token = 50\n",
            data.display().to_string()
        ),
    );
    let mut cmd = HubCommand::new(BIN);
    cmd.without_env_prefix("IOTHUB_")
        .args(["serve", "--config", &file, "--max-client-token", "70"])
        .env("IOTHUB_MAX_JSON_DEPTH", "6")
        .env("IOTHUB_MAX_CLIENT_TOKEN", "60")
        .stderr_to(tmp.path().join("stderr.log"))
        .ready_timeout(Duration::from_secs(30));
    let mut hub = tokio::task::spawn_blocking(move || cmd.spawn())
        .await
        .expect("join")
        .expect("hub starts with the config file");
    let http = hub.ready().http;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = client
        .get(format!("http://{http}/api/v1/limits"))
        .bearer_auth("from-the-file")
        .send()
        .await
        .expect("GET /limits");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "the file's admin token is used"
    );
    let body: Value = resp.json().await.expect("JSON");
    let limits = &body["data"];
    assert_eq!(limits["maxNamedShadows"], 3, "file only: {limits}");
    assert_eq!(limits["maxJsonDepth"], 6, "environment over file: {limits}");
    assert_eq!(limits["maxClientToken"], 70, "flag over both: {limits}");
    assert!(
        data.join("iothub.db").exists(),
        "data_dir from the file is used"
    );
    hub.terminate(Duration::from_secs(15)).expect("hub stops");
}

#[test]
fn config_print_shows_sources_and_masks_secrets() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = write(
        tmp.path(),
        "iothub.toml",
        "admin_token = \"very-secret-token\"\nservice_users = [\"$app:app-secret\"]\n\
         database_url = \"postgres://hub:db-password@localhost/iothub\"\n\
         max_connections = 10\nhttp_header_timeout = 11\ncommit_batch = 12\n",
    );
    let out = iothub(
        &["config", "print", "--config", &file, "--commit-batch", "99"],
        &[("IOTHUB_HTTP_HEADER_TIMEOUT", "22")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in ["very-secret-token", "app-secret", "db-password"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    // The output is TOML itself: parse it back.
    let printed: toml::Table = text.parse().expect("config print is TOML");
    assert_eq!(printed["max_connections"].as_integer(), Some(10));
    assert_eq!(printed["http_header_timeout"].as_integer(), Some(22));
    assert_eq!(printed["commit_batch"].as_integer(), Some(99));
    assert_eq!(printed["max_in_flight"].as_integer(), Some(10), "a default");
    assert_eq!(printed["admin_token"].as_str(), Some("****"));
    assert_eq!(
        printed["database_url"].as_str(),
        Some("postgres://hub:****@localhost/iothub")
    );
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("max_connections").ends_with("# file"), "{text}");
    assert!(
        line("http_header_timeout").ends_with("# environment"),
        "{text}"
    );
    assert!(line("commit_batch").ends_with("# flag"), "{text}");
    assert!(line("max_in_flight").ends_with("# default"), "{text}");
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = write(
        tmp.path(),
        "iothub.toml",
        "mqtt_addr = \"127.0.0.1:0\"\nmax_conections = 5\n",
    );
    let out = iothub(&["serve", "--config", &file], &[]);
    assert!(!out.status.success(), "a misspelt key must stop the hub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"max_conections\""), "{stderr}");
    // The same through IOTHUB_CONFIG.
    let out = iothub(&["config", "print"], &[("IOTHUB_CONFIG", &file)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"max_conections\""));
    // A bad value is refused by the flag's own parser, naming the flag.
    let file = write(tmp.path(), "bad.toml", "handshake_timeout = 0\n");
    let out = iothub(&["config", "print", "--config", &file], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--handshake-timeout"));
}

#[test]
fn the_example_file_is_current_and_loads() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/iothub.example.toml");
    let committed = std::fs::read_to_string(example).expect("hub/iothub.example.toml");
    let out = iothub(&["config", "example"], &[]);
    assert!(out.status.success());
    assert_eq!(
        committed,
        String::from_utf8_lossy(&out.stdout),
        "hub/iothub.example.toml is stale: run `iothub config example > hub/iothub.example.toml`"
    );
    let out = iothub(&["config", "print", "--config", example], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = text.parse().expect("TOML");
    assert_eq!(printed["mqtt_addr"].as_str(), Some("0.0.0.0:1883"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("mqtt_addr =") && l.ends_with("# file")),
        "{text}"
    );
}

/// S-13.2: the `[registry_sync]` section is read and checked with the file, and `config print`
/// shows it with the header values masked.
#[test]
fn the_registry_sync_section_is_checked_and_masked() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let good = write(
        tmp.path(),
        "sync.toml",
        "max_named_shadows = 3\n[registry_sync]\nurl = \"http://127.0.0.1:1/registry\"\n\
         [registry_sync.auth.create]\nname = \"X-Api-Key\"\nvalue = \"header-s3cret\"\n\
         [registry_sync.push]\ninterval = \"2s\"\n",
    );
    let out = iothub(&["config", "print", "--config", &good], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("header-s3cret"), "{text}");
    let printed: toml::Table = text.parse().expect("TOML");
    let sync = printed["registry_sync"].as_table().expect("the section");
    assert_eq!(sync["push"]["interval"].as_str(), Some("2s"));
    assert_eq!(sync["auth"]["create"]["value"].as_str(), Some("****"));
    let bad = write(
        tmp.path(),
        "bad.toml",
        "[registry_sync]\nurl = \"http://x/\"\n[registry_sync.push]\nretries = 3\n",
    );
    let out = iothub(&["config", "print", "--config", &bad], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retries"));
}

/// S-14.1: `[[routes]]` tables start their routes (shown by the API as from the file); an
/// invalid one stops the hub at start-up with its id named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_tables_declare_routes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let file = write(
        tmp.path(),
        "iothub.toml",
        &format!(
            "mqtt_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             admin_token = \"from-the-file\"\n\n\
             [[routes]]\nid = \"hist\"\nsources = [\"telemetry\"]\noutbox_max = 50\n\
             when_full = \"refuse\"\n[routes.sink]\ntype = \"history\"\nmax_per_thing = 7\n\n\
             [[routes]]\nid = \"hook\"\nsources = [\"shadow\"]\n[routes.sink]\n\
             type = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"route-secret\"\n",
            data.display().to_string()
        ),
    );
    let mut cmd = HubCommand::new(BIN);
    cmd.without_env_prefix("IOTHUB_")
        .args(["serve", "--config", &file])
        .stderr_to(tmp.path().join("stderr.log"))
        .ready_timeout(Duration::from_secs(30));
    let mut hub = tokio::task::spawn_blocking(move || cmd.spawn())
        .await
        .expect("join")
        .expect("hub starts with routes in the config file");
    let http = hub.ready().http;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let body: Value = client
        .get(format!("http://{http}/api/v1/routes"))
        .bearer_auth("from-the-file")
        .send()
        .await
        .expect("GET /routes")
        .json()
        .await
        .expect("JSON");
    let routes = body["data"].as_array().expect("routes");
    assert_eq!(routes.len(), 2, "{body}");
    assert_eq!(routes[0]["route"]["id"], "hist");
    assert_eq!(routes[0]["fromFile"], true);
    assert_eq!(routes[0]["route"]["outboxMax"], 50);
    assert_eq!(routes[0]["route"]["whenFull"], "refuse");
    assert_eq!(routes[0]["route"]["sink"]["maxPerThing"], 7);
    assert_eq!(routes[1]["route"]["sink"]["secret"], "****", "{body}");
    hub.terminate(Duration::from_secs(15)).expect("hub stops");

    let bad = write(
        tmp.path(),
        "bad.toml",
        "[[routes]]\nid = \"bad\"\nsources = []\n[routes.sink]\ntype = \"stdout\"\n",
    );
    let out = iothub(&["config", "print", "--config", &bad], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"bad\"") && err.contains("at least one source"),
        "{err}"
    );
}
