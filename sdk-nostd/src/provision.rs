//! Provisioning on first boot (S-10), sans-IO and without the heap (feature `provisioning`).
//!
//! [`Provisioning`] decides what to subscribe to, builds the request and reads the reply; the
//! caller's MQTT client connects with [`Provisioning::username`] (user name and client id) and
//! the claim secret, moves the bytes and passes `now`. The credentials in
//! [`ProvisionReply::Accepted`] borrow from the reply's payload: the application copies them
//! to its own storage and connects as that thing from then on.
//!
//! ```
//! use iothub_sdk_nostd::provision::{Provisioning, ProvisionReply};
//! use iothub_sdk_nostd::Instant;
//! let mut p = Provisioning::new("factory", "SN1", "boot-1", Instant::ZERO, 10_000).unwrap();
//! let mut topic = [0u8; 128];
//! let mut body = [0u8; 128];
//! let (t, b) = p.request(None, &mut topic, &mut body).unwrap();
//! assert_eq!(t, "$iothub/provision/factory/SN1/request");
//! assert_eq!(b, br#"{"clientToken":"boot-1"}"#);
//! let reply = br#"{"clientToken":"boot-1","thingId":"d1","password":"pw","settings":{},"timestamp":5}"#;
//! let mut topic = [0u8; 128];
//! let accepted = p.accepted_topic(&mut topic).unwrap();
//! match p.handle(accepted, reply) {
//!     Some(ProvisionReply::Accepted { thing_id, password }) => assert_eq!((thing_id, password), ("d1", "pw")),
//!     other => panic!("{other:?}"),
//! }
//! ```

use iothub_spec::payload::{ErrorResponse, ProvisionAccepted, ProvisionRequest};
use iothub_spec::topic::TopicError;
use iothub_spec::topic::provision::{Claim, ProvisionKind, ProvisionTopic};
use serde::Deserialize;

use crate::time::Instant;

/// Settings of the reply that this core does not read (they are skipped).
#[derive(Debug, Clone, Copy, Deserialize)]
struct AnySettings {}

/// What the hub answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionReply<'p> {
    /// The thing's id and secret (S-10.2): store them.
    Accepted {
        /// The thing id.
        thing_id: &'p str,
        /// The thing's secret.
        password: &'p str,
    },
    /// Refused with an S-10.5 code and message.
    Rejected {
        /// The code (400, 403, 409, 429, 503).
        code: u16,
        /// Which refusal (e.g. "enrollment exhausted").
        message: &'p str,
    },
    /// No answer before the deadline given to [`Provisioning::new`].
    TimedOut,
}

/// Why the request could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The enrollment or serial is not valid (S-10.1).
    InvalidClaim,
    /// A buffer is too small.
    BufferTooSmall,
}

impl From<TopicError> for ProvisionError {
    fn from(_: TopicError) -> Self {
        ProvisionError::BufferTooSmall
    }
}

/// One provisioning exchange of a device (S-10): the claim, the request's token and deadline.
#[derive(Debug, Clone, Copy)]
pub struct Provisioning<'a> {
    claim: Claim<'a>,
    token: &'a str,
    deadline: Instant,
}

impl<'a> Provisioning<'a> {
    /// An exchange under `enrollment` as `serial`, whose reply carries `token`, that gives up
    /// `timeout_ms` after `now`.
    pub fn new(
        enrollment: &'a str,
        serial: &'a str,
        token: &'a str,
        now: Instant,
        timeout_ms: u64,
    ) -> Result<Self, ProvisionError> {
        let claim = Claim::parse_parts(enrollment, serial).ok_or(ProvisionError::InvalidClaim)?;
        Ok(Provisioning {
            claim,
            token,
            deadline: now.add_millis(timeout_ms),
        })
    }

    /// The MQTT user name and client identifier to connect with, written into `buf`.
    pub fn username<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, ProvisionError> {
        Ok(self.claim.write_to(buf)?)
    }

    /// The `accepted` topic, to subscribe to before sending the request.
    pub fn accepted_topic<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, ProvisionError> {
        Ok(self.claim.topic(ProvisionKind::Accepted).write_to(buf)?)
    }

    /// The `rejected` topic, to subscribe to before sending the request.
    pub fn rejected_topic<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, ProvisionError> {
        Ok(self.claim.topic(ProvisionKind::Rejected).write_to(buf)?)
    }

