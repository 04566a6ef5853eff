//! End-to-end tests of OTA jobs (S-7, S-9.6) against the real `iothub` binary: rollouts over
//! many things with offline, failing and canceled ones, restarts mid-rollout, refused result
//! sequences, pacing, timeouts and retries, and the REST validation of job bodies.
//!
//! Devices are plain MQTT clients that speak S-7 as written in SPEC.md.

mod support;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_over_50_things_ends_with_exact_counts() {
    let hub = Hub::start();
    let list = things(&hub, "r", 50).await;
    // 0..30 done, 30..35 fail 1403, 35 canceled mid-way, 36..40 done: online from the start.
    // 40..48 done, 48..50 fail 1400: offline until the online ones have been sent their tasks.
    let plan = |i: usize| match i {
        30..=34 => Plan::Fail(1403),
        35 => Plan::Canceled,
        48 | 49 => Plan::Fail(1400),
        _ => Plan::Done,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut online = Vec::new();
    for (i, (id, pw)) in list.iter().enumerate().take(40) {
        let proto = if i % 2 == 0 { Proto::V311 } else { Proto::V5 };
        online.push((device(&hub, proto, id, pw).await, id.clone(), plan(i)));
    }
    let ids: Vec<&String> = list.iter().map(|(id, _)| id).collect();
    let job_id = create_job(
        &hub,
        json!({"targets": {"thingIds": ids}, "task": task_body(), "maxPerMinute": 6000, "timeoutMinutes": 5}),
    )
    .await;
    let j = job(&hub, &job_id).await;
    assert_eq!(j["total"], 50, "{j}");
    assert_eq!(j["status"], "running", "{j}");
    for (c, id, p) in online {
        tokio::spawn(run_device(c, id, p, tx.clone()));
    }

    // The cancel-mid-way device reports ongoing and waits; cancel its task.
    let canceled = loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("device progress")
            .expect("channel");
        if !msg.starts_with("finished ") {
            break msg;
        }
    };
    assert_eq!(canceled, list[35].0);
    let (s, b) = hub
        .post(
            &format!("/ota/jobs/{job_id}/tasks/{canceled}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["status"], "canceled", "{b}");
    let (s, b) = hub
        .post(
            &format!("/ota/jobs/{job_id}/tasks/{canceled}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(s, 409, "a canceled task cannot be canceled again: {b}");

    // Every online thing has its task; the offline ones stay queued (they never got one).
    let j = wait_job(&hub, &job_id, STEP, |j| {
        counts(j)[3] + counts(j)[4] + counts(j)[5] >= 40
    })
    .await;
    assert_eq!(counts(&j)[0], 10, "offline things stay queued: {j}");
    for (id, _) in &list[40..] {
        let t = task(&hub, &job_id, id).await;
        assert_eq!(t["status"], "queued", "{t}");
        assert_eq!(statuses(&t["transitions"]), ["queued"], "{t}");
    }

    // The offline things connect now and get their tasks.
    for (i, (id, pw)) in list.iter().enumerate().skip(40) {
        let c = device(&hub, Proto::V311, id, pw).await;
        tokio::spawn(run_device(c, id.clone(), plan(i), tx.clone()));
    }
    let j = wait_job(&hub, &job_id, Duration::from_secs(30), |j| {
        j["status"] == "completed"
    })
    .await;
    // The canceled device's late `done` (3 s after its cancel) must not count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let j2 = job(&hub, &job_id).await;
    assert_eq!(
        counts(&j2),
        counts(&j),
        "nothing changes after the job completed"
    );
    assert_eq!(
        counts(&j),
        [0, 0, 0, 42, 7, 1, 0],
        "queued sent ongoing done failed canceled timed_out: {j}"
    );
    assert_eq!(j["total"], 50, "{j}");
    assert_eq!(j["progress"], 100.0, "{j}");

    // Per-thing status and history.
    let tasks = all_tasks(&hub, &job_id).await;
    assert_eq!(tasks.len(), 50);
    let by_id: HashMap<&str, &Value> = tasks
        .iter()
        .map(|t| (t["thingId"].as_str().expect("thingId"), t))
        .collect();
    for (i, (id, _)) in list.iter().enumerate() {
        let t = by_id[id.as_str()];
        match plan(i) {
            Plan::Done => {
                assert_eq!(t["status"], "done", "{t}");
                assert_eq!(t["progress"], 100, "{t}");
            }
            Plan::Fail(code) => {
                assert_eq!(t["status"], "failed", "{t}");
                assert_eq!(t["errCode"], code, "{t}");
                assert_eq!(t["errMsg"], "checksum \"mismatch\"", "{t}");
            }
            Plan::Canceled => assert_eq!(t["status"], "canceled", "{t}"),
        }
    }
    let t = task(&hub, &job_id, &list[0].0).await;
    assert_eq!(
        statuses(&t["transitions"]),
        ["queued", "sent", "ongoing", "done"],
        "{t}"
    );
    let times: Vec<u64> = t["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|x| x["at"].as_u64().expect("at"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "transition times in order: {t}"
    );
    let t = task(&hub, &job_id, &list[35].0).await;
    assert_eq!(
        statuses(&t["transitions"]),
        ["queued", "sent", "ongoing", "canceled"],
        "{t}"
    );
    let t = task(&hub, &job_id, &list[30].0).await;
    assert_eq!(t["transitions"][3]["errCode"], 1403, "{t}");

    // Filtered pages.
    let (s, b) = hub
        .get(&format!(
            "/ota/jobs/{job_id}/tasks?status=failed&pageSize=100"
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["total"], 7, "{b}");
    assert!(
        b["data"]["content"]
            .as_array()
            .expect("content")
            .iter()
            .all(|t| t["status"] == "failed")
    );
    // A completed job cannot be canceled.
    let (s, b) = hub
        .post(&format!("/ota/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 409, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_rollout_loses_no_task_state() {
    let mut hub = Hub::start();
    let list = things(&hub, "k", 12).await;
    let mut clients: Vec<Client> = Vec::new();
    for (id, pw) in &list {
        clients.push(device(&hub, Proto::V311, id, pw).await);
    }
    // 120 per minute: one task every 500 ms, the rollout takes ~6 s.
    let ids: Vec<&String> = list.iter().map(|(id, _)| id).collect();
    let job_id = create_job(
        &hub,
        json!({"targets": {"thingIds": ids}, "task": task_body(), "maxPerMinute": 120, "timeoutMinutes": 5}),
    )
    .await;
    // Devices answer `done` at once, so between two sends nothing is in flight.
    let answer = |mut c: Client, id: String| async move {
        loop {
            let Some(m) = c
                .wait_message(Duration::from_secs(60), |m| m.topic == task_topic(&id))
                .await
            else {
                return;
            };
            let t = m.json();
            report(&mut c, &id, &t, "done", json!({})).await;
        }
    };
    let mut running = Vec::new();
    for (c, (id, _)) in clients.into_iter().zip(&list) {
        running.push(tokio::spawn(answer(c, id.clone())));
    }
    let before = wait_job(&hub, &job_id, Duration::from_secs(30), |j| {
        let c = counts(j);
        c[3] >= 4 && c[1] + c[2] == 0
    })
    .await;
    let snapshot = all_tasks(&hub, &job_id).await;
    let mut histories = HashMap::new();
    for t in &snapshot {
        let id = t["thingId"].as_str().expect("thingId").to_string();
        histories.insert(
            id.clone(),
            task(&hub, &job_id, &id).await["transitions"].clone(),
        );
    }

    hub.restart(); // SIGKILL, then the same data directory.
    for r in running {
        r.abort();
    }

    // Nothing recorded before the kill is lost: each history is a prefix of the new one.
    let after = job(&hub, &job_id).await;
    assert_eq!(after["status"], "running", "{after}\n{before}");
    assert!(counts(&after)[3] >= counts(&before)[3], "{after}\n{before}");
    for (id, old) in &histories {
        let new = task(&hub, &job_id, id).await["transitions"].clone();
        let (old, new) = (old.as_array().expect("old"), new.as_array().expect("new"));
        assert!(
            new.len() >= old.len() && new[..old.len()] == old[..],
            "{id}: {old:?} vs {new:?}"
        );
    }

    // Devices reconnect to the new hub; the rollout resumes and completes.
    let mut running = Vec::new();
    for (id, pw) in &list {
        let c = device(&hub, Proto::V5, id, pw).await;
        running.push(tokio::spawn(answer(c, id.clone())));
    }
    let j = wait_job(&hub, &job_id, Duration::from_secs(30), |j| {
        j["status"] == "completed"
    })
    .await;
    assert_eq!(counts(&j), [0, 0, 0, 12, 0, 0, 0], "{j}");
    for t in all_tasks(&hub, &job_id).await {
        let id = t["thingId"].as_str().expect("thingId");
        let d = task(&hub, &job_id, id).await;
        assert_eq!(
            statuses(&d["transitions"]),
            ["queued", "sent", "done"],
            "one send each: {d}"
        );
    }
    for r in running {
        r.abort();
    }

    // A graceful restart keeps the completed job as it is.
    let status = hub.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    hub.restart();
    let j2 = job(&hub, &job_id).await;
    assert_eq!(j2["status"], "completed", "{j2}");
    assert_eq!(counts(&j2), counts(&j), "{j2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_result_sequences_are_refused_without_corrupting_counts() {
    let hub = Hub::start();
    let list = things(&hub, "b", 3).await;
    let (a, a_pw) = &list[0];
    let (q, q_pw) = &list[1];
    let (outsider, o_pw) = &list[2];
    let mut ca = device(&hub, Proto::V5, a, a_pw).await;
    // One task per minute: `a` gets its task now, `q` stays queued for a minute.
    let job_id = create_job(
        &hub,
        json!({"targets": {"thingIds": [a, q]}, "task": task_body(), "maxPerMinute": 1}),
    )
    .await;
    let t = next_task(&mut ca, a, STEP).await;
    let mut cq = device(&hub, Proto::V311, q, q_pw).await;
    let mut co = device(&hub, Proto::V311, outsider, o_pw).await;

    // `done` from a thing whose task was not sent yet (it can only guess the ids).
    let guessed = json!({"taskId": format!("{job_id}-1"), "clientToken": "guess"});
    report(&mut cq, q, &guessed, "done", json!({})).await;
    // A result from a thing with no task at all.
    report(&mut co, outsider, &t, "done", json!({})).await;
    // Unknown task id, wrong token, malformed bodies.
    report(
        &mut ca,
        a,
        &json!({"taskId": "nope", "clientToken": t["clientToken"]}),
        "done",
        json!({}),
    )
    .await;
    report(
        &mut ca,
        a,
        &json!({"taskId": t["taskId"], "clientToken": "wrong"}),
        "done",
        json!({}),
    )
    .await;
    ca.publish_json(
        &result_topic(a),
        &json!({"taskId": t["taskId"], "status": "done"}),
    )
    .await;
    let rc = ca
        .publish(&result_topic(a), b"not json".to_vec())
        .await
        .expect("publish");
    assert!(rc < 0x80);
    // A valid ongoing, then progress going backwards and out of range.
    report(&mut ca, a, &t, "ongoing", json!({"progress": 60})).await;
    report(&mut ca, a, &t, "ongoing", json!({"progress": 40})).await;
    report(&mut ca, a, &t, "ongoing", json!({"progress": 101})).await;
    report(&mut ca, a, &t, "ongoing", json!({"progress": 70})).await;
    let j = wait_job(&hub, &job_id, STEP, |j| counts(j)[2] == 1).await;
    assert_eq!(counts(&j), [1, 0, 1, 0, 0, 0, 0], "{j}");
    let d = wait_until_task(&hub, &job_id, a, |d| d["progress"] == 70).await;
    assert_eq!(
        statuses(&d["transitions"]),
        ["queued", "sent", "ongoing"],
        "{d}"
    );
    // done, then anything after the final state.
    report(&mut ca, a, &t, "done", json!({})).await;
    report(&mut ca, a, &t, "failed", json!({"errCode": 500})).await;
    report(&mut ca, a, &t, "ongoing", json!({"progress": 99})).await;
    report(&mut ca, a, &t, "canceled", json!({})).await;
    let j = wait_job(&hub, &job_id, STEP, |j| counts(j)[3] == 1).await;
    tokio::time::sleep(QUIET).await;
    let j2 = job(&hub, &job_id).await;
    assert_eq!(counts(&j2), counts(&j), "{j2}");
    assert_eq!(counts(&j2), [1, 0, 0, 1, 0, 0, 0], "queued q, done a: {j2}");
    let d = task(&hub, &job_id, a).await;
    assert_eq!(
        statuses(&d["transitions"]),
        ["queued", "sent", "ongoing", "done"],
        "{d}"
    );
    assert_eq!(d["progress"], 100, "{d}");
    assert!(d["errCode"].is_null(), "{d}");
    let d = task(&hub, &job_id, q).await;
    assert_eq!(statuses(&d["transitions"]), ["queued"], "{d}");

    // Every refusal is logged with its reason.
    let log = wait_log(&hub, "task has ended already", 3).await;
    for reason in [
        "no such task",
        "client token does not match the task",
        "malformed result",
        "progress going backwards",
        "progress out of range",
    ] {
        assert!(log.contains(reason), "log lacks {reason:?}:\n{log}");
    }

    // The job is canceled mid-way: the queued task ends canceled, the done one stays done.
    let (s, b) = hub
        .post(&format!("/ota/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["status"], "canceled", "{b}");
    assert_eq!(counts(&b["data"]), [0, 0, 0, 1, 0, 1, 0], "{b}");
    let (s, b) = hub
        .post(&format!("/ota/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 409, "{b}");
    // q connects again: nothing is sent for a canceled job.
    drop(cq);
    let mut cq = device(&hub, Proto::V311, q, q_pw).await;
    assert!(
        !cq.sees(&task_topic(q), QUIET).await,
        "no task after the job was canceled"
    );
}

async fn wait_until_task(
    hub: &Hub,
    job_id: &str,
    thing: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let d = task(hub, job_id, thing).await;
        if pred(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "task never matched: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hub's log once it mentions `needle` `times` times.
async fn wait_log(hub: &Hub, needle: &str, times: usize) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let log = hub.stderr();
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "log never had {times}x {needle:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_is_paced_at_max_per_minute() {
    let hub = Hub::start();
    let list = things(&hub, "p", 6).await;
    let mut clients = Vec::new();
    for (id, pw) in &list {
        clients.push(device(&hub, Proto::V311, id, pw).await);
    }
    let ids: Vec<&String> = list.iter().map(|(id, _)| id).collect();
    // 120 per minute = one task every 500 ms.
    let job_id = create_job(
        &hub,
        json!({"targets": {"thingIds": ids}, "task": task_body(), "maxPerMinute": 120}),
    )
    .await;
    let mid = wait_job(&hub, &job_id, STEP, |j| counts(j)[1] >= 1).await;
    assert!(counts(&mid)[0] >= 3, "the rate holds tasks back: {mid}");
    wait_job(&hub, &job_id, STEP, |j| counts(j)[1] == 6).await;
    let mut sent_at = Vec::new();
    for (id, _) in &list {
        let d = task(&hub, &job_id, id).await;
        let tr = d["transitions"].as_array().expect("transitions");
        assert_eq!(tr[1]["to"], "sent", "{d}");
        sent_at.push(tr[1]["at"].as_u64().expect("at"));
    }
    sent_at.sort();
    for (k, at) in sent_at.iter().enumerate() {
        // The k-th send is never earlier than k intervals after the first (1 ms rounding).
        assert!(
            *at + 1 >= sent_at[0] + 500 * k as u64,
            "send {k} too early: {sent_at:?}"
        );
    }
    // Every device got exactly its one task.
    for (c, (id, _)) in clients.iter_mut().zip(&list) {
        next_task(c, id, STEP).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_failures_are_retried() {
    let hub = Hub::start();
    let list = things(&hub, "t", 2).await;
    let (slow, s_pw) = &list[0];
    let (flaky, f_pw) = &list[1];
    let mut cs = device(&hub, Proto::V311, slow, s_pw).await;
    let mut cf = device(&hub, Proto::V5, flaky, f_pw).await;
    // 0.025 minutes = 1.5 s per attempt, one retry.
    let job_id = create_job(
        &hub,
        json!({"targets": {"thingIds": [slow, flaky]}, "task": task_body(),
               "maxPerMinute": 6000, "timeoutMinutes": 0.025, "retries": 1}),
    )
    .await;
    // `slow` ignores its first attempt (it times out), `flaky` fails its first.
    let s1 = next_task(&mut cs, slow, STEP).await;
    let f1 = next_task(&mut cf, flaky, STEP).await;
    report(
        &mut cf,
        flaky,
        &f1,
        "failed",
        json!({"errCode": 1403, "errMsg": "md5"}),
    )
    .await;
    let f2 = next_task(&mut cf, flaky, STEP).await;
    assert_ne!(
        f2["taskId"], f1["taskId"],
        "a retry is a new task: {f1} {f2}"
    );
    report(&mut cf, flaky, &f2, "done", json!({})).await;
    let s2 = next_task(&mut cs, slow, STEP).await;
    assert_ne!(s2["taskId"], s1["taskId"], "{s1} {s2}");
    // A result for the timed-out first attempt is refused.
    report(&mut cs, slow, &s1, "done", json!({})).await;
    // The second attempt times out too: no retries left.
    let j = wait_job(&hub, &job_id, STEP, |j| j["status"] == "completed").await;
    assert_eq!(counts(&j), [0, 0, 0, 1, 0, 0, 1], "{j}");
    let d = task(&hub, &job_id, slow).await;
    assert_eq!(
        statuses(&d["transitions"]),
        ["queued", "sent", "timed_out", "queued", "sent", "timed_out"],
        "{d}"
    );
    assert_eq!(d["attempt"], 2, "{d}");
    let d = task(&hub, &job_id, flaky).await;
    assert_eq!(
        statuses(&d["transitions"]),
        ["queued", "sent", "failed", "queued", "sent", "done"],
        "{d}"
    );
    assert_eq!(d["transitions"][2]["errCode"], 1403, "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_bodies_are_validated_with_typed_errors() {
    let hub = Hub::start();
    let list = things(&hub, "v", 1).await;
    let id = &list[0].0;
    let good = json!({"targets": {"thingIds": [id]}, "task": task_body()});
    let with = |path: &[&str], v: Value| {
        let mut b = good.clone();
        let mut cur = &mut b;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        b
    };
    let cases = [
        ("no task", json!({"targets": {"thingIds": [id]}})),
        ("no targets", json!({"task": task_body()})),
        (
            "both targets",
            with(&["targets", "query"], json!("SELECT * FROM things")),
        ),
        ("empty list", with(&["targets", "thingIds"], json!([]))),
        (
            "unknown thing",
            with(&["targets", "thingIds"], json!([id, "ghost-thing"])),
        ),
        (
            "bad thing id",
            with(&["targets", "thingIds"], json!(["a/b"])),
        ),
        (
            "bad query",
            json!({"targets": {"query": "DROP TABLE things"}, "task": task_body()}),
        ),
        (
            "no match",
            json!({"targets": {"query": "SELECT * FROM things WHERE thingId = 'zz'"}, "task": task_body()}),
        ),
        ("bad md5", with(&["task", "meta", "md5"], json!("xyz"))),
        ("bad sha256", with(&["task", "meta", "sha256"], json!("00"))),
        ("no version", with(&["task", "meta"], json!({}))),
        ("relative url", with(&["task", "fileUrl"], json!("fw.bin"))),
        ("empty type", with(&["task", "type"], json!(""))),
        ("rate 0", with(&["maxPerMinute"], json!(0))),
        ("rate type", with(&["maxPerMinute"], json!("fast"))),
        ("timeout < 0", with(&["timeoutMinutes"], json!(-1))),
        ("retries", with(&["retries"], json!(11))),
    ];
    for (what, body) in cases {
        let (s, b) = hub.post("/ota/jobs", body).await;
        assert_eq!(s, 400, "{what}: {b}");
        assert_eq!(b["code"], 400, "{what}: {b}");
        assert!(b["data"].is_null(), "{what}: {b}");
    }
    let (s, b) = hub
        .call_raw(
            Some(ADMIN_TOKEN),
            "POST",
            "/ota/jobs",
            Some(b"{not json".to_vec()),
            "application/json",
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = hub
        .call_as(None, "POST", "/ota/jobs", Some(good.clone()))
        .await;
    assert_eq!(s, 401);

    // A query target works; its job shows the query.
    let q = format!("SELECT * FROM things WHERE thingId = '{id}'");
    let job_id = create_job(&hub, json!({"targets": {"query": q}, "task": task_body()})).await;
    let j = job(&hub, &job_id).await;
    assert_eq!(j["total"], 1, "{j}");
    assert_eq!(j["query"], json!(q), "{j}");
    assert_eq!(j["maxPerMinute"], 1000, "{j}");
    assert_eq!(j["timeoutMinutes"], 60.0, "{j}");

    for (path, want) in [
        ("/ota/jobs/0000000000000000".to_string(), 404),
        ("/ota/jobs/not-a-job".to_string(), 404),
        (format!("/ota/jobs/{job_id}/tasks/ghost"), 404),
        (format!("/ota/jobs/{job_id}/tasks?status=bogus"), 400),
        (format!("/ota/jobs/{job_id}/tasks?pageSize=0"), 400),
        (format!("/ota/jobs/{job_id}/tasks?pageSize=1001"), 400),
    ] {
        let (s, b) = hub.get(&path).await;
        assert_eq!(s, want, "{path}: {b}");
        assert_eq!(b["code"], want, "{path}: {b}");
    }
    let (s, b) = hub
        .post("/ota/jobs/0000000000000000/cancel", json!({}))
        .await;
    assert_eq!(s, 404, "{b}");

    // The OpenAPI document lists the OTA routes.
    let (s, doc) = hub.get("/openapi.json").await;
    assert_eq!(s, 200);
    for p in [
        "/api/v1/ota/jobs",
        "/api/v1/ota/jobs/{id}",
        "/api/v1/ota/jobs/{id}/cancel",
        "/api/v1/ota/jobs/{id}/tasks",
        "/api/v1/ota/jobs/{id}/tasks/{thing}",
        "/api/v1/ota/jobs/{id}/tasks/{thing}/cancel",
    ] {
        assert!(doc["paths"].get(p).is_some(), "OpenAPI lacks {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_things_do_not_hold_a_job_open() {
    let hub = Hub::start();
    let list = things(&hub, "d", 2).await;
    let (a, a_pw) = &list[0];
    let (gone, _) = &list[1];
    let mut ca = device(&hub, Proto::V311, a, a_pw).await;
    let job_id = create_job(
        &hub,
        json!({"targets": {"thingIds": [a, gone]}, "task": task_body(), "maxPerMinute": 6000}),
    )
    .await;
    let t = next_task(&mut ca, a, STEP).await;
    report(&mut ca, a, &t, "done", json!({})).await;
    let j = wait_job(&hub, &job_id, STEP, |j| counts(j)[3] == 1).await;
    assert_eq!(
        j["status"], "running",
        "the offline thing's task is queued: {j}"
    );
    // Deleting the offline thing deletes its task; the job then has nothing left to do.
    let (s, b) = hub.delete(&format!("/things/{gone}")).await;
    assert_eq!(s, 200, "{b}");
    let j = job(&hub, &job_id).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(counts(&j), [0, 0, 0, 1, 0, 0, 0], "{j}");
    assert_eq!(j["total"], 1, "{j}");
    let (s, b) = hub.get(&format!("/ota/jobs/{job_id}/tasks/{gone}")).await;
    assert_eq!(s, 404, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_tasks_are_sent_again_on_reconnect_ongoing_ones_are_not() {
    let hub = Hub::start();
    let list = things(&hub, "c", 2).await;
    let (idle, i_pw) = &list[0];
    let (busy, b_pw) = &list[1];
    let mut ci = device(&hub, Proto::V311, idle, i_pw).await;
    let mut cb = device(&hub, Proto::V5, busy, b_pw).await;
    let job_id = create_job(
        &hub,
        json!({"targets": {"thingIds": [idle, busy]}, "task": task_body(), "maxPerMinute": 6000}),
    )
    .await;
    let first = next_task(&mut ci, idle, STEP).await;
    let b = next_task(&mut cb, busy, STEP).await;
    report(&mut cb, busy, &b, "ongoing", json!({"progress": 10})).await;
    wait_job(&hub, &job_id, STEP, |j| {
        counts(j)[1] == 1 && counts(j)[2] == 1
    })
    .await;

    // Both reconnect: the task that was sent but not started comes again, the same task.
    ci.disconnect().await;
    cb.disconnect().await;
    let mut ci = device(&hub, Proto::V5, idle, i_pw).await;
    let mut cb = device(&hub, Proto::V311, busy, b_pw).await;
    let again = next_task(&mut ci, idle, STEP).await;
    assert_eq!(again, first, "the same task, same ids");
    assert!(
        !cb.sees(&task_topic(busy), QUIET).await,
        "an ongoing task is not sent again"
    );
    report(&mut ci, idle, &again, "done", json!({})).await;
    report(&mut cb, busy, &b, "done", json!({})).await;
    let j = wait_job(&hub, &job_id, STEP, |j| j["status"] == "completed").await;
    assert_eq!(counts(&j), [0, 0, 0, 2, 0, 0, 0], "{j}");
    let d = task(&hub, &job_id, idle).await;
    assert_eq!(
        statuses(&d["transitions"]),
        ["queued", "sent", "done"],
        "a resend is no transition: {d}"
    );
}
