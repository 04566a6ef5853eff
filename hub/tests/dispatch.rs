//! Dispatch shards end to end (issue 23): the real hub with `--dispatch-shards 4`, things on every
//! shard publishing pipelined shadow updates at once; each thing's updates are applied in the
//! order it sent them (S-3.4 versions 1..=n, S-4.1 tokens), whichever shard owns it.

mod support;

use iothub_hub::shard::shard_of;
use serde_json::json;
use support::*;

const SHARDS: usize = 4;
const THINGS: usize = 8;
const UPDATES: u64 = 24;

async fn pipelined_updates_keep_each_things_order(proto: Proto) {
    let shards = SHARDS.to_string();
    let hub = Hub::start_args(&[
        "--dispatch-shards",
        &shards,
        "--max-in-flight",
        "64",
        "--shadow-requests-per-sec",
        "1000",
    ]);
    let mut things = Vec::new();
    for _ in 0..THINGS {
        things.push(hub.new_thing(proto, "d").await);
    }
    let mut owners: Vec<usize> = things
        .iter()
        .map(|(id, _, _)| shard_of(id, SHARDS))
        .collect();
    owners.sort_unstable();
    owners.dedup();
    // Random ids: with 8 things over 4 shards, at least two shards work at once.
    assert!(owners.len() >= 2, "things on shards {owners:?}");

    let runs = things
        .into_iter()
        .map(|(id, _secret, mut client)| async move {
            let topic = shadow_topic(&id, "default", "update");
            for i in 0..UPDATES {
                let req = json!({"state":{"reported":{"i":i}},"clientToken":format!("{id}-{i}")});
                client
                    .publish_nowait(&topic, serde_json::to_vec(&req).expect("json"))
                    .await
                    .expect("publish");
            }
            let mut versions = Vec::new();
            for i in 0..UPDATES {
                let (ok, reply) = client
                    .shadow_reply(&id, "default", "update", &format!("{id}-{i}"))
                    .await;
                assert!(ok, "{id}: update {i} refused: {reply}");
                assert_eq!(reply["state"]["reported"]["i"], i, "{id}: {reply}");
                versions.push(reply["version"].as_u64().expect("version"));
            }
            assert_eq!(
                versions,
                (1..=UPDATES).collect::<Vec<u64>>(),
                "{id}: applied in its send order"
            );
            id
        });
    let ids = futures::future::join_all(runs).await;
    for id in ids {
        let (status, doc) = hub.rest_shadow(&id, "default").await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["version"], UPDATES, "{id}: {doc}");
        assert_eq!(doc["state"]["reported"]["i"], UPDATES - 1, "{id}: {doc}");
    }
}
both!(pipelined_updates_keep_each_things_order);

/// `--dispatch-shards` refuses 0: a hub without a shard could dispatch nothing.
#[test]
fn zero_shards_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"))
        .args(["--dispatch-shards", "0"])
        .output()
        .expect("run the hub");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--dispatch-shards"), "{stderr}");
}
