//! S-9.7 system routes: health, limits, Prometheus metrics and OpenAPI.

use super::*;

/// S-9.7: `/healthz`, `/api/v1/limits` (defaults of S-3.9), `/metrics` (Prometheus text),
/// `/api/v1/openapi.json` (JSON with `paths`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_7_system_routes() {
    let hub = Hub::start();
    let (status, _ctype, text) = hub.get_text("/healthz").await;
    assert_eq!(status, 200, "{text}");

    let (status, body) = hub.get("/limits").await;
    assert_eq!(status, 200, "{body}");
    assert_envelope(status, &body);
    let mut numbers: Vec<u64> = body["data"]
        .as_object()
        .expect("S-9.7 limits object")
        .values()
        .filter_map(Value::as_u64)
        .collect();
    numbers.sort_unstable();
    for default in [8 * 1024, 32 * 1024, 8, 64, 20, 10] {
        assert!(
            numbers.contains(&default),
            "S-3.9 default {default} missing from limits: {body}"
        );
    }
    assert_eq!(
        numbers.iter().filter(|n| **n == 10).count(),
        2,
        "S-3.9: 10 in flight and 10 named shadows: {body}"
    );

    let (status, ctype, text) = hub.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        ctype.starts_with("text/plain"),
        "S-9.7 Prometheus text: {ctype}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE ")),
        "S-9.7 Prometheus exposition: {text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "not a Prometheus sample line: {line:?}"
        );
    }

    let (status, body) = hub.get("/openapi.json").await;
    assert_eq!(status, 200, "{body}");
    let paths = body["paths"].as_object().expect("S-9.1 OpenAPI has paths");
    assert!(
        paths.keys().any(|p| p.ends_with("/things")),
        "OpenAPI lists /things: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
}

/// S-9.7: `/metrics` counts real traffic: connected things, accepted and rejected shadow
/// updates by code, and group-commit transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_7_metrics_count_traffic() {
    let hub = Hub::start();
    let (id, _secret, mut c) = hub.new_thing(Proto::V5, "m").await;
    let (ok, reply) = c
        .update(&id, "default", json!({"state": {"reported": {"x": 1}}}))
        .await;
    assert!(ok, "{reply}");
    let (ok, reply) = c
        .update(
            &id,
            "default",
            json!({"state": {"reported": {"x": 2}}, "version": 9}),
        )
        .await;
    assert!(!ok && reply["code"] == 409, "{reply}");

    let (status, _ctype, text) = hub.get_text("/metrics").await;
    assert_eq!(status, 200);
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
    };
    assert_eq!(sample("iothub_connected_things"), 1.0);
    assert_eq!(sample("iothub_shadow_updates_accepted_total"), 1.0);
    assert_eq!(
        sample("iothub_shadow_updates_rejected_total{code=\"409\"}"),
        1.0
    );
    assert!(sample("iothub_group_commit_batches_total") >= 1.0);
    assert!(sample("iothub_group_commit_writes_total") >= 1.0);
    assert!(sample("iothub_mqtt_messages_in_total") >= 2.0);
}
