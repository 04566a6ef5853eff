//! The obvious application loop — one `tokio::select!` over the SDK's streams next to a
//! competing branch that is always about to be ready — against the real hub: no delta, method
//! call or OTA task may be lost when the competing branch wins the race. Also: handlers given
//! to the options answer a call that the hub sends right after CONNACK.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iothub_sdk::spec::topic::Topic;
use iothub_sdk::{StreamExt as _, Thing};
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{Hub, STEP, recv_on};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    setpoint: u64,
}

/// What the application loop saw.
#[derive(Debug)]
enum Seen {
    Setpoint(u64),
    Task(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_with_a_competing_branch_loses_no_delta_call_or_ota_task() {
    let hub = Hub::start();
    let (id, opts) = hub.new_thing("select").await;
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let opts = opts
        .on_method("ping", move |req| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(req.data)
            }
        })
        .expect("register");
    let thing = Thing::connect(opts).await.expect("connect");
    let mut state = thing
        .shadow("default")
        .synced_state(State { setpoint: 0 })
        .await
        .expect("sync");
    let mut tasks = thing.ota().tasks();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let races = Arc::new(AtomicU64::new(0));
    let lost_races = races.clone();

    // The application: a branch that becomes ready on its second poll (a yield) wins most
    // races, so the SDK's futures are dropped at every await point they have.
    let app = tokio::spawn(async move {
        loop {
            tokio::select! {
                applied = state.next() => match applied {
                    Some(Ok(applied)) => {
                        applied.report.expect("the applied state is reported");
                        drop(seen_tx.send(Seen::Setpoint(state.get().setpoint)));
                    }
                    Some(Err(e)) => panic!("delta not applied: {e}"),
                    None => break,
                },
                Some(task) = tasks.next() => {
                    let id = task.task_id.clone();
                    task.done().await.expect("done");
                    drop(seen_tx.send(Seen::Task(id)));
                }
                () = tokio::task::yield_now() => {
                    lost_races.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });

    // Every desired value must reach the application, one after the other.
    for v in 1..=20u64 {
        let (status, body) = hub
            .set_desired(&id, "default", json!({"setpoint": v}))
            .await;
        assert_eq!(status, 200, "{body}");
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some(Seen::Setpoint(s))) if s == v => break,
                Ok(Some(other)) => assert!(
                    matches!(other, Seen::Setpoint(s) if s < v),
                    "unexpected {other:?} waiting for {v}"
                ),
                Ok(None) => panic!("application ended"),
                Err(_) => {
                    panic!("the delta setting {v} never reached the application (lost in select!)")
                }
            }
        }
    }
    let (_, doc) = hub.shadow(&id, "default").await;
    assert_eq!(doc["state"]["reported"]["setpoint"], 20, "{doc}");
    assert!(doc["state"].get("delta").is_none(), "{doc}");

    // Method calls are answered by the handler while the loop races.
    for n in 0..5 {
        let (status, body) = hub.invoke(&id, "ping", json!({"n": n})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["code"], 200, "{body}");
        assert_eq!(body["data"]["data"], json!({"n": n}));
    }
    assert_eq!(calls.load(Ordering::Relaxed), 5);

    // OTA tasks reach the application and their result reaches the hub.
    let result_topic = Topic::OtaTaskResult { thing: &id }.to_string();
    let (svc, mut results) = hub.service(std::slice::from_ref(&result_topic)).await;
    for n in 0..3 {
        let task_id = format!("race-{n}");
        let task = json!({"clientToken": format!("tok-{n}"), "taskId": task_id, "type": "app",
            "meta": {"version": format!("2.0.{n}")}, "fileUrl": "http://files.invalid/fw.bin"});
        svc.publish(
            Topic::OtaTask { thing: &id }.to_string(),
            rumqttc::QoS::AtLeastOnce,
            false,
            task.to_string(),
        )
        .await
        .expect("publish task");
        match tokio::time::timeout(STEP, seen.recv()).await {
            Ok(Some(Seen::Task(t))) => assert_eq!(t, task_id),
            other => panic!("OTA task {task_id} lost: {other:?}"),
        }
        let r = recv_on(&mut results, &result_topic).await;
        assert_eq!(
            (r["taskId"].as_str(), r["status"].as_str()),
            (Some(task_id.as_str()), Some("done"))
        );
    }

    // The competing branch did win races: the test exercised cancellation.
    assert!(races.load(Ordering::Relaxed) > 20, "{races:?}");
    app.abort();
    thing.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_call_right_after_connack_reaches_the_handler() {
    let hub = Hub::start();
    for round in 0..5 {
        let (id, opts) = hub.new_thing("first-ms").await;
        // The business side calls while the thing is still offline, with `connectTimeout`:
        // the hub sends the call the moment the thing is connected (S-5.3).
        let call = {
            let (http, url) = (
                reqwest::Client::builder().no_proxy().build().unwrap(),
                format!("http://{}/api/v1/things/{id}/methods/hello", hub.http),
            );
            tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .bearer_auth(support::ADMIN_TOKEN)
                    .json(&json!({"data": {"round": round}, "timeout": 10, "connectTimeout": 10}))
                    .send()
                    .await
                    .expect("invoke");
                let status = resp.status().as_u16();
                (
                    status,
                    resp.json::<serde_json::Value>().await.expect("json"),
                )
            })
        };
        let opts = opts
            .on_method("hello", |req| async move { Ok(json!({"hi": req.data})) })
            .expect("register");
        let thing = Thing::connect(opts).await.expect("connect");
        let (status, body) = tokio::time::timeout(STEP, call)
            .await
            .expect("call answered")
            .expect("call task");
        assert_eq!(status, 200, "round {round}: {body}");
        assert_eq!(
            body["data"]["code"], 200,
            "round {round}: answered by the SDK, not the handler: {body}"
        );
        assert_eq!(body["data"]["data"], json!({"hi": {"round": round}}));
        thing.close().await;
    }
}
