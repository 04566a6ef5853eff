//! `/metrics` of the real hub parses as Prometheus text (with a real parser, `prometheus-parse`)
//! and its histograms count real traffic: shadow updates over MQTT, a direct method call and
//! REST requests by route.

mod support;

use prometheus_parse::{Scrape, Value as Sample};
use serde_json::json;
use support::*;

/// Scrapes `/metrics` and parses it.
async fn scrape(hub: &Hub) -> Scrape {
    let (status, ctype, text) = hub.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The `_count` of histogram `name` whose labels include `labels`, 0 when absent.
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max) as u64
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

fn gauge_or_counter(scrape: &Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match s.value {
            Sample::Gauge(v) | Sample::Counter(v) | Sample::Untyped(v) => Some(v),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_histograms_move_with_traffic() {
    let hub = Hub::start();
    let before = scrape(&hub).await;
    let thing_route = [("route", "/api/v1/things/:id")];
    assert_eq!(
        histogram_count(&before, "iothub_shadow_update_duration_seconds", &[]),
        0
    );

    let (id, _secret, mut device) = hub.new_thing(Proto::V5, "metrics").await;
    for i in 0..3 {
        let (accepted, reply) = device
            .update(&id, "default", json!({"state": {"reported": {"n": i}}}))
            .await;
        assert!(accepted, "{reply}");
    }
    for _ in 0..2 {
        let (status, _) = hub.rest_thing(&id).await;
        assert_eq!(status, 200);
    }
    let req_topic = format!("{}/methods/ping/req", thing_topic(&id));
    let resp_topic = format!("{}/methods/ping/resp", thing_topic(&id));
    let answer = async {
        let req = device.expect_message(&req_topic, STEP).await;
        device
            .publish_json(
                &resp_topic,
                &json!({"clientToken": req["clientToken"], "code": 200, "data": {}}),
            )
            .await;
    };
    let path = format!("/things/{id}/methods/ping");
    let ((status, body), ()) = tokio::join!(hub.post(&path, json!({"timeout": 10})), answer);
    assert_eq!(status, 200, "{body}");

    let after = scrape(&hub).await;
    assert_eq!(
        histogram_count(&after, "iothub_shadow_update_duration_seconds", &[]),
        3,
        "three MQTT updates were accepted"
    );
    assert_eq!(
        histogram_count(&after, "iothub_method_round_trip_seconds", &[]),
        1
    );
    assert_eq!(
        histogram_count(&after, "iothub_http_request_duration_seconds", &thing_route)
            - histogram_count(
                &before,
                "iothub_http_request_duration_seconds",
                &thing_route
            ),
        2,
        "two GET /things/:id"
    );
    assert!(
        histogram_count(
            &after,
            "iothub_http_request_duration_seconds",
            &[("route", "/metrics")]
        ) >= 1,
        "the first scrape is counted"
    );
    assert!(
        gauge_or_counter(&after, "iothub_shadow_updates_accepted_total").is_some_and(|v| v >= 3.0)
    );
    // Process metrics and the build info are there with plausible values.
    assert!(gauge_or_counter(&after, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
    assert!(gauge_or_counter(&after, "process_open_fds").is_some_and(|v| v >= 3.0));
    assert!(gauge_or_counter(&after, "process_cpu_seconds_total").is_some_and(|v| v > 0.0));
    let build = after
        .samples
        .iter()
        .find(|s| s.metric == "iothub_build_info")
        .expect("iothub_build_info");
    assert!(build.labels.get("version").is_some(), "{build:?}");
}

/// Metric names in a PromQL expression: identifiers starting with `iothub_` or `process_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("iothub_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_served_metrics() {
    let hub = Hub::start();
    // One request per histogram family, so every labelled series exists.
    let (status, _) = hub.get("/limits").await;
    assert_eq!(status, 200);
    let (_, _, text) = hub.get_text("/metrics").await;
    let served: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/iothub.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                served.contains(name.as_str()),
                "{name} (in {expr}) is not served"
            );
        }
    }
}
