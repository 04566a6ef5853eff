//! MQTT 5 protocol behaviour of the hub's broker, checked with raw MQTT 5 exchanges against the
//! real `iothub` binary: sessions and expiry, flow control, topic aliases, retain, keep alive
//! and session takeover. Each test names the MQTT 5 section (OASIS MQTT Version 5.0) it checks.
//!
//! The raw client (`raw.rs`) is written from the MQTT 5 specification, so these tests check the
//! wire, not a client library's reading of it.

#[path = "../support/mod.rs"]
mod support;

mod raw;

mod aliases;
mod flow_control;
mod keep_alive;
mod max_packet;
mod retain;
mod sessions;
mod shared;
mod takeover;

use std::net::SocketAddr;

use raw::{ConnectOpts, Raw};
use support::{Hub, SVC_SECRET, SVC_USER, thing_topic, unique};

/// A thing created over REST: `(thingId, secret)`.
async fn new_thing(hub: &Hub, prefix: &str) -> (String, String) {
    let id = unique(prefix);
    let secret = hub.create_thing(&id).await;
    (id, secret)
}

/// CONNECT options for a thing (client id = username = thingId, S-1.2).
fn thing_opts<'a>(id: &'a str, secret: &'a str) -> ConnectOpts<'a> {
    ConnectOpts::new(id, id, secret)
}

/// CONNECT options for the test hub's service user with client id `client_id` (S-1.5).
fn service_opts(client_id: &str) -> ConnectOpts<'_> {
    ConnectOpts::new(client_id, SVC_USER, SVC_SECRET)
}

/// The thing's free, application-defined topic `$iothub/user/things/{id}/{suffix}` (S-2).
fn user_topic(thing: &str, suffix: &str) -> String {
    format!("$iothub/user/things/{thing}/{suffix}")
}

/// The thing's `T/#` filter.
fn own_filter(thing: &str) -> String {
    format!("{}/#", thing_topic(thing))
}

/// A thing connected with Clean Start 1 and the given Session Expiry Interval, subscribed at
/// QoS 1 to `filters`.
async fn thing_session(
    addr: SocketAddr,
    id: &str,
    secret: &str,
    expiry: u32,
    filters: &[&str],
) -> Raw {
    let (mut raw, ack) =
        Raw::connect_ok(addr, &thing_opts(id, secret).session_expiry(expiry)).await;
    assert!(
        !ack.session_present,
        "Clean Start 1 must start a new session: {ack:?}"
    );
    for filter in filters {
        let rc = raw.subscribe(filter, 1).await;
        assert_eq!(rc, 1, "SUBACK for {filter}");
    }
    raw
}
