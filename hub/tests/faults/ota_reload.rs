//! The OTA engine after a turn it could not store: it goes back to what the store has, so a
//! cancel refused with 503 can be made again (not 409 "ended" for a job the store still runs) and
//! a task whose send was not stored is sent once writes work again, without a reconnect.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::stream::FLAGS;
use crate::support::*;

fn job_body(thing: &str) -> Value {
    json!({
        "targets": {"thingIds": [thing]},
        "task": {
            "type": "app",
            "meta": {"version": "3.0.0"},
            "fileUrl": "http://fw.example/app-3.0.0.bin"
        }
    })
}

fn set_rules(file: &Path, rules: &str) {
    std::fs::write(file, rules).expect("write fault rules");
}

async fn create_job(hub: &Hub, thing: &str) -> String {
    let (status, body) = hub.post("/ota/jobs", job_body(thing)).await;
    assert_eq!(status, 201, "{body}");
    body["data"]["jobId"].as_str().expect("jobId").to_owned()
}

async fn job_status(hub: &Hub, job: &str) -> String {
    let (status, body) = hub.get(&format!("/ota/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["status"].as_str().expect("status").to_owned()
}

async fn task_status(hub: &Hub, job: &str, thing: &str) -> String {
    let (status, body) = hub.get(&format!("/ota/jobs/{job}/tasks/{thing}")).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no task status in {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ota_engine_goes_back_to_the_store_after_a_failed_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("fault-rules");
    set_rules(&rules, "");
    let rules_env = rules.display().to_string();
    let mut hub = Hub::start_with_env(
        dir.path(),
        FLAGS,
        &[("IOTHUB_FAULT_FILE", rules_env.as_str())],
    );
    // Two things, offline for now: their tasks wait `queued`.
    let (a, b) = (unique("ota-a"), unique("ota-b"));
    hub.create_thing(&a).await;
    let b_secret = hub.create_thing(&b).await;
    let job_a = create_job(&hub, &a).await;
    let job_b = create_job(&hub, &b).await;

    // The engine's writes fail (every attempt of the turn): the cancel is refused...
    set_rules(&rules, "ota begin");
    let (status, body) = hub
        .post(&format!("/ota/jobs/{job_a}/cancel"), json!({}))
        .await;
    assert_envelope(status, &body);
    assert_eq!(status, 503, "cancel while OTA writes fail: {body}");
    // ... and b's task, sent when b subscribes, cannot be stored, so it is not published.
    let mut cb = hub.connect_thing(Proto::V5, &b, &b_secret).await;
    let rc = cb
        .subscribe(&format!("{}/#", thing_topic(&b)))
        .await
        .expect("subscribe");
    assert!(rc < 0x80);
    let task_topic = format!("{}/ota/task", thing_topic(&b));
    assert!(
        !cb.sees(&task_topic, Duration::from_secs(2)).await,
        "a task was published whose send the store does not have"
    );
    assert_eq!(job_status(&hub, &job_a).await, "running");
    assert_eq!(task_status(&hub, &job_b, &b).await, "queued");

    // Writes work again: b gets its task without reconnecting, and the cancel can be made
    // again (the engine still had job a, as the store does).
    set_rules(&rules, "");
    let task = cb.expect_message(&task_topic, STEP).await;
    assert!(
        task.to_string().contains("3.0.0"),
        "the task of job b: {task}"
    );
    let (status, body) = hub
        .post(&format!("/ota/jobs/{job_a}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "cancel again after the failed one: {body}");
    assert_eq!(body["data"]["status"], "canceled", "{body}");
    assert_eq!(task_status(&hub, &job_b, &b).await, "sent");
    assert!(
        hub.stderr()
            .contains("loading the jobs again from the store"),
        "the failed turn is logged\n{}",
        hub.stderr()
    );

    // What the hub answered is what it stored.
    cb.disconnect().await;
    tokio::task::block_in_place(|| hub.restart());
    assert_eq!(job_status(&hub, &job_a).await, "canceled");
    assert_eq!(task_status(&hub, &job_b, &b).await, "sent");
}
