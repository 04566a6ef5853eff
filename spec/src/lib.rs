//! The iothub wire contract: every topic string, payload struct, error code and limit of
//! [docs/spec.md](../docs/spec.md), in one `no_std`, heap-free crate.
//!
//! The hub, both SDKs, the simulator and the conformance suite depend on this crate so that no
//! other crate spells `"$iothub/..."` or a JSON field name (see `STYLE.md`, "The wire lives in one
//! place"). Everything here is pure data and pure functions: no I/O, no clock, no allocation.
//! Callers own the memory: topic builders write into caller buffers ([`topic::Topic::write_to`]),
//! payload structs borrow their strings from the received bytes and are generic over the JSON
//! bodies, so a std user plugs `serde_json::Value` and a `no_std` user plugs a typed struct.
//!
//! | module | what it owns | `docs/spec.md` |
//! | --- | --- | --- |
//! | [`ids`] | thing ids, shadow and method names, service users | S-1.1, S-1.5, S-2, S-5.1 |
//! | [`topic`] | topic parser and builders, subscription filters, the S-2.1 allow-list | S-2 |
//! | [`payload`] | every JSON message body and the JSON field names | S-3 .. S-9 |
//! | [`code`] | error codes, method codes, OTA and presence enums | S-3.8, S-5.2, S-7, S-8 |
//! | [`limits`] | default limits and the non-recursive JSON depth check | S-3.9, S-5.3 |
//! | [`scan`] | the `clientToken` of a payload refused before parsing | S-3.8, S-4.1 |
//!
//! Golden vectors written by hand from docs/spec.md live next to this crate in `spec/vectors/`
//! (see `spec/vectors/README.md`); the hub's tests and the conformance suite check against them.
//!
//! # Decisions
//!
//! Where a clause is silent, [docs/spec.md](../docs/spec.md) records the answer as a numbered
//! decision (its [decision index](../docs/spec.md#decision-index)); this crate's items cite them
//! by id, e.g. [`limits::json_depth_exceeds`] implements D-1 (counting JSON depth) and
//! [`scan::client_token`] S-4.2 (tokens on error replies). D-1 to D-15 were once listed here
//! and kept their numbers there; the document is the one place they are written.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod code;
pub mod ids;
pub mod limits;
pub mod payload;
pub mod scan;
pub mod topic;

pub use heapless;
pub use serde_json_core;
