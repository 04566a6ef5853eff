//! Session takeover: MQTT 5 §3.1.4 (CONNECT actions: a second connection with the same client
//! identifier takes over the first, which gets DISCONNECT 0x8E) and S-1.4. Business back ends
//! (service users) reconnect at once with the same client id, exactly like devices.

use super::raw::Raw;
use super::support::STEP;
use super::*;

/// DISCONNECT reason 0x8E Session taken over.
const SESSION_TAKEN_OVER: u8 = 0x8E;

/// 200 immediate reconnects of a service user with one client id: none refused (issue 15 saw
/// 17 of 200 refused with 0x88 before the takeover handling covered service users).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_user_immediate_reconnects_are_never_refused() {
    let hub = Hub::start();
    let client_id = unique("backend");
    let mut refused = Vec::new();
    let mut previous: Option<Raw> = None;
    for i in 0..200 {
        // Alternate between dropping the old connection first and taking it over live.
        if i % 2 == 0 {
            previous = None;
        }
        let (raw, ack) = Raw::connect(hub.mqtt, &service_opts(&client_id)).await;
        if ack.reason != 0 {
            refused.push((i, ack.reason));
        }
        drop(previous.replace(raw));
    }
    assert!(
        refused.is_empty(),
        "refused reconnects (try, reason): {refused:?}"
    );
}

/// §3.1.4: the old connection hears why it was closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_over_connection_gets_disconnect_0x8e() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "take").await;
    let (mut first, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    let (_second, _) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret)).await;
    assert_eq!(
        first.disconnect_reason(STEP).await,
        Some(SESSION_TAKEN_OVER)
    );
}

/// §3.14.2.2.2 with §3.1.4: a client that ends its persistent session (DISCONNECT with Session
/// Expiry 0) and reconnects at once with Clean Start 0 is never refused (the Paho MQTT 5 suite
/// hit "server unavailable" here), 50 times in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_right_after_ending_a_persistent_session_is_never_refused() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "end").await;
    let opts = thing_opts(&id, &secret)
        .clean_start(false)
        .session_expiry(60);
    let mut refused = Vec::new();
    for i in 0..50 {
        let (raw, ack) = Raw::connect(hub.mqtt, &opts).await;
        if ack.reason != 0 {
            refused.push((i, ack.reason));
            continue;
        }
        raw.disconnect(Some(if i % 2 == 0 { 0 } else { 60 })).await;
    }
    assert!(refused.is_empty(), "refused (try, reason): {refused:?}");
}
