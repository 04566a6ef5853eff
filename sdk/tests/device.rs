//! S-5, S-6, S-7, telemetry and user topics against the real hub.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use iothub_sdk::spec::topic::Topic;
use iothub_sdk::{MethodError, OtaErrorCode, Protocol, Thing};
use serde_json::json;
use support::{Hub, next, recv_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_ok_unknown_404_error_500() {
    let hub = Hub::start();
    let (id, opts) = hub.new_thing("methods").await;
    let opts = opts
        .on_method("echo", |req| async move { Ok(json!({"got": req.data})) })
        .expect("register")
        .on_method("fail", |_| async {
            Err(MethodError::device("disk on fire"))
        })
        .expect("register")
        .on_method("picky", |req| async move {
            if req.data.is_number() {
                Ok(req.data)
            } else {
                Err(MethodError::bad_input("need a number").with_data(json!({"hint": 1})))
            }
        })
        .expect("register")
        .on_method("panics", |_| async { panic!("handler bug") })
        .expect("register");
    assert!(
        opts.clone()
            .on_method("bad name!", |_| async { Ok(json!(1)) })
            .is_err()
    );
    let thing = Thing::connect(opts).await.expect("connect");

    let (status, body) = hub.invoke(&id, "echo", json!({"x": [1, 2]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["code"], 200);
    assert_eq!(body["data"]["data"], json!({"got": {"x": [1, 2]}}));

    let (_, body) = hub.invoke(&id, "nope", json!(null)).await;
    assert_eq!(body["data"]["code"], 404, "{body}");

    let (_, body) = hub.invoke(&id, "fail", json!(null)).await;
    assert_eq!(body["data"]["code"], 500, "{body}");
    assert_eq!(body["data"]["message"], "disk on fire");

    let (_, body) = hub.invoke(&id, "picky", json!("x")).await;
    assert_eq!(body["data"]["code"], 400, "{body}");
    assert_eq!(body["data"]["data"], json!({"hint": 1}));

    let (_, body) = hub.invoke(&id, "panics", json!(null)).await;
    assert_eq!(body["data"]["code"], 500, "{body}");

    thing.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntp_is_within_5_ms_of_the_hub_clock() {
    let hub = Hub::start();
    for proto in [Protocol::V311, Protocol::V5] {
        let (_, opts) = hub.new_thing("ntp").await;
        let thing = Thing::connect(opts.protocol(proto)).await.expect("connect");
        let r = thing.ntp().samples(8).measure().await.expect("ntp");
        // Same machine, same clock: the offset is the measurement error.
        assert!(r.offset_ms.abs() <= 5, "{proto:?}: {r:?}");
        assert!(r.round_trip < Duration::from_millis(50), "{proto:?}: {r:?}");
        thing.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_task_progress_done_and_failed() {
    let hub = Hub::start();
    let (id, opts) = hub.new_thing("ota").await;
    let thing = Thing::connect(opts).await.expect("connect");
    let task_topic = Topic::OtaTask { thing: &id }.to_string();
    let result_topic = Topic::OtaTaskResult { thing: &id }.to_string();
    let (svc, mut results) = hub.service(std::slice::from_ref(&result_topic)).await;
    let mut tasks = thing.ota().tasks();

    let task = json!({"clientToken": "tok-1", "taskId": "task-1", "type": "app",
        "meta": {"version": "2.0.1", "sha256": "ab12", "content-length": 1234},
        "fileUrl": "http://files.invalid/fw.bin"});
    svc.publish(
        &task_topic,
        rumqttc::QoS::AtLeastOnce,
        false,
        task.to_string(),
    )
    .await
    .expect("publish task");
    let t = next(&mut tasks).await;
    assert_eq!(
        (t.task_id.as_str(), t.task_type.as_str(), t.version.as_str()),
        ("task-1", "app", "2.0.1")
    );
    assert_eq!(
        (t.sha256.as_deref(), t.content_length),
        (Some("ab12"), Some(1234))
    );
    assert_eq!(t.file_url, "http://files.invalid/fw.bin");

    for p in [10u8, 60, 100] {
        t.progress(p).await.expect("progress");
        let r = recv_on(&mut results, &result_topic).await;
        assert_eq!(r["status"], "ongoing", "{r}");
        assert_eq!(
            (r["progress"].clone(), r["taskId"].clone()),
            (json!(p), json!("task-1"))
        );
        assert_eq!(r["clientToken"], "tok-1");
        assert!(r["timestamp"].as_u64().is_some());
    }
    t.done().await.expect("done");
    let r = recv_on(&mut results, &result_topic).await;
    assert_eq!(r["status"], "done", "{r}");
    // Finished: further reports are refused.
    assert!(matches!(
        t.progress(5).await,
        Err(iothub_sdk::Error::OtaTaskGone(_))
    ));

    // A second task that fails.
    let task2 = json!({"clientToken": "tok-2", "taskId": "task-2", "type": "os",
        "meta": {"version": "9"}, "fileUrl": "http://files.invalid/os.img"});
    svc.publish(
        &task_topic,
        rumqttc::QoS::AtLeastOnce,
        false,
        task2.to_string(),
    )
    .await
    .expect("publish task");
    let t2 = next(&mut tasks).await;
    assert_eq!(t2.task_id, "task-2");
    t2.failed(OtaErrorCode::FileContentWrong, "checksum mismatch")
        .await
        .expect("failed");
    let r = recv_on(&mut results, &result_topic).await;
    assert_eq!(
        (
            r["status"].clone(),
            r["errCode"].clone(),
            r["errMsg"].clone()
        ),
        (json!("failed"), json!(1403), json!("checksum mismatch"))
    );
    thing.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_user_topics() {
    let hub = Hub::start();
    let (id, opts) = hub.new_thing("tele").await;
    let thing = Thing::connect(opts.user_topics(true))
        .await
        .expect("connect");
    let prop = Topic::Property { thing: &id }.to_string();
    let up = Topic::User {
        thing: &id,
        rest: "up/log",
    }
    .to_string();
    let (svc, mut rx) = hub.service(&[prop.clone(), up.clone()]).await;

    thing
        .send_telemetry(&json!({"temperature": 21.5}))
        .await
        .expect("telemetry");
    assert_eq!(recv_on(&mut rx, &prop).await, json!({"temperature": 21.5}));
    assert!(thing.send_telemetry(&json!([1])).await.is_err());

    thing
        .publish_user("up/log", r#"{"line":"hello"}"#)
        .await
        .expect("user");
    assert_eq!(recv_on(&mut rx, &up).await, json!({"line": "hello"}));
    assert!(thing.publish_user("bad/#", "x").await.is_err());

    let mut msgs = thing.user_messages();
    let down = Topic::User {
        thing: &id,
        rest: "down/cmd",
    }
    .to_string();
    svc.publish(&down, rumqttc::QoS::AtLeastOnce, false, "raw bytes")
        .await
        .expect("publish");
    // The thing's subscription also matches its own `up/log` publish (MQTT delivers a client's
    // own messages unless it asks for No Local), which may still be on its way: skip it.
    let mut m = next(&mut msgs).await;
    if m.rest == "up/log" {
        m = next(&mut msgs).await;
    }
    assert_eq!(
        (m.rest.as_str(), &m.payload[..]),
        ("down/cmd", &b"raw bytes"[..])
    );
    thing.close().await;
}
