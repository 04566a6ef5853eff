//! The shadow pipeline: the one place where shadow requests meet storage and the bus.
//!
//! ```text
//! handle_mqtt / REST ──jobs (bounded, FIFO)──▶ apply task ──submit──▶ GroupCommitter
//!   (rate, in-flight,                           (cache, merge)          │ durability
//!    payload validation)                             │ replies (FIFO)  ▼
//!                                                     └──────────▶ reply task ──▶ Bus / REST caller
//! ```
//!
//! - **Shards.** The pipeline below runs once per dispatch shard ([`crate::shard`]); each thing
//!   belongs to one shard, so everything said here of "the" apply or reply task holds per thing.
//!   Shards share only the group committer (one SQLite writer, larger batches).
//! - **One apply task** (per shard) owns every mutation of its things' shadows, so two writers can
//!   never both win against the same version (S-3.4) and each thing's requests keep their
//!   arrival order. It keeps a cache of
//!   shadows (loaded from the store on first use), merges, moves the cache to the new version and
//!   *submits* the write (expected version = the old one) without waiting for durability, so it
//!   merges the next request while the batch commits.
//! - **One reply task** receives, in the same FIFO order, every outcome: it awaits the write's
//!   durability and only then publishes `update/accepted`, `update/delta` and `update/documents`
//!   (S-3.5: accepted means durable). Gets travel the same FIFO, so a get never overtakes an earlier
//!   update that is not durable yet. A failed write is answered 503 and the apply task drops
//!   that shadow from its cache, so later requests reload it from the store; writes merged on
//!   top of the lost version fail the store's CAS in turn. A get built on top of a lost write is
//!   answered 503 instead of showing state that never became durable.
//! - **Conflicts** (another instance wrote the shadow, docs/spec.md D-85): a write that loses the
//!   store's CAS is answered 409 only if its writer's `version` was stale; otherwise it goes back
//!   to the apply task, which holds the shadow's later requests, applies the lost updates again
//!   on the stored shadow in one transaction that holds it, then runs what waited (see
//!   `apply.rs`). With other writers of the store, pipelined writes also name the body they were
//!   merged on, and gets without writes in flight read the store (D-86).
//! - **Limits** (S-3.9) on MQTT requests, checked before anything is queued: a token bucket of
//!   `shadow_requests_per_sec` per thing (burst = one second's worth) and at most `max_in_flight`
//!   unanswered requests per thing, both answered 429. REST calls are admin calls and skip both.
//!   Creating a named shadow when the thing has `max_named_shadows` already (`default` is not
//!   counted) is a 403 (docs/spec.md D-12).
//! - **Early rejections** (429, a malformed payload, shutting down) are published by
//!   `handle_mqtt` at once, so they may overtake replies to the same thing's earlier requests;
//!   clients match replies by clientToken (S-4.1), and every accepted reply stays in order.
//! - **Cache bound:** at most [`CACHE_CAPACITY`] shadows in all (split between the shards); past that the least recently used
//!   shadows without pending writes are evicted (an eighth at a time, to amortize the scan).
//! - **Delete** (REST) waits until every earlier write is durable (a barrier through the reply
//!   task), then deletes in the store; it briefly pauses the apply task, which is fine for a rare
//!   admin call and keeps a queued create from racing the delete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::payload::{ShadowState, UpdateRequest};

use crate::bus::Bus;
use crate::cluster::Ownership;
use crate::metrics::Metrics;
use crate::shard::shard_of;
use crate::store::SharedStore;
use crate::store::commit::GroupCommitter;

use super::apply::Applier;
pub use super::apply::CACHE_CAPACITY;
use super::pipeline::{Gates, Job, Key, ReplyTo, publish_result, shutting_down};
use super::reply::Replier;
use super::request::{
    DeviceUpdates, client_token_of, parse_desired_update, parse_device_update, parse_get,
};
use super::{ShadowError, ShadowOp};

/// Capacity of the job queues into the apply tasks, in all (back-pressure on the router beyond
/// it; split between the shards).
const JOB_QUEUE: usize = 1024;
/// Capacity of the reply FIFOs, in all (back-pressure on the apply tasks beyond it).
const REPLY_QUEUE: usize = 4096;

/// The shadow service: takes MQTT and REST shadow requests, keeps them in order, stores and
/// answers them. Cheap to clone (an `Arc` inside); create it once with [`ShadowService::spawn`]
/// inside a Tokio runtime and stop it with [`ShadowService::shutdown`].
#[derive(Clone)]
pub struct ShadowService {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Shard]>,
    bus: Arc<dyn Bus>,
    limits: Limits,
    device_updates: DeviceUpdates,
    committer: GroupCommitter,
    closed: AtomicBool,
    tasks: tokio::sync::Mutex<Option<Vec<ShardTasks>>>,
}

/// A shard's apply and reply tasks.
type ShardTasks = (JoinHandle<()>, JoinHandle<()>);

/// One shard's way in: its apply task's queue and the admission state of its things.
struct Shard {
    jobs: mpsc::Sender<Job>,
    gates: Arc<Gates>,
}

