//! The shadow pipeline: the one place where shadow requests meet storage and the bus.
//!
//! ```text
//! handle_mqtt / REST ──jobs (bounded, FIFO)──▶ apply task ──submit──▶ GroupCommitter
//!   (rate, in-flight,                           (cache, merge)          │ durability
//!    payload validation)                             │ replies (FIFO)  ▼
//!                                                     └──────────▶ reply task ──▶ Bus / REST caller
//! ```
//!
//! - **One apply task** owns every shadow mutation, so two writers can never both win against the
//!   same version (S-3.4) and each thing's requests keep their arrival order. It keeps a cache of
//!   shadows (loaded from the store on first use), merges, moves the cache to the new version and
//!   *submits* the write (expected version = the old one) without waiting for durability, so it
//!   merges the next request while the batch commits.
//! - **One reply task** receives, in the same FIFO order, every outcome: it awaits the write's
//!   durability and only then publishes `update/accepted`, `update/delta` and `update/documents`
//!   (S-3.5: accepted means durable). Gets travel the same FIFO, so a get never overtakes an earlier
//!   update that is not durable yet. A failed write is answered 503 (409 for a CAS conflict) and
//!   the apply task drops that shadow from its cache, so later requests reload it from the store;
//!   writes merged on top of the lost version fail the store's CAS in turn. A get built on top of
//!   a lost write is answered 503 instead of showing state that never became durable.
//! - **Limits** (S-3.9) on MQTT requests, checked before anything is queued: a token bucket of
//!   `shadow_requests_per_sec` per thing (burst = one second's worth) and at most `max_in_flight`
//!   unanswered requests per thing, both answered 429. REST calls are admin calls and skip both.
//!   Creating a shadow when the thing has `max_named_shadows` already (`default` included) is a
//!   403 (spec crate decision 12).
//! - **Cache bound:** at most [`CACHE_CAPACITY`] shadows; past that the least recently used
//!   shadows without pending writes are evicted (an eighth at a time, to amortize the scan).
//! - **Delete** (REST) waits until every earlier write is durable (a barrier through the reply
//!   task), then deletes in the store; it briefly pauses the apply task, which is fine for a rare
//!   admin call and keeps a queued create from racing the delete.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::topic::Topic;

use crate::bus::Bus;
use crate::clock::now_ms;
use crate::store::commit::GroupCommitter;
use crate::store::{ShadowWrite, SharedStore, StoreError};

use super::document::{UpdateReplies, error_payload, get_document, update_replies};
use super::request::{
    UpdateRequest, client_token_of, parse_desired_update, parse_get, parse_update,
};
use super::{Shadow, ShadowError, ShadowOp, apply_update};

/// Most shadows the apply task keeps in memory.
pub const CACHE_CAPACITY: usize = 16_384;
/// Capacity of the job queue into the apply task (back-pressure on the router beyond it).
const JOB_QUEUE: usize = 1024;
/// Capacity of the reply FIFO (back-pressure on the apply task beyond it).
const REPLY_QUEUE: usize = 4096;

/// The shadow service: takes MQTT and REST shadow requests, keeps them in order, stores and
/// answers them. Cheap to clone (an `Arc` inside); create it once with [`ShadowService::spawn`]
/// inside a Tokio runtime and stop it with [`ShadowService::shutdown`].
#[derive(Clone)]
pub struct ShadowService {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    bus: Arc<dyn Bus>,
    limits: Limits,
    committer: GroupCommitter,
    gates: Arc<Mutex<HashMap<String, Gate>>>,
    closed: AtomicBool,
    tasks: tokio::sync::Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
}

/// Per-thing admission state for MQTT requests.
struct Gate {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    thing: String,
    shadow: String,
}

/// Where an answer goes.
enum ReplyTo {
    Mqtt { key: Key, op: ShadowOp },
    Rest(oneshot::Sender<Result<Value, ShadowError>>),
}

