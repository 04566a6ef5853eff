//! Mode (b), the hub is master (S-13.4): the worker that sends the durable tasks to the external
//! registry, with retries.
//!
//! The tasks are written by the store with the change that caused them (see
//! `store/sync.rs`); this worker reads the due ones, tries each, and records the outcome and its
//! event in one transaction. A task is removed only after the external registry answered, so a
//! hub killed mid-attempt tries again after its restart: delivery is at least once, which the
//! contract makes harmless (a create of an existing device is 409, a delete of an absent one 404,
//! both success). Only one worker runs: the leader instance's (D-76).
//!
//! When to try again is [`decide`], a pure function of the task, the answer, the time and a
//! random number, so it is tested without a clock.

use std::sync::Arc;
use std::time::Duration;

use iothub_spec::code::SyncEventKind;
use rand::Rng;

use super::client::{Client, ClientError, Device};
use super::config::PushConfig;
use super::events::{Recorder, event};
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::SharedStore;
use crate::store::sync::{NewSyncEvent, SyncTask, TaskOp};

/// Most tasks taken from the queue at once (then sent one by one).
const BATCH: u64 = 100;

/// What becomes of a task after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: removed, with this event.
    Done(SyncEventKind),
    /// Tried again at `next_at` (ms); the event is the `…-error` one.
    Retry {
        /// The next attempt's time.
        next_at: u64,
        /// Why this one failed.
        error: String,
    },
    /// Given up (attempts, deadline or a refusal that will not change): removed, with the
    /// `…-failed` event.
    GiveUp(String),
}

