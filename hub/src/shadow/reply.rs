//! The reply task: answers every request in the apply task's order, each accepted update only
//! once it is durable (S-3.5), and reports write outcomes back to the apply task.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::topic::Topic;

use crate::bus::Bus;
use crate::store::StoreError;

use super::document::update_replies_with;
use super::pipeline::{
    AcceptedUpdate, Depends, Feedback, Gates, Job, Key, Reply, ReplyTo, publish_json,
    publish_result, shutting_down, store_error,
};
use super::{ShadowError, ShadowOp};

/// Most times one unversioned update is applied before it is refused because the shadow kept
/// changing under it (docs/spec.md D-85).
pub(super) const MAX_ATTEMPTS: u32 = 5;

/// Why a cache generation lost a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// Another writer stored the shadow first (a version conflict): what was merged on the lost
    /// write is applied again.
    Conflict,
    /// The storage failed (or the thing is gone): what was merged on it fails too (503).
    Storage,
}

pub(super) struct Replier {
    bus: Arc<dyn Bus>,
    gates: Arc<Gates>,
    limits: Limits,
    feedback: mpsc::UnboundedSender<Feedback>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Cache generations with a lost write, and why: answers built on them are not trustworthy.
    poisoned: HashMap<Key, (u64, Lost)>,
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
                    attempt,
                    update,
                    to,
                } => {
                    let stored = match durable.await {
                        Ok(r) => r,
                        Err(_) => Err(StoreError::Unavailable("group committer stopped".into())),
                    };
                    match stored {
                        Ok(()) => {
                            if self
                                .poisoned
                                .get(&key)
                                .is_some_and(|(g, _)| *g != generation)
                            {
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
                            let lost = self
                                .poisoned
                                .get(&key)
                                .filter(|(g, _)| *g == generation)
                                .map(|(_, why)| *why);
                            if e == StoreError::VersionConflict
                                && (lost == Some(Lost::Conflict)
                                    || (lost.is_none() && update.req.version.is_none()))
                            {
                                // Another writer (another instance, D-73) stored the shadow
                                // first and the writer named no version, or this write was
                                // merged on one that lost so (its `version` was checked against
                                // that one): it is applied again on the stored shadow, where a
                                // `version` is checked again, rather than refused (D-85).
                                self.poisoned
                                    .insert(key.clone(), (generation, Lost::Conflict));
                                if attempt + 1 < MAX_ATTEMPTS {
                                    if let Some(metrics) = &self.metrics {
                                        metrics.inc_shadow_updates_retried();
                                    }
                                    let AcceptedUpdate { req, .. } = *update;
                                    let job = Job::Update {
                                        key: key.clone(),
                                        req,
                                        to,
                                        attempt: attempt + 1,
                                    };
                                    self.retry(key, generation, job).await;
                                    continue;
                                }
                                tracing::warn!(thing = %key.thing, shadow = %key.shadow, "shadow update lost {MAX_ATTEMPTS} times against other writers");
                                let _ = self.feedback.send(Feedback::Failed { key, generation });
                                let err = ShadowError::new(
                                    ErrorCode::Unavailable,
                                    format!(
                                        "the shadow changed under this update {MAX_ATTEMPTS} \
                                         times; retry later"
                                    ),
                                )
                                .with_client_token(client_token);
                                self.answer(to, Err(err)).await;
                                continue;
                            }
                            tracing::warn!(thing = %key.thing, shadow = %key.shadow, "shadow write failed: {e}");
                            // A write merged on top of one that failed to store fails the
                            // store's version check in turn; its caller sent no stale version,
                            // the storage failed: 503, not 409.
                            let (e, why) = match e {
                                StoreError::VersionConflict if lost == Some(Lost::Storage) => (
                                    StoreError::Unavailable(
                                        "an earlier write of this shadow was not stored".into(),
                                    ),
                                    Lost::Storage,
                                ),
                                StoreError::VersionConflict => (e, Lost::Conflict),
                                other => (other, Lost::Storage),
                            };
                            let why = if lost == Some(Lost::Storage) {
                                Lost::Storage
                            } else {
                                why
                            };
                            self.poisoned.insert(key.clone(), (generation, why));
                            let _ = self.feedback.send(Feedback::Failed { key, generation });
                            let err = store_error(&e).with_client_token(client_token);
                            self.answer(to, Err(err)).await;
                        }
                    }
                }
                Reply::Ready {
                    result,
                    depends: None,
                    to,
                } => self.answer(to, result).await,
                Reply::Ready {
                    result,
                    depends: Some(depends),
                    to,
                } => {
                    let Depends {
                        key,
                        generation,
                        client_token,
                    } = depends;
                    let lost = self
                        .poisoned
                        .get(&key)
                        .filter(|(g, _)| *g == generation)
                        .map(|(_, why)| *why);
                    match lost {
                        None => {
                            let _ = self.feedback.send(Feedback::Durable { key, generation });
                            self.answer(to, result).await;
                        }
                        Some(Lost::Conflict) => {
                            // It showed an update that is being applied again: so is the get.
                            let job = Job::Get {
                                key: key.clone(),
                                client_token,
                                to,
                            };
                            self.retry(key, generation, job).await;
                        }
                        Some(Lost::Storage) => {
                            let _ = self.feedback.send(Feedback::Failed { key, generation });
                            // The answer shows a write that was lost: do not show it.
                            let err = ShadowError::new(
                                ErrorCode::Unavailable,
                                "storage unavailable; retry later",
                            )
                            .with_client_token(client_token);
                            self.answer(to, Err(err)).await;
                        }
                    }
                }
                Reply::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Hands `job` back to the apply task to run again; answers it 503 if the apply task is
    /// gone (shutting down), so that it is never left unanswered.
    async fn retry(&self, key: Key, generation: u64, job: Job) {
        if let Err(mpsc::error::SendError(Feedback::Retry { job, .. })) =
            self.feedback.send(Feedback::Retry {
                key,
                generation,
                job: Box::new(job),
            })
            && let Some(Reply::Ready { result, to, .. }) = job.refuse(shutting_down())
        {
            self.answer(to, result).await;
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
