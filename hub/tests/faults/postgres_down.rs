//! The hub on a real PostgreSQL that stops mid-stream (the database server restarts, fails over or
//! is unreachable): while it is down `/healthz` says so and every write is refused with a 503
//! (MQTT and REST), nothing is acknowledged that is not stored; once it is back the hub recovers
//! without a restart (its pool reconnects); after a SIGKILL and a restart of the hub, the stored
//! state is exactly the acknowledged one.

use std::time::{Duration, Instant};

use crate::stream::*;
use crate::support::postgres::PgServer;
use crate::support::*;

/// Shadow streams (half MQTT 3.1.1, half MQTT 5).
const THINGS: usize = 6;

const BEFORE: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;

async fn wait_health(hub: &Hub, want: u16, within: Duration) -> serde_json::Value {
    let got = eventually(within, || async {
        let (status, body) = healthz(hub).await;
        (status == want).then_some(body)
    })
    .await;
    got.unwrap_or_else(|| panic!("/healthz never answered {want}\n{}", hub.stderr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_stream_gives_503_and_the_hub_recovers() {
    let mut pg = PgServer::start_new();
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut flags = vec!["--database-url", url.as_str()];
    flags.extend_from_slice(FLAGS);
    let mut hub = Hub::start_with(dir.path(), &flags);

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

    // PostgreSQL goes away. From the moment /healthz says so, every answer is an error.
    tokio::task::block_in_place(|| pg.stop());
    let body = wait_health(&hub, 503, Duration::from_secs(30)).await;
    assert_eq!(body["data"]["status"], "unavailable", "{body}");
    phase.set(DOWN);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(healthz(&hub).await.0, 503, "still down, still unhealthy");
    let (_, _, metrics) = hub.get_text("/metrics").await;
    assert!(metrics.contains("iothub_store_healthy 0\n"), "{metrics}");

    // It comes back on the same port: the hub recovers by itself.
    tokio::task::block_in_place(|| pg.start());
    phase.set(BACK);
    let back_at = Instant::now();
    wait_health(&hub, 200, Duration::from_secs(30)).await;
    let recovered_in = back_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase.stop();
    let mut seen = Vec::new();
    for s in streams {
        seen.push(s.await.expect("stream"));
    }
    let rest = rest.await.expect("rest task");

    let mut totals: [(usize, std::collections::BTreeMap<u64, usize>); 3] =
        std::array::from_fn(|_| (0, std::collections::BTreeMap::new()));
    for s in &seen {
        for p in [BEFORE, DOWN, BACK] {
            let (a, r) = s.in_phase(p);
            totals[p as usize].0 += a;
            for (code, n) in r {
                *totals[p as usize].1.entry(code).or_insert(0) += n;
            }
        }
    }
    eprintln!(
        "healthz back to 200 {recovered_in:?} after postgres restarted; MQTT updates \
         (accepted, rejected by code) before {:?}, down {:?}, back {:?}",
        totals[0], totals[1], totals[2]
    );

    // Every answer to a request sent while postgres was down is a 503 or, for a request that
    // waited until it was back, an acceptance (the restart below checks that each is stored).
    // Refusals start with the batch that found it gone, before /healthz turned 503.
    let refused: usize = [BEFORE, DOWN]
        .iter()
        .map(|p| totals[*p as usize].1.get(&503).copied().unwrap_or(0))
        .sum();
    for p in [BEFORE, DOWN, BACK] {
        let (_, rejected) = &totals[p as usize];
        assert!(
            rejected.keys().all(|c| *c == 503),
            "phase {p}: updates are refused with 503 only: {rejected:?}"
        );
    }
    assert!(
        refused > 0,
        "updates were refused with 503 while postgres was down"
    );
    assert!(
        totals[BEFORE as usize].0 > 0,
        "accepted before: {:?}",
        totals[0]
    );
    assert!(
        totals[BACK as usize].0 > 0,
        "accepted again once postgres is back, without a restart: {:?}",
        totals[2]
    );
    let down_rest: Vec<u16> = rest
        .created
        .values()
        .map(|(p, s)| (*p, *s))
        .chain(rest.desired.iter().map(|(p, s, _)| (*p, *s)))
        .filter(|(p, _)| *p == DOWN)
        .map(|(_, s)| s)
        .collect();
    assert!(
        down_rest.iter().all(|s| [200, 201, 503].contains(s)),
        "REST while down: {down_rest:?}"
    );
    assert!(
        rest.created.values().any(|(p, s)| *p == BACK && *s == 201),
        "things are created again once postgres is back"
    );

    // After a crash and a restart of the hub: exactly what was acknowledged.
    tokio::task::block_in_place(|| hub.restart());
    check_shadows(&hub, &seen).await;
    check_rest(&hub, &rest).await;
    drop(hub);
    drop(pg);
}
