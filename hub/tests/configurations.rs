//! Configurations (S-11, D-47..D-50; issue 19 item 1) against the real `iothub` binary over
//! real HTTP and MQTT on loopback, with a real SQLite file: a rollout over 1,000 things reaches
//! exactly the 500 that match, things re-tagged into the target get the patch within 2 s, the
//! success counts follow what simulated things report, overlaps resolve by priority then name,
//! a SIGKILL mid-rollout loses nothing, and a store failure is reported and recovered from.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

/// Generous bound for a whole rollout on a loaded 2-core CI machine.
const ROLLOUT: Duration = Duration::from_secs(60);

/// The counts of a configuration.
async fn counts(hub: &Hub, name: &str) -> Value {
    let (status, body) = hub.get(&format!("/configurations/{name}")).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["counts"].clone()
}

/// Polls until `check` holds on the configuration's counts; panics with the last counts.
async fn wait_counts(
    hub: &Hub,
    name: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let started = Instant::now();
    while started.elapsed() < within {
        last = counts(hub, name).await;
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("counts of {name} not reached within {within:?}: {last}");
}

/// Ids of the things an S-9.4 query matches (all pages).
async fn query_ids(hub: &Hub, condition: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for page in 0.. {
        let (status, body) = hub
            .post(
                &format!("/things/query?pageIndex={page}&pageSize=1000"),
                json!({"query": format!("SELECT * FROM things WHERE {condition}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let content = body["data"]["content"].as_array().expect("content").clone();
        ids.extend(
            content
                .iter()
                .map(|t| t["thingId"].as_str().expect("thingId").to_owned()),
        );
        if content.len() < 1000 {
            break;
        }
    }
    ids.sort();
    ids
}

/// A simulated thing: connects, reads its desired `telemetryInterval` and reports it.
async fn report_desired_interval(hub: &Hub, id: &str, secret: &str) {
    let mut client = hub.connect_thing(Proto::V5, id, secret).await;
    let rc = client
        .subscribe(&format!("{}/#", thing_topic(id)))
        .await
        .expect("subscribe own topics");
    assert!(rc < 0x80, "own T/# refused: {rc:#x}");
    let (ok, doc) = client.get(id, "default").await;
    assert!(ok, "get of {id}: {doc}");
    let interval = doc["state"]["desired"]["telemetryInterval"].clone();
    assert!(interval.is_number(), "{id} has no desired interval: {doc}");
    let (ok, reply) = client
        .update(
            id,
            "default",
            json!({"state": {"reported": {"telemetryInterval": interval}}}),
        )
        .await;
    assert!(ok, "report of {id}: {reply}");
    client.disconnect().await;
}

/// Must-show of issue 19 item 1: 1,000 things, half in building b1; the configuration applies
/// to exactly those 500; 100 things re-tagged into b1 get it within 2 s; success counts reach
/// 600 as the simulated things report; `/metrics` shows the same counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_rollout_reaches_exactly_the_matching_things() {
    let hub = Hub::start_args(&["--configuration-sweep-ms", "200"]);
    let run = unique("cfg");
    let things: Vec<(String, Value)> = (0..1000)
        .map(|i| {
            let building = if i % 2 == 0 { "b1" } else { "b2" };
            (
                format!("{run}-{i:04}"),
                json!({"location": {"building": building}}),
            )
        })
        .collect();
    let secrets = hub.create_tagged_things(&things).await;

    let (status, body) = hub
        .post(
            "/configurations",
            json!({
                "name": "telemetry",
                "targetCondition": "tags.location.building = 'b1'",
                "priority": 10,
                "desired": {"telemetryInterval": 15},
                "successCondition": "state.reported.telemetryInterval = 15",
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    wait_counts(&hub, "telemetry", ROLLOUT, |c| {
        c["targeted"] == 500 && c["applied"] == 500
    })
    .await;
    let c = counts(&hub, "telemetry").await;
    assert_eq!(
        c,
        json!({"targeted": 500, "applied": 500, "succeeded": 0, "failed": 0, "pending": 0})
    );
    // Exactly the b1 things hold the patch, checked through the query language, not the engine.
    let b1 = query_ids(&hub, "tags.location.building = 'b1'").await;
    let patched = query_ids(&hub, "state.desired.telemetryInterval = 15").await;
    assert_eq!(b1.len(), 500);
    assert_eq!(
        patched, b1,
        "the patch reached other things than the targeted ones"
    );

    // 100 b2 things move into b1.
    let moved: Vec<String> = things
        .iter()
        .filter(|(_, t)| t["location"]["building"] == "b2")
        .take(100)
        .map(|(id, _)| id.clone())
        .collect();
    futures::stream::iter(moved.iter())
        .for_each_concurrent(16, |id| {
            let hub = &hub;
            async move {
                let (status, body) = hub
                    .patch(
                        &format!("/things/{id}/tags"),
                        json!({"tags": {"location": {"building": "b1"}}}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        })
        .await;
    let retagged = Instant::now();
    let mut late = Vec::new();
    while retagged.elapsed() < Duration::from_secs(10) {
        late = query_ids(
            &hub,
            "tags.location.building = 'b1' AND state.desired.telemetryInterval IS NULL",
        )
        .await;
        if late.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = retagged.elapsed();
    println!("100 re-tagged things received the patch {took:?} after the last re-tag");
    assert!(late.is_empty(), "not patched: {late:?}");
    assert!(
        took < Duration::from_secs(2),
        "re-tagged things patched after {took:?}"
    );
    wait_counts(&hub, "telemetry", ROLLOUT, |c| c["applied"] == 600).await;

    // The simulated things report what they were told.
    let patched = query_ids(&hub, "state.desired.telemetryInterval = 15").await;
    assert_eq!(patched.len(), 600);
    futures::stream::iter(patched.iter())
        .for_each_concurrent(16, |id| {
            let hub = &hub;
            let secret = secrets[id].clone();
            async move { report_desired_interval(hub, id, &secret).await }
        })
        .await;
    wait_counts(&hub, "telemetry", ROLLOUT, |c| c["succeeded"] == 600).await;
    let c = counts(&hub, "telemetry").await;
    assert_eq!(
        c,
        json!({"targeted": 600, "applied": 600, "succeeded": 600, "failed": 0, "pending": 0})
    );

    // The thing records which configuration applied which keys; untargeted things have none.
    let (status, body) = hub
        .get(&format!("/things/{}/configurations", moved[0]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["data"][0]["configuration"], "telemetry");
    assert_eq!(body["data"][0]["keys"], json!(["telemetryInterval"]));
    assert_eq!(body["data"][0]["status"], "applied");
    let untargeted = query_ids(&hub, "tags.location.building = 'b2'").await;
    let (status, body) = hub
        .get(&format!("/things/{}/configurations", untargeted[0]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!([]), "{body}");
    let (status, body) = hub.get("/things/no-such-thing/configurations").await;
    assert_eq!(status, 404, "{body}");

    let (status, _, text) = hub.get_text("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "iothub_configuration_things{configuration=\"telemetry\",status=\"targeted\"} 600",
        "iothub_configuration_things{configuration=\"telemetry\",status=\"applied\"} 600",
        "iothub_configuration_things{configuration=\"telemetry\",status=\"succeeded\"} 600",
        "iothub_configuration_things{configuration=\"telemetry\",status=\"pending\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }

    // A thing that stops matching keeps what it got (the configuration does not remove).
    let (status, _) = hub
        .patch(
            &format!("/things/{}/tags", moved[0]),
            json!({"tags": {"location": {"building": "b3"}}}),
        )
        .await;
    assert_eq!(status, 200);
    wait_counts(&hub, "telemetry", ROLLOUT, |c| c["targeted"] == 599).await;
    let (_, doc) = hub.rest_shadow(&moved[0], "default").await;
    assert_eq!(doc["state"]["desired"]["telemetryInterval"], 15, "{doc}");
}

/// Creates a configuration, asserting 201.
async fn create_config(hub: &Hub, body: Value) {
    let (status, reply) = hub.post("/configurations", body).await;
    assert_eq!(status, 201, "{reply}");
}

/// The desired state of a thing's default shadow.
async fn desired(hub: &Hub, id: &str) -> Value {
    let (status, doc) = hub.rest_shadow(id, "default").await;
    assert_eq!(status, 200, "{doc}");
    doc["state"]["desired"].clone()
}

/// D-48: two (three) overlapping configurations resolve on every thing by priority, then name;
/// deleting the winner hands its keys to the next; D-49: `removeOnUnmatch` deletes the keys of a
/// thing that stops matching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d48_overlaps_resolve_by_priority_then_name() {
    let hub = Hub::start_args(&["--configuration-sweep-ms", "100"]);
    let run = unique("ovl");
    let things: Vec<(String, Value)> = (0..40)
        .map(|i| {
            let tier = if i % 2 == 0 { "gold" } else { "basic" };
            (format!("{run}-{i:02}"), json!({"site": "s1", "tier": tier}))
        })
        .collect();
    hub.create_tagged_things(&things).await;
    create_config(
        &hub,
        json!({"name": "base", "targetCondition": "tags.site = 's1'",
        "priority": 1, "desired": {"interval": 60, "mode": "eco"}}),
    )
    .await;
    create_config(
        &hub,
        json!({"name": "gold", "targetCondition": "tags.tier = 'gold'",
        "priority": 10, "desired": {"interval": 5}, "removeOnUnmatch": true}),
    )
    .await;
    // Same priority as `base`: the smaller name owns `mode`.
    create_config(
        &hub,
        json!({"name": "alpha", "targetCondition": "tags.site = 's1'",
        "priority": 1, "desired": {"mode": "perf"}}),
    )
    .await;
    for name in ["base", "gold", "alpha"] {
        let want = if name == "gold" { 20 } else { 40 };
        wait_counts(&hub, name, ROLLOUT, |c| {
            c["targeted"] == want && c["applied"] == want && c["pending"] == 0
        })
        .await;
    }
    for (id, tags) in &things {
        let gold = tags["tier"] == "gold";
        let d = desired(&hub, id).await;
        assert_eq!(
            d,
            json!({"interval": if gold { 5 } else { 60 }, "mode": "perf"}),
            "{id}"
        );
        let (_, body) = hub.get(&format!("/things/{id}/configurations")).await;
        let keys: BTreeMap<String, Value> = body["data"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| {
                (
                    r["configuration"].as_str().unwrap_or("").to_owned(),
                    r["keys"].clone(),
                )
            })
            .collect();
        let mut want = BTreeMap::from([
            ("alpha".to_owned(), json!(["mode"])),
            (
                "base".to_owned(),
                json!(if gold { json!([]) } else { json!(["interval"]) }),
            ),
        ]);
        if gold {
            want.insert("gold".to_owned(), json!(["interval"]));
        }
        assert_eq!(keys, want, "{id}");
    }

    // A gold thing becomes basic: `gold` removes its key, and `base` now owns `interval`.
    let leaver = &things[0].0;
    let (status, _) = hub
        .patch(
            &format!("/things/{leaver}/tags"),
            json!({"tags": {"tier": "basic"}}),
        )
        .await;
    assert_eq!(status, 200);
    let found = eventually(Duration::from_secs(10), || async {
        let d = desired(&hub, leaver).await;
        (d == json!({"interval": 60, "mode": "perf"})).then_some(d)
    })
    .await;
    assert!(found.is_some(), "leaver: {}", desired(&hub, leaver).await);

    // Deleting the winner hands `interval` to `base` on every gold thing.
    let (status, body) = hub.delete("/configurations/gold").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = hub.get("/configurations/gold").await;
    assert_eq!(status, 404);
    wait_counts(&hub, "base", ROLLOUT, |c| c["applied"] == 40).await;
    let found = eventually(ROLLOUT, || async {
        // Every thing of the site holds `base`'s interval again (`interval` is an SQL keyword,
        // hence quoted).
        let at_60 = query_ids(&hub, "tags.site = 's1' AND state.desired.\"interval\" = 60").await;
        (at_60.len() == 40).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "some things kept the deleted configuration's value"
    );
}

/// D-50: a SIGKILL mid-rollout loses nothing; after the restart every thing is applied once
/// and the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d50_sigkill_mid_rollout_loses_nothing() {
    let mut hub = Hub::start_args(&[
        "--configuration-rate",
        "100",
        "--configuration-sweep-ms",
        "100",
    ]);
    let run = unique("kill");
    let things: Vec<(String, Value)> = (0..1000)
        .map(|i| (format!("{run}-{i:04}"), json!({"fleet": "k"})))
        .collect();
    hub.create_tagged_things(&things).await;
    create_config(
        &hub,
        json!({"name": "rollout", "targetCondition": "tags.fleet = 'k'",
        "desired": {"fw": "2.0"}}),
    )
    .await;
    // 1000 things at 100/s take 10 s: kill once some but not all are applied.
    wait_counts(&hub, "rollout", ROLLOUT, |c| {
        c["applied"].as_u64().unwrap_or(0) >= 200
    })
    .await;
    let before = counts(&hub, "rollout").await;
    println!("killed at {before}");
    assert!(before["applied"].as_u64().unwrap_or(0) < 1000, "{before}");
    tokio::task::block_in_place(|| hub.kill());
    tokio::task::block_in_place(|| hub.restart());
    wait_counts(&hub, "rollout", ROLLOUT, |c| c["applied"] == 1000).await;
    let after = counts(&hub, "rollout").await;
    assert_eq!(
        after,
        json!({"targeted": 1000, "applied": 1000, "succeeded": 0, "failed": 0, "pending": 0})
    );
    assert_eq!(
        query_ids(&hub, "state.desired.fw = '2.0'").await.len(),
        1000
    );
}

/// A store failure while the configuration is created is the caller's 503 with nothing stored;
/// while the engine records what it applied, the things stay pending (never counted applied)
/// until storage works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d50_store_faults_are_reported_and_recovered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("fault-rules");
    std::fs::write(&rules, "").expect("rules");
    let rules_env = rules.display().to_string();
    let hub = Hub::start_with_env(
        dir.path(),
        &["--configuration-sweep-ms", "100"],
        &[("IOTHUB_FAULT_FILE", rules_env.as_str())],
    );
    let run = unique("flt");
    let things: Vec<(String, Value)> = (0..10)
        .map(|i| (format!("{run}-{i}"), json!({"f": 1})))
        .collect();
    hub.create_tagged_things(&things).await;
    let body = json!({"name": "faulty", "targetCondition": "tags.f = 1", "desired": {"x": 1}});

    std::fs::write(&rules, "configurations commit").expect("rules");
    let (status, reply) = hub.post("/configurations", body.clone()).await;
    assert_eq!(status, 503, "{reply}");
    std::fs::write(&rules, "").expect("rules");
    let (status, reply) = hub.get("/configurations/faulty").await;
    assert_eq!(status, 404, "nothing stored after a 503: {reply}");

    // The records' write has a third statement (10 things); the creation has two.
    std::fs::write(&rules, "configurations statement 3").expect("rules");
    create_config(&hub, body).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = counts(&hub, "faulty").await;
    assert_eq!(c["applied"], 0, "{c}");
    std::fs::write(&rules, "").expect("rules");
    wait_counts(&hub, "faulty", ROLLOUT, |c| {
        c["applied"] == 10 && c["pending"] == 0
    })
    .await;
}

/// D-47: invalid configurations are refused with 400 (and a taken name with 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d47_invalid_configurations_are_refused() {
    let hub = Hub::start();
    let ok = json!({"name": "c1", "targetCondition": "tags.a = 1", "desired": {"k": 1}});
    create_config(&hub, ok.clone()).await;
    let (status, body) = hub.post("/configurations", ok).await;
    assert_eq!(status, 409, "{body}");
    let big = "x".repeat(iothub_spec::limits::MAX_CONFIGURATION_DESIRED);
    for bad in [
        json!({"name": "bad name", "targetCondition": "tags.a = 1", "desired": {"k": 1}}),
        json!({"targetCondition": "tags.a = 1", "desired": {"k": 1}}),
        json!({"name": "c2", "targetCondition": "tags.a = ", "desired": {"k": 1}}),
        json!({"name": "c2", "targetCondition": "tags.a = 1 ORDER BY thingId", "desired": {"k": 1}}),
        json!({"name": "c2", "targetCondition": "tags.a = 1) OR (tags.b = 2", "desired": {"k": 1}}),
        json!({"name": "c2", "targetCondition": "tags.a = 1", "desired": {}}),
        json!({"name": "c2", "targetCondition": "tags.a = 1", "desired": {"k": big}}),
        json!({"name": "c2", "targetCondition": "tags.a = 1", "desired": {"k": 1}, "successCondition": "nope"}),
        json!({"name": "c2", "targetCondition": "tags.a = 1", "desired": {"k": 1}, "other": 1}),
    ] {
        let (status, body) = hub.post("/configurations", bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
    }
    let (status, body) = hub.get("/configurations").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
}

/// CPU seconds (user + system) the process `pid` has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// A configuration rolled out to a whole fleet at the default rate: every thing ends applied;
/// prints the time until all are applied and the hub's CPU time meanwhile. CI runs it over 1,000
/// things; BENCHMARKS.md's 10,000-thing figure comes from
/// `IOTHUB_BENCH_THINGS=10000 cargo test --workspace --test configurations rollout_to_a_fleet -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_to_a_fleet_applies_everywhere() {
    let count: usize = std::env::var("IOTHUB_BENCH_THINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let hub = Hub::start();
    let run = unique("bench");
    let things: Vec<(String, Value)> = (0..count)
        .map(|i| (format!("{run}-{i:05}"), json!({"fleet": "bench"})))
        .collect();
    hub.create_tagged_things(&things).await;
    let cpu = cpu_seconds(hub.pid());
    let started = Instant::now();
    create_config(
        &hub,
        json!({"name": "bench", "targetCondition": "tags.fleet = 'bench'",
        "desired": {"telemetryInterval": 15, "mode": "eco"}}),
    )
    .await;
    let counts = wait_counts(&hub, "bench", Duration::from_secs(600), |c| {
        c["applied"] == count
    })
    .await;
    assert_eq!(counts["targeted"], count, "{counts}");
    let took = started.elapsed();
    let used = cpu_seconds(hub.pid()) - cpu;
    println!(
        "rollout to {count} things: all applied after {:.2} s, hub CPU {used:.2} s ({:.0}% of one core)",
        took.as_secs_f64(),
        100.0 * used / took.as_secs_f64()
    );
}
