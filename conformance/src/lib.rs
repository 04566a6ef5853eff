//! `iothub-conformance`: an independent checker of docs/spec.md, after h2spec and Autobahn.
//!
//! The hub side plays devices (MQTT 3.1.1 and 5, several at once, via rumqttc) and the business
//! side (REST) against any hub that implements docs/spec.md, and checks every clause the hub
//! owns. Expected results come from docs/spec.md and the hand-written golden vectors in
//! `spec/vectors/`, never from a hub's code. Each implementation has a committed
//! expected-results file (`expected/reference-hub.json`); `--expect` diffs a run against it.
//!
//! The device side ([`device`]) plays the hub instead: a scripted MQTT server on a free
//! loopback port, the device under test run as a child process, and cases judging what the
//! device publishes and subscribes. [`shim`] holds what the two device shims (`shim-std`,
//! `shim-nostd`, built on the two SDKs) share, including the test-only break proxy.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`case`] | the case type, filtering, running, outcomes |
//! | [`cases`] | every case, one module per clause (`s1` .. `s9`) |
//! | [`check`] | pure checking functions (unit-tested with fabricated observations) |
//! | [`mqtt`], [`raw`] | device connections (rumqttc) and hand-written packets for malformed input |
//! | [`net`] | where MQTT connections go: plain TCP or TLS (`--tls`), opened in one place |
//! | [`api`] | the REST client, checking the S-9.1 envelope |
//! | [`ctx`] | the hub under test and helpers to create and connect things |
//! | [`spawn`] | `--spawn-hub` |
//! | [`report`] | table, JSON report, expected-results diff |
//! | [`transcript`] | the messages a case exchanged, shown with its failure |
//! | [`junit`], [`html`] | the JUnit XML (`--junit`) and HTML (`--html`) reports |
//! | [`preflight`] | the hub side's checks before any case (addresses, token, version) |
//! | [`external`] | `--external-broker`: a hub on a broker it does not run (D-59..D-66) |
//! | [`vectors`] | the golden vectors, compiled in |
//! | [`device`] | the device side: scripted hub, device cases, judges |
//! | [`shim`] | shared code of the device shims (environment, break proxy) |

pub use iothub_spec as spec;

pub mod api;
pub mod case;
pub mod cases;
pub mod check;
pub mod ctx;
pub mod device;
pub mod external;
pub mod html;
pub mod junit;
pub mod mqtt;
pub mod net;
pub mod preflight;
pub mod raw;
pub mod report;
pub mod shim;
pub mod spawn;
pub mod transcript;
pub mod vectors;
