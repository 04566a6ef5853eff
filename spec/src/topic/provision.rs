//! Provisioning over MQTT (S-10): the claim user name, the provisioning topics and what a claim
//! connection may do, as pure functions shared by the hub, the SDKs and the conformance suite.
//!
//! | what | form |
//! | --- | --- |
//! | claim user name and client identifier ([`Claim`]) | `$claim/{enrollment}/{serial}` |
//! | request (device → hub) | `$iothub/provision/{enrollment}/{serial}/request` |
//! | accepted · rejected (hub → device) | `…/{serial}/accepted` · `…/{serial}/rejected` |
//!
//! `enrollment` follows the thing id rule (S-1.1); `serial` the rule of [`is_valid_serial`].

use core::fmt;

use super::parse::split_keep;
use super::{PREFIX, TopicError, TopicString, fmt_pieces, to_topic_string, write_pieces};
use crate::ids::{CLAIM_USER_PREFIX, MAX_ID_LEN, is_valid_thing_id};

/// `/provision/`: after [`PREFIX`], before the enrollment id.
const PROVISION: &str = "/provision/";
/// The last levels of the three topics, each with its `/`, in [`ProvisionKind`] order.
const TAILS: [&str; 3] = ["/request", "/accepted", "/rejected"];

/// Whether `s` is a valid device serial: 1 to 64 bytes of `[0-9A-Za-z_.:-]` (S-10.1), so a MAC
/// address or a dotted serial fits in one topic level.
pub fn is_valid_serial(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The identity of a claim connection (S-10.1): user name and client identifier are both
/// `$claim/{enrollment}/{serial}`; the password is the enrollment's claim secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim<'a> {
    /// The enrollment the device claims under (a thing-id-like id).
    pub enrollment: &'a str,
    /// The device's serial, unique within the enrollment.
    pub serial: &'a str,
}

impl<'a> Claim<'a> {
    /// The claim named by an MQTT user name, `None` when it is not a valid claim user name.
    pub fn parse(username: &'a str) -> Option<Claim<'a>> {
        let rest = username.strip_prefix(CLAIM_USER_PREFIX)?;
        let (enrollment, serial) = split_keep(rest);
        let serial = serial?.get(1..)?;
        (is_valid_thing_id(enrollment) && is_valid_serial(serial))
            .then_some(Claim { enrollment, serial })
    }

    /// The claim of `serial` under `enrollment`, `None` when either is not valid (S-10.1).
    pub fn parse_parts(enrollment: &'a str, serial: &'a str) -> Option<Claim<'a>> {
        (is_valid_thing_id(enrollment) && is_valid_serial(serial))
            .then_some(Claim { enrollment, serial })
    }

    /// Writes the user name (also the client identifier) into `buf`, without the heap.
    pub fn write_to<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, TopicError> {
        write_pieces(&self.pieces(), buf)
    }

    /// The topic of `kind` for this claim.
    pub fn topic(&self, kind: ProvisionKind) -> ProvisionTopic<'a> {
        ProvisionTopic {
            enrollment: self.enrollment,
            serial: self.serial,
            kind,
        }
    }

    fn pieces(&self) -> [&'a str; 4] {
        [CLAIM_USER_PREFIX, self.enrollment, "/", self.serial]
    }
}

impl fmt::Display for Claim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_pieces(&self.pieces(), f)
    }
}

/// Which of the three provisioning topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProvisionKind {
    /// `…/request`: the device asks to be provisioned (device → hub).
    Request,
    /// `…/accepted`: the thing id, its secret and the hub's settings (hub → device).
    Accepted,
    /// `…/rejected`: an error body of S-3.8's shape (hub → device).
    Rejected,
}

/// A provisioning topic (S-10.2), parsed or about to be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProvisionTopic<'a> {
    /// The enrollment id level.
    pub enrollment: &'a str,
    /// The serial level.
    pub serial: &'a str,
    /// Which topic.
    pub kind: ProvisionKind,
}

impl<'a> ProvisionTopic<'a> {
    /// Parses `$iothub/provision/{enrollment}/{serial}/{request|accepted|rejected}`.
    pub fn parse(topic: &'a str) -> Result<ProvisionTopic<'a>, TopicError> {
        if topic.len() > super::MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        let rest = topic
            .strip_prefix(PREFIX)
            .ok_or(TopicError::NotIothub)?
            .strip_prefix(PROVISION)
            .ok_or(TopicError::UnknownShape)?;
        let (enrollment, rest) = split_keep(rest);
        let rest = rest
            .and_then(|r| r.get(1..))
            .ok_or(TopicError::UnknownShape)?;
        let (serial, tail) = split_keep(rest);
        let tail = tail.ok_or(TopicError::UnknownShape)?;
        let kind = match TAILS.iter().position(|t| *t == tail) {
            Some(0) => ProvisionKind::Request,
            Some(1) => ProvisionKind::Accepted,
            Some(2) => ProvisionKind::Rejected,
            _ => return Err(TopicError::UnknownShape),
        };
        if !is_valid_thing_id(enrollment) || !is_valid_serial(serial) {
            return Err(TopicError::InvalidLevel);
        }
        Ok(ProvisionTopic {
            enrollment,
            serial,
            kind,
        })
    }

    /// The claim this topic belongs to.
    pub fn claim(&self) -> Claim<'a> {
        Claim {
            enrollment: self.enrollment,
            serial: self.serial,
        }
    }

