//! `iothub-sim`: load runs against an iothub hub with virtual things driven by the device core.
//!
//! Every virtual thing is one tokio task owning a TCP connection (MQTT 3.1.1 or 5, encoded with
//! rumqttc's codec modules) and one [`iothub_sdk_nostd::Device`], the sans-IO core the SDKs use:
//! it subscribes and gets its shadow after each connect, reports state, applies deltas after a
//! configurable delay and reports them back, answers direct methods with configurable latency
//! and failure rate, syncs time with NTP, reconnects with jittered backoff and can be made to
//! churn. The business side changes desired state and calls methods through the REST API, and
//! can roll out a configuration and run a method job over the whole fleet ([`fleet_ops`]). A run
//! is described by a seeded TOML [`scenario::Scenario`]; the [`report::Report`] gives
//! HdrHistogram percentiles per interaction and counts of errors by kind.
//!
//! With no `--mqtt`/`--api` the binary starts the reference hub itself (as a child process with
//! a temporary data directory, see [`embedded`]), so it needs no setup; the report gives the CPU
//! and memory of both processes ([`resources`]). `--metrics-addr` serves live Prometheus
//! metrics while running ([`metrics`]). A run can be split into shards ([`shard`]) run by
//! several processes ([`workers`]) or machines, whose reports merge exactly
//! ([`report::merge`]); [`threshold`]s decide whether a run passed.

pub mod business;
pub mod dev_certs;
pub mod embedded;
pub mod fleet;
pub mod fleet_ops;
pub mod metrics;
pub mod mqtt;
pub mod progress;
pub mod provision;
pub mod report;
pub mod resources;
pub mod run;
pub mod scenario;
pub mod series;
pub mod shard;
pub mod stats;
pub mod thing;
pub mod threshold;
pub mod workers;