/// The delay before attempt `attempts + 1`, after `attempts` failures (1 or more): the
/// interval doubled per earlier failure, at most the max interval, then "equal jitter" (half
/// fixed, half random, `unit` in 0..1) so that tasks failing together do not retry together.
pub fn backoff(config: &PushConfig, attempts: u32, unit: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(32);
    let base = config
        .interval
        .saturating_mul(1u32 << doublings.min(31))
        .min(config.max_interval);
    let half = base / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// What to do with `task` after its attempt number `attempts` answered `result` at `now`.
pub fn decide(
    config: &PushConfig,
    task: &SyncTask,
    attempts: u32,
    now: u64,
    result: Result<(), ClientError>,
    unit: f64,
) -> Outcome {
    let done = match task.op {
        TaskOp::Create => SyncEventKind::ExternalCreated,
        TaskOp::Delete => SyncEventKind::ExternalDeleted,
    };
    let error = match result {
        Ok(()) => return Outcome::Done(done),
        Err(e) => e,
    };
    if !error.is_transient() {
        return Outcome::GiveUp(format!("refused: {error}"));
    }
    let deadline = task
        .created_at
        .saturating_add(u64::try_from(config.deadline.as_millis()).unwrap_or(u64::MAX));
    if attempts >= config.max_attempts {
        return Outcome::GiveUp(format!("{attempts} attempts, the last: {error}"));
    }
    if now >= deadline {
        return Outcome::GiveUp(format!(
            "deadline passed after {attempts} attempts: {error}"
        ));
    }
    let delay = u64::try_from(backoff(config, attempts, unit).as_millis()).unwrap_or(u64::MAX);
    Outcome::Retry {
        // The last attempt is made at the deadline, not after it.
        next_at: now.saturating_add(delay).min(deadline),
        error: error.to_string(),
    }
}

/// The task worker.
pub struct Worker {
    /// The store holding the queue.
    pub store: SharedStore,
    /// The external registry.
    pub client: Client,
    /// Retry settings.
    pub config: PushConfig,
    /// Records the events.
    pub recorder: Recorder,
    /// Shows the queue's length.
    pub metrics: Arc<Metrics>,
}

impl Worker {
    /// Sends due tasks, forever (the caller drops it to stop).
    pub async fn run(self) {
        let Some(sync) = self.store.sync() else {
            tracing::error!("this store keeps no registry sync tasks; push sync not running");
            return;
        };
        loop {
            let due = match sync.due_tasks(now_ms(), BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the registry sync tasks");
                    Vec::new()
                }
            };
            for task in &due {
                self.attempt(task).await;
            }
            if let Ok(n) = sync.pending_tasks().await {
                self.metrics.set_sync_tasks_pending(n);
            }
            if (due.len() as u64) < BATCH {
                tokio::time::sleep(self.config.poll).await;
            }
        }
    }

    /// One attempt of `task`, and its outcome stored with its event.
    async fn attempt(&self, task: &SyncTask) {
        let Some(sync) = self.store.sync() else {
            return;
        };
        let result = match task.op {
            TaskOp::Create => {
                let device = Device {
                    id: task.thing_id.clone(),
                    tags: task.tags.clone(),
                };
                self.client.create(&device).await
            }
            TaskOp::Delete => self.client.delete(&task.thing_id).await,
        };
        let attempts = task.attempts.saturating_add(1);
        let unit = rand::thread_rng().r#gen::<f64>();
        let outcome = decide(&self.config, task, attempts, now_ms(), result, unit);
        let (failed, error_kind) = match task.op {
            TaskOp::Create => (
                SyncEventKind::ExternalCreateFailed,
                SyncEventKind::ExternalCreateError,
            ),
            TaskOp::Delete => (
                SyncEventKind::ExternalDeleteFailed,
                SyncEventKind::ExternalDeleteError,
            ),
        };
        let thing = Some(task.thing_id.as_str());
        let (stored, kind): (Result<(), _>, SyncEventKind) = match &outcome {
            Outcome::Done(kind) => {
                let e = event(*kind, thing, Some(attempts), None);
                (sync.finish_task(task.id, &e).await, *kind)
            }
            Outcome::GiveUp(why) => {
                tracing::warn!(thing = %task.thing_id, op = task.op.as_str(), %why, "registry sync task given up");
                let e: NewSyncEvent = event(failed, thing, Some(attempts), Some(why.clone()));
                (sync.finish_task(task.id, &e).await, failed)
            }
            Outcome::Retry { next_at, error } => {
                tracing::debug!(thing = %task.thing_id, op = task.op.as_str(), %error, attempts, "registry sync task will be retried");
                let e = event(error_kind, thing, Some(attempts), Some(error.clone()));
                let error: String = error.chars().take(super::events::MAX_DETAIL).collect();
                (
                    sync.retry_task(task.id, attempts, *next_at, &error, &e)
                        .await,
                    error_kind,
                )
            }
        };
        match stored {
            Ok(()) => self.recorder.counted(kind),
            // The task stays as it was: it is attempted again (at least once, S-13.4).
            Err(e) => {
                tracing::warn!(thing = %task.thing_id, error = %e, "cannot record a registry sync attempt")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn config() -> PushConfig {
        PushConfig {
            interval: Duration::from_secs(300),
            max_interval: Duration::from_secs(1800),
            max_attempts: 100,
            deadline: Duration::from_secs(86_400),
            poll: Duration::from_secs(1),
        }
    }

    fn task(op: TaskOp) -> SyncTask {
        SyncTask {
            id: 1,
            thing_id: "t1".into(),
            op,
            tags: Map::new(),
            attempts: 0,
            created_at: 1_000_000,
            next_at: 1_000_000,
            last_error: None,
        }
    }

    fn unavailable() -> Result<(), ClientError> {
        Err(ClientError::Status {
            status: 503,
            body: String::new(),
        })
    }

    #[test]
    fn backoff_doubles_to_the_max_with_equal_jitter() {
        let c = config();
        let secs = |a, u| backoff(&c, a, u).as_secs();
        assert_eq!((secs(1, 0.0), secs(1, 1.0)), (150, 300));
        assert_eq!((secs(2, 0.0), secs(2, 1.0)), (300, 600));
        assert_eq!((secs(3, 0.0), secs(3, 1.0)), (600, 1200));
        assert_eq!((secs(4, 0.0), secs(4, 1.0)), (900, 1800));
        assert_eq!((secs(99, 0.5), secs(u32::MAX, 1.0)), (1350, 1800));
    }

    #[test]
    fn answers_retries_and_limits_decide_the_outcome() {
        let c = config();
        let t = task(TaskOp::Create);
        assert_eq!(
            decide(&c, &t, 1, t.created_at, Ok(()), 0.0),
            Outcome::Done(SyncEventKind::ExternalCreated)
        );
        assert_eq!(
            decide(&c, &task(TaskOp::Delete), 1, 0, Ok(()), 0.0),
            Outcome::Done(SyncEventKind::ExternalDeleted)
        );
        match decide(&c, &t, 1, t.created_at, unavailable(), 0.0) {
            Outcome::Retry { next_at, .. } => assert_eq!(next_at, t.created_at + 150_000),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&c, &t, 100, t.created_at, unavailable(), 0.0),
            Outcome::GiveUp(_)
        ));
        let refused = Err(ClientError::Status {
            status: 400,
            body: "no".into(),
        });
        assert!(matches!(
            decide(&c, &t, 1, t.created_at, refused, 0.0),
            Outcome::GiveUp(_)
        ));
        let day = 86_400_000;
        assert!(matches!(
            decide(&c, &t, 5, t.created_at + day, unavailable(), 0.0),
            Outcome::GiveUp(_)
        ));
        match decide(&c, &t, 5, t.created_at + day - 1000, unavailable(), 1.0) {
            Outcome::Retry { next_at, .. } => {
                assert_eq!(
                    next_at,
                    t.created_at + day,
                    "the last attempt at the deadline"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
