//! The messages that flow through the shadow pipeline (see [`service`](super::service) for the
//! picture) and the helpers its tasks share: per-thing admission, store error mapping, reply
//! topics and publishing.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::topic::Topic;

use crate::bus::Bus;
use crate::clock::now_ms;
use crate::store::StoreError;

use super::document::error_payload;
use super::request::UpdateRequest;
use super::{Shadow, ShadowError, ShadowOp};

/// One shadow: (thing, shadow name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) thing: String,
    pub(super) shadow: String,
}

impl Key {
    pub(super) fn new(thing: &str, shadow: &str) -> Key {
        Key {
            thing: thing.to_owned(),
            shadow: shadow.to_owned(),
        }
    }
}

/// Where an answer goes.
pub(super) enum ReplyTo {
    /// Publish on the request's `accepted`/`rejected` topic and free its in-flight slot.
    Mqtt {
        key: Key,
        op: ShadowOp,
        /// When `handle_mqtt` took it (for the update-duration histogram).
        received: Instant,
    },
    /// Hand it to the waiting REST call.
    Rest(oneshot::Sender<Result<Value, ShadowError>>),
}

/// Work for the apply task, in arrival order.
pub(super) enum Job {
    Update {
        key: Key,
        req: UpdateRequest,
        to: ReplyTo,
        /// How many times it was applied already and lost against another writer (D-85).
        attempt: u32,
    },
    Get {
        key: Key,
        client_token: Option<String>,
        to: ReplyTo,
    },
    Delete {
        key: Key,
        done: oneshot::Sender<Result<(), ShadowError>>,
    },
    /// The thing was deleted: drop its cached shadows.
    Forget(String),
    /// Stop after everything queued before it.
    Shutdown,
}

impl Job {
    /// The shadow the job reads or writes, if it is about one.
    pub(super) fn key(&self) -> Option<&Key> {
        match self {
            Job::Update { key, .. } | Job::Get { key, .. } | Job::Delete { key, .. } => Some(key),
            Job::Forget(_) | Job::Shutdown => None,
        }
    }

    /// Answers the job with `err` without running it (through `replies` for updates and gets,
    /// so the answer keeps its place behind the earlier ones).
    pub(super) fn refuse(self, err: ShadowError) -> Option<Reply> {
        match self {
            Job::Update { req, to, .. } => Some(Reply::Ready {
                result: Err(err.with_client_token(req.client_token)),
                depends: None,
                to,
            }),
            Job::Get {
                client_token, to, ..
            } => Some(Reply::Ready {
                result: Err(err.with_client_token(client_token)),
                depends: None,
                to,
            }),
            Job::Delete { done, .. } => {
                let _ = done.send(Err(err));
                None
            }
            Job::Forget(_) | Job::Shutdown => None,
        }
    }
}

/// Work for the reply task, in the apply task's order.
/// An update the apply task accepted: the shadow before and after, and the request.
pub(super) struct AcceptedUpdate {
    pub previous: Shadow,
    pub current: Shadow,
    pub req: UpdateRequest,
    pub now: u64,
}

pub(super) enum Reply {
    /// An accepted update, to be answered once `durable` resolves.
    Written {
        durable: oneshot::Receiver<Result<(), StoreError>>,
        key: Key,
        generation: u64,
        client_token: Option<String>,
        /// [`Job::Update`]'s `attempt`.
        attempt: u32,
        /// What the replies are built from, once durable: building them in the reply task keeps
        /// that work off the single apply task, and off writes that fail.
        update: Box<AcceptedUpdate>,
        to: ReplyTo,
    },
    /// An answer that needs no storage: a get, or an error. `depends` names the get whose
    /// answer shows not-yet-durable writes, if any.
    Ready {
        result: Result<Value, ShadowError>,
        depends: Option<Depends>,
        to: ReplyTo,
    },
    /// Resolved once every earlier reply is out (all earlier writes are durable or failed).
    Barrier(oneshot::Sender<()>),
}

/// A get answered from a cached shadow with writes that are not durable yet: the cache
/// generation it showed, and what it takes to run the get again.
pub(super) struct Depends {
    pub key: Key,
    pub generation: u64,
    pub client_token: Option<String>,
}

/// What the reply task tells the apply task about a submitted write, or about a get that showed
/// writes not yet durable ([`Depends`]); each of them is reported exactly once.
pub(super) enum Feedback {
    /// Stored (a get: what it showed was stored); answered.
    Durable { key: Key, generation: u64 },
    /// Not stored; answered with an error.
    Failed { key: Key, generation: u64 },
    /// Not stored because another writer changed the shadow first (an unversioned update, or a
    /// get that showed such an update): not answered; run `job` again on the stored shadow
    /// (docs/spec.md D-85).
    Retry {
        key: Key,
        generation: u64,
        job: Box<Job>,
    },
    /// A stalled shadow's backoff is over (sent by the apply task's own timer).
    Resume(Key),
}