    /// Writes the topic into `buf`, without the heap.
    pub fn write_to<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, TopicError> {
        write_pieces(&self.pieces(), buf)
    }

    /// The topic as a fixed-capacity string.
    pub fn to_topic_string(&self) -> Result<TopicString, TopicError> {
        to_topic_string(&self.pieces())
    }

    fn pieces(&self) -> [&'a str; 6] {
        let tail = match self.kind {
            ProvisionKind::Request => TAILS[0],
            ProvisionKind::Accepted => TAILS[1],
            ProvisionKind::Rejected => TAILS[2],
        };
        [PREFIX, PROVISION, self.enrollment, "/", self.serial, tail]
    }
}

impl fmt::Display for ProvisionTopic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_pieces(&self.pieces(), f)
    }
}

/// Whether the claim connection `claim` may publish on `topic` (S-10.3): only its own request.
pub fn claim_may_publish(claim: &Claim<'_>, topic: &str) -> bool {
    ProvisionTopic::parse(topic)
        .is_ok_and(|t| t.kind == ProvisionKind::Request && t.claim() == *claim)
}

/// Whether the claim connection `claim` may subscribe to `filter` (S-10.3): only its own
/// `accepted` and `rejected` topics, exactly (no wildcards), never shared.
pub fn claim_may_subscribe(claim: &Claim<'_>, filter: &str, shared: bool) -> bool {
    !shared
        && ProvisionTopic::parse(filter)
            .is_ok_and(|t| t.kind != ProvisionKind::Request && t.claim() == *claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Claim<'static> = Claim {
        enrollment: "factory-1",
        serial: "AA:BB:01",
    };

    #[test]
    fn claim_user_names() {
        assert_eq!(Claim::parse("$claim/factory-1/AA:BB:01"), Some(C));
        let mut buf = [0u8; 64];
        assert_eq!(C.write_to(&mut buf), Ok("$claim/factory-1/AA:BB:01"));
        for bad in [
            "$claim/factory-1",
            "$claim/factory-1/",
            "$claim//s1",
            "$claim/e/s/x",
            "$claim/e.1/s",
            "claim/e/s",
            "$claimx/e/s",
            "$claim/e/s+",
        ] {
            assert_eq!(Claim::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn topics_round_trip() {
        for kind in [
            ProvisionKind::Request,
            ProvisionKind::Accepted,
            ProvisionKind::Rejected,
        ] {
            let t = C.topic(kind);
            let s = t.to_topic_string().unwrap();
            assert_eq!(ProvisionTopic::parse(&s), Ok(t));
        }
        let mut buf = [0u8; 128];
        assert_eq!(
            C.topic(ProvisionKind::Request).write_to(&mut buf),
            Ok("$iothub/provision/factory-1/AA:BB:01/request")
        );
        assert!(ProvisionTopic::parse("$iothub/provision/e/s").is_err());
        assert!(ProvisionTopic::parse("$iothub/provision/e/s/other").is_err());
        assert!(ProvisionTopic::parse("$iothub/provision/e/s/request/x").is_err());
        assert!(ProvisionTopic::parse("$iothub/provision/e/+/request").is_err());
        assert!(ProvisionTopic::parse("$iothub/things/t1/ntp/req").is_err());
    }

    #[test]
    fn claims_keep_to_their_own_topics() {
        let own = "$iothub/provision/factory-1/AA:BB:01/";
        assert!(claim_may_publish(&C, &[own, "request"].concat()));
        assert!(!claim_may_publish(&C, &[own, "accepted"].concat()));
        assert!(!claim_may_publish(
            &C,
            "$iothub/provision/factory-1/AA:BB:02/request"
        ));
        assert!(!claim_may_publish(&C, "$iothub/things/t1/ntp/req"));
        assert!(claim_may_subscribe(&C, &[own, "accepted"].concat(), false));
        assert!(claim_may_subscribe(&C, &[own, "rejected"].concat(), false));
        assert!(!claim_may_subscribe(&C, &[own, "rejected"].concat(), true));
        assert!(!claim_may_subscribe(&C, &[own, "+"].concat(), false));
        assert!(!claim_may_subscribe(&C, &[own, "request"].concat(), false));
        assert!(!claim_may_subscribe(&C, "$iothub/provision/#", false));
        assert!(!claim_may_subscribe(&C, "#", false));
    }
}
