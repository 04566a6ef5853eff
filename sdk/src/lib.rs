//! Async device SDK for std targets (tokio + rumqttc).
//!
//! Not built yet: tracked by issue 3. It will drive the sans-IO core of `iothub-sdk-nostd`.

pub use iothub_spec as spec;
