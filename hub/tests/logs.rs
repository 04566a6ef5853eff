//! Log output of the real binary: no ANSI escape codes when stderr is a file, JSON lines with
//! `--log-format json`, and request-level lines that carry the thing id in their span.

mod support;

use serde_json::Value;
use support::*;

/// The hub's stderr, after the traffic the test caused.
fn stderr_bytes(hub: &Hub) -> Vec<u8> {
    std::fs::read(hub.dir().join("hub-stderr.log")).expect("hub stderr file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_escape_codes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // Debug level: many lines, with fields and spans, each a chance to colour something.
    let hub = Hub::start_with_env(tmp.path(), &[], &[("RUST_LOG", "debug,rmqtt=info")]);
    let (id, _secret, mut client) = hub.new_thing(Proto::V5, "logs").await;
    let (accepted, reply) = client
        .update(
            &id,
            "default",
            serde_json::json!({"state": {"reported": {"a": 1}}}),
        )
        .await;
    assert!(accepted, "{reply}");
    let (status, _) = hub.rest_thing(&id).await;
    assert_eq!(status, 200);
    let (status, _) = hub.rest_thing("no-such-thing").await;
    assert_eq!(status, 404);
    let log = stderr_bytes(&hub);
    assert!(
        log.len() > 200,
        "the hub logged: {}",
        String::from_utf8_lossy(&log)
    );
    assert!(
        !log.contains(&0x1b),
        "ESC in a log written to a file:\n{}",
        String::from_utf8_lossy(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_thing_id_of_each_request() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let hub = Hub::start_with_env(
        tmp.path(),
        &["--log-format", "json"],
        &[(
            "RUST_LOG",
            "info,iothub_hub::api=debug,iothub_hub::router=debug",
        )],
    );
    let (id, _secret, mut client) = hub.new_thing(Proto::V311, "jlogs").await;
    let (accepted, reply) = client
        .update(
            &id,
            "default",
            serde_json::json!({"state": {"reported": {"a": 1}}}),
        )
        .await;
    assert!(accepted, "{reply}");
    let (status, _) = hub.rest_shadow(&id, "default").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(stderr_bytes(&hub)).expect("UTF-8 log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_span = |name: &str| -> Vec<&Value> {
        lines.iter().filter(|l| l["span"]["name"] == name).collect()
    };
    // Every line logged inside a request's span names the thing the request is about.
    let rest = of_span("rest");
    let about_thing: Vec<_> = rest
        .iter()
        .filter(|l| {
            l["span"]["route"]
                .as_str()
                .is_some_and(|r| r.contains("/things/{id}"))
        })
        .collect();
    assert!(!about_thing.is_empty(), "no REST request lines in:\n{text}");
    for line in about_thing {
        assert_eq!(line["span"]["thing_id"], id.as_str(), "{line}");
    }
    let mqtt = of_span("mqtt");
    assert!(!mqtt.is_empty(), "no MQTT request lines in:\n{text}");
    assert!(
        mqtt.iter().any(|l| l["span"]["thing_id"] == id.as_str()),
        "{text}"
    );
}
