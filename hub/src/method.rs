//! Direct methods, hub side (S-5): publish a request to the thing, wait for its response.
//!
//! A pending call is keyed by (thingId, method, clientToken), the triple S-5.2 matches on; late
//! or unmatched responses find no entry and are dropped. The number of pending calls is bounded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use iothub_spec::payload::{MethodRequest, MethodResponse, field};
use iothub_spec::topic::Topic;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::bus::Bus;

/// Most calls waiting for a device at once, hub-wide.
pub const MAX_PENDING: usize = 10_000;
/// How often an offline thing is looked for while `connectTimeout` runs.
const CONNECT_POLL: Duration = Duration::from_millis(20);
/// How long a connected thing may take to subscribe to its method topic before a call is sent
/// regardless.
const SUBSCRIBE_GRACE: Duration = Duration::from_secs(1);

/// The device's answer (S-5.2), handed back to the REST caller.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MethodReply {
    /// The device's status code (HTTP-like).
    pub code: u16,
    /// The device's message, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The device's data, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// Why a call produced no device answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MethodError {
    /// The thing was not connected within `connectTimeout` (409).
    #[error("thing is offline")]
    Offline,
    /// No response within `timeout` (504).
    #[error("device did not respond in time")]
    Timeout,
    /// Too many calls are pending hub-wide (429).
    #[error("too many pending method calls")]
    TooMany,
}

type Key = (String, String, String);

/// The direct-method service.
#[derive(Clone)]
pub struct Methods {
    bus: Arc<dyn Bus>,
    pending: Arc<DashMap<Key, oneshot::Sender<MethodReply>>>,
}

impl Methods {
    /// A method service publishing through `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Methods {
            bus,
            pending: Arc::new(DashMap::new()),
        }
    }

    /// Calls `method` on `thing` and waits for its response (S-5.3).
    pub async fn invoke(
        &self,
        thing: &str,
        method: &str,
        data: Value,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodReply, MethodError> {
        let topic = Topic::MethodRequest { thing, method }.to_string();
        if !self.wait_connected(thing, &topic, connect_timeout).await {
            return Err(MethodError::Offline);
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(MethodError::TooMany);
        }
        let token = new_token();
        let key = (thing.to_owned(), method.to_owned(), token.clone());
        let (tx, rx) = oneshot::channel();
        self.pending.insert(key.clone(), tx);
        let request = MethodRequest {
            client_token: &token,
            data: &data,
        };
        let payload = match serde_json::to_vec(&request) {
            Ok(p) => Bytes::from(p),
            Err(_) => {
                self.pending.remove(&key);
                return Err(MethodError::Timeout);
            }
        };
        self.bus.publish(&topic, payload, false).await;
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.pending.remove(&key);
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(MethodError::Timeout),
        }
    }

    /// Matches a device's `T/methods/{method}/resp` to its pending call, if any.
    pub fn handle_response(&self, thing: &str, method: &str, payload: &[u8]) {
        // Owned strings: a device may escape characters in its message, which a borrowed
        // `MethodResponse<'_, _>` could not hold.
        let parsed = serde_json::from_slice::<Value>(payload).ok();
        let response: MethodResponse<'_, Value> = match parsed.as_ref().and_then(Value::as_object) {
            Some(object) => match parse_response(object) {
                Some(reply) => reply,
                None => {
                    tracing::debug!(%thing, %method, "method response without clientToken or code dropped");
                    return;
                }
            },
            None => {
                tracing::debug!(%thing, %method, "malformed method response dropped");
                return;
            }
        };
        let key = (
            thing.to_owned(),
            method.to_owned(),
            response.client_token.to_owned(),
        );
        match self.pending.remove(&key) {
            Some((_, waiter)) => {
                let _ = waiter.send(MethodReply {
                    code: response.code,
                    message: response.message.map(str::to_owned),
                    data: response.data,
                });
            }
            None => tracing::debug!(%thing, %method, "late or unmatched method response dropped"),
        }
    }

    /// Waits for the thing to be connected, and then for its subscription to `topic`: a call
    /// published between the thing's CONNACK and its SUBSCRIBE would be lost (a 504 for a thing
    /// that answers). A thing that does not subscribe within [`SUBSCRIBE_GRACE`] gets the call
    /// anyway (and times out).
    async fn wait_connected(&self, thing: &str, topic: &str, connect_timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let mut grace_ends = None;
        let mut caught_up = false;
        loop {
            let now = tokio::time::Instant::now();
            if self.bus.is_connected(thing) {
                let ends = *grace_ends.get_or_insert(now + SUBSCRIBE_GRACE);
                if now >= ends || self.bus.has_subscribers(topic).await {
                    return true;
                }
            } else if now >= deadline {
                // Offline only if still so once the broker's earlier reports are in (D-63).
                if caught_up {
                    return false;
                }
                self.bus.presence_caught_up().await;
                caught_up = true;
                continue;
            }
            tokio::time::sleep(CONNECT_POLL).await;
        }
    }
}

/// Reads the S-5.2 fields out of an already parsed response object.
fn parse_response(object: &serde_json::Map<String, Value>) -> Option<MethodResponse<'_, Value>> {
    Some(MethodResponse {
        client_token: object.get(field::CLIENT_TOKEN)?.as_str()?,
        code: u16::try_from(object.get(field::CODE)?.as_u64()?).ok()?,
        message: object.get(field::MESSAGE).and_then(Value::as_str),
        data: object.get(field::DATA).cloned(),
    })
}

fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
