//! Unit tests of the metrics' rendering.

use super::*;

#[test]
fn renders_configuration_counts_per_status() {
    let m = Metrics::new();
    let counts = crate::configurations::Counts {
        targeted: 5,
        applied: 4,
        succeeded: 3,
        failed: 1,
        pending: 0,
    };
    m.set_configuration_things(&BTreeMap::from([("c1".to_owned(), counts)]));
    let text = m.render();
    for (status, v) in [
        ("targeted", 5),
        ("applied", 4),
        ("succeeded", 3),
        ("failed", 1),
        ("pending", 0),
    ] {
        let line =
            format!("iothub_configuration_things{{configuration=\"c1\",status=\"{status}\"}} {v}");
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }
    m.set_configuration_things(&BTreeMap::new());
    assert!(!m.render().contains("configuration=\"c1\""));
}

#[test]
fn renders_prometheus_text() {
    let m = Metrics::new();
    m.inc_connected();
    m.inc_connected();
    m.dec_connected();
    m.inc_mqtt_messages_in();
    m.inc_shadow_update_accepted();
    m.inc_shadow_update_rejected(409);
    m.inc_shadow_update_rejected(418);
    m.inc_group_commit_batch(7);
    m.inc_rest_request(200);
    m.inc_rest_request(404);
    m.inc_rest_request(404);
    m.inc_rest_request(999);
    m.inc_connection_refused("mqtt", "bad credentials");
    m.inc_connection_refused("mqtt", "bad credentials");
    m.inc_connection_refused("http", "per-address cap");
    let text = m.render();
    assert!(text.contains(
        "iothub_connections_refused_total{listener=\"mqtt\",reason=\"bad_credentials\"} 2\n"
    ));
    assert!(text.contains(
        "iothub_connections_refused_total{listener=\"http\",reason=\"per_address_cap\"} 1\n"
    ));
    assert!(text.contains("iothub_store_healthy 1\n"));
    m.set_store_health(&crate::store::health::HealthReport {
        healthy: false,
        reason: Some("database or disk is full".into()),
        failing_since: Some(1),
        write_failures: 3,
    });
    let text = m.render();
    assert!(text.contains("iothub_store_healthy 0\n"));
    assert!(text.contains("iothub_store_write_failures_total 3\n"));
    assert!(text.contains("iothub_connected_things 1\n"));
    assert!(text.contains("iothub_mqtt_messages_in_total 1\n"));
    assert!(text.contains("iothub_shadow_updates_rejected_total{code=\"409\"} 1\n"));
    assert!(text.contains("iothub_shadow_updates_rejected_total{code=\"other\"} 1\n"));
    assert!(text.contains("iothub_group_commit_writes_total 7\n"));
    assert!(text.contains("iothub_rest_requests_total{class=\"4xx\"} 2\n"));
    assert!(text.contains("iothub_rest_requests_total{class=\"5xx\"} 1\n"));
    // Every sample line is `name{labels} value` or a comment.
    for line in text.lines() {
        assert!(
            line.starts_with("# ") || line.split(' ').count() == 2,
            "{line}"
        );
    }
}