/// Per-thing admission of MQTT requests (S-3.9): a token bucket of `shadow_requests_per_sec`
/// (burst = one second's worth) and a count of unanswered requests.
#[derive(Default)]
pub(super) struct Gates {
    things: Mutex<HashMap<String, Gate>>,
}

struct Gate {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

impl Gates {
    /// Takes a token and an in-flight slot for one request of `thing`, or says why not (429).
    /// Every `Ok` must be matched by one [`Gates::release`].
    pub(super) fn admit(&self, thing: &str, limits: &Limits, now: Instant) -> Result<(), String> {
        let rate = f64::from(limits.shadow_requests_per_sec.max(1));
        let mut things = self
            .things
            .lock()
            .map_err(|_| "internal error".to_owned())?;
        let gate = things.entry(thing.to_owned()).or_insert(Gate {
            tokens: rate,
            refilled: now,
            in_flight: 0,
        });
        let elapsed = now.saturating_duration_since(gate.refilled).as_secs_f64();
        gate.tokens = (gate.tokens + elapsed * rate).min(rate);
        gate.refilled = now;
        if gate.in_flight >= limits.max_in_flight {
            return Err(format!(
                "more than {} shadow requests in flight",
                limits.max_in_flight
            ));
        }
        if gate.tokens < 1.0 {
            return Err(format!(
                "more than {} shadow requests per second",
                limits.shadow_requests_per_sec
            ));
        }
        gate.tokens -= 1.0;
        gate.in_flight += 1;
        Ok(())
    }

    /// Frees the in-flight slot of an answered request. Idle gates (nothing in flight, bucket
    /// refilled) are dropped lazily here so the map does not keep every thing ever seen.
    pub(super) fn release(&self, thing: &str, limits: &Limits, now: Instant) {
        let Ok(mut things) = self.things.lock() else {
            return;
        };
        let rate = f64::from(limits.shadow_requests_per_sec.max(1));
        let idle = match things.get_mut(thing) {
            None => return,
            Some(gate) => {
                gate.in_flight = gate.in_flight.saturating_sub(1);
                let elapsed = now.saturating_duration_since(gate.refilled).as_secs_f64();
                gate.in_flight == 0 && gate.tokens + elapsed * rate >= rate
            }
        };
        if idle {
            things.remove(thing);
        }
    }

    /// Forgets `thing` (deleted).
    pub(super) fn forget(&self, thing: &str) {
        if let Ok(mut things) = self.things.lock() {
            things.remove(thing);
        }
    }
}

pub(super) fn shutting_down() -> ShadowError {
    ShadowError::new(ErrorCode::Unavailable, "shadow service is shutting down")
}

pub(super) fn not_found(key: &Key) -> ShadowError {
    ShadowError::new(
        ErrorCode::NotFound,
        format!("no shadow {:?} for thing {:?}", key.shadow, key.thing),
    )
}

/// The S-3.8 error for a failed store call.
pub(super) fn store_error(e: &StoreError) -> ShadowError {
    match e {
        StoreError::VersionConflict | StoreError::AlreadyExists => ShadowError::new(
            ErrorCode::Conflict,
            "version conflict in storage; get the shadow and retry",
        ),
        // A write for a thing deleted meanwhile (the store's foreign key).
        StoreError::NotFound => ShadowError::new(ErrorCode::NotFound, "no such thing"),
        other => ShadowError::new(ErrorCode::Unavailable, format!("storage: {other}")),
    }
}

fn reply_topic(key: &Key, op: ShadowOp, ok: bool) -> String {
    let (thing, shadow) = (key.thing.as_str(), key.shadow.as_str());
    match (op, ok) {
        (ShadowOp::Get, true) => Topic::ShadowGetAccepted { thing, shadow }.to_string(),
        (ShadowOp::Get, false) => Topic::ShadowGetRejected { thing, shadow }.to_string(),
        (ShadowOp::Update, true) => Topic::ShadowUpdateAccepted { thing, shadow }.to_string(),
        (ShadowOp::Update, false) => Topic::ShadowUpdateRejected { thing, shadow }.to_string(),
    }
}

/// Publishes `payload` at QoS 1 without retain (S-2.3).
pub(super) async fn publish_json(bus: &dyn Bus, topic: &str, payload: &Value) {
    match serde_json::to_vec(payload) {
        Ok(bytes) => bus.publish(topic, Bytes::from(bytes), false).await,
        Err(e) => tracing::error!(%topic, error = %e, "cannot encode a shadow reply"),
    }
}

/// Publishes the accepted or rejected reply of an MQTT request.
pub(super) async fn publish_result(
    bus: &dyn Bus,
    key: &Key,
    op: ShadowOp,
    result: Result<Value, ShadowError>,
) {
    match result {
        Ok(payload) => publish_json(bus, &reply_topic(key, op, true), &payload).await,
        Err(err) => {
            let payload = error_payload(&err, now_ms());
            publish_json(bus, &reply_topic(key, op, false), &payload).await;
        }
    }
}