impl ShadowService {
    /// Starts the apply and reply tasks on the current Tokio runtime.
    ///
    /// `committer` must write to `store`; `bus` carries the replies; `limits` are the hub's
    /// configured S-3.9 limits; `device_updates` says how a thing's own updates read
    /// (`--tio-compat`).
    pub fn spawn(
        store: SharedStore,
        committer: GroupCommitter,
        bus: Arc<dyn Bus>,
        limits: Limits,
        device_updates: DeviceUpdates,
    ) -> ShadowService {
        Self::spawn_sharded(1, store, committer, bus, limits, device_updates, None)
    }

    /// [`ShadowService::spawn`] that also times each accepted MQTT update in `metrics`.
    pub fn spawn_with_metrics(
        store: SharedStore,
        committer: GroupCommitter,
        bus: Arc<dyn Bus>,
        limits: Limits,
        device_updates: DeviceUpdates,
        metrics: Option<Arc<Metrics>>,
    ) -> ShadowService {
        Self::spawn_sharded(1, store, committer, bus, limits, device_updates, metrics)
    }

    /// As [`ShadowService::spawn_with_metrics`], with `shards` apply and reply task pairs (at
    /// least 1), each owning the things [`shard_of`] gives it.
    pub fn spawn_sharded(
        shards: usize,
        store: SharedStore,
        committer: GroupCommitter,
        bus: Arc<dyn Bus>,
        limits: Limits,
        device_updates: DeviceUpdates,
        metrics: Option<Arc<Metrics>>,
    ) -> ShadowService {
        Self::spawn_for(
            shards,
            store,
            committer,
            bus,
            limits,
            device_updates,
            metrics,
            Ownership::everything(),
        )
    }

