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
//! # Decisions where the clauses are silent
//!
//! Where docs/spec.md says nothing, this crate follows AWS IoT Device Shadow (and Azure device twins
//! where AWS is silent too). Each decision below is normative for our hub and SDKs.
//!
//! 1. **JSON depth** (S-3.9 "JSON depth 8") is counted over the *whole* request payload, as
//!    [`limits::json_depth_exceeds`] does: every `{` or `[` opens one level, a bare scalar root is
//!    depth 0, `{}` is depth 1 and `{"a":{"b":1}}` is depth 2. So in an update request
//!    `{"state":{"desired":{..}}}` the `desired` object itself is at depth 3, and five more object
//!    levels fit below it. A payload deeper than the limit is rejected with 400 before it reaches
//!    a recursive parser.
//! 2. **Empty `get` payload** (S-3.8) means `{}`; so does a payload of only JSON whitespace.
//!    An empty or whitespace-only `update` payload is a 400.
//! 3. **`update/documents` for the first version** (S-3.7): `previous` is omitted (the shadow did
//!    not exist). Readers accept both an absent and a `null` `previous`
//!    ([`payload::Documents::previous`]).
//! 4. **`metadata` is always present** in get/accepted, update/accepted, update/delta and
//!    documents, as `{}` when nothing is in it, so typed readers need no default.
//! 5. **Method response** (S-5.2): `clientToken` and `code` are required; `message` and `data` may
//!    be omitted by the device (the hub then reports `message` as `""` and `data` as `null`). The
//!    method request always carries `data` (`null` when the REST call gave none).
//! 6. **REST envelope** (S-9.1): `data` is always written, as `null` when there is none, since
//!    S-9.1 says every body has the three keys; readers accept it absent.
//! 7. **Topic levels**: a topic name never holds `+`, `#` or NUL; the free-form tails of
//!    `T/messages/will/{anything}` and `$iothub/user/things/{id}/{anything}` must not contain an
//!    empty level (`a//b`, a trailing `/`). The bare `T/messages/will` is the Will topic with an
//!    empty tail (an MQTT filter `T/messages/will/#` matches it); `$iothub/user/things/{id}` with
//!    nothing after it is not a topic of this spec. Topics and filters are at most
//!    [`limits::MAX_TOPIC_LEN`] bytes.
//! 8. **Subscribe allow-list** (S-2.1): a filter must lie strictly below `T` or
//!    `$iothub/user/things/{ownId}` (the bare `T` is refused, `T/#` is allowed), must be a
//!    well-formed MQTT filter, and must not contain an empty level after the id.
//! 9. **Unknown JSON fields** in requests are ignored (as AWS), except that the hub still applies
//!    the size and depth limits to the whole payload.
//! 10. **Strings are borrowed** from the payload: with `serde-json-core` a string containing JSON
//!     escapes is either handed over still escaped (plain `from_slice`) or needs an unescape
//!     buffer (`from_slice_escaped`); with `serde_json` a borrowed `&str` field fails on escapes.
//!     Client tokens, ids and enum strings never need escapes.
//! 11. **Timestamps** are milliseconds since the Unix epoch, `u64`.
//! 12. **Named shadow quota** ([`limits::Limits::max_named_shadows`]): counts named shadows
//!     only; `default` is the classic shadow (S-2) and is always allowed. An update that would
//!     create one named shadow too many is refused with 403 (as Azure answers an exceeded
//!     quota); a `get` of a missing shadow stays 404.
//! 13. **Versions**: every accepted update adds 1 to the version, even one that changes nothing
//!     (`{"state":{"desired":{}}}`, a `null` for a missing key), as AWS. A shadow that does not
//!     exist is at version 0, so `"version":0` is accepted when creating it and any other version
//!     gets 409. An update that leaves `desired` or `reported` empty keeps the shadow, with that
//!     section omitted.
//! 14. **Empty objects**: an object that is empty after the merge is removed, whether emptied by
//!     deletions or written as `{}` (metadata has no leaf for it); `{}` merged onto an existing
//!     object changes nothing. `null` inside an array is a value, not a deletion.
//! 15. **Request validation order** (S-3.8): size 413, UTF-8 415, depth 400, JSON syntax 400,
//!     types and required fields 400. `state` must be an object with `desired` and/or
//!     `reported`, each an object or `null`; anything else is 400.
//! 16. **`clientToken` on error replies** (S-3.8, S-4.1): every error reply echoes the request's
//!     `clientToken` whenever it can be recovered, whatever the error, 413, 415, the depth 400
//!     and malformed JSON included. When the payload parsed, the token is its top-level
//!     `clientToken` string; when it was refused before or while parsing, the token is what
//!     [`scan::client_token`] finds: the last top-level `"clientToken"` key of the outermost
//!     object whose value is a complete string. A token over the limit (64 bytes), or one that
//!     is not a string, is never echoed (it is itself the error, or it is not a token).
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
