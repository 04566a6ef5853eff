//! The apply task: the single owner of every shadow mutation (see [`service`](super::service)).
//!
//! It keeps a bounded cache of shadows, merges each update into the cached version, moves the
//! cache to the new version and submits the write to the group committer without waiting for
//! durability; the outcome travels on to the reply task in the same order.
//!
//! # A cached shadow that lost a write (docs/spec.md D-85)
//! When a write fails, the cached copy is ahead of the store by a write that will never be
//! stored, and every write merged on it since fails as well (the store compares the version, and
//! with other instances the body too). The shadow is then *stalled*: the requests that arrive
//! for it wait, in order, until every write merged on the lost copy has come back. Then, after
//! a short jittered backoff that grows with the attempt, the updates (and the gets) that lost
//! against another writer are applied again in their order, in one store transaction that reads
//! the shadow and holds it until its writes commit ([`Applier::rewrite`]), and the waiting
//! requests follow on the refreshed cache. So a writer's own updates stay in order, a retried
//! update never lands after one sent later, and it cannot lose twice against the same writer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use iothub_spec::code::ErrorCode;
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::limits::Limits;

use crate::clock::now_ms;
use crate::cluster::Ownership;
use crate::store::commit::GroupCommitter;
use crate::store::{ShadowWrite, SharedStore, StoreError, StoredShadow};

use super::document::get_document;
use super::pipeline::{
    AcceptedUpdate, Depends, Feedback, Job, Key, Reply, ReplyTo, not_found, shutting_down,
    store_error,
};
use super::request::UpdateRequest;
use super::{Shadow, ShadowError, apply_update};

/// Most shadows the apply tasks keep in memory, in all (each shard gets its share).
pub const CACHE_CAPACITY: usize = 16_384;
/// Most requests that wait for one stalled shadow; more are answered 503.
const MAX_DEFERRED: usize = 1024;
/// Longest backoff before a lost update is applied again.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// How long a shutdown waits for stalled shadows to be settled before answering their requests
/// 503.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Backoff before applying a lost update again for the `attempt`-th time: between a half and
/// the whole of 2 ms × 2^(attempt−1), at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(2)
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(MAX_BACKOFF);
    let half = cap / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

/// A shadow whose cached copy lost a write (see the module docs).
struct Stall {
    /// The cache generation that lost it.
    generation: u64,
    /// Writes (and gets that showed them) of `generation` the reply task has not reported yet.
    outstanding: u32,
    /// Jobs the reply task handed back to run again, oldest first.
    retries: VecDeque<Job>,
    /// Jobs that arrived meanwhile, in arrival order.
    deferred: VecDeque<Job>,
    /// Highest attempt among `retries`.
    attempt: u32,
    /// A backoff timer runs; [`Feedback::Resume`] ends it.
    waiting: bool,
}

struct Entry {
    shadow: Shadow,
    /// Changes whenever the entry is (re)loaded, so feedback about older writes is ignored.
    generation: u64,
    /// Submitted writes not yet reported durable or failed.
    pending: u32,
    /// Last use, for LRU eviction.
    used: u64,
    /// [`Ownership::epoch`] when loaded.
    epoch: u64,
    /// With other writers of the store ([`Ownership::shared`]): the body of the last write
    /// submitted while `pending > 0`, which the next write expects ([`ShadowWrite`]'s
    /// `expected_body`).
    body: Option<String>,
}

/// thing → shadow name → entry, at most `capacity` entries plus those with pending writes.
struct Cache {
    things: HashMap<String, HashMap<String, Entry>>,
    len: usize,
    tick: u64,
    capacity: usize,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache {
            things: HashMap::new(),
            len: 0,
            tick: 0,
            capacity: capacity.max(1),
        }
    }

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
        if self.len > self.capacity {
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
        let n = (self.capacity / 8).max(1).min(idle.len());
        for (_, thing, shadow) in idle.into_iter().take(n) {
            self.remove(&Key { thing, shadow });
        }
    }
}

