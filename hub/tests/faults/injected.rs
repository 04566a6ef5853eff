//! Write transactions failing at chosen steps, injected through the test build's
//! `IOTHUB_FAULT_FILE` (see `hub/src/store/fault.rs` for the rules). The group commit's steps
//! inside one batch (each of its statements) are covered deterministically by the store's unit
//! test `group_commit_fails_whole_at_every_step_and_recovers`; here every writer is driven end
//! to end over MQTT and REST.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::stream::{FLAGS, healthz};
use crate::support::*;

/// Which of the writes a rule makes fail: (shadows, things, OTA job creation).
fn fails(rule: &str) -> (bool, bool, bool) {
    let mut words = rule.split_whitespace();
    let who = words.next().unwrap_or_default();
    let step: Vec<&str> = words.collect();
    let any = who == "*";
    // A shadow update, a thing creation: one statement each. An OTA job creation: four
    // (check the targets, the job, its tasks, their first transitions).
    let statements = |n: u32| match step.as_slice() {
        ["statement", k] => k.parse::<u32>().is_ok_and(|k| k <= n),
        _ => true,
    };
    (
        (any || who == "shadows") && statements(1),
        (any || who == "things") && statements(1),
        (any || who == "ota") && statements(4),
    )
}

fn set_rules(file: &Path, rules: &str) {
    std::fs::write(file, rules).expect("write fault rules");
}

fn job_body(thing: &str) -> Value {
    json!({
        "targets": {"thingIds": [thing]},
        "task": {
            "type": "app",
            "meta": {"version": "2.0.1"},
            "fileUrl": "http://fw.example/app-2.0.1.bin"
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_failing_at_each_step_are_reported_never_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("fault-rules");
    set_rules(&rules, "");
    let rules_env = rules.display().to_string();
    let mut hub = Hub::start_with_env(
        dir.path(),
        FLAGS,
        &[("IOTHUB_FAULT_FILE", rules_env.as_str())],
    );
    let (thing, _secret, mut c) = hub.new_thing(Proto::V5, "inj").await;

    // What was acknowledged or refused, checked after the restart.
    // (version, n of `reported`, or None for a desired write) of every accepted shadow write.
    let mut accepted: Vec<(u64, Option<u64>)> = Vec::new();
    let mut created: BTreeMap<String, u16> = BTreeMap::new();
    let mut jobs: Vec<String> = Vec::new();
    let mut n = 0u64;

    for rule in [
        "* begin",
        "* statement 1",
        "* commit",
        "shadows commit",
        "things statement 1",
        "ota statement 2",
        "ota statement 4",
        "ota commit",
    ] {
        let (shadows_fail, things_fail, ota_fails) = fails(rule);
        set_rules(&rules, rule);

        // MQTT shadow update.
        n += 1;
        let (ok, reply) = c
            .update(&thing, "default", json!({"state": {"reported": {"n": n}}}))
            .await;
        if shadows_fail {
            assert!(!ok, "{rule}: update accepted: {reply}");
            assert_eq!(reply["code"], 503, "{rule}: {reply}");
        } else {
            assert!(ok, "{rule}: {reply}");
            accepted.push((reply["version"].as_u64().expect("version"), Some(n)));
        }

        // REST desired write to the same shadow.
        n += 1;
        let (status, body) = hub
            .put(
                &format!("/things/{thing}/shadows/default/state/desired"),
                json!({"state": {"desired": {"n": n}}}),
            )
            .await;
        assert_envelope(status, &body);
        if shadows_fail {
            assert_eq!(status, 503, "{rule}: {body}");
        } else {
            assert_eq!(status, 200, "{rule}: {body}");
            accepted.push((body["data"]["version"].as_u64().expect("version"), None));
        }

        // REST thing creation.
        let id = unique("inj-new");
        let (status, body) = hub.post("/things", json!({ "thingId": id })).await;
        assert_envelope(status, &body);
        assert_eq!(
            status,
            if things_fail { 503 } else { 201 },
            "{rule}: {body}"
        );
        created.insert(id, status);

        // REST OTA job creation.
        let (status, body) = hub.post("/ota/jobs", job_body(&thing)).await;
        assert_envelope(status, &body);
        if ota_fails {
            assert_eq!(status, 503, "{rule}: {body}");
        } else {
            assert_eq!(status, 201, "{rule}: {body}");
            jobs.push(body["data"]["jobId"].as_str().expect("jobId").to_owned());
        }

        // Health says why while every writer fails (the probe fails too).
        if rule.starts_with('*') {
            let (status, body) = healthz(&hub).await;
            assert_eq!(status, 503, "{rule}: {body}");
            let reason = body["data"]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("injected"), "{rule}: {body}");
            assert!(body["data"]["writeFailures"].as_u64() > Some(0), "{body}");
        }

        // The fault goes away: health comes back by itself, writes succeed again.
        set_rules(&rules, "");
        let back = eventually(Duration::from_secs(10), || async {
            (healthz(&hub).await.0 == 200).then_some(())
        })
        .await;
        assert!(
            back.is_some(),
            "{rule}: /healthz did not recover\n{}",
            hub.stderr()
        );
        n += 1;
        let (ok, reply) = c
            .update(&thing, "default", json!({"state": {"reported": {"n": n}}}))
            .await;
        assert!(ok, "{rule}: after the fault: {reply}");
        accepted.push((reply["version"].as_u64().expect("version"), Some(n)));
    }
    let (_, _, metrics) = hub.get_text("/metrics").await;
    assert!(metrics.contains("iothub_store_healthy 1\n"), "{metrics}");
    assert!(
        !metrics.contains("iothub_store_write_failures_total 0\n"),
        "{metrics}"
    );
    c.disconnect().await;

    tokio::task::block_in_place(|| hub.restart());
    // Versions count accepted writes only: a failed write never took a version.
    let versions: Vec<u64> = accepted.iter().map(|(v, _)| *v).collect();
    let expected: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(versions, expected, "accepted versions are consecutive");
    let (version, n) = *accepted.last().expect("something accepted");
    let (status, doc) = hub.rest_shadow(&thing, "default").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["version"].as_u64(), Some(version), "{doc}");
    assert_eq!(doc["state"]["reported"]["n"].as_u64(), n, "{doc}");
    for (id, status) in &created {
        let (now, _) = hub.rest_thing(id).await;
        assert_eq!(
            now,
            if *status == 201 { 200 } else { 404 },
            "{id} answered {status}"
        );
    }
    for job in &jobs {
        let (status, body) = hub.get(&format!("/ota/jobs/{job}")).await;
        assert_eq!(
            status, 200,
            "job {job} was created (201) but is gone: {body}"
        );
    }
}
