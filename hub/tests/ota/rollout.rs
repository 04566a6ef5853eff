//! Rollouts end with exact counts, survive a hub restart, finish without deleted things, and
//! re-send tasks that were sent but not started after a reconnect.

use super::*;

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