    /// The request's topic and body (asking for `thing_id` when given), written into the
    /// caller's buffers; publish it at QoS 1 after both subscriptions are acknowledged.
    pub fn request<'t, 'b>(
        &self,
        thing_id: Option<&str>,
        topic: &'t mut [u8],
        body: &'b mut [u8],
    ) -> Result<(&'t str, &'b [u8]), ProvisionError> {
        let t = self.claim.topic(ProvisionKind::Request).write_to(topic)?;
        let request: ProvisionRequest<'_, ()> = ProvisionRequest {
            client_token: self.token,
            thing_id,
            serial: None,
            attributes: None,
        };
        let n = serde_json_core::to_slice(&request, body)
            .map_err(|_| ProvisionError::BufferTooSmall)?;
        let b = body.get(..n).ok_or(ProvisionError::BufferTooSmall)?;
        Ok((t, b))
    }

    /// Reads a received message: `Some` for this exchange's reply, `None` for anything else
    /// (another topic, another token, a body that does not parse).
    pub fn handle<'p>(&self, topic: &str, payload: &'p [u8]) -> Option<ProvisionReply<'p>> {
        let t = ProvisionTopic::parse(topic).ok()?;
        if t.claim() != self.claim {
            return None;
        }
        match t.kind {
            ProvisionKind::Accepted => {
                let (a, _): (ProvisionAccepted<'p, AnySettings>, _) =
                    serde_json_core::from_slice(payload).ok()?;
                (a.client_token == self.token).then_some(ProvisionReply::Accepted {
                    thing_id: a.thing_id,
                    password: a.password,
                })
            }
            ProvisionKind::Rejected => {
                let (e, _): (ErrorResponse<'p>, _) = serde_json_core::from_slice(payload).ok()?;
                e.client_token
                    .is_none_or(|t| t == self.token)
                    .then_some(ProvisionReply::Rejected {
                        code: e.code,
                        message: e.message,
                    })
            }
            ProvisionKind::Request => None,
        }
    }

    /// [`ProvisionReply::TimedOut`] once `now` has reached the deadline.
    pub fn poll_timeout(&self, now: Instant) -> Option<ProvisionReply<'static>> {
        (now >= self.deadline).then_some(ProvisionReply::TimedOut)
    }

    /// When [`Provisioning::poll_timeout`] will answer.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Provisioning<'static> {
        Provisioning::new("e1", "AA:01", "tok", Instant::from_millis(100), 1000).unwrap()
    }

    #[test]
    fn names_and_request() {
        let p = p();
        let mut buf = [0u8; 128];
        assert_eq!(p.username(&mut buf).unwrap(), "$claim/e1/AA:01");
        assert_eq!(
            p.rejected_topic(&mut buf).unwrap(),
            "$iothub/provision/e1/AA:01/rejected"
        );
        let (mut t, mut b) = ([0u8; 128], [0u8; 128]);
        let (topic, body) = p.request(Some("dev-1"), &mut t, &mut b).unwrap();
        assert_eq!(topic, "$iothub/provision/e1/AA:01/request");
        assert_eq!(body, br#"{"clientToken":"tok","thingId":"dev-1"}"#);
        let mut tiny = [0u8; 8];
        assert_eq!(
            p.request(None, &mut t, &mut tiny).err(),
            Some(ProvisionError::BufferTooSmall)
        );
        assert!(Provisioning::new("e.1", "s", "t", Instant::ZERO, 1).is_err());
    }

    #[test]
    fn replies() {
        let p = p();
        let acc = "$iothub/provision/e1/AA:01/accepted";
        let rej = "$iothub/provision/e1/AA:01/rejected";
        let ok = br#"{"clientToken":"tok","thingId":"d1","password":"pw","settings":{"limits":{"maxRequestPayload":8192}},"timestamp":1}"#;
        assert_eq!(
            p.handle(acc, ok),
            Some(ProvisionReply::Accepted {
                thing_id: "d1",
                password: "pw"
            })
        );
        let other =
            br#"{"clientToken":"x","thingId":"d1","password":"pw","settings":{},"timestamp":1}"#;
        assert_eq!(p.handle(acc, other), None, "another exchange's reply");
        assert_eq!(p.handle("$iothub/provision/e1/AA:02/accepted", ok), None);
        let no =
            br#"{"code":403,"message":"enrollment exhausted","timestamp":1,"clientToken":"tok"}"#;
        assert_eq!(
            p.handle(rej, no),
            Some(ProvisionReply::Rejected {
                code: 403,
                message: "enrollment exhausted"
            })
        );
        assert_eq!(p.handle(rej, b"not json"), None);
        assert_eq!(p.poll_timeout(Instant::from_millis(1099)), None);
        assert_eq!(
            p.poll_timeout(Instant::from_millis(1100)),
            Some(ProvisionReply::TimedOut)
        );
    }
}
