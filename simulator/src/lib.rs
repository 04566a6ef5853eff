//! `iothub-sim`: thousands of virtual things for load tests.
//!
//! Not built yet: tracked by issue 6. Until then `hub/src/bin/iothub-bench.rs` measures
//! durable shadow update throughput against the reference hub.

pub use iothub_spec as spec;
