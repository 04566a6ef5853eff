//! End-to-end tests of OTA jobs (S-7, S-9.6) against the real `iothub` binary: rollouts over
//! many things with offline, failing and canceled ones, restarts mid-rollout, refused result
//! sequences, pacing, timeouts and retries, and the REST validation of job bodies.
//!
//! Devices are plain MQTT clients that speak S-7 as written in docs/spec.md.

#[path = "../support/mod.rs"]
mod support;

mod pacing;
mod refusals;
mod rollout;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

fn task_topic(id: &str) -> String {
    format!("{}/ota/task", thing_topic(id))
}

fn result_topic(id: &str) -> String {
    format!("{}/ota/task/result", thing_topic(id))
}

/// A task body for `POST /ota/jobs`.
fn task_body() -> Value {
    json!({
        "type": "app",
        "meta": {"version": "2.0.1", "md5": "0123456789abcdef0123456789abcdef", "content-length": 1024},
        "fileUrl": "http://fw.example/app-2.0.1.bin"
    })
}

/// Registers `n` things with known secrets in one batch; returns `(id, secret)`.
async fn things(hub: &Hub, prefix: &str, n: usize) -> Vec<(String, String)> {
    let list: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                unique(&format!("{prefix}{i}")),
                format!("secret-{prefix}-{i}-xyz"),
            )
        })
        .collect();
    let items: Vec<Value> = list
        .iter()
        .map(|(id, pw)| json!({"thingId": id, "password": pw}))
        .collect();
    let (s, b) = hub.post("/things/batch", json!({ "things": items })).await;
    assert_eq!(s, 200, "{b}");
    for item in b["data"].as_array().expect("batch results") {
        assert_eq!(item["code"], 201, "{item}");
    }
    list
}

/// Connects a thing and subscribes it to its `T/ota/task`.
async fn device(hub: &Hub, proto: Proto, id: &str, secret: &str) -> Client {
    let mut c = hub.connect_thing(proto, id, secret).await;
    let rc = c.subscribe(&task_topic(id)).await.expect("subscribe");
    assert!(rc < 0x80, "T/ota/task refused: {rc:#x}");
    c
}

/// Waits for the next OTA task and checks its S-7.1 shape.
async fn next_task(c: &mut Client, id: &str, within: Duration) -> Value {
    let t = c.expect_message(&task_topic(id), within).await;
    assert!(
        t["taskId"].as_str().is_some_and(|s| !s.is_empty()),
        "S-7.1 taskId: {t}"
    );
    assert!(
        t["clientToken"].as_str().is_some_and(|s| !s.is_empty()),
        "S-7.1 clientToken: {t}"
    );
    assert_eq!(t["type"], "app", "{t}");
    assert_eq!(t["meta"]["version"], "2.0.1", "{t}");
    assert_eq!(t["meta"]["content-length"], 1024, "{t}");
    assert_eq!(t["fileUrl"], "http://fw.example/app-2.0.1.bin", "{t}");
    t
}

/// Publishes an S-7.2 result for `task`, with `extra` fields merged in.
async fn report(c: &mut Client, id: &str, task: &Value, status: &str, extra: Value) {
    let mut body = json!({
        "clientToken": task["clientToken"],
        "taskId": task["taskId"],
        "status": status,
        "timestamp": now_ms(),
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    c.publish_json(&result_topic(id), &body).await;
}

async fn create_job(hub: &Hub, body: Value) -> String {
    let (s, b) = hub.post("/ota/jobs", body).await;
    assert_eq!(s, 201, "create job: {b}\n{}", hub.stderr());
    assert_eq!(b["code"], 201, "{b}");
    b["data"]["jobId"].as_str().expect("jobId").to_string()
}

async fn job(hub: &Hub, id: &str) -> Value {
    let (s, b) = hub.get(&format!("/ota/jobs/{id}")).await;
    assert_eq!(s, 200, "{b}");
    b["data"].clone()
}

/// Polls the job until `pred` holds; panics with the last view after `within`.
async fn wait_job(hub: &Hub, id: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let j = job(hub, id).await;
        if pred(&j) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job never matched: {j}\n{}",
            hub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn task(hub: &Hub, job_id: &str, thing: &str) -> Value {
    let (s, b) = hub.get(&format!("/ota/jobs/{job_id}/tasks/{thing}")).await;
    assert_eq!(s, 200, "{b}");
    b["data"].clone()
}

/// Every task of the job (pages of 20), in rollout order.
async fn all_tasks(hub: &Hub, job_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for page in 0.. {
        let (s, b) = hub
            .get(&format!(
                "/ota/jobs/{job_id}/tasks?pageIndex={page}&pageSize=20"
            ))
            .await;
        assert_eq!(s, 200, "{b}");
        let content = b["data"]["content"].as_array().expect("content").clone();
        let total = b["data"]["total"].as_u64().expect("total") as usize;
        let n = content.len();
        out.extend(content);
        if n < 20 {
            assert_eq!(out.len(), total, "paging covers every task");
            return out;
        }
    }
    unreachable!()
}

fn counts(j: &Value) -> [u64; 7] {
    let c = &j["counts"];
    [
        "queued",
        "sent",
        "ongoing",
        "done",
        "failed",
        "canceled",
        "timed_out",
    ]
    .map(|k| c[k].as_u64().unwrap_or_else(|| panic!("counts.{k} in {j}")))
}

fn statuses(transitions: &Value) -> Vec<String> {
    transitions
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["to"].as_str().expect("to").to_string())
        .collect()
}

/// What a simulated device does with its task.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// ongoing 50, then done.
    Done,
    /// ongoing 20, then failed with this code.
    Fail(u16),
    /// ongoing 30, then waits for the test to cancel its task; its late `done` is refused.
    Canceled,
}

async fn run_device(mut c: Client, id: String, plan: Plan, tx: mpsc::UnboundedSender<String>) {
    let t = next_task(&mut c, &id, Duration::from_secs(30)).await;
    match plan {
        Plan::Done => {
            report(&mut c, &id, &t, "ongoing", json!({"progress": 50})).await;
            report(&mut c, &id, &t, "done", json!({})).await;
        }
        Plan::Fail(code) => {
            report(&mut c, &id, &t, "ongoing", json!({"progress": 20})).await;
            report(
                &mut c,
                &id,
                &t,
                "failed",
                json!({"errCode": code, "errMsg": "checksum \"mismatch\""}),
            )
            .await;
        }
        Plan::Canceled => {
            report(&mut c, &id, &t, "ongoing", json!({"progress": 30})).await;
            let _ = tx.send(id.clone());
            // Keep the connection until the test has canceled the task, then finish anyway.
            let _ = c
                .wait_message(Duration::from_secs(3), |m| m.topic == "never")
                .await;
            report(&mut c, &id, &t, "done", json!({})).await;
        }
    }
    let _ = tx.send(format!("finished {id}"));
    // Stay connected: a disconnect must not matter to a finished task.
    let _ = c.wait_message(Duration::from_secs(30), |_| false).await;
}
