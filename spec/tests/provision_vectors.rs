//! Checks `spec/vectors/provision.json` (S-10) against the claim parser, the provisioning topic
//! parser, the allow-list and the payload types.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use iothub_spec::payload::{ProvisionAccepted, ProvisionRequest};
use iothub_spec::topic::acl::{may_publish, may_subscribe};
use iothub_spec::topic::provision::{Claim, ProvisionKind, ProvisionTopic};
use serde_json::Value;

fn load() -> Value {
    let path = format!("{}/vectors/provision.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path)
}

fn cases<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    let cases = v[key].as_array().unwrap();
    assert!(cases.len() >= 3, "{key}");
    cases
}

#[test]
fn claims() {
    let v = load();
    for c in cases(&v, "claims") {
        let (name, user) = (&c["name"], c["user"].as_str().unwrap());
        match Claim::parse(user) {
            Some(claim) => {
                assert!(c["valid"].as_bool().unwrap(), "{name}");
                assert_eq!(
                    claim.enrollment,
                    c["enrollment"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(claim.serial, c["serial"].as_str().unwrap(), "{name}");
                assert_eq!(claim.to_string(), user, "{name}");
            }
            None => assert!(!c["valid"].as_bool().unwrap(), "{name}"),
        }
    }
}

#[test]
fn topics() {
    let v = load();
    for c in cases(&v, "topics") {
        let (name, topic) = (&c["name"], c["topic"].as_str().unwrap());
        match ProvisionTopic::parse(topic) {
            Ok(t) => {
                assert!(c["valid"].as_bool().unwrap(), "{name}");
                let kind = match t.kind {
                    ProvisionKind::Request => "request",
                    ProvisionKind::Accepted => "accepted",
                    ProvisionKind::Rejected => "rejected",
                };
                assert_eq!(kind, c["kind"].as_str().unwrap(), "{name}");
                assert_eq!(t.enrollment, c["enrollment"].as_str().unwrap(), "{name}");
                assert_eq!(t.serial, c["serial"].as_str().unwrap(), "{name}");
                assert_eq!(t.to_string(), topic, "{name}");
            }
            Err(_) => assert!(!c["valid"].as_bool().unwrap(), "{name}"),
        }
    }
}

#[test]
fn acl() {
    let v = load();
    for c in cases(&v, "acl") {
        let (name, user) = (&c["name"], c["user"].as_str().unwrap());
        let allowed = c["allowed"].as_bool().unwrap();
        if let Some(topic) = c["publish"].as_str() {
            assert_eq!(may_publish(user, topic), allowed, "{name}");
        } else {
            let filter = c["subscribe"].as_str().unwrap();
            assert_eq!(may_subscribe(user, filter, false), allowed, "{name}");
        }
    }
}

#[test]
fn payloads() {
    let v = load();
    for c in cases(&v, "payloads") {
        let (name, json) = (&c["name"], c["json"].to_string());
        match c["type"].as_str().unwrap() {
            "ProvisionRequest" => {
                let r: ProvisionRequest<Value> = serde_json::from_str(&json).unwrap();
                assert_eq!(
                    Some(r.client_token),
                    c["json"]["clientToken"].as_str(),
                    "{name}"
                );
                assert_eq!(r.thing_id, c["json"]["thingId"].as_str(), "{name}");
                assert_eq!(r.attributes.as_ref(), c["json"].get("attributes"), "{name}");
                assert_eq!(serde_json::to_value(r).unwrap(), c["json"], "{name}");
            }
            "ProvisionAccepted" => {
                let a: ProvisionAccepted<Value> = serde_json::from_str(&json).unwrap();
                assert_eq!(Some(a.password), c["json"]["password"].as_str(), "{name}");
                assert_eq!(serde_json::to_value(a).unwrap(), c["json"], "{name}");
            }
            other => panic!("{name}: unknown type {other}"),
        }
    }
}
