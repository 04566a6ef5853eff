//! Provisioning on first boot (S-10) for a virtual thing that holds only the enrollment's claim
//! credential: the claim connection, its retries, and what they count.
//!
//! One attempt connects as the claim `$claim/{enrollment}/{serial}` (user name and client id,
//! D-43), subscribes to its `accepted` and `rejected` topics, publishes its request asking for
//! its scenario id (the enrollment's `prefix` id rule, D-44), reads the reply with the `no_std`
//! core's [`Provisioning`] (the same code a device runs) and says goodbye; the hub closes the
//! claim connection after its reply anyway. A 429 (the hub provisions a bounded number at once)
//! or 503 answer, a busy or unavailable CONNACK and transport failures are retried after the
//! thing's reconnect backoff (doubling, ±50 % jitter, so a refused crowd spreads out) until
//! `population.provision_deadline_s` after the first claim CONNECT; a 400, 403 or 409 answer, a
//! refused claim secret and a refused subscription are final. Every attempt is counted by
//! outcome and every thing that gives up by reason: nothing fails silently.

use std::time::Duration;

use iothub_sdk_nostd::provision::{ProvisionReply, Provisioning};
use iothub_sdk_nostd::spec::code::ErrorCode;
use iothub_sdk_nostd::{Instant as DevInstant, QoS};
use tokio::time::Instant;

use super::link::Link;
use super::{ConnectError, HANDSHAKE_TIMEOUT, Thing, wait_stop};
use crate::fleet::{ClaimCredential, Phase};
use crate::mqtt::Incoming;

/// Room for a claim user name or a provisioning topic: `$iothub/provision/` + two ids of at
/// most 64 bytes + the last level.
const NAME_BUF: usize = 192;
/// Room for the request body: the client token and a thing id.
const BODY_BUF: usize = 256;
/// Packet ids of the claim connection's two SUBSCRIBEs and its request.
const PKID_ACCEPTED: u16 = 1;
const PKID_REJECTED: u16 = 2;
const PKID_REQUEST: u16 = 3;

/// The credentials a thing got, and when its first claim CONNECT began.
pub(super) struct Provisioned {
    /// The thing id the hub gave.
    pub thing_id: String,
    /// Its secret (shown once).
    pub password: String,
    /// The start of the first attempt: the origin of the time to the first report.
    pub began: Instant,
}

/// Where a claim connection is: what it waits for.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Connect,
    ConnAck,
    SubAck,
    Answer,
}

impl Stage {
    fn waiting_for(self) -> &'static str {
        match self {
            Stage::Connect => "before tcp connected",
            Stage::ConnAck => "before connack",
            Stage::SubAck => "before suback",
            Stage::Answer => "before the answer",
        }
    }
}

/// How one claim connection ended with an answer.
enum Answer {
    Accepted { thing_id: String, password: String },
    Rejected { code: u16, message: String },
}

/// Whether a `rejected` code means "retry later" (S-10.5: 429 too many in flight, 503 the store
/// could not be written).
fn retryable_code(code: u16) -> bool {
    code == ErrorCode::TooManyRequests.as_u16() || code == ErrorCode::Unavailable.as_u16()
}

/// Whether a failed attempt may succeed later: transport trouble and a busy hub, not a refused
/// claim secret, a refused subscription or a malformed exchange.
fn retryable_error(e: &ConnectError) -> bool {
    match e {
        // 3.1.1: 3 server unavailable; 5: 0x88 server unavailable, 0x89 busy, 0x97 quota.
        ConnectError::Refused(code) => matches!(code, 3 | 0x88 | 0x89 | 0x97),
        ConnectError::SubscribeRefused
        | ConnectError::Protocol
        | ConnectError::Tls(_)
        | ConnectError::Stopped => false,
        ConnectError::Tcp(_)
        | ConnectError::TcpTimeout
        | ConnectError::Timeout
        | ConnectError::Closed => true,
    }
}

