//! Provisioning over MQTT (S-10): a claim connection's request becomes a thing (or a new secret
//! for the serial's thing), answered on `accepted` or `rejected`, after which the claim
//! connection is closed (D-43).
//!
//! The checks and their order are D-45; the id rule is [`id_rule`]; the one durable write is
//! [`EnrollmentStore::provision`](crate::store::enroll::EnrollmentStore::provision), after which
//! [`Things::provisioned`] replaces cached credentials, closes an old connection and publishes
//! the lifecycle event. Enrollment CRUD for the REST API is in [`enrollments`].

pub mod enrollments;
pub mod id_rule;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::payload::{
    ErrorResponse, ProvisionAccepted, ProvisionRequest, ProvisionSettings, field,
    provision_message as msg,
};
use iothub_spec::topic::provision::{ProvisionKind, ProvisionTopic};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::auth::{self, CredentialCache, SecretOrigin};
use crate::bus::Bus;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::shadow::{SectionPatch, Shadow, UpdateRequest, apply_update};
use crate::store::enroll::{EnrollmentRecord, ProvisionOutcome, Provisioning};
use crate::store::{NewThing, SharedStore, StoreError};
use crate::things::Things;

/// Provisioning requests handled at once; more are refused with 429 (each costs a hash and a
/// write transaction).
pub const MAX_IN_FLIGHT: usize = 64;
/// How long after its reply a claim connection is closed: long enough for the QoS 1 reply to be
/// written to the socket first (D-43).
pub const CLOSE_AFTER: Duration = Duration::from_millis(500);

/// A refused request: its code and message (S-10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The `rejected` code.
    pub code: ErrorCode,
    /// The `rejected` message (`provision_message`).
    pub message: &'static str,
}

impl Refusal {
    const fn new(code: ErrorCode, message: &'static str) -> Refusal {
        Refusal { code, message }
    }

    /// The `outcome` label of `iothub_provisioning_requests_total`.
    fn outcome(&self) -> &'static str {
        match self.code {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooManyRequests => "busy",
            _ => "unavailable",
        }
    }
}

const BAD_REQUEST: Refusal = Refusal::new(ErrorCode::BadRequest, msg::BAD_REQUEST);
const UNAVAILABLE: Refusal = Refusal::new(ErrorCode::Unavailable, msg::UNAVAILABLE);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        tracing::warn!(error = %e, "provisioning: store failure");
        UNAVAILABLE
    }
}

/// A provisioned thing and its new secret.
struct Provisioned {
    thing_id: String,
    password: String,
}

/// The provisioning service. Cheap to clone; one per hub.
#[derive(Clone)]
pub struct Provisioner {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    bus: Arc<dyn Bus>,
    things: Things,
    credentials: Arc<CredentialCache>,
    limits: Limits,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
}

