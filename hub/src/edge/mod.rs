//! The broker boundary: the one place where the hub's core meets an MQTT broker.
//!
//! The core (shadows, methods, NTP, OTA, presence, the registry) never sees a broker's types. A
//! broker implementation drives the core through [`Events`] and is driven through
//! [`Bus`](crate::bus::Bus):
//!
//! ```text
//!              events in (Events)                    operations out (Bus)
//! broker ──authenticate / connected / disconnected──▶ core ──publish / disconnect──▶ broker
//!        ──subscribed / publish_in (sender identity)─▶      is_connected / has_subscribers
//! ```
//!
//! What a broker implementation must do (`hub/tests/broker_seam.rs` checks it, generically, on
//! every implementation):
//! - ask [`Events::authenticate`] for every CONNECT and let in only what it allows, with the
//!   CONNACK code it names (D-33);
//! - decide publish, subscribe and Will permissions with [`iothub_spec::topic::acl`] (the same
//!   pure functions everywhere), and hand the core only what passed, with the sender's user name;
//! - report each connection once established ([`Events::connected`]) and once ended
//!   ([`Events::disconnected`]), saying whether it replaced or was replaced by another connection
//!   of the same client identifier (S-1.4, D-34);
//! - report subscriptions ([`Events::subscribed`]), also those a resumed session brings back;
//! - deliver what the core publishes at QoS 1 to every matching subscription, keep retained
//!   messages, close a client on request, and know which clients are connected.
//!
//! The embedded rmqtt broker ([`crate::broker`]) is one implementation; [`HubEvents`] is the
//! core's side.
//!
//! How an external broker maps onto it ([`crate::external`], Mosquitto 2.0, D-60..D-66):
//! Mosquitto authenticates and authorizes with the per-thing accounts the hub keeps in its
//! dynamic-security plugin (the [`iothub_spec::topic::grants`] patterns), so `authenticate` is
//! not asked; `publish_in` is fed from the hub's subscriptions to the request topics, whose
//! sender is the topic's thing (the broker's allow-list already held it to its own topics);
//! `connected`, `disconnected` and `subscribed` come from the broker's log lines; the
//! [`Bus`](crate::bus::Bus) publishes through the hub's own connection and keeps is-connected
//! from those lines.
//!
//! A broker that asks an HTTP service instead (EMQX 5, D-57) reaches the core through the REST
//! server ([`crate::api::broker_auth`]): its authentication request becomes a [`Connect`] for
//! [`Events::authenticate`], its authorization request goes to [`iothub_spec::topic::acl`].

pub mod authn;
mod core;

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::core::HubEvents;

/// A client connection as the broker reports it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The MQTT client identifier.
    pub client_id: &'a str,
    /// The MQTT user name (a thingId, or a `$` service user); empty when the CONNECT had none.
    pub username: &'a str,
    /// The peer's address, when the broker knows it.
    pub remote_addr: Option<SocketAddr>,
}

/// A CONNECT to decide on.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// Who connects (`username` is empty when the CONNECT carried none).
    pub client: Client<'a>,
    /// Whether the CONNECT carried a user name at all.
    pub has_username: bool,
    /// The password, empty when absent.
    pub password: &'a [u8],
    /// The topic of the CONNECT's Will, if it has one.
    pub will_topic: Option<&'a str>,
    /// The SHA-256 fingerprint of the client certificate the connection presented during the
    /// TLS handshake (already verified against `--tls-client-ca`), if any (D-82).
    pub cert_sha256: Option<[u8; 32]>,
    /// Whether the broker's unauthenticated-connection slots are crowded (half of them held). A
    /// delayed refusal holds such a slot for the whole delay, so a refusal then goes out at once
    /// (issue 14); a broker without such slots says `false`. A broker that waits for the answer
    /// over a few shared connections (EMQX's HTTP authenticator, D-57) says `true`: a held-back
    /// refusal would hold one of them and slow every other CONNECT.
    pub crowded: bool,
}

/// The answer to a CONNECT (D-33 names the CONNACK codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Let it in.
    Allow,
    /// 4 / 0x86: missing or wrong user name or password.
    BadCredentials,
    /// 5 / 0x87: known, but not allowed (disabled thing, Will outside the allow-list, the
    /// registry unreadable).
    NotAuthorized,
}

/// A message a client published that passed the allow-list.
#[derive(Debug, Clone, Copy)]
pub struct PublishIn<'a> {
    /// The publisher's user name.
    pub sender: &'a str,
    /// The topic it was published on.
    pub topic: &'a str,
    /// The payload, as received.
    pub payload: &'a Bytes,
    /// When the broker received it (ms since the Unix epoch), for NTP's `serverRecvTime`.
    pub received_at: u64,
    /// Offer it to the routes. False where another instance offers it: on an external broker
    /// every instance gets a thing's method responses, and only the thing's owner puts them in
    /// the routes' outboxes (D-89).
    pub route: bool,
}

/// The core's answer to a published message (S-14.3, D-78): whether the broker may acknowledge
/// it (PUBACK success for QoS 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Taken (in every matching route's outbox, if any): acknowledge it.
    Accepted,
    /// A full route outbox with the `refuse` policy: MQTT 5 PUBACK 0x97 (Quota exceeded);
    /// MQTT 3.1.1 cannot refuse a PUBLISH, so the connection is closed without a PUBACK.
    QuotaExceeded,
    /// The route outbox could not be written: MQTT 5 PUBACK 0x80 (Unspecified error); MQTT
    /// 3.1.1: the connection is closed without a PUBACK. Either way the device still holds the
    /// message and may send it again.
    Unavailable,
}

/// Events from a broker into the hub's core. Every method may wait: a broker must hold the
/// client back meanwhile (backpressure), never drop the event.
#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// Decides a CONNECT. Only an [`Admission::Allow`]ed client may connect.
    async fn authenticate(&self, connect: &Connect<'_>) -> Admission;
    /// A connection is established. `replaced`: another connection of the same client
    /// identifier was current until now (a takeover, S-1.4).
    async fn connected(&self, client: &Client<'_>, replaced: bool);
    /// A connection ended, for `reason`. `current`: it was the client identifier's current
    /// connection (false for one that was taken over, D-34).
    async fn disconnected(&self, client: &Client<'_>, reason: &str, current: bool);
    /// The client holds a subscription to `filter` (from a SUBSCRIBE, or restored with its
    /// session).
    async fn subscribed(&self, client: &Client<'_>, filter: &str);
    /// A client published a message the allow-list let through. A broker that can hold the
    /// acknowledgement back answers the client by the returned [`Acceptance`] (the embedded
    /// one does); one that cannot (an external broker, D-79) ignores it.
    async fn publish_in(&self, message: PublishIn<'_>) -> Acceptance;
}
