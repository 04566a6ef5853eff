//! The iothub reference hub: an embedded MQTT 3.1.1 + 5 broker (rmqtt), the thing registry,
//! shadows, direct methods, NTP, presence, the REST API and storage, behind one entry point.
//!
//! Data flows one way: connection (broker) → router → service → store → publish (bus).

pub mod api;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod metrics;
pub mod query;
pub mod shadow;
pub mod store;
pub mod things;
