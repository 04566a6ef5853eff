//! Refused result sequences leave the counts intact; job bodies are validated with typed
//! errors.

use super::*;

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
