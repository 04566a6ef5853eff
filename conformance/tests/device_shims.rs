//! Runs the device side against both SDK shims (`shim-std` on `iothub-sdk`, `shim-nostd` on
//! `iothub-sdk-nostd`) and against the firmware-style thermostat of `examples/` on the no_std
//! SDK's minimq adapter (`firmware_host`), and requires the results to equal
//! `expected/std-sdk.json`, `expected/nostd-sdk.json` and
//! `expected/nostd-minimq-firmware.json` (any change, better or worse, fails). Then the
//! negative checks: each shim broken on purpose (`IOTHUB_SHIM_BREAK`) must make the matching
//! cases fail.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn suite(shim: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iothub-conformance"))
        .args(["device", "--exec", shim])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("IOTHUB_SHIM_BREAK")
        .env_remove("IOTHUB_SHIM_MQTT")
        .envs(env.iter().copied())
        .output()
        .expect("running iothub-conformance")
}

fn matches_expected(shim: &str, env: &[(&str, &str)], file: &str) {
    let expected = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("expected")
        .join(file);
    let out = suite(
        shim,
        env,
        &["--expect", expected.to_str().expect("utf-8 path")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("expected-results diff: 0 change(s)"),
        "{shim} {env:?}: the run differs from expected/{file}:\n{stdout}"
    );
}

#[test]
fn std_shim_matches_expected_results() {
    matches_expected(env!("CARGO_BIN_EXE_shim-std"), &[], "std-sdk.json");
}

#[test]
fn std_shim_over_mqtt5_matches_expected_results() {
    matches_expected(
        env!("CARGO_BIN_EXE_shim-std"),
        &[("IOTHUB_SHIM_MQTT", "5")],
        "std-sdk.json",
    );
}

#[test]
fn nostd_shim_matches_expected_results() {
    matches_expected(env!("CARGO_BIN_EXE_shim-nostd"), &[], "nostd-sdk.json");
}

/// `firmware_host` of `iothub-examples`, of the same profile, built when missing.
fn firmware_host() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_iothub-conformance"));
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let bin = dir.join("firmware_host");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
            .args(["build", "-p", "iothub-examples", "--bin", "firmware_host"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for firmware_host");
        assert!(status.success(), "building firmware_host failed");
    }
    bin
}

#[test]
fn minimq_firmware_host_matches_expected_results() {
    let bin = firmware_host();
    // Its flags take the address and thing id; `exec` keeps it the suite's direct child.
    let exec = format!(
        "sh -c 'exec {} --mqtt \"$IOTHUB_MQTT_ADDR\" --thing \"$IOTHUB_THING_ID\" --tick-ms 100'",
        bin.display()
    );
    matches_expected(&exec, &[], "nostd-minimq-firmware.json");
}

/// Each deliberate misbehaviour and the cases it must make fail.
const BREAKS: [(&str, &[&str]); 5] = [
    ("stale-delta", &["dev_s3_stale_delta_ignored"]),
    (
        "no-client-token",
        &[
            "dev_profile_client_token_on_every_request",
            "dev_s5_method_answered",
        ],
    ),
    ("acl", &["dev_s2_allow_list"]),
    ("no-404", &["dev_s5_unknown_method_404"]),
    ("ota-progress", &["dev_s7_ota_progress"]),
];

fn broken_shim_fails(shim: &str) {
    for (brk, cases) in BREAKS {
        let mut args = vec!["--report", "json"];
        for c in cases {
            args.extend(["--only", c]);
        }
        let out = suite(shim, &[("IOTHUB_SHIM_BREAK", brk)], &args);
        assert!(!out.status.success(), "{shim} with {brk}: the run passed");
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        let results = report["results"].as_array().expect("results");
        assert_eq!(results.len(), cases.len(), "{report}");
        for r in results {
            assert_eq!(
                r["result"], "fail",
                "{shim} with IOTHUB_SHIM_BREAK={brk}: {} did not fail: {r}",
                r["case"]
            );
            // The failure comes with the messages the case exchanged with the device.
            let exchange = r["exchange"].as_array().expect("exchange");
            assert!(
                exchange
                    .iter()
                    .any(|l| l.as_str().is_some_and(|l| l.contains("device PUBLISH"))),
                "{shim} with {brk}: no exchanged messages shown: {r}"
            );
        }
    }
}

#[test]
fn broken_std_shim_fails_the_matching_cases() {
    broken_shim_fails(env!("CARGO_BIN_EXE_shim-std"));
}

#[test]
fn broken_nostd_shim_fails_the_matching_cases() {
    broken_shim_fails(env!("CARGO_BIN_EXE_shim-nostd"));
}
