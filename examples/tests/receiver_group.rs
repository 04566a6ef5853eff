//! Two `receiver` processes (examples/src/bin/receiver.rs, `iothub_sdk::service`) in one
//! shared subscription group (`--group`, S-2.8, D-80) against the real `iothub` binary: 10,000
//! telemetry messages from 10 things are split between them, none handled twice, none missed.
//! What each handled is read from its stdout (JSON lines).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iothub_sdk::{Thing, ThingOptions};
use serde_json::{Value, json};

mod support;

use support::{Proc, Rest, SVC, spawn_hub};

const THINGS: usize = 10;
const PER_THING: u64 = 1_000;
/// How long the whole stream may take to arrive (it takes a few seconds).
const DRAIN: Duration = Duration::from_secs(120);

fn start_receiver(dir: &Path, mqtt: std::net::SocketAddr, name: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_receiver"))
            .args(["--mqtt", &mqtt.to_string(), "--group", "workers"])
            .args(["--user", SVC.0, "--secret", SVC.1])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.join(format!("{name}.out"))).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("{name}.err"))).unwrap(),
            ))
            .spawn()
            .expect("spawn receiver"),
    )
}

/// The (thing, seq) of every telemetry line a receiver printed so far.
fn handled(dir: &Path, name: &str) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default();
    text.lines()
        // The last line may be half written.
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "telemetry")
        .map(|v| {
            let thing = v["thingId"].as_str().unwrap_or_default().to_owned();
            (thing, v["payload"]["seq"].as_u64().unwrap_or(u64::MAX))
        })
        .collect()
}

fn stderr(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receiver_processes_split_ten_thousand_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_hub, mqtt, http) = spawn_hub(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let rest = Rest::new(http);
    let _a = start_receiver(dir.path(), mqtt, "a");
    let _b = start_receiver(dir.path(), mqtt, "b");
    let deadline = Instant::now() + support::STEP;
    for name in ["a", "b"] {
        while !stderr(dir.path(), name).contains("subscribed") {
            assert!(
                Instant::now() < deadline,
                "{name}: {}",
                stderr(dir.path(), name)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut sent = BTreeSet::new();
    // Every thing connects before any sends: a CONNECT waiting behind a stream of thousands of
    // messages on a loaded machine could miss the SDK's connect timeout.
    let mut connected = Vec::new();
    for i in 0..THINGS {
        let id = format!("grp-{i}");
        let secret = rest.create_thing(&id).await;
        let thing = Thing::connect(ThingOptions::new(
            id.as_str(),
            secret.as_str(),
            "127.0.0.1",
            mqtt.port(),
        ))
        .await
        .expect("connect");
        sent.extend((0..PER_THING).map(|seq| (id.clone(), seq)));
        connected.push(thing);
    }
    let mut senders = Vec::new();
    for thing in connected {
        senders.push(tokio::spawn(async move {
            for seq in 0..PER_THING {
                // A full transmit queue is the SDK's back pressure: wait and send again.
                loop {
                    match thing.send_telemetry(&json!({"seq": seq})).await {
                        Ok(()) => break,
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                        Err(e) => panic!("telemetry {seq}: {e}"),
                    }
                }
            }
            thing
        }));
    }
    // Each thing stays connected until the group has handled everything: closing it earlier
    // could cut off messages still in flight.
    let mut things = Vec::new();
    for s in senders {
        things.push(s.await.expect("sender"));
    }
    let total = sent.len();
    assert_eq!(total, 10_000);

    let deadline = Instant::now() + DRAIN;
    loop {
        let n = handled(dir.path(), "a").len() + handled(dir.path(), "b").len();
        if n >= total {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of {total} handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A duplicate delivered late would show up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a, b) = (handled(dir.path(), "a"), handled(dir.path(), "b"));
    eprintln!("split: a {} b {} of {total}", a.len(), b.len());
    let (set_a, set_b): (BTreeSet<_>, BTreeSet<_>) =
        (a.iter().cloned().collect(), b.iter().cloned().collect());
    assert_eq!(set_a.len(), a.len(), "a handled a message twice");
    assert_eq!(set_b.len(), b.len(), "b handled a message twice");
    assert!(
        set_a.is_disjoint(&set_b),
        "a message went to both receivers"
    );
    let union: BTreeSet<_> = set_a.union(&set_b).cloned().collect();
    assert_eq!(union, sent, "what the group handled is what was sent");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both get a share: {} and {}",
        a.len(),
        b.len()
    );
    for thing in things {
        thing.close().await;
    }
}
