//! End to end: a desired state larger than the device's buffers. The firmware-style thermostat
//! (`firmware_host --small-inbox`: a 256-byte inbox in the minimq adapter) runs against the
//! real `iothub` binary; a 1 KiB desired value set over REST must reach the application as
//! `Event::TooLarge` with the exact size of the message (the thermostat reports it as
//! `too_large`), first for the delta, then for the shadow document the device asks for to
//! resync; after a smaller desired state the device applies it and clears `too_large`.
//!
//! The sizes are checked against the messages the hub sent, seen by a service user subscribed
//! to the same topics (topic plus payload: what the inbox must hold).
//!
//! A desired state larger than minimq's receive buffer never reaches the device (the broker
//! closes the connection instead of sending it): the second test checks that the device still
//! says so (`Event::SyncLost`, reported as `too_large.sync_lost`) and syncs once the desired
//! state shrinks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use iothub_sdk_nostd::spec::topic::Topic;
use serde_json::{Value, json};
use support::{Proc, Rest, STEP, Watcher, device_log, spawn_device, spawn_hub};

/// The inbox of `firmware_host --small-inbox`.
const INBOX: u64 = 256;

/// Waits until `done` holds for the reported state, returning it.
async fn reported_until(
    rest: &Rest,
    thing: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let reported = rest.reported(thing).await;
        if done(&reported) {
            return reported;
        }
        assert!(Instant::now() < deadline, "{what}: reported {reported}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_state_larger_than_the_inbox_is_reported_with_its_size_then_syncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_hub, mqtt, http) = spawn_hub(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let rest = Rest::new(http);
    let thing = format!("fw-big-{}", std::process::id());
    let secret = rest.create_thing(&thing).await;
    let delta_topic = Topic::ShadowUpdateDelta {
        thing: &thing,
        shadow: "default",
    }
    .to_string();
    let doc_topic = Topic::ShadowGetAccepted {
        thing: &thing,
        shadow: "default",
    }
    .to_string();
    let watcher = Watcher::start(
        mqtt,
        "svc-watch-big",
        &[delta_topic.clone(), doc_topic.clone()],
    )
    .await;
    let _device: Proc = spawn_device(
        dir.path(),
        mqtt,
        &thing,
        &secret,
        &["--tick-ms", "200", "--small-inbox"],
    );
    let log = || device_log(dir.path());

    // Small changes fit: the device syncs.
    let reported = rest.converge(&thing, json!({"setpoint": 23})).await;
    assert_eq!(reported.get("too_large"), None, "{reported}");

    // 1 KiB of desired state: neither the delta nor the document fits 256 bytes.
    let label = "x".repeat(1024);
    rest.set_desired(&thing, json!({"label": label})).await;
    let reported = reported_until(&rest, &thing, "too_large.document", |r| {
        r["too_large"]["document"].is_object()
    })
    .await;
    let size = |topic: &str, needle: &str| -> Vec<u64> {
        watcher
            .on(topic)
            .iter()
            .filter(|p| String::from_utf8_lossy(p).contains(needle))
            .map(|p| (topic.len() + p.len()) as u64)
            .collect()
    };
    let deltas = size(&delta_topic, &label);
    let docs = size(&doc_topic, &label);
    assert_eq!(deltas.len(), 1, "one delta with the label: {deltas:?}");
    assert_eq!(docs.len(), 1, "one resync document: {docs:?}\n{}", log());
    let too_large = &reported["too_large"];
    assert_eq!(
        too_large["delta"],
        json!({"needed": deltas[0], "capacity": INBOX}),
        "{reported}\n{}",
        log()
    );
    assert_eq!(
        too_large["document"],
        json!({"needed": docs[0], "capacity": INBOX}),
        "{reported}"
    );
    assert!(
        deltas[0] > 1024 && docs[0] > 2 * 1024,
        "{deltas:?} {docs:?}"
    );

    // A smaller desired state (the label removed): the next delta fits, the device applies it
    // and reports `too_large` as null, which removes it.
    rest.set_desired(&thing, json!({"label": null, "setpoint": 25}))
        .await;
    let reported = reported_until(&rest, &thing, "setpoint 25 without too_large", |r| {
        r["setpoint"] == 25 && r.get("too_large").is_none()
    })
    .await;
    assert_eq!(reported["mode"], "off", "{reported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_larger_than_the_receive_buffer_is_reported_as_sync_lost_then_syncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_hub, mqtt, http) = spawn_hub(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let rest = Rest::new(http);
    let thing = format!("fw-huge-{}", std::process::id());
    let secret = rest.create_thing(&thing).await;
    // The firmware's own sizes: documents of up to 1,440 bytes, minimq's rx of 1,728.
    let _device: Proc = spawn_device(dir.path(), mqtt, &thing, &secret, &["--tick-ms", "200"]);
    let log = || device_log(dir.path());
    rest.converge(&thing, json!({"setpoint": 23})).await;

    // 3 KiB of desired state: neither the delta nor the document can be sent to the device.
    rest.set_desired(&thing, json!({"label": "x".repeat(3 * 1024)}))
        .await;
    let reported = reported_until(&rest, &thing, "too_large.sync_lost", |r| {
        r["too_large"]["sync_lost"].is_u64()
    })
    .await;
    assert_eq!(
        reported["too_large"]["sync_lost"],
        iothub_sdk_nostd::SYNC_LOST_AFTER,
        "{reported}\n{}",
        log()
    );

    rest.set_desired(&thing, json!({"label": null, "setpoint": 26}))
        .await;
    let reported = reported_until(&rest, &thing, "setpoint 26 without too_large", |r| {
        r["setpoint"] == 26 && r.get("too_large").is_none()
    })
    .await;
    assert_eq!(reported["mode"], "off", "{reported}");
}