enum Job {
    Update {
        key: Key,
        req: UpdateRequest,
        to: ReplyTo,
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
    Forget(String),
    Shutdown,
}

enum Reply {
    /// An accepted update, to be answered once `durable` resolves.
    Written {
        durable: oneshot::Receiver<Result<(), StoreError>>,
        key: Key,
        generation: u64,
        client_token: Option<String>,
        replies: UpdateReplies,
        to: ReplyTo,
    },
    /// An answer that needs no storage: a get, or an error. `depends` names the cache generation
    /// whose not-yet-durable writes the answer shows, if any.
    Ready {
        result: Result<Value, ShadowError>,
        depends: Option<(Key, u64)>,
        to: ReplyTo,
    },
    /// Resolved once every earlier reply is out (all earlier writes are durable or failed).
    Barrier(oneshot::Sender<()>),
}

/// What the reply task tells the apply task about a write.
enum Feedback {
    Durable { key: Key, generation: u64 },
    Failed { key: Key, generation: u64 },
}

impl ShadowService {
    /// Starts the apply and reply tasks on the current Tokio runtime.
    ///
    /// `committer` must write to `store`; `bus` carries the replies; `limits` are the hub's
    /// configured S-3.9 limits.
    pub fn spawn(
        store: SharedStore,
        committer: GroupCommitter,
        bus: Arc<dyn Bus>,
        limits: Limits,
    ) -> ShadowService {
        let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE);
        let (reply_tx, reply_rx) = mpsc::channel(REPLY_QUEUE);
        let (feedback_tx, feedback_rx) = mpsc::unbounded_channel();
        let gates = Arc::new(Mutex::new(HashMap::new()));
        let apply = Applier {
            store,
            committer: committer.clone(),
            limits,
            cache: Cache::default(),
            replies: reply_tx,
            next_generation: 1,
        };
        let replier = Replier {
            bus: bus.clone(),
            gates: gates.clone(),
            feedback: feedback_tx,
            poisoned: HashMap::new(),
        };
        let apply_task = tokio::spawn(apply.run(jobs_rx, feedback_rx));
        let reply_task = tokio::spawn(replier.run(reply_rx));
        ShadowService {
            inner: Arc::new(Inner {
                jobs: jobs_tx,
                bus,
                limits,
                committer,
                gates,
                closed: AtomicBool::new(false),
                tasks: tokio::sync::Mutex::new(Some((apply_task, reply_task))),
            }),
        }
    }

