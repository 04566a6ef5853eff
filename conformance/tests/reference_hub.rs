//! Runs the whole suite against the reference hub (`hub/`, binary `iothub`) and requires the
//! result to equal `expected/reference-hub.json` (any change, better or worse, fails).

use std::path::PathBuf;
use std::process::Command;

fn hub_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let exe = env!("CARGO_BIN_EXE_iothub-conformance");
    // The hub lives in another package: use the binary of the same profile, building it when
    // it is missing.
    let profile_dir = PathBuf::from(exe)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = profile_dir.join("iothub");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(&root)
            .args(["build", "-p", "iothub-hub", "--bin", "iothub"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the hub");
        assert!(status.success(), "building the reference hub failed");
    }
    bin
}

#[test]
fn reference_hub_matches_expected_results() {
    let bin = hub_binary();
    let expected = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("expected/reference-hub.json");
    let out = Command::new(env!("CARGO_BIN_EXE_iothub-conformance"))
        .args(["hub", "--spawn-hub"])
        .arg(&bin)
        .arg("--expect")
        .arg(&expected)
        .output()
        .expect("running iothub-conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the run differs from expected/reference-hub.json:\n{stdout}"
    );
    assert!(
        stdout.contains("expected-results diff: 0 change(s)"),
        "{stdout}"
    );
}
