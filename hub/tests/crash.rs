//! Durability (S-3.5: an accepted update survives a hub crash) and graceful shutdown.
//!
//! Several things stream pipelined QoS 1 updates with distinct clientTokens while the test kills
//! (SIGKILL) or stops (SIGTERM) the hub; every `update/accepted` seen is recorded, and after a
//! restart on the same data directory each shadow must hold at least the last accepted version
//! and state.

mod support;

use std::time::{Duration, Instant};

use support::streams::{Phase, Seen, check_shadows_after_crash, spawn_stream};
use support::*;

/// Things streaming at once.
const THINGS: usize = 4;
/// Updates in flight per thing (below the hub's in-flight limit, raised for this test).
const WINDOW: u64 = 8;
/// Accepted updates (all things) to wait for before stopping the hub.
const TARGET: u64 = 1000;
/// Flags that keep the hub's per-thing rate limit out of the way.
const FLAGS: &[&str] = &[
    "--shadow-requests-per-sec",
    "100000",
    "--max-in-flight",
    "64",
];

/// Starts the streams (alternating MQTT 3.1.1 and 5, as fast as the window allows); they end
/// when the hub goes away.
async fn start_streams(hub: &Hub) -> (Vec<tokio::task::JoinHandle<Seen>>, Phase) {
    let phase = Phase::default();
    let mut tasks = Vec::new();
    for i in 0..THINGS {
        let proto = if i % 2 == 0 { Proto::V311 } else { Proto::V5 };
        tasks.push(spawn_stream(hub, proto, phase.clone(), (WINDOW, Duration::ZERO)).await);
    }
    (tasks, phase)
}

async fn wait_for_target(hub: &Hub, phase: &Phase) -> u64 {
    let reached = eventually(Duration::from_secs(90), || async {
        let n = phase.accepted();
        (n >= TARGET).then_some(n)
    })
    .await;
    reached.unwrap_or_else(|| {
        panic!(
            "only {} updates accepted in 90 s\n{}",
            phase.accepted(),
            hub.stderr()
        )
    })
}

/// S-3.5: SIGKILL mid-stream loses no acknowledged update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5_sigkill_loses_no_accepted_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start_with(dir.path(), FLAGS);
    let (tasks, phase) = start_streams(&hub).await;
    let before = wait_for_target(&hub, &phase).await;
    tokio::task::block_in_place(|| hub.kill());
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("stream task"));
    }
    let after = phase.accepted();
    assert!(
        before > 50,
        "a non-trivial stream before the kill: {before}"
    );
    for s in &seen {
        let n = s.accepted.len();
        assert!(n > 10, "{}: only {n} accepted", s.thing);
    }
    eprintln!(
        "accepted {after} updates ({before} when the kill was decided); rejected {:?}",
        seen.iter().map(|s| s.in_phase(0).1).collect::<Vec<_>>()
    );
    tokio::task::block_in_place(|| hub.restart());
    check_shadows_after_crash(&hub, &seen).await;
    drop(dir);
}

/// Graceful shutdown: SIGTERM while updates are in flight → exit 0 within a few seconds, and
/// every accepted update is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_sigterm_exits_0_and_keeps_accepted_updates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start_with(dir.path(), FLAGS);
    let (tasks, phase) = start_streams(&hub).await;
    let before = wait_for_target(&hub, &phase).await;
    assert!(before > 50);
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| hub.terminate(Duration::from_secs(15)));
    let took = started.elapsed();
    assert!(
        status.success(),
        "graceful shutdown must exit 0, got {status:?}\n{}",
        hub.stderr()
    );
    assert!(
        took < Duration::from_secs(5),
        "graceful shutdown took {took:?} (in-flight updates should drain quickly)"
    );
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("stream task"));
    }
    tokio::task::block_in_place(|| hub.restart());
    check_shadows_after_crash(&hub, &seen).await;
    drop(dir);
}