impl Thing {
    /// Provisions this thing with `claim`, retrying until the deadline; `None` when it gave up
    /// (counted in `provision_failed`) or the run stopped.
    pub(super) async fn first_boot(
        &mut self,
        claim: &ClaimCredential,
        phase: &mut tokio::sync::watch::Receiver<Phase>,
    ) -> Option<Provisioned> {
        let fleet = self.fleet.clone();
        let stats = &fleet.stats;
        let serial = fleet.serial(self.index);
        let thing_id = fleet.thing_id(self.index);
        let began = Instant::now();
        let deadline =
            began + Duration::from_secs_f64(fleet.scenario.population.provision_deadline_s);
        let mut attempt: u32 = 0;
        loop {
            stats.provision_attempts.inc();
            let token = format!("boot-{}-{attempt}", fleet.global(self.index));
            let left = deadline.saturating_duration_since(Instant::now());
            let mut stage = Stage::Connect;
            let exchange = self.claim_exchange(claim, &serial, &thing_id, &token, &mut stage);
            let outcome = tokio::select! {
                r = tokio::time::timeout(left.min(HANDSHAKE_TIMEOUT), exchange) => {
                    r.unwrap_or(Err(ConnectError::Timeout))
                }
                _ = wait_stop(phase) => Err(ConnectError::Stopped),
            };
            // A cancelled exchange leaves its buffers behind.
            self.rbuf = bytes::BytesMut::new();
            self.wbuf = bytes::BytesMut::new();
            let last = match outcome {
                Ok(Answer::Accepted {
                    thing_id: given,
                    password,
                }) => {
                    stats.provision_accepted.inc();
                    if given != thing_id {
                        // The `prefix` rule grants the id asked for; anything else is a defect.
                        stats
                            .protocol_errors
                            .add("provisioned with another thing id than asked for");
                    }
                    stats.provision.record(began.elapsed());
                    return Some(Provisioned {
                        thing_id: given,
                        password,
                        began,
                    });
                }
                Ok(Answer::Rejected { code, message }) => {
                    stats.provision_rejected.add(code.to_string());
                    if !retryable_code(code) {
                        stats
                            .provision_failed
                            .add(format!("rejected {code}: {message}"));
                        return None;
                    }
                    format!("rejected {code}")
                }
                Err(ConnectError::Stopped) => {
                    stats.provision_failed.add("run stopped");
                    return None;
                }
                Err(e) => {
                    let kind = match stage {
                        Stage::Connect => e.kind(),
                        _ => format!("{} ({})", e.kind(), stage.waiting_for()),
                    };
                    stats.provision_errors.add(kind.clone());
                    if !retryable_error(&e) {
                        stats.provision_failed.add(kind);
                        return None;
                    }
                    kind
                }
            };
            let at = Instant::now() + self.backoff(attempt);
            attempt += 1;
            if at >= deadline {
                stats
                    .provision_failed
                    .add(format!("deadline passed (last: {last})"));
                return None;
            }
            stats.provision_retries.inc();
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = wait_stop(phase) => {
                    stats.provision_failed.add("run stopped");
                    return None;
                }
            }
        }
    }

    /// One claim connection: CONNECT as the claim, both SUBSCRIBEs, the request, its answer;
    /// `stage` follows it, so that a failure says where it happened.
    async fn claim_exchange(
        &mut self,
        claim: &ClaimCredential,
        serial: &str,
        thing_id: &str,
        token: &str,
        stage: &mut Stage,
    ) -> Result<Answer, ConnectError> {
        // The deadline is the caller's (tokio timers); the core's is not polled.
        let p = Provisioning::new(&claim.enrollment, serial, token, DevInstant::ZERO, u64::MAX)
            .map_err(|_| ConnectError::Protocol)?;
        let mut user = [0u8; NAME_BUF];
        let user = p.username(&mut user).map_err(|_| ConnectError::Protocol)?;
        let mut stream = self.open().await?;
        *stage = Stage::ConnAck;
        self.wbuf.clear();
        let keep_alive = self.fleet.scenario.profile.keep_alive_s;
        self.codec
            .connect(user, &claim.secret, keep_alive, &mut self.wbuf)
            .map_err(|_| ConnectError::Protocol)?;
        self.send(&mut stream).await?;
        match self.next_packet(&mut stream).await? {
            Incoming::ConnAck { code: 0, .. } => {}
            Incoming::ConnAck { code, .. } => return Err(ConnectError::Refused(code)),
            _ => return Err(ConnectError::Protocol),
        }
        // Both subscriptions first: the answer must find them (S-10.3).
        let (mut acc, mut rej) = ([0u8; NAME_BUF], [0u8; NAME_BUF]);
        let accepted = p
            .accepted_topic(&mut acc)
            .map_err(|_| ConnectError::Protocol)?;
        let rejected = p
            .rejected_topic(&mut rej)
            .map_err(|_| ConnectError::Protocol)?;
        for (pkid, filter) in [(PKID_ACCEPTED, accepted), (PKID_REJECTED, rejected)] {
            self.codec
                .subscribe(pkid, filter, QoS::AtLeastOnce, &mut self.wbuf)
                .map_err(|_| ConnectError::Protocol)?;
        }
        *stage = Stage::SubAck;
        self.send(&mut stream).await?;
        let mut acked = 0;
        while acked < 2 {
            match self.next_packet(&mut stream).await? {
                Incoming::SubAck { granted: false, .. } => {
                    return Err(ConnectError::SubscribeRefused);
                }
                Incoming::SubAck { pkid, .. } if pkid == PKID_ACCEPTED || pkid == PKID_REJECTED => {
                    acked += 1;
                }
                Incoming::PingResp => {}
                _ => return Err(ConnectError::Protocol),
            }
        }
        let (mut topic, mut body) = ([0u8; NAME_BUF], [0u8; BODY_BUF]);
        let (topic, body) = p
            .request(Some(thing_id), &mut topic, &mut body)
            .map_err(|_| ConnectError::Protocol)?;
        self.codec
            .publish(topic, body, QoS::AtLeastOnce, PKID_REQUEST, &mut self.wbuf)
            .map_err(|_| ConnectError::Protocol)?;
        *stage = Stage::Answer;
        self.send(&mut stream).await?;
        let answer = loop {
            match self.next_packet(&mut stream).await? {
                Incoming::Publish {
                    topic,
                    payload,
                    pkid,
                } => {
                    if let Some(pkid) = pkid {
                        self.codec
                            .puback(pkid, &mut self.wbuf)
                            .map_err(|_| ConnectError::Protocol)?;
                    }
                    let topic = std::str::from_utf8(&topic).map_err(|_| ConnectError::Protocol)?;
                    match p.handle(topic, &payload) {
                        Some(ProvisionReply::Accepted { thing_id, password }) => {
                            break Answer::Accepted {
                                thing_id: thing_id.to_owned(),
                                password: password.to_owned(),
                            };
                        }
                        Some(ProvisionReply::Rejected { code, message }) => {
                            break Answer::Rejected {
                                code,
                                message: message.to_owned(),
                            };
                        }
                        // Another token's answer (an earlier attempt's), or the core's deadline,
                        // which is not used here.
                        Some(ProvisionReply::TimedOut) | None => {}
                    }
                }
                Incoming::PubAck { .. } | Incoming::PingResp => {}
                Incoming::Disconnect => return Err(ConnectError::Closed),
                _ => return Err(ConnectError::Protocol),
            }
        };
        // Goodbye before the hub closes the connection (D-43); its outcome does not matter.
        let _ = self.codec.disconnect(&mut self.wbuf);
        let _ = self.write(&mut stream).await;
        Ok(answer)
    }

    /// Writes what is encoded; a failed write ends the attempt as a closed connection.
    async fn send(&mut self, stream: &mut Link) -> Result<(), ConnectError> {
        self.write(stream).await.map_err(|_| ConnectError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answers_are_retried_and_refusals_are_final() {
        assert!(retryable_code(429) && retryable_code(503));
        for code in [400, 403, 409] {
            assert!(!retryable_code(code), "{code}");
        }
        assert!(retryable_error(&ConnectError::Closed));
        assert!(retryable_error(&ConnectError::Refused(0x89)));
        // 3.1.1 "bad user name or password", 5 "bad user name or password": a wrong claim.
        assert!(!retryable_error(&ConnectError::Refused(4)));
        assert!(!retryable_error(&ConnectError::Refused(0x86)));
        assert!(!retryable_error(&ConnectError::SubscribeRefused));
    }
}