impl Provisioner {
    /// The service over `store`, answering through `bus`; `things` does the registry's side
    /// effects, `credentials` is the hub's credential cache (claim secrets are cached there
    /// too, under their claim user name), `limits` go to devices as settings.
    pub fn new(
        store: SharedStore,
        bus: Arc<dyn Bus>,
        things: Things,
        credentials: Arc<CredentialCache>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Provisioner {
        Provisioner {
            inner: Arc::new(Inner {
                store,
                bus,
                things,
                credentials,
                limits,
                metrics,
                slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            }),
        }
    }

    /// A claim connection `sender` published `payload` on `topic` (the allow-list let it
    /// through, so it is the sender's own request topic). Handled on its own task: the broker's
    /// hook returns at once.
    pub fn request(&self, sender: &str, topic: &str, payload: Bytes) {
        let Ok(t) = ProvisionTopic::parse(topic) else {
            return;
        };
        if t.kind != ProvisionKind::Request {
            return;
        }
        let (enrollment, serial) = (t.enrollment.to_owned(), t.serial.to_owned());
        let sender = sender.to_owned();
        // The request comes from the live connection of `sender`; only that one is closed.
        let connection = self.inner.bus.connection(&sender);
        let permit = Arc::clone(&self.inner.slots).try_acquire_owned();
        let this = self.clone();
        tokio::spawn(async move {
            let token =
                iothub_spec::scan::client_token(&payload, this.inner.limits.max_client_token)
                    .map(str::to_owned);
            let result = match permit {
                Ok(_permit) => this.provision(&enrollment, &serial, &payload).await,
                Err(_) => Err(Refusal::new(ErrorCode::TooManyRequests, msg::BUSY)),
            };
            this.answer(&enrollment, &serial, token.as_deref(), result)
                .await;
            tokio::time::sleep(CLOSE_AFTER).await;
            // A device that retried sooner is on a new connection by now: that one stays.
            match connection {
                Some(connection) => {
                    this.inner
                        .bus
                        .disconnect_connection(&sender, connection)
                        .await
                }
                None => this.inner.bus.disconnect(&sender).await,
            }
        });
    }

    async fn provision(
        &self,
        enrollment_id: &str,
        serial: &str,
        payload: &[u8],
    ) -> Result<Provisioned, Refusal> {
        let req: ProvisionRequest<'_, Value> =
            serde_json::from_slice(payload).map_err(|_| BAD_REQUEST)?;
        let attributes = match req.attributes {
            None | Some(Value::Object(_)) => req.attributes,
            Some(_) => return Err(BAD_REQUEST),
        };
        if req.client_token.len() > self.inner.limits.max_client_token
            || req.serial.is_some_and(|s| s != serial)
        {
            return Err(BAD_REQUEST);
        }
        let store = self.inner.store.enrollments().ok_or(UNAVAILABLE)?;
        let (enrollment, _) = store
            .enrollment(enrollment_id)
            .await?
            .ok_or(Refusal::new(ErrorCode::Forbidden, msg::DISABLED))?;
        let now = now_ms();
        let known = store.serial_thing(enrollment_id, serial).await?;
        check(&enrollment, known.is_some(), now)?;
        let thing_id = match &known {
            Some(id) => id.clone(),
            None => id_rule::choose(
                &enrollment.id_rule,
                serial,
                req.thing_id,
                crate::things::generate_id,
            )
            .ok_or(Refusal::new(ErrorCode::BadRequest, msg::ID_RULE))?,
        };
        let tags = template_tags(&enrollment, serial, attributes)?;
        let initial_shadow = initial_shadow(&enrollment, &self.inner.limits, now)?;
        let password = auth::generate_secret();
        let secret = password.clone();
        let password_hash = tokio::task::spawn_blocking(move || {
            auth::hash_password(&secret, SecretOrigin::Generated)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(Refusal::new(ErrorCode::Internal, msg::UNAVAILABLE))?;
        let thing = NewThing {
            thing_id,
            password_hash,
            tags,
            enabled: enrollment.template.enabled,
        };
        let outcome = store
            .provision(&Provisioning {
                enrollment_id,
                serial,
                thing: &thing,
                now,
                initial_shadow: initial_shadow.as_deref(),
            })
            .await?;
        let (thing_id, rekeyed) = match outcome {
            ProvisionOutcome::Created(id) => (id, false),
            ProvisionOutcome::Rekeyed(id) => (id, true),
            // Changed between the check and the write: say what it is now.
            ProvisionOutcome::Refused => {
                let now_record = store.enrollment(enrollment_id).await?;
                return Err(match now_record {
                    Some((e, _)) => check(&e, false, now_ms())
                        .err()
                        .unwrap_or(Refusal::new(ErrorCode::Forbidden, msg::EXHAUSTED)),
                    None => Refusal::new(ErrorCode::Forbidden, msg::DISABLED),
                });
            }
            ProvisionOutcome::IdTaken => {
                return Err(Refusal::new(ErrorCode::Conflict, msg::ID_TAKEN));
            }
        };
        tracing::info!(enrollment = %enrollment_id, %serial, thing = %thing_id, rekeyed, "provisioned");
        self.inner
            .things
            .provisioned(&thing_id, &password, rekeyed)
            .await;
        Ok(Provisioned { thing_id, password })
    }

    /// Publishes the reply and counts the outcome.
    async fn answer(
        &self,
        enrollment: &str,
        serial: &str,
        token: Option<&str>,
        result: Result<Provisioned, Refusal>,
    ) {
        let topic = |kind| ProvisionTopic {
            enrollment,
            serial,
            kind,
        };
        let (topic, body, outcome) = match &result {
            Ok(p) => {
                let body = serde_json::to_vec(&ProvisionAccepted {
                    client_token: token.unwrap_or_default(),
                    thing_id: &p.thing_id,
                    password: &p.password,
                    settings: ProvisionSettings {
                        limits: self.inner.limits,
                    },
                    timestamp: now_ms(),
                });
                (topic(ProvisionKind::Accepted), body, "accepted")
            }
            Err(r) => {
                tracing::debug!(%enrollment, %serial, code = r.code.as_u16(), message = r.message, "provisioning refused");
                let body = serde_json::to_vec(&ErrorResponse {
                    code: r.code.as_u16(),
                    message: r.message,
                    timestamp: now_ms(),
                    client_token: token,
                });
                (topic(ProvisionKind::Rejected), body, r.outcome())
            }
        };
        self.inner.metrics.inc_provisioning_request(outcome);
        match body {
            Ok(body) => {
                self.inner
                    .bus
                    .publish(&topic.to_string(), Bytes::from(body), false)
                    .await
            }
            Err(e) => tracing::error!(error = %e, "provisioning reply not serializable"),
        }
    }

    /// The hub's credential cache (claim secrets are forgotten there when their enrollment
    /// changes).
    pub(crate) fn credentials(&self) -> &CredentialCache {
        &self.inner.credentials
    }

    pub(crate) fn store(&self) -> &SharedStore {
        &self.inner.store
    }
}

/// D-45's order: disabled, expired, exhausted (a known serial uses nothing up).
fn check(e: &EnrollmentRecord, known_serial: bool, now: u64) -> Result<(), Refusal> {
    if !e.enabled {
        return Err(Refusal::new(ErrorCode::Forbidden, msg::DISABLED));
    }
    if e.expires_at.is_some_and(|at| at <= now) {
        return Err(Refusal::new(ErrorCode::Forbidden, msg::EXPIRED));
    }
    if !known_serial && e.max_uses.is_some_and(|max| e.uses >= max) {
        return Err(Refusal::new(ErrorCode::Forbidden, msg::EXHAUSTED));
    }
    Ok(())
}

/// The template's tags plus `serial`, `enrollment` and the device's `attributes` (S-10.4),
/// within the tags limits.
fn template_tags(
    e: &EnrollmentRecord,
    serial: &str,
    attributes: Option<Value>,
) -> Result<Map<String, Value>, Refusal> {
    let mut tags = e.template.tags.clone();
    tags.insert(field::SERIAL.into(), Value::from(serial));
    tags.insert(
        field::ENROLLMENT.into(),
        Value::from(e.enrollment_id.as_str()),
    );
    if let Some(a) = attributes {
        tags.insert(field::ATTRIBUTES.into(), a);
    }
    crate::things::check_tags(&tags).map_err(|_| BAD_REQUEST)?;
    Ok(tags)
}

/// The storage body of the new thing's `default` shadow: the template's desired state written
/// as a first update would write it (version 1, metadata timestamps `now`); `None` without one.
fn initial_shadow(
    e: &EnrollmentRecord,
    limits: &Limits,
    now: u64,
) -> Result<Option<String>, Refusal> {
    let Some(desired) = e.template.desired.as_ref().filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let req = UpdateRequest {
        state: serde_json::json!({ field::DESIRED: desired }),
        desired: Some(SectionPatch::Merge(desired.clone())),
        reported: None,
        client_token: None,
        version: None,
    };
    match apply_update(&Shadow::default(), &req, limits, now) {
        Ok(shadow) => Ok(Some(shadow.to_body())),
        Err(err) => {
            // The enrollment's own template is at fault, not the device: say so in the log.
            tracing::warn!(enrollment = %e.enrollment_id, error = %err.message,
                "provisioning: the template's desired state cannot be written");
            Err(Refusal::new(ErrorCode::Internal, msg::UNAVAILABLE))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::enroll::{IdRule, ThingTemplate};

    fn enrollment() -> EnrollmentRecord {
        EnrollmentRecord {
            enrollment_id: "e1".into(),
            template: ThingTemplate::default(),
            id_rule: IdRule::Generated,
            max_uses: Some(2),
            uses: 0,
            expires_at: Some(1000),
            enabled: true,
            created_at: 1,
        }
    }

    #[test]
    fn checks_in_order() {
        let mut e = enrollment();
        assert_eq!(check(&e, false, 999), Ok(()));
        assert_eq!(check(&e, false, 1000).unwrap_err().message, msg::EXPIRED);
        e.uses = 2;
        assert_eq!(check(&e, false, 1).unwrap_err().message, msg::EXHAUSTED);
        assert_eq!(check(&e, true, 1), Ok(()), "a known serial uses nothing up");
        e.enabled = false;
        assert_eq!(check(&e, true, 5000).unwrap_err().message, msg::DISABLED);
        assert_eq!(
            check(&e, true, 5000).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn tags_carry_serial_and_attributes() {
        let tags = template_tags(&enrollment(), "s1", Some(serde_json::json!({"m": 1})))
            .expect("a valid template");
        assert_eq!(tags[field::SERIAL], "s1");
        assert_eq!(tags[field::ATTRIBUTES]["m"], 1);
        let deep = (0..20).fold(serde_json::json!(1), |v, _| serde_json::json!({ "a": v }));
        assert_eq!(
            template_tags(&enrollment(), "s1", Some(deep)),
            Err(BAD_REQUEST)
        );
    }
}
