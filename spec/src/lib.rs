//! The iothub wire contract: every topic string, payload struct, error code and limit of the
//! protocol, in one `no_std`, heap-free crate. The protocol's text, normative for everything
//! here, is `docs/spec.md` at the root of the repository; clause ids such as S-3.4 and decision
//! ids such as D-12 in these docs refer to it.
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
//! | [`topic`] | topic parser and builders, subscription filters, the S-2.1 allow-list | S-2, D-7, D-8 |
//! | [`payload`] | every JSON message body and the JSON field names | S-3 .. S-9, D-3 .. D-6 |
//! | [`code`] | error codes, method codes, OTA and presence enums | S-3.8, S-5.2, S-7, S-8, "Error codes" |
//! | [`limits`] | default limits and the non-recursive JSON depth check | S-3.9, S-5.3, D-1, "Limits" |
//!
//! Golden vectors written by hand from `docs/spec.md` live next to this crate in `spec/vectors/`
//! (see `spec/vectors/README.md`); the hub's tests and the conformance suite check against them.
//!
//! # Decisions where the clauses are silent
//!
//! They are in `docs/spec.md`, each next to the clause it completes and listed in its "Decision
//! index". D-1 to D-15 are the fifteen decisions this crate's documentation used to list, under
//! the same numbers (so "spec crate decision 12" is D-12): depth counting (D-1), empty payloads
//! (D-2), the first `update/documents` (D-3), `metadata` always present (D-4), method response
//! fields (D-5), the REST envelope (D-6), topic levels (D-7), the subscribe allow-list (D-8),
//! unknown fields (D-9), strings without escapes (D-10), timestamps (D-11), the named-shadow
//! quota (D-12), versions (D-13), empty objects (D-14), validation order and the token in errors
//! (D-15).
#![no_std]

#[cfg(test)]
extern crate std;

pub mod code;
pub mod ids;
pub mod limits;
pub mod payload;
pub mod topic;

pub use heapless;
pub use serde_json_core;