pub(super) struct Applier {
    store: SharedStore,
    committer: GroupCommitter,
    limits: Limits,
    cache: Cache,
    replies: mpsc::Sender<Reply>,
    next_generation: u64,
    /// Which things this instance handles (D-73): the cache is trusted only for those, and only
    /// since they were last taken; another instance may have written the others.
    ownership: Arc<Ownership>,
    /// Stalled shadows (see the module docs).
    stalls: HashMap<Key, Stall>,
    /// Stalled shadows ready to run again, in the order they became ready.
    ready: VecDeque<Key>,
    /// The reply task's feedback channel, for the backoff timers' [`Feedback::Resume`].
    resume: mpsc::UnboundedSender<Feedback>,
    /// Shutting down: no backoff any more.
    closing: bool,
}

impl Applier {
    /// An apply task that answers through `replies`.
    pub(super) fn new(
        store: SharedStore,
        committer: GroupCommitter,
        limits: Limits,
        cache_capacity: usize,
        replies: mpsc::Sender<Reply>,
        ownership: Arc<Ownership>,
        resume: mpsc::UnboundedSender<Feedback>,
    ) -> Applier {
        Applier {
            store,
            committer,
            limits,
            cache: Cache::new(cache_capacity),
            replies,
            next_generation: 1,
            ownership,
            stalls: HashMap::new(),
            ready: VecDeque::new(),
            resume,
            closing: false,
        }
    }
}

