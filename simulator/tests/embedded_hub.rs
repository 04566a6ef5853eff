//! The embedded hub's process across the ways a run can end early: Ctrl-C (SIGINT) makes the
//! simulator stop its hub and remove the hub's data directory before exiting with 130; a
//! simulator killed outright (SIGKILL, no clean-up of its own) leaves no hub behind either,
//! because the hub notices that its parent is gone and shuts down, removing its data. And
//! `--hub-arg` flags reach the hub: one it rejects fails the run before any thing starts.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use support::{Sim, ended_within, process_state};

/// A run long enough to be interrupted while measuring.
const LONG_RUN: [&str; 9] = [
    "run",
    "--things",
    "20",
    "--ramp",
    "200",
    "--duration",
    "120",
    "--no-progress",
    "--rate=40",
];

#[test]
fn ctrl_c_stops_the_hub_and_removes_its_data() {
    let mut sim = Sim::spawn(LONG_RUN);
    let hub = sim.hub_line();
    sim.wait_line("20 of 20 things connected");
    let pid = rustix::process::Pid::from_raw(sim.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let (status, _stdout, stderr) = sim.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted; stopping the embedded hub"),
        "{stderr}"
    );
    assert_eq!(
        process_state(hub.pid),
        None,
        "the hub was stopped and reaped"
    );
    assert!(!hub.data_dir.exists(), "{:?} left behind", hub.data_dir);
}

#[test]
fn a_killed_simulator_leaves_no_hub_behind() {
    let mut sim = Sim::spawn(LONG_RUN);
    let hub = sim.hub_line();
    sim.wait_line("20 of 20 things connected");
    sim.child.kill().expect("SIGKILL the simulator");
    let _ = sim.child.wait();
    // Reparented (to init or a subreaper), the hub sees its stdin end and shuts down.
    assert!(
        ended_within(hub.pid, Duration::from_secs(30)),
        "hub {} still running (state {:?})",
        hub.pid,
        process_state(hub.pid)
    );
    assert!(!hub.data_dir.exists(), "{:?} left behind", hub.data_dir);
}

#[test]
fn hub_flags_reach_the_hub_and_a_hub_that_cannot_start_fails_the_run() {
    let sim = Sim::spawn([
        "run",
        "--things",
        "1",
        "--duration",
        "1",
        "--no-progress",
        "--hub-arg=--no-such-hub-flag",
    ]);
    let (status, _stdout, stderr) = sim.wait(Duration::from_secs(60));
    assert!(!status.success(), "{stderr}");
    // The hub's own flag parser saw the flag and said so on the shared stderr.
    assert!(stderr.contains("--no-such-hub-flag"), "{stderr}");
    assert!(
        stderr.contains("the embedded hub exited before it was ready"),
        "{stderr}"
    );

    let sim = Sim::spawn([
        "run",
        "--things",
        "1",
        "--no-progress",
        "--hub-arg=--admin-token=chosen",
    ]);
    let (status, _stdout, stderr) = sim.wait(Duration::from_secs(60));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("admin token is generated per run"),
        "{stderr}"
    );
}