    /// MQTT requests from the router, in arrival order (already authorized by the broker's
    /// allow-list). Every request gets exactly one reply on its `accepted` or `rejected` topic.
    ///
    /// Returns once the request is queued (it waits only when the pipeline is saturated).
    pub async fn handle_mqtt(&self, thing: &str, shadow: &str, op: ShadowOp, payload: Bytes) {
        let key = Key {
            thing: thing.to_owned(),
            shadow: shadow.to_owned(),
        };
        let limits = &self.inner.limits;
        if self.inner.closed.load(Ordering::Acquire) {
            let err = ShadowError::new(ErrorCode::Unavailable, "hub is shutting down")
                .with_client_token(client_token_of(&payload, limits));
            publish_result(&*self.inner.bus, &key, op, Err(err)).await;
            return;
        }
        if let Err(message) = self.admit(thing) {
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
                },
            }),
            ShadowOp::Update => parse_update(&payload, limits).map(|req| Job::Update {
                key: key.clone(),
                req,
                to: ReplyTo::Mqtt {
                    key: key.clone(),
                    op,
                },
            }),
        };
        match job {
            Ok(job) => {
                if self.inner.jobs.send(job).await.is_err() {
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
            key: Key {
                thing: thing.to_owned(),
                shadow: shadow.to_owned(),
            },
            client_token: None,
            to: ReplyTo::Rest(tx),
        };
        self.rest_call(job, rx).await
    }

    /// REST `PUT /things/{id}/shadows/{name}/state/desired` (S-9.3): `body` is
    /// `{"state":{"desired":..},"clientToken"?,"version"?}`. Returns the S-3.5 accepted payload
    /// once the update is durable; `update/delta` and `update/documents` are published to the
    /// thing as for MQTT updates. Errors carry their SPEC code (400, 409, 413, 415, 503).
    pub async fn update_desired(
        &self,
        thing: &str,
        shadow: &str,
        body: &[u8],
    ) -> Result<Value, ShadowError> {
        let req = parse_desired_update(body, &self.inner.limits)?;
        let (tx, rx) = oneshot::channel();
        let job = Job::Update {
            key: Key {
                thing: thing.to_owned(),
                shadow: shadow.to_owned(),
            },
            req,
            to: ReplyTo::Rest(tx),
        };
        self.rest_call(job, rx).await
    }

    /// REST `DELETE /things/{id}/shadows/{name}` (S-9.3): removes the shadow after every earlier
    /// write is durable; 404 when it does not exist. The next update creates it at version 1.
    pub async fn delete(&self, thing: &str, shadow: &str) -> Result<(), ShadowError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Delete {
            key: Key {
                thing: thing.to_owned(),
                shadow: shadow.to_owned(),
            },
            done: tx,
        };
        if self.inner.closed.load(Ordering::Acquire) || self.inner.jobs.send(job).await.is_err() {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// The thing was deleted: drop its cached shadows and its rate-limit state. Call after the
    /// store deleted it (and its shadows).
    pub fn forget_thing(&self, thing: &str) {
        if let Ok(mut gates) = self.inner.gates.lock() {
            gates.remove(thing);
        }
        match self.inner.jobs.try_send(Job::Forget(thing.to_owned())) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                // Queue full: hand the job to a task rather than block a sync caller.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let jobs = self.inner.jobs.clone();
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
        let Some((apply, reply)) = self.inner.tasks.lock().await.take() else {
            return;
        };
        let _ = self.inner.jobs.send(Job::Shutdown).await;
        if let Err(e) = apply.await {
            tracing::error!("shadow apply task failed: {e}");
        }
        if let Err(e) = reply.await {
            tracing::error!("shadow reply task failed: {e}");
        }
        self.inner.committer.shutdown().await;
    }

    async fn rest_call(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<Value, ShadowError>>,
    ) -> Result<Value, ShadowError> {
        if self.inner.closed.load(Ordering::Acquire) || self.inner.jobs.send(job).await.is_err() {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Admission for one MQTT request of `thing`: a token and an in-flight slot, or the reason
    /// for a 429.
    fn admit(&self, thing: &str) -> Result<(), String> {
        let limits = &self.inner.limits;
        let rate = f64::from(limits.shadow_requests_per_sec.max(1));
        let now = Instant::now();
        let mut gates = self
            .inner
            .gates
            .lock()
            .map_err(|_| "internal error".to_owned())?;
        let gate = gates.entry(thing.to_owned()).or_insert(Gate {
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

    fn release(&self, thing: &str) {
        release(&self.inner.gates, thing);
    }
}

fn release(gates: &Mutex<HashMap<String, Gate>>, thing: &str) {
    if let Ok(mut gates) = gates.lock()
        && let Some(gate) = gates.get_mut(thing)
    {
        gate.in_flight = gate.in_flight.saturating_sub(1);
    }
}

fn shutting_down() -> ShadowError {
    ShadowError::new(ErrorCode::Unavailable, "shadow service is shutting down")
}

fn store_error(e: &StoreError) -> ShadowError {
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

async fn publish_json(bus: &dyn Bus, topic: &str, payload: &Value) {
    bus.publish(topic, Bytes::from(payload.to_string()), false)
        .await;
}

/// Publishes the accepted or rejected reply of an MQTT request.
async fn publish_result(
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

// ---------------------------------------------------------------------------------------------
// The apply task

struct Entry {
    shadow: Shadow,
    /// Changes whenever the entry is (re)loaded, so feedback about older writes is ignored.
    generation: u64,
    /// Submitted writes not yet reported durable or failed.
    pending: u32,
    /// Last use, for LRU eviction.
    used: u64,
}

/// thing → shadow name → entry.
#[derive(Default)]
struct Cache {
    things: HashMap<String, HashMap<String, Entry>>,
    len: usize,
    tick: u64,
}

impl Cache {
    fn get_mut(&mut self, key: &Key) -> Option<&mut Entry> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.things.get_mut(&key.thing)?.get_mut(&key.shadow)?;
        entry.used = tick;
        Some(entry)
    }

    fn insert(&mut self, key: &Key, mut entry: Entry) {
        self.tick += 1;
        entry.used = self.tick;
        let old = self
            .things
            .entry(key.thing.clone())
            .or_default()
            .insert(key.shadow.clone(), entry);
        if old.is_none() {
            self.len += 1;
        }
        if self.len > CACHE_CAPACITY {
            self.evict();
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(shadows) = self.things.get_mut(&key.thing) {
            if shadows.remove(&key.shadow).is_some() {
                self.len -= 1;
            }
            if shadows.is_empty() {
                self.things.remove(&key.thing);
            }
        }
    }

    fn forget_thing(&mut self, thing: &str) {
        if let Some(shadows) = self.things.remove(thing) {
            self.len -= shadows.len();
        }
    }

    /// Names of the existing (version > 0) cached shadows of `thing`.
    fn existing_names(&self, thing: &str) -> impl Iterator<Item = &str> {
        self.things
            .get(thing)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(_, e)| e.shadow.exists())
            .map(|(name, _)| name.as_str())
    }

    /// Drops the least recently used eighth of the entries without pending writes.
    fn evict(&mut self) {
        let mut idle: Vec<(u64, String, String)> = self
            .things
            .iter()
            .flat_map(|(thing, m)| {
                // Never the entry just touched: its caller is about to use it.
                m.iter()
                    .filter(|(_, e)| e.pending == 0 && e.used != self.tick)
                    .map(move |(name, e)| (e.used, thing.clone(), name.clone()))
            })
            .collect();
        idle.sort_unstable_by_key(|(used, _, _)| *used);
        let n = (CACHE_CAPACITY / 8).max(1).min(idle.len());
        for (_, thing, shadow) in idle.into_iter().take(n) {
            self.remove(&Key { thing, shadow });
        }
    }
}

struct Applier {
    store: SharedStore,
    committer: GroupCommitter,
    limits: Limits,
    cache: Cache,
    replies: mpsc::Sender<Reply>,
    next_generation: u64,
}

impl Applier {
    async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut feedback: mpsc::UnboundedReceiver<Feedback>,
    ) {
        loop {
            tokio::select! {
                biased;
                Some(fb) = feedback.recv() => self.feedback(fb),
                job = jobs.recv() => match job {
                    None | Some(Job::Shutdown) => break,
                    Some(job) => {
                        if self.job(job, &mut feedback).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
        // Dropping `self.replies` lets the reply task drain what is queued and end.
    }

    fn feedback(&mut self, fb: Feedback) {
        match fb {
            Feedback::Durable { key, generation } => {
                if let Some(entry) = self.cache.get_mut(&key)
                    && entry.generation == generation
                {
                    entry.pending = entry.pending.saturating_sub(1);
                }
            }
            Feedback::Failed { key, generation } => {
                if self
                    .cache
                    .get_mut(&key)
                    .is_some_and(|e| e.generation == generation)
                {
                    // The cache is ahead of the store by a lost write: reload on next use.
                    self.cache.remove(&key);
                }
            }
        }
    }

    /// Handles one job; `Err` only when the reply task is gone.
    async fn job(
        &mut self,
        job: Job,
        feedback: &mut mpsc::UnboundedReceiver<Feedback>,
    ) -> Result<(), ()> {
        match job {
            Job::Update { key, req, to } => self.update(key, req, to).await,
            Job::Get {
                key,
                client_token,
                to,
            } => {
                let (result, depends) = match self.load(&key).await {
                    Ok(entry) if entry.shadow.exists() => {
                        let doc = get_document(&entry.shadow, now_ms(), client_token.as_deref());
                        let depends = (entry.pending > 0).then(|| (key.clone(), entry.generation));
                        (Ok(doc), depends)
                    }
                    Ok(_) => (Err(not_found(&key)), None),
                    Err(e) => (Err(e), None),
                };
                let result = result.map_err(|e| e.with_client_token(client_token));
                self.reply(Reply::Ready {
                    result,
                    depends,
                    to,
                })
                .await
            }
            Job::Delete { key, done } => {
                let (tx, rx) = oneshot::channel();
                self.reply(Reply::Barrier(tx)).await?;
                let _ = rx.await;
                // Every earlier write is settled; apply what the reply task reported about them.
                while let Ok(fb) = feedback.try_recv() {
                    self.feedback(fb);
                }
                let result = match self.store.delete_shadow(&key.thing, &key.shadow).await {
                    Ok(()) => Ok(()),
                    Err(StoreError::NotFound) => Err(not_found(&key)),
                    Err(e) => Err(store_error(&e)),
                };
                // Whatever happened, the store is the truth now.
                self.cache.remove(&key);
                let _ = done.send(result);
                Ok(())
            }
            Job::Forget(thing) => {
                self.cache.forget_thing(&thing);
                Ok(())
            }
            Job::Shutdown => Ok(()),
        }
    }

    async fn update(&mut self, key: Key, req: UpdateRequest, to: ReplyTo) -> Result<(), ()> {
        let token = req.client_token.clone();
        let now = now_ms();
        let outcome = self.merge(&key, &req, now).await;
        match outcome {
            Ok((previous, current, generation)) => {
                let write = ShadowWrite {
                    thing_id: key.thing.clone(),
                    name: key.shadow.clone(),
                    expected_version: previous.version,
                    new_version: current.version,
                    body: current.to_body(),
                    updated_at: now,
                };
                let replies = update_replies(&previous, &current, &req, now);
                let durable = self.committer.submit(write).await;
                self.reply(Reply::Written {
                    durable,
                    key,
                    generation,
                    client_token: token,
                    replies,
                    to,
                })
                .await
            }
            Err(err) => {
                self.reply(Reply::Ready {
                    result: Err(err.with_client_token(token)),
                    depends: None,
                    to,
                })
                .await
            }
        }
    }

    /// Checks and merges `req` into the cached shadow, moving the cache to the new version.
    /// Returns (previous, current, cache generation).
    async fn merge(
        &mut self,
        key: &Key,
        req: &UpdateRequest,
        now: u64,
    ) -> Result<(Shadow, Shadow, u64), ShadowError> {
        if !self.load(key).await?.shadow.exists() {
            self.check_shadow_quota(key).await?;
        }
        let limits = self.limits;
        let entry = self.load(key).await?;
        let next = apply_update(&entry.shadow, req, &limits, now)?;
        let previous = std::mem::replace(&mut entry.shadow, next.clone());
        entry.pending += 1;
        Ok((previous, next, entry.generation))
    }

    /// Refuses to create one more shadow when the thing has `max_named_shadows` already,
    /// `default` included (spec crate decision 12). Counts what the store has plus created
    /// shadows whose write is still queued (they are in the cache).
    async fn check_shadow_quota(&mut self, key: &Key) -> Result<(), ShadowError> {
        let stored = self
            .store
            .shadow_names(&key.thing)
            .await
            .map_err(|e| store_error(&e))?;
        let mut names: Vec<&str> = stored.iter().map(String::as_str).collect();
        names.extend(self.cache.existing_names(&key.thing));
        names.sort_unstable();
        names.dedup();
        let others = names.iter().filter(|n| **n != key.shadow).count();
        if others >= self.limits.max_named_shadows as usize {
            return Err(ShadowError::new(
                ErrorCode::Forbidden,
                format!(
                    "thing already has {} shadows, the limit",
                    self.limits.max_named_shadows
                ),
            ));
        }
        Ok(())
    }

    /// The cache entry of `key`, loading it from the store on a miss.
    async fn load(&mut self, key: &Key) -> Result<&mut Entry, ShadowError> {
        if self.cache.get_mut(key).is_none() {
            let stored = self
                .store
                .get_shadow(&key.thing, &key.shadow)
                .await
                .map_err(|e| store_error(&e))?;
            let shadow = match stored {
                None => Shadow::default(),
                Some(s) => Shadow::from_body(&s.body, s.version).map_err(|e| {
                    tracing::error!(thing = %key.thing, shadow = %key.shadow, "{e}");
                    ShadowError::new(ErrorCode::Internal, "stored shadow is unreadable")
                })?,
            };
            let generation = self.next_generation;
            self.next_generation += 1;
            self.cache.insert(
                key,
                Entry {
                    shadow,
                    generation,
                    pending: 0,
                    used: 0,
                },
            );
        }
        self.cache
            .get_mut(key)
            .ok_or_else(|| ShadowError::new(ErrorCode::Internal, "shadow cache lost an entry"))
    }

    async fn reply(&self, reply: Reply) -> Result<(), ()> {
        self.replies.send(reply).await.map_err(|_| ())
    }
}

fn not_found(key: &Key) -> ShadowError {
    ShadowError::new(
        ErrorCode::NotFound,
        format!("no shadow {:?} for thing {:?}", key.shadow, key.thing),
    )
}

// ---------------------------------------------------------------------------------------------
// The reply task

struct Replier {
    bus: Arc<dyn Bus>,
    gates: Arc<Mutex<HashMap<String, Gate>>>,
    feedback: mpsc::UnboundedSender<Feedback>,
    /// Cache generations with a lost write: answers built on them are not trustworthy.
    poisoned: HashMap<Key, u64>,
}

impl Replier {
    async fn run(mut self, mut replies: mpsc::Receiver<Reply>) {
        while let Some(reply) = replies.recv().await {
            match reply {
                Reply::Written {
                    durable,
                    key,
                    generation,
                    client_token,
                    replies,
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
                            self.answer(to, Ok(replies.accepted)).await;
                            if let Some(delta) = &replies.delta {
                                let topic = Topic::ShadowUpdateDelta {
                                    thing: &key.thing,
                                    shadow: &key.shadow,
                                };
                                publish_json(&*self.bus, &topic.to_string(), delta).await;
                            }
                            let topic = Topic::ShadowUpdateDocuments {
                                thing: &key.thing,
                                shadow: &key.shadow,
                            };
                            publish_json(&*self.bus, &topic.to_string(), &replies.documents).await;
                        }
                        Err(e) => {
                            tracing::warn!(thing = %key.thing, shadow = %key.shadow, "shadow write failed: {e}");
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
            ReplyTo::Mqtt { key, op } => {
                publish_result(&*self.bus, &key, op, result).await;
                release(&self.gates, &key.thing);
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
        .and_then(|v| v.get(iothub_spec::payload::field::CLIENT_TOKEN))
        .and_then(Value::as_str)
        .map(str::to_owned)
}
