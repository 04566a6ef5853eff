//! `iothub-sim`: load runs against an iothub hub.
//!
//! Today it runs one scenario, the shadow-update load: N things, each with its own MQTT
//! connection, report ~200-byte states at a fixed total rate with QoS 1, and the run measures
//! durable update → `update/accepted` latency, throughput, rejections, lost and out-of-order
//! versions. With no `--mqtt`/`--api` it starts the reference hub itself (in-process, on its own
//! runtime threads, with a temporary data directory), so it needs no setup.
//!
//! The full simulator of issue 6 (declarative scenarios, methods, NTP, OTA, churn, virtual things
//! driven by the sans-IO device core) grows from here; the virtual things below speak the wire
//! contract directly because that core does not exist yet.

pub mod embedded;
pub mod provision;
pub mod report;
pub mod shadow_load;