    /// [`ShadowService::spawn_sharded`] for an instance that handles only the things of
    /// `ownership` (D-73): shadows of other things are read from the store for each request.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_for(
        shards: usize,
        store: SharedStore,
        committer: GroupCommitter,
        bus: Arc<dyn Bus>,
        limits: Limits,
        device_updates: DeviceUpdates,
        metrics: Option<Arc<Metrics>>,
        ownership: Arc<Ownership>,
    ) -> ShadowService {
        let n = shards.max(1);
        let mut tasks = Vec::with_capacity(n);
        let shards = (0..n)
            .map(|_| {
                let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE.div_ceil(n));
                let (reply_tx, reply_rx) = mpsc::channel(REPLY_QUEUE.div_ceil(n));
                let (feedback_tx, feedback_rx) = mpsc::unbounded_channel();
                let gates = Arc::new(Gates::default());
                let apply = Applier::new(
                    store.clone(),
                    committer.clone(),
                    limits,
                    CACHE_CAPACITY.div_ceil(n),
                    reply_tx,
                    ownership.clone(),
                    feedback_tx.clone(),
                );
                let replier = Replier::new(
                    bus.clone(),
                    gates.clone(),
                    limits,
                    feedback_tx,
                    metrics.clone(),
                );
                tasks.push((
                    tokio::spawn(apply.run(jobs_rx, feedback_rx)),
                    tokio::spawn(replier.run(reply_rx)),
                ));
                Shard {
                    jobs: jobs_tx,
                    gates,
                }
            })
            .collect();
        ShadowService {
            inner: Arc::new(Inner {
                shards,
                bus,
                limits,
                device_updates,
                committer,
                closed: AtomicBool::new(false),
                tasks: tokio::sync::Mutex::new(Some(tasks)),
            }),
        }
    }

    fn shard(&self, thing: &str) -> &Shard {
        &self.inner.shards[shard_of(thing, self.inner.shards.len())]
    }

    /// MQTT requests from the router, in arrival order (already authorized by the broker's
    /// allow-list). Every request gets exactly one reply on its `accepted` or `rejected` topic.
    ///
    /// Returns once the request is queued (it waits only when the pipeline is saturated).
    pub async fn handle_mqtt(&self, thing: &str, shadow: &str, op: ShadowOp, payload: Bytes) {
        let received = Instant::now();
        let key = Key::new(thing, shadow);
        let limits = &self.inner.limits;
        let shard = self.shard(thing);
        if self.inner.closed.load(Ordering::Acquire) {
            let err = ShadowError::new(ErrorCode::Unavailable, "hub is shutting down")
                .with_client_token(client_token_of(&payload, limits));
            publish_result(&*self.inner.bus, &key, op, Err(err)).await;
            return;
        }
        if let Err(message) = shard.gates.admit(thing, limits, Instant::now()) {
            let err = ShadowError::new(ErrorCode::TooManyRequests, message)
                .with_client_token(client_token_of(&payload, limits));
            publish_result(&*self.inner.bus, &key, op, Err(err)).await;
            return;
        }
        // Validation happens here, on the caller's task, so it runs in parallel across
        // connections; only the merge is serialized.
        let job = match op {
            ShadowOp::Get => parse_get(&payload, limits).map(|g| Job::Get {
                key: key.clone(),
                client_token: g.client_token,
                to: ReplyTo::Mqtt {
                    key: key.clone(),
                    op,
                    received,
                },
            }),
            ShadowOp::Update => parse_device_update(&payload, limits, self.inner.device_updates)
                .map(|req| Job::Update {
                    key: key.clone(),
                    req,
                    to: ReplyTo::Mqtt {
                        key: key.clone(),
                        op,
                        received,
                    },
                    attempt: 0,
                }),
        };
        match job {
            Ok(job) => {
                if shard.jobs.send(job).await.is_err() {
                    self.release(thing);
                }
            }
            Err(err) => {
                self.release(thing);
                publish_result(&*self.inner.bus, &key, op, Err(err)).await;
            }
        }
    }

    /// REST `GET /things/{id}/shadows/{name}` (S-9.3): the S-3.2 document, or 404 when the
    /// shadow does not exist.
    pub async fn get(&self, thing: &str, shadow: &str) -> Result<Value, ShadowError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Get {
            key: Key::new(thing, shadow),
            client_token: None,
            to: ReplyTo::Rest(tx),
        };
        self.rest_call(thing, job, rx).await
    }

    /// REST `PUT /things/{id}/shadows/{name}/state/desired` (S-9.3): `body` is
    /// `{"state":{"desired":..},"clientToken"?,"version"?}`. Returns the S-3.5 accepted payload
    /// once the update is durable; `update/delta` and `update/documents` are published to the
    /// thing as for MQTT updates. Errors carry their protocol code (400, 409, 413, 415, 503).
    pub async fn update_desired(
        &self,
        thing: &str,
        shadow: &str,
        body: &[u8],
    ) -> Result<Value, ShadowError> {
        let req = parse_desired_update(body, &self.inner.limits, self.inner.device_updates)?;
        let (tx, rx) = oneshot::channel();
        let job = Job::Update {
            key: Key::new(thing, shadow),
            req,
            to: ReplyTo::Rest(tx),
            attempt: 0,
        };
        self.rest_call(thing, job, rx).await
    }

    /// Merges `patch` into the shadow's `state.desired` as [`ShadowService::update_desired`]
    /// does (D-36): the hub's own fleet writers (configurations, jobs) go through the same
    /// pipeline as a REST write, without a client token or version.
    pub async fn patch_desired(
        &self,
        thing: &str,
        shadow: &str,
        patch: &serde_json::Map<String, Value>,
    ) -> Result<Value, ShadowError> {
        let request = UpdateRequest {
            state: ShadowState::<&serde_json::Map<String, Value>, (), ()> {
                desired: Some(patch),
                reported: None,
                delta: None,
            },
            client_token: None,
            version: None,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| ShadowError::new(ErrorCode::Internal, e.to_string()))?;
        self.update_desired(thing, shadow, &body).await
    }

    /// REST `DELETE /things/{id}/shadows/{name}` (S-9.3): removes the shadow after every earlier
    /// write is durable; 404 when it does not exist. The next update creates it at version 1.
    pub async fn delete(&self, thing: &str, shadow: &str) -> Result<(), ShadowError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Delete {
            key: Key::new(thing, shadow),
            done: tx,
        };
        let jobs = &self.shard(thing).jobs;
        if self.inner.closed.load(Ordering::Acquire) || jobs.send(job).await.is_err() {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// The thing was deleted: drop its cached shadows and its rate-limit state. Call after the
    /// store deleted it (and its shadows).
    pub fn forget_thing(&self, thing: &str) {
        let shard = self.shard(thing);
        shard.gates.forget(thing);
        match shard.jobs.try_send(Job::Forget(thing.to_owned())) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                // Queue full: hand the job to a task rather than block a sync caller.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let jobs = shard.jobs.clone();
                    rt.spawn(async move {
                        let _ = jobs.send(job).await;
                    });
                }
            }
        }
    }

    /// Stops taking requests, finishes the queued ones (their replies are published), then
    /// drains the group committer. Later calls return at once.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let Some(tasks) = self.inner.tasks.lock().await.take() else {
            return;
        };
        for shard in &self.inner.shards {
            let _ = shard.jobs.send(Job::Shutdown).await;
        }
        for (apply, reply) in tasks {
            if let Err(e) = apply.await {
                tracing::error!("shadow apply task failed: {e}");
            }
            if let Err(e) = reply.await {
                tracing::error!("shadow reply task failed: {e}");
            }
        }
        self.inner.committer.shutdown().await;
    }

    async fn rest_call(
        &self,
        thing: &str,
        job: Job,
        rx: oneshot::Receiver<Result<Value, ShadowError>>,
    ) -> Result<Value, ShadowError> {
        let jobs = &self.shard(thing).jobs;
        if self.inner.closed.load(Ordering::Acquire) || jobs.send(job).await.is_err() {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    fn release(&self, thing: &str) {
        self.shard(thing)
            .gates
            .release(thing, &self.inner.limits, Instant::now());
    }
}

#[cfg(test)]
#[path = "service_tests/mod.rs"]
mod tests;