impl Applier {
    /// Runs until [`Job::Shutdown`] or until every sender is gone.
    pub(super) async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut feedback: mpsc::UnboundedReceiver<Feedback>,
    ) {
        loop {
            while let Some(key) = self.ready.pop_front() {
                if self.resume(key, &mut feedback).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                biased;
                Some(fb) = feedback.recv() => self.feedback(fb),
                job = jobs.recv() => match job {
                    None | Some(Job::Shutdown) => break,
                    Some(job) => {
                        if self.route(job, &mut feedback).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
        self.drain(&mut feedback).await;
        // Dropping `self.replies` lets the reply task drain what is queued and end.
    }

    /// At shutdown: settles the stalled shadows (their lost updates are applied again at once),
    /// so that every request taken is answered; after [`SHUTDOWN_DRAIN`], what still waits is
    /// answered 503.
    async fn drain(&mut self, feedback: &mut mpsc::UnboundedReceiver<Feedback>) {
        self.closing = true;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        loop {
            if self.settle(feedback).await.is_err() {
                return;
            }
            let keys: Vec<Key> = self.stalls.keys().cloned().collect();
            if keys.is_empty() {
                return;
            }
            let late = tokio::time::Instant::now() >= deadline;
            for key in keys {
                // Everything queued before the barrier has been reported: nothing is out.
                if let Some(stall) = self.stalls.get_mut(&key) {
                    stall.outstanding = 0;
                    stall.waiting = false;
                }
                if late {
                    if let Some(stall) = self.stalls.remove(&key) {
                        for job in stall.retries.into_iter().chain(stall.deferred) {
                            if let Some(reply) = job.refuse(shutting_down()) {
                                let _ = self.reply(reply).await;
                            }
                        }
                    }
                } else if self.resume(key, feedback).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Waits until every reply queued so far is out (all earlier writes durable or failed),
    /// then takes in everything the reply task reported about them.
    async fn settle(&mut self, feedback: &mut mpsc::UnboundedReceiver<Feedback>) -> Result<(), ()> {
        let (tx, rx) = oneshot::channel();
        self.reply(Reply::Barrier(tx)).await?;
        let _ = rx.await;
        while let Ok(fb) = feedback.try_recv() {
            self.feedback(fb);
        }
        Ok(())
    }

    fn feedback(&mut self, fb: Feedback) {
        match fb {
            Feedback::Durable { key, generation } => {
                if let Some(stall) = self.stalls.get_mut(&key)
                    && stall.generation == generation
                {
                    stall.outstanding = stall.outstanding.saturating_sub(1);
                    self.check_ready(&key);
                } else if let Some(entry) = self.cache.get_mut(&key)
                    && entry.generation == generation
                {
                    entry.pending = entry.pending.saturating_sub(1);
                    if entry.pending == 0 {
                        entry.body = None;
                    }
                }
            }
            Feedback::Failed { key, generation } => self.lost(key, generation, None),
            Feedback::Retry {
                key,
                generation,
                job,
            } => self.lost(key, generation, Some(*job)),
            Feedback::Resume(key) => {
                if let Some(stall) = self.stalls.get_mut(&key) {
                    stall.waiting = false;
                    self.check_ready(&key);
                }
            }
        }
    }

    /// A write (or a get showing it) of `generation` was not stored; `retry` is to run again.
    fn lost(&mut self, key: Key, generation: u64, retry: Option<Job>) {
        match self.stalls.get_mut(&key) {
            Some(stall) => {
                if stall.generation == generation {
                    stall.outstanding = stall.outstanding.saturating_sub(1);
                }
            }
            None => {
                // The first loss of this cached copy: it is ahead of the store by a write that
                // will never be stored, and everything merged on it since will come back too.
                let outstanding = match self.cache.get_mut(&key) {
                    Some(entry) if entry.generation == generation => {
                        let n = entry.pending.saturating_sub(1);
                        self.cache.remove(&key);
                        n
                    }
                    _ => 0,
                };
                self.stalls.insert(
                    key.clone(),
                    Stall {
                        generation,
                        outstanding,
                        retries: VecDeque::new(),
                        deferred: VecDeque::new(),
                        attempt: 0,
                        waiting: false,
                    },
                );
            }
        }
        if let (Some(job), Some(stall)) = (retry, self.stalls.get_mut(&key)) {
            if let Job::Update { attempt, .. } = &job {
                stall.attempt = stall.attempt.max(*attempt);
            }
            stall.retries.push_back(job);
        }
        self.check_ready(&key);
    }

    /// Queues the stalled `key` to run again once nothing of its lost generation is out, after
    /// a backoff when it has updates to apply again.
    fn check_ready(&mut self, key: &Key) {
        let Some(stall) = self.stalls.get_mut(key) else {
            return;
        };
        if stall.outstanding > 0 || stall.waiting {
            return;
        }
        if !stall.retries.is_empty() && stall.attempt > 0 && !self.closing {
            stall.waiting = true;
            let delay = backoff(stall.attempt);
            stall.attempt = 0;
            let (resume, key) = (self.resume.clone(), key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = resume.send(Feedback::Resume(key));
            });
        } else {
            self.ready.push_back(key.clone());
        }
    }

    /// Runs a stalled shadow's requests again on the stored shadow: first those handed back,
    /// then those that waited, each in its order.
    async fn resume(
        &mut self,
        key: Key,
        feedback: &mut mpsc::UnboundedReceiver<Feedback>,
    ) -> Result<(), ()> {
        if !self
            .stalls
            .get(&key)
            .is_some_and(|s| s.outstanding == 0 && !s.waiting)
        {
            return Ok(());
        }
        let Some(stall) = self.stalls.remove(&key) else {
            return Ok(());
        };
        if self.cache.get_mut(&key).is_some_and(|e| e.pending == 0) {
            self.cache.remove(&key);
        }
        let mut retries = stall.retries;
        if retries.iter().any(|j| matches!(j, Job::Update { .. })) {
            retries = self.rewrite(&key, retries).await?;
        }
        for job in retries.into_iter().chain(stall.deferred) {
            self.route(job, feedback).await?;
        }
        Ok(())
    }

    /// Applies `jobs` (updates that lost against another writer, and gets that showed them)
    /// again, in order, in one transaction that holds the stored shadow from the read to the
    /// commit ([`crate::store::Store::rewrite_shadow`]): another instance cannot make them lose
    /// again. Returns the jobs to run the usual way instead (the shadow is gone from the store).
    async fn rewrite(&mut self, key: &Key, jobs: VecDeque<Job>) -> Result<VecDeque<Job>, ()> {
        let now = now_ms();
        let limits = self.limits;
        let reqs: Vec<Option<UpdateRequest>> = jobs
            .iter()
            .map(|job| match job {
                Job::Update { req, .. } => Some(req.clone()),
                _ => None,
            })
            .collect();
        let build = |stored: Option<&StoredShadow>| -> Vec<ShadowWrite> {
            let Some(Ok(steps)) = stored.map(|s| replay(s, &reqs, &limits, now)) else {
                return Vec::new();
            };
            steps
                .iter()
                .filter_map(|step| match step {
                    Step::Updated { previous, current } => Some((previous, current)),
                    _ => None,
                })
                .scan(None::<String>, |before, (previous, current)| {
                    // Each write after the first is built on the one before: it names that
                    // one's body, for a store that cannot hold the shadow (the default
                    // `rewrite_shadow`).
                    let body = current.to_body();
                    let expected_body = before.replace(body.clone());
                    Some(ShadowWrite {
                        thing_id: key.thing.clone(),
                        name: key.shadow.clone(),
                        expected_version: previous.version,
                        new_version: current.version,
                        body,
                        updated_at: now,
                        expected_body,
                    })
                })
                .collect()
        };
        let outcome = self
            .store
            .rewrite_shadow(&key.thing, &key.shadow, &build)
            .await;
        self.cache.remove(key);
        let (stored, results) = match outcome {
            Ok((Some(stored), results)) => (stored, results),
            Ok((None, _)) => return Ok(jobs),
            Err(e) => {
                for job in jobs {
                    if let Some(reply) = job.refuse(store_error(&e)) {
                        self.reply(reply).await?;
                    }
                }
                return Ok(VecDeque::new());
            }
        };
        let steps = match replay(&stored, &reqs, &limits, now) {
            Ok(steps) => steps,
            Err(e) => {
                tracing::error!(thing = %key.thing, shadow = %key.shadow, "{e}");
                for job in jobs {
                    let err = ShadowError::new(ErrorCode::Internal, "stored shadow is unreadable");
                    if let Some(reply) = job.refuse(err) {
                        self.reply(reply).await?;
                    }
                }
                return Ok(VecDeque::new());
            }
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let failed = results.iter().any(Result::is_err);
        let written = results.len() as u32;
        let mut results = results.into_iter();
        // The shadow as stored after the last write that was; a get after a write that was not
        // is not answered with state that was never stored.
        let mut latest = Some(Shadow::from_body(&stored.body, stored.version).unwrap_or_default());
        for (job, step) in jobs.into_iter().zip(steps) {
            match (job, step) {
                (
                    Job::Update {
                        key,
                        req,
                        to,
                        attempt,
                    },
                    Step::Updated { previous, current },
                ) => {
                    let result = results.next().unwrap_or_else(|| {
                        Err(StoreError::Unavailable("write not attempted".into()))
                    });
                    latest = result
                        .is_ok()
                        .then(|| current.clone())
                        .filter(|_| latest.is_some());
                    let (tx, durable) = oneshot::channel();
                    let _ = tx.send(result);
                    self.reply(Reply::Written {
                        durable,
                        key,
                        generation,
                        client_token: req.client_token.clone(),
                        attempt,
                        update: Box::new(AcceptedUpdate {
                            previous,
                            current,
                            req,
                            now,
                        }),
                        to,
                    })
                    .await?;
                }
                (Job::Update { req, to, .. }, Step::Refused(err)) => {
                    self.reply(Reply::Ready {
                        result: Err(err.with_client_token(req.client_token)),
                        depends: None,
                        to,
                    })
                    .await?;
                }
                (
                    Job::Get {
                        key,
                        client_token,
                        to,
                    },
                    _,
                ) => {
                    let result = match &latest {
                        Some(shadow) if shadow.exists() => {
                            Ok(get_document(shadow, now_ms(), client_token.as_deref()))
                        }
                        Some(_) => Err(not_found(&key)),
                        None => Err(ShadowError::new(
                            ErrorCode::Unavailable,
                            "storage unavailable; retry later",
                        )),
                    };
                    self.reply(Reply::Ready {
                        result: result.map_err(|e| e.with_client_token(client_token)),
                        depends: None,
                        to,
                    })
                    .await?;
                }
                (job, _) => {
                    if let Some(reply) = job.refuse(ShadowError::new(
                        ErrorCode::Internal,
                        "unexpected request to apply again",
                    )) {
                        self.reply(reply).await?;
                    }
                }
            }
        }
        if failed {
            // The reply task reports on every write of this generation; until it has, what
            // comes next for the shadow waits, behind the updates it hands back (in order).
            self.stalls.insert(
                key.clone(),
                Stall {
                    generation,
                    outstanding: written,
                    retries: VecDeque::new(),
                    deferred: VecDeque::new(),
                    attempt: 0,
                    waiting: false,
                },
            );
        } else if let Some(shadow) = latest {
            // The owner's cache now holds what is stored (D-85). The reply task still reports
            // on each of the writes (durable already): they count as pending until it has.
            let body = (written > 0 && self.ownership.shared()).then(|| shadow.to_body());
            self.cache.insert(
                key,
                Entry {
                    shadow,
                    generation,
                    pending: written,
                    used: 0,
                    epoch: self.ownership.epoch(),
                    body,
                },
            );
        }
        Ok(VecDeque::new())
    }

    /// Runs `job`, or keeps it for later when its shadow is stalled.
    async fn route(
        &mut self,
        job: Job,
        feedback: &mut mpsc::UnboundedReceiver<Feedback>,
    ) -> Result<(), ()> {
        if let Some(stall) = job.key().and_then(|key| self.stalls.get_mut(key)) {
            if stall.deferred.len() < MAX_DEFERRED {
                stall.deferred.push_back(job);
                return Ok(());
            }
            let busy = ShadowError::new(
                ErrorCode::Unavailable,
                "too many requests wait for this shadow; retry later",
            );
            if let Some(reply) = job.refuse(busy) {
                self.reply(reply).await?;
            }
            return Ok(());
        }
        self.job(job, feedback).await
    }

    /// Handles one job; `Err` only when the reply task is gone.
    async fn job(
        &mut self,
        job: Job,
        feedback: &mut mpsc::UnboundedReceiver<Feedback>,
    ) -> Result<(), ()> {
        match job {
            Job::Update {
                key,
                req,
                to,
                attempt,
            } => self.update(key, req, to, attempt).await,
            Job::Get {
                key,
                client_token,
                to,
            } => self.get(key, client_token, to).await,
            Job::Delete { key, done } => {
                // Every earlier write must be settled, and those of this shadow that lost
                // against another writer applied again, before the delete.
                let mut later = VecDeque::new();
                loop {
                    self.settle(feedback).await?;
                    let Some(stall) = self.stalls.remove(&key) else {
                        break;
                    };
                    if self.cache.get_mut(&key).is_some_and(|e| e.pending == 0) {
                        self.cache.remove(&key);
                    }
                    later.extend(stall.deferred);
                    for job in stall.retries {
                        match job {
                            Job::Update {
                                key,
                                req,
                                to,
                                attempt,
                            } => self.update(key, req, to, attempt).await?,
                            Job::Get {
                                key,
                                client_token,
                                to,
                            } => self.get(key, client_token, to).await?,
                            other => later.push_back(other),
                        }
                    }
                }
                let result = match self.store.delete_shadow(&key.thing, &key.shadow).await {
                    Ok(()) => Ok(()),
                    Err(StoreError::NotFound) => Err(not_found(&key)),
                    Err(e) => Err(store_error(&e)),
                };
                // Whatever happened, the store is the truth now.
                self.cache.remove(&key);
                let _ = done.send(result);
                // Requests that waited for this shadow came after the delete.
                for job in later {
                    if let Some(reply) = job.refuse(ShadowError::new(
                        ErrorCode::Unavailable,
                        "the shadow was deleted meanwhile; retry",
                    )) {
                        self.reply(reply).await?;
                    }
                }
                Ok(())
            }
            Job::Forget(thing) => {
                self.cache.forget_thing(&thing);
                Ok(())
            }
            Job::Shutdown => Ok(()),
        }
    }

    async fn get(&mut self, key: Key, client_token: Option<String>, to: ReplyTo) -> Result<(), ()> {
        if self.ownership.shared() && self.cache.get_mut(&key).is_some_and(|e| e.pending == 0) {
            // Another instance may have written the shadow since it was cached (a REST write
            // through it, D-73): a get without writes of ours in flight reads the store (D-85).
            self.cache.remove(&key);
        }
        let (result, depends) = match self.load(&key).await {
            Ok(entry) if entry.shadow.exists() => {
                let doc = get_document(&entry.shadow, now_ms(), client_token.as_deref());
                let depends = (entry.pending > 0).then(|| {
                    // The reply task reports on it as on a write.
                    entry.pending += 1;
                    Depends {
                        key: key.clone(),
                        generation: entry.generation,
                        client_token: client_token.clone(),
                    }
                });
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

    async fn update(
        &mut self,
        key: Key,
        req: UpdateRequest,
        to: ReplyTo,
        attempt: u32,
    ) -> Result<(), ()> {
        let token = req.client_token.clone();
        let now = now_ms();
        let outcome = self.merge(&key, &req, now).await;
        match outcome {
            Ok((previous, current, generation, expected_body)) => {
                let write = ShadowWrite {
                    thing_id: key.thing.clone(),
                    name: key.shadow.clone(),
                    expected_version: previous.version,
                    new_version: current.version,
                    body: current.to_body(),
                    updated_at: now,
                    expected_body,
                };
                if self.ownership.shared()
                    && let Some(entry) = self.cache.get_mut(&key)
                {
                    entry.body = Some(write.body.clone());
                }
                let durable = self.committer.submit(write).await;
                self.reply(Reply::Written {
                    durable,
                    key,
                    generation,
                    client_token: token,
                    attempt,
                    update: Box::new(AcceptedUpdate {
                        previous,
                        current,
                        req,
                        now,
                    }),
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
    /// Returns (previous, current, cache generation, the body the write expects to replace when
    /// it is merged on a write not yet reported durable and other instances share the store).
    async fn merge(
        &mut self,
        key: &Key,
        req: &UpdateRequest,
        now: u64,
    ) -> Result<(Shadow, Shadow, u64, Option<String>), ShadowError> {
        if !self.load(key).await?.shadow.exists() {
            self.check_shadow_quota(key).await?;
        }
        let limits = self.limits;
        let shared = self.ownership.shared();
        let mut reloaded = false;
        loop {
            let entry = self.load(key).await?;
            let next = match apply_update(&entry.shadow, req, &limits, now) {
                Ok(next) => next,
                // With other instances, a cached copy without writes of ours in flight may be
                // older than the store: a `version` is refused only against the stored shadow
                // (S-3.4, D-85), and the cache is refreshed on the way.
                Err(e)
                    if e.code == ErrorCode::Conflict
                        && shared
                        && !reloaded
                        && entry.pending == 0 =>
                {
                    self.cache.remove(key);
                    reloaded = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let previous = std::mem::replace(&mut entry.shadow, next.clone());
            let expected_body = if entry.pending > 0 {
                entry.body.clone()
            } else {
                None
            };
            entry.pending += 1;
            return Ok((previous, next, entry.generation, expected_body));
        }
    }

    /// Refuses to create one more named shadow when the thing has `max_named_shadows` already
    /// (S-3.9; `default` is the classic shadow, not a named one, and is always allowed:
    /// docs/spec.md D-12). Counts what the store has plus created shadows whose write is still
    /// queued (they are in the cache).
    async fn check_shadow_quota(&mut self, key: &Key) -> Result<(), ShadowError> {
        if key.shadow == DEFAULT_SHADOW {
            return Ok(());
        }
        let stored = self
            .store
            .shadow_names(&key.thing)
            .await
            .map_err(|e| store_error(&e))?;
        let mut names: Vec<&str> = stored.iter().map(String::as_str).collect();
        names.extend(self.cache.existing_names(&key.thing));
        names.sort_unstable();
        names.dedup();
        let others = names
            .iter()
            .filter(|n| **n != key.shadow && **n != DEFAULT_SHADOW)
            .count();
        if others >= self.limits.max_named_shadows as usize {
            return Err(ShadowError::new(
                ErrorCode::Forbidden,
                format!(
                    "thing already has {} named shadows, the limit",
                    self.limits.max_named_shadows
                ),
            ));
        }
        Ok(())
    }

    /// The cache entry of `key`, loading it from the store on a miss.
    async fn load(&mut self, key: &Key) -> Result<&mut Entry, ShadowError> {
        let epoch = self.ownership.epoch();
        let trusted = self.ownership.owns(&key.thing);
        if self
            .cache
            .get_mut(key)
            .is_some_and(|e| e.pending == 0 && (!trusted || e.epoch != epoch))
        {
            self.cache.remove(key);
        }
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
                    epoch,
                    body: None,
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

/// One job of [`Applier::rewrite`], applied on the stored shadow.
enum Step {
    /// An update: the shadow before and after it.
    Updated { previous: Shadow, current: Shadow },
    /// An update refused on the stored shadow (its state too large, say).
    Refused(ShadowError),
    /// A get.
    Read,
}

/// `reqs` (`None` for a get) applied in order on `stored`; pure, so the same input gives the
/// same writes every time.
fn replay(
    stored: &StoredShadow,
    reqs: &[Option<UpdateRequest>],
    limits: &Limits,
    now: u64,
) -> Result<Vec<Step>, super::BodyError> {
    let mut shadow = Shadow::from_body(&stored.body, stored.version)?;
    Ok(reqs
        .iter()
        .map(|req| match req {
            None => Step::Read,
            Some(req) => match apply_update(&shadow, req, limits, now) {
                Ok(next) => Step::Updated {
                    previous: std::mem::replace(&mut shadow, next.clone()),
                    current: next,
                },
                Err(e) => Step::Refused(e),
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, pending: u32) -> Entry {
        Entry {
            shadow: Shadow {
                version,
                ..Shadow::default()
            },
            generation: 1,
            pending,
            used: 0,
            epoch: 0,
            body: None,
        }
    }

    #[test]
    fn cache_evicts_least_recently_used_idle_entries() {
        let mut cache = Cache::new(8);
        let keys: Vec<Key> = (0..8).map(|i| Key::new("t", &format!("s{i}"))).collect();
        // s0 has a pending write: never evicted.
        cache.insert(&keys[0], entry(1, 1));
        for k in &keys[1..] {
            cache.insert(k, entry(1, 0));
        }
        // Touch s1 so s2 is the least recently used idle entry.
        assert!(cache.get_mut(&keys[1]).is_some());
        cache.insert(&Key::new("t", "new"), entry(0, 0));
        assert_eq!(cache.len, 8);
        assert!(cache.get_mut(&keys[2]).is_none(), "s2 evicted");
        for k in [&keys[0], &keys[1], &keys[3]] {
            assert!(cache.get_mut(k).is_some());
        }
        assert!(cache.get_mut(&Key::new("t", "new")).is_some());
        // Only existing shadows count for the quota.
        let mut names: Vec<&str> = cache.existing_names("t").collect();
        names.sort_unstable();
        assert_eq!(names, ["s0", "s1", "s3", "s4", "s5", "s6", "s7"]);
        cache.forget_thing("t");
        assert_eq!(cache.len, 0);
    }
}
