//! Runs a job's operation on one thing and classifies what happened (D-53).

use std::sync::Arc;
use std::time::Duration;

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::MAX_JOB_PAYLOAD;
use serde_json::{Map, Value};

use iothub_spec::topic::Topic;

use crate::bus::Bus;
use crate::method::{MethodError, Methods};
use crate::shadow::ShadowService;
use crate::store::jobs::Operation;
use crate::things::Things;

/// How long a method call waits for a thing seen connected to subscribe (and for one that just
/// dropped to come back) before it counts as offline again.
const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done.
    Succeeded {
        /// The device's 2xx code (200 for a shadow or tags change).
        code: u16,
        /// The method's data.
        response: Option<Value>,
    },
    /// Refused for good.
    Failed {
        /// The device's method code or the hub's refusal.
        code: u16,
        /// The method's data.
        response: Option<Value>,
        /// The device's message or the refusal's reason.
        error: String,
    },
    /// May work later (timeout, 429, 500, 503): retried while retries remain.
    Retry {
        /// `None` for a timeout.
        code: Option<u16>,
        /// Why.
        error: String,
    },
    /// The thing was not connected after all: waits for it again, the attempt not counted.
    Offline,
}

/// The services an operation needs. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    /// Direct methods.
    pub methods: Methods,
    /// The shadow pipeline (desired patches).
    pub shadows: ShadowService,
    /// The registry (tags).
    pub things: Things,
    /// Who is connected.
    pub bus: Arc<dyn Bus>,
}

impl Executor {
    /// Whether `op` can be sent to `thing` now (D-54): for a method, the thing is connected
    /// and subscribed to the method's request topic (a call published between its CONNACK and
    /// its SUBSCRIBE would be lost); anything else always.
    pub async fn is_ready(&self, op: &Operation, thing: &str) -> bool {
        match op {
            Operation::Method { name, .. } => {
                self.bus.is_connected(thing)
                    && self
                        .bus
                        .has_subscribers(
                            &Topic::MethodRequest {
                                thing,
                                method: name,
                            }
                            .to_string(),
                        )
                        .await
            }
            _ => true,
        }
    }

    /// One attempt of `op` on `thing`.
    pub async fn run(&self, op: &Operation, thing: &str) -> Outcome {
        match op {
            Operation::Method {
                name,
                payload,
                timeout_s,
            } => {
                let timeout = Duration::from_secs(u64::from(*timeout_s));
                match self
                    .methods
                    .invoke(thing, name, payload.clone(), timeout, CONNECT_WAIT)
                    .await
                {
                    Ok(reply) => {
                        let (response, note) = keep(reply.data);
                        if (200..300).contains(&reply.code) {
                            Outcome::Succeeded {
                                code: reply.code,
                                response,
                            }
                        } else {
                            let error = reply.message.or(note).unwrap_or_default();
                            Outcome::Failed {
                                code: reply.code,
                                response,
                                error,
                            }
                        }
                    }
                    Err(MethodError::Offline) => Outcome::Offline,
                    Err(MethodError::Timeout) => Outcome::Retry {
                        code: None,
                        error: "the device did not answer in time".into(),
                    },
                    Err(e @ MethodError::TooMany) => Outcome::Retry {
                        code: Some(ErrorCode::TooManyRequests.as_u16()),
                        error: e.to_string(),
                    },
                }
            }
            Operation::Desired { shadow, patch } => self.desired(thing, shadow, patch).await,
            Operation::Tags { replace, tags } => {
                let done = if *replace {
                    self.things.replace_tags(thing, tags.clone()).await
                } else {
                    self.things.merge_tags(thing, tags.clone(), None).await
                };
                match done {
                    Ok(_) => ok(),
                    Err(e) => refused(e.status(), e.to_string()),
                }
            }
        }
    }

    /// Merges `patch` into the shadow's desired state through the shadow pipeline (D-36).
    async fn desired(&self, thing: &str, shadow: &str, patch: &Map<String, Value>) -> Outcome {
        match self.shadows.patch_desired(thing, shadow, patch).await {
            Ok(_) => ok(),
            Err(e) => refused(e.code.as_u16(), e.message),
        }
    }
}

fn ok() -> Outcome {
    Outcome::Succeeded {
        code: 200,
        response: None,
    }
}

/// A hub-side refusal: retried when it may pass later (D-53).
fn refused(code: u16, error: String) -> Outcome {
    let transient = [
        ErrorCode::TooManyRequests,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ]
    .iter()
    .any(|c| c.as_u16() == code);
    if transient {
        Outcome::Retry {
            code: Some(code),
            error,
        }
    } else {
        Outcome::Failed {
            code,
            response: None,
            error,
        }
    }
}

/// A method response within [`MAX_JOB_PAYLOAD`], or a note why it was dropped.
fn keep(data: Option<Value>) -> (Option<Value>, Option<String>) {
    match data {
        Some(v) if v.to_string().len() > MAX_JOB_PAYLOAD => (
            None,
            Some(format!("response over {MAX_JOB_PAYLOAD} bytes not kept")),
        ),
        other => (other, None),
    }
}
