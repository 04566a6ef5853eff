//! Rollout pacing (`maxPerMinute`), task timeouts and retries.

use super::*;

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
