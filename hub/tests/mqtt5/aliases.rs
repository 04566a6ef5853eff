//! Topic aliases: MQTT 5 §3.2.2.3.8 (Topic Alias Maximum in CONNACK) and §3.3.2.3.4 (Topic
//! Alias). The hub offers no topic aliases (maximum 0, so CONNACK omits the property), and a
//! client that uses one anyway, or uses the forbidden value 0, gets DISCONNECT 0x94 (issue 14
//! item 5, issue 16 item 2(b)).

use super::raw::{Raw, prop};
use super::support::STEP;
use super::*;

/// DISCONNECT reason 0x94 Topic Alias invalid.
const TOPIC_ALIAS_INVALID: u8 = 0x94;

async fn alias_disconnects(hub: &Hub, alias: u32) {
    let (id, secret) = new_thing(hub, "alias").await;
    let (mut raw, ack) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    assert_eq!(
        ack.props.int(prop::TOPIC_ALIAS_MAXIMUM).unwrap_or(0),
        0,
        "§3.2.2.3.8: the hub offers no topic aliases: {ack:?}"
    );
    let topic = user_topic(&id, "a");
    raw.publish(&topic, b"{}", 1, false, &[(prop::TOPIC_ALIAS, alias)])
        .await;
    assert_eq!(
        raw.disconnect_reason(STEP).await,
        Some(TOPIC_ALIAS_INVALID),
        "§3.3.2.3.4: Topic Alias {alias} with maximum 0"
    );
    assert!(
        raw.closed_within(STEP).await,
        "connection closed after the DISCONNECT"
    );
}

/// §3.3.2.3.4: "A Topic Alias of 0 is not permitted" → DISCONNECT 0x94.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_zero_disconnects_with_0x94() {
    let hub = Hub::start();
    alias_disconnects(&hub, 0).await;
}

/// §3.3.2.3.4: a Topic Alias above the maximum the server announced (0) → DISCONNECT 0x94.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_above_maximum_disconnects_with_0x94() {
    let hub = Hub::start();
    alias_disconnects(&hub, 1).await;
    alias_disconnects(&hub, 65535).await;
}

/// A PUBLISH without an alias on the same connection still works: the check looks at the
/// property, not at the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_alias_is_accepted() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "noalias").await;
    let (mut raw, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let (rc, _) = raw
        .publish_acked(&user_topic(&id, "a"), b"{}", false, &[])
        .await;
    assert_eq!(rc, 0);
}
