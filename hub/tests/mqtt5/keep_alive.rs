//! Keep alive: MQTT 5 §3.1.2.10 (Keep Alive) and §3.2.2.3.14 (Server Keep Alive). The hub
//! grants what the client asks up to 1200 s, and 1200 s to a client that asks for none (every
//! connection has a deadline); CONNACK always announces the value in force.

use std::time::Duration;

use super::raw::{Raw, prop};
use super::*;

const MAX_KEEP_ALIVE: u32 = 1200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_is_announced_and_capped() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "ka").await;
    for (asked, granted) in [
        (30, 30),
        (1200, 1200),
        (0, MAX_KEEP_ALIVE),
        (7200, MAX_KEEP_ALIVE),
    ] {
        let opts = thing_opts(&id, &secret).keep_alive(asked as u16);
        let (_raw, ack) = Raw::connect_ok(hub.mqtt, &opts).await;
        assert_eq!(
            ack.props.int(prop::SERVER_KEEP_ALIVE),
            Some(granted),
            "§3.2.2.3.14: asked {asked}"
        );
    }
}

/// §3.1.2.10: a client silent for 1.5 times the keep alive is disconnected (0x8D Keep Alive
/// timeout, §4.13 now that the hub's DISCONNECT reaches the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    let hub = Hub::start();
    let (id, secret) = new_thing(&hub, "silent").await;
    let (mut raw, ack) = Raw::connect_ok(hub.mqtt, &thing_opts(&id, &secret).keep_alive(2)).await;
    assert_eq!(ack.props.int(prop::SERVER_KEEP_ALIVE), Some(2));
    assert_eq!(
        raw.disconnect_reason(Duration::from_secs(10)).await,
        Some(0x8D),
        "keep alive 2 s, silent"
    );
}
