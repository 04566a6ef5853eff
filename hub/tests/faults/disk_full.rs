//! The database on a real tmpfs that fills up mid-stream (issue 14's scenario): from the moment
//! `/healthz` reports the disk full, every refusal is a 503 (MQTT and REST) and nothing is
//! acknowledged that is not stored; once the tmpfs grows, writes succeed again without a restart;
//! after a SIGKILL and a restart, the stored state is exactly the acknowledged one.

use std::time::{Duration, Instant};

use crate::stream::*;
use crate::support::*;
use crate::tmpfs::Tmpfs;

/// Shadow streams (half MQTT 3.1.1, half MQTT 5).
const THINGS: usize = 6;

const BEFORE: u8 = 0;
const FULL: u8 = 1;
const FREED: u8 = 2;

/// Polls `/healthz` until its status is `want`; returns the body.
async fn wait_health(hub: &Hub, want: u16, within: Duration) -> serde_json::Value {
    let got = eventually(within, || async {
        let (status, body) = healthz(hub).await;
        (status == want).then_some(body)
    })
    .await;
    got.unwrap_or_else(|| panic!("/healthz never answered {want}\n{}", hub.stderr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_mid_stream_refuses_with_503_and_the_hub_recovers() {
    let fs = Tmpfs::mount("4m");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = fs.database_url();
    let mut flags = vec!["--database-url", url.as_str()];
    flags.extend_from_slice(FLAGS);
    let mut hub = Hub::start_with(dir.path(), &flags);

    // Pre-allocation saw too little room and took nothing.
    assert!(
        hub.stderr().contains("not pre-allocated"),
        "the start-up log says why the WAL was not pre-allocated\n{}",
        hub.stderr()
    );
    assert!(
        fs.file_len("iothub.db-wal") < 1 << 20,
        "no pre-allocated log on a 4 MiB disk: {} bytes",
        fs.file_len("iothub.db-wal")
    );

    let phase = Phase::default();
    let mut streams = Vec::new();
    for i in 0..THINGS {
        let proto = if i % 2 == 0 { Proto::V311 } else { Proto::V5 };
        streams.push(spawn_stream(&hub, proto, phase.clone(), PACED).await);
    }
    let rest_thing = unique("desired");
    hub.create_thing(&rest_thing).await;
    let rest = spawn_rest(&hub, rest_thing, phase.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The disk fills up. From the moment /healthz says so, every answer is an error.
    let filled = fs.fill();
    let body = wait_health(&hub, 503, Duration::from_secs(20)).await;
    let reason = body["data"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("full"), "/healthz names the cause: {body}");
    assert_eq!(body["data"]["status"], "unavailable", "{body}");
    let (_, _, metrics) = hub.get_text("/metrics").await;
    assert!(metrics.contains("iothub_store_healthy 0\n"), "{metrics}");
    phase.set(FULL);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = healthz(&hub).await;
    assert_eq!(status, 503, "still full, still unhealthy");

    // Space returns (the tmpfs grows, as in the issue); the hub recovers by itself.
    fs.resize("64m");
    phase.set(FREED);
    let freed_at = Instant::now();
    wait_health(&hub, 200, Duration::from_secs(10)).await;
    let recovered_in = freed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase.stop();
    let mut seen = Vec::new();
    for s in streams {
        seen.push(s.await.expect("stream"));
    }
    let rest = rest.await.expect("rest task");
    let (_, _, metrics) = hub.get_text("/metrics").await;
    assert!(metrics.contains("iothub_store_healthy 1\n"), "{metrics}");

    let mut totals: [(usize, std::collections::BTreeMap<u64, usize>); 3] =
        std::array::from_fn(|_| (0, std::collections::BTreeMap::new()));
    for s in &seen {
        for p in [BEFORE, FULL, FREED] {
            let (a, r) = s.in_phase(p);
            totals[p as usize].0 += a;
            for (code, n) in r {
                *totals[p as usize].1.entry(code).or_insert(0) += n;
            }
        }
    }
    eprintln!(
        "filler {filled} bytes; healthz back to 200 {recovered_in:?} after the disk grew; \
         MQTT updates (accepted, rejected by code) before {:?}, full {:?}, freed {:?}",
        totals[0], totals[1], totals[2]
    );
    // "Every reply while the disk is full is an error" holds for every write that needs new
    // space. A few updates may still be accepted while the disk is full: once the background
    // checkpoint has copied the whole log into the database, SQLite starts the log again from
    // its beginning, so a commit may overwrite pages the log file already has. It needs no new
    // space, really commits, and is durable. What the test asserts is therefore the promise
    // itself (S-3.5): every refusal, in every phase, is a 503; every acknowledged write is
    // stored after a SIGKILL and a restart, and no refused one is (`check_shadows`,
    // `check_rest`).
    let (_, rej) = &totals[FULL as usize];
    assert!(
        rej.get(&503).copied().unwrap_or(0) > 0,
        "while full, updates are refused: {rej:?}"
    );
    for (phase, (_, rej)) in totals.iter().enumerate() {
        assert!(
            rej.keys().all(|c| *c == 503),
            "phase {phase}: an update refused with something else than 503: {rej:?}"
        );
    }
    eprintln!(
        "accepted while full (log pages reused, checked durable below): {}",
        totals[FULL as usize].0
    );
    assert!(
        totals[BEFORE as usize].0 > 0,
        "accepted before: {:?}",
        totals[0]
    );
    assert!(
        totals[FREED as usize].0 > 0,
        "accepted again after the disk grew, without a restart: {:?}",
        totals[2]
    );
    // REST while full: refused with 503 (or, as above, stored and then acknowledged; every
    // answer in every phase is checked against the store after the restart).
    let full_rest: Vec<u16> = rest
        .created
        .values()
        .map(|(p, s)| (*p, *s))
        .chain(rest.desired.iter().map(|(p, s, _)| (*p, *s)))
        .filter(|(p, _)| *p == FULL)
        .map(|(_, s)| s)
        .collect();
    assert!(
        full_rest.iter().all(|s| [200, 201, 503].contains(s)) && full_rest.contains(&503),
        "REST while full: {full_rest:?}"
    );
    assert!(
        rest.created.values().any(|(p, s)| *p == FREED && *s == 201),
        "things are created again after the disk grew: {:?}",
        rest.created
            .values()
            .filter(|(p, _)| *p == FREED)
            .collect::<Vec<_>>()
    );

    // After a crash and a restart: exactly what was acknowledged.
    tokio::task::block_in_place(|| hub.restart());
    check_shadows(&hub, &seen).await;
    check_rest(&hub, &rest).await;
    drop(hub);
    drop(fs);
}

/// Issue 14's scenario by hand, for its figures: 100 things updating with the database on a
/// 2 MiB tmpfs, which fills up (by itself if the log grows, else with a filler file), then grows
/// to 64 MiB with the hub running; then a SIGKILL and a restart. Run with
/// `cargo test -p iothub-hub --test faults -- --ignored --nocapture issue_14_scenario`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement (prints figures); run by hand"]
async fn issue_14_scenario_2mib_100_things() {
    const N: usize = 100;
    let fs = Tmpfs::mount("2m");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = fs.database_url();
    let mut flags = vec!["--database-url", url.as_str()];
    flags.extend_from_slice(FLAGS);
    let started = Instant::now();
    let mut hub = Hub::start_with(dir.path(), &flags);
    eprintln!(
        "start: {:?}; WAL {} bytes; pre-allocation log: {:?}",
        started.elapsed(),
        fs.file_len("iothub.db-wal"),
        hub.stderr()
            .lines()
            .find(|l| l.contains("pre-allocat"))
            .unwrap_or("none")
    );
    let phase = Phase::default();
    let mut streams = Vec::new();
    for i in 0..N {
        let proto = if i % 2 == 0 { Proto::V311 } else { Proto::V5 };
        streams
            .push(spawn_stream(&hub, proto, phase.clone(), (4, Duration::from_millis(200))).await);
    }
    let rest_thing = unique("desired");
    hub.create_thing(&rest_thing).await;
    let rest = spawn_rest(&hub, rest_thing, phase.clone());

    let t0 = Instant::now();
    let filled_by_itself = eventually(Duration::from_secs(20), || async {
        (healthz(&hub).await.0 == 503).then_some(())
    })
    .await
    .is_some();
    let mut filler = 0;
    if !filled_by_itself {
        filler = fs.fill();
        wait_health(&hub, 503, Duration::from_secs(20)).await;
    }
    let (_, body) = healthz(&hub).await;
    eprintln!(
        "disk full after {:?} ({}; filler {filler} bytes); /healthz: {body}",
        t0.elapsed(),
        if filled_by_itself {
            "by the hub's own writes"
        } else {
            "with a filler file"
        },
    );
    phase.set(FULL);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fs.resize("64m");
    phase.set(FREED);
    let t1 = Instant::now();
    wait_health(&hub, 200, Duration::from_secs(10)).await;
    eprintln!(
        "/healthz 200 again {:?} after the tmpfs grew to 64 MiB",
        t1.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    phase.stop();
    let mut seen = Vec::new();
    for s in streams {
        seen.push(s.await.expect("stream"));
    }
    let rest = rest.await.expect("rest");
    let mut totals: [(usize, std::collections::BTreeMap<u64, usize>); 3] =
        std::array::from_fn(|_| (0, std::collections::BTreeMap::new()));
    for s in &seen {
        for p in [BEFORE, FULL, FREED] {
            let (a, r) = s.in_phase(p);
            totals[p as usize].0 += a;
            for (code, n) in r {
                *totals[p as usize].1.entry(code).or_insert(0) += n;
            }
        }
    }
    let rest_by = |p: u8| {
        let mut m = std::collections::BTreeMap::<u16, usize>::new();
        for (q, s) in rest.created.values() {
            if *q == p {
                *m.entry(*s).or_default() += 1;
            }
        }
        m
    };
    eprintln!(
        "MQTT updates (accepted, rejected by code): before {:?}, full {:?}, after growing {:?}",
        totals[0], totals[1], totals[2]
    );
    eprintln!(
        "POST /things by status: before {:?}, full {:?}, after growing {:?}",
        rest_by(BEFORE),
        rest_by(FULL),
        rest_by(FREED)
    );
    tokio::task::block_in_place(|| hub.restart());
    check_shadows(&hub, &seen).await;
    check_rest(&hub, &rest).await;
    let versions: Vec<u64> = seen.iter().filter_map(|s| s.last().map(|l| l.0)).collect();
    eprintln!(
        "after SIGKILL + restart: all {N} shadows at their last accepted version (min {:?}, max {:?}); \
         all {} created things present, all {} refused absent",
        versions.iter().min(),
        versions.iter().max(),
        rest.created.values().filter(|(_, s)| *s == 201).count(),
        rest.created.values().filter(|(_, s)| *s == 503).count(),
    );
}
