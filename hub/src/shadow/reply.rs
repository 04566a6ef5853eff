//! The reply task: answers every request in the apply task's order, each accepted update only
//! once it is durable (S-3.5), and reports write outcomes back to the apply task.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::payload::field;
use iothub_spec::topic::Topic;

use crate::bus::Bus;
use crate::store::StoreError;

use super::document::update_replies_with;
use super::pipeline::{
    AcceptedUpdate, Feedback, Gates, Key, Reply, ReplyTo, publish_json, publish_result, store_error,
};
use super::{ShadowError, ShadowOp};

pub(super) struct Replier {
    bus: Arc<dyn Bus>,
    gates: Arc<Gates>,
    limits: Limits,
    feedback: mpsc::UnboundedSender<Feedback>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Cache generations with a lost write: answers built on them are not trustworthy.
    poisoned: HashMap<Key, u64>,
}

impl Replier {
    /// A reply task publishing on `bus` and reporting write outcomes on `feedback`.
    pub(super) fn new(
        bus: Arc<dyn Bus>,
        gates: Arc<Gates>,
        limits: Limits,
        feedback: mpsc::UnboundedSender<Feedback>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Replier {
        Replier {
            bus,
            gates,
            limits,
            feedback,
            metrics,
            poisoned: HashMap::new(),
        }
    }
}

impl Replier {
    /// Runs until the apply task is gone and every queued reply is out.
    pub(super) async fn run(mut self, mut replies: mpsc::Receiver<Reply>) {
        while let Some(reply) = replies.recv().await {
            match reply {
                Reply::Written {
                    durable,
                    key,
                    generation,
                    client_token,
                    update,
                    to,
                } => {
                    let stored = match durable.await {
                        Ok(r) => r,
                        Err(_) => Err(StoreError::Unavailable("group committer stopped".into())),
                    };
                    match stored {
                        Ok(()) => {
                            if self.poisoned.get(&key).is_some_and(|g| *g != generation) {
                                self.poisoned.remove(&key);
                            }
                            let _ = self.feedback.send(Feedback::Durable {
                                key: key.clone(),
                                generation,
                            });
                            let AcceptedUpdate {
                                previous,
                                current,
                                req,
                                now,
                            } = *update;
                            let documents_topic = Topic::ShadowUpdateDocuments {
                                thing: &key.thing,
                                shadow: &key.shadow,
                            }
                            .to_string();
                            // S-3.7's documents carry two whole shadows; nobody may be listening.
                            let with_documents = self.bus.has_subscribers(&documents_topic).await;
                            let replies =
                                update_replies_with(&previous, &current, &req, now, with_documents);
                            self.answer(to, Ok(replies.accepted)).await;
                            if let Some(delta) = &replies.delta {
                                let topic = Topic::ShadowUpdateDelta {
                                    thing: &key.thing,
                                    shadow: &key.shadow,
                                };
                                publish_json(&*self.bus, &topic.to_string(), delta).await;
                            }
                            if with_documents {
                                publish_json(&*self.bus, &documents_topic, &replies.documents)
                                    .await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(thing = %key.thing, shadow = %key.shadow, "shadow write failed: {e}");
                            // A write merged on top of one that failed to store fails the
                            // store's version check in turn; its caller sent no stale version,
                            // the storage failed: 503, not 409.
                            let e = match e {
                                StoreError::VersionConflict
                                    if self.poisoned.get(&key) == Some(&generation) =>
                                {
                                    StoreError::Unavailable(
                                        "an earlier write of this shadow was not stored".into(),
                                    )
                                }
                                other => other,
                            };
                            self.poisoned.insert(key.clone(), generation);
                            let _ = self.feedback.send(Feedback::Failed { key, generation });
                            let err = store_error(&e).with_client_token(client_token);
                            self.answer(to, Err(err)).await;
                        }
                    }
                }
                Reply::Ready {
                    result,
                    depends,
                    to,
                } => {
                    let result = match depends {
                        Some((key, generation)) if self.poisoned.get(&key) == Some(&generation) => {
                            // The answer shows a write that was lost: do not show it.
                            Err(ShadowError::new(
                                ErrorCode::Unavailable,
                                "storage unavailable; retry later",
                            )
                            .with_client_token(client_token_in(&result)))
                        }
                        _ => result,
                    };
                    self.answer(to, result).await;
                }
                Reply::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    async fn answer(&self, to: ReplyTo, result: Result<Value, ShadowError>) {
        match to {
            ReplyTo::Mqtt { key, op, received } => {
                // Accepted and rejected updates are counted where the bus publishes replies
                // (broker/mod.rs); only the time an accepted one took is known here.
                if let (Some(metrics), ShadowOp::Update, Ok(_)) = (&self.metrics, op, &result) {
                    metrics.observe_shadow_update(received.elapsed());
                }
                publish_result(&*self.bus, &key, op, result).await;
                self.gates.release(&key.thing, &self.limits, Instant::now());
            }
            ReplyTo::Rest(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// The clientToken inside a built reply payload (a get document), for re-answering it as an error.
fn client_token_in(result: &Result<Value, ShadowError>) -> Option<String> {
    result
        .as_ref()
        .ok()
        .and_then(|v| v.get(field::CLIENT_TOKEN))
        .and_then(Value::as_str)
        .map(str::to_owned)
}
