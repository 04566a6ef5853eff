//! The apply task: the single owner of every shadow mutation (see [`service`](super::service)).
//!
//! It keeps a bounded cache of shadows, merges each update into the cached version, moves the
//! cache to the new version and submits the write to the group committer without waiting for
//! durability; the outcome travels on to the reply task in the same order.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use iothub_spec::code::ErrorCode;
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::limits::Limits;

use crate::clock::now_ms;
use crate::cluster::Ownership;
use crate::store::commit::GroupCommitter;
use crate::store::{ShadowWrite, SharedStore, StoreError};

use super::document::get_document;
use super::pipeline::{AcceptedUpdate, Feedback, Job, Key, Reply, ReplyTo, not_found, store_error};
use super::request::UpdateRequest;
use super::{Shadow, ShadowError, apply_update};

/// Most shadows the apply tasks keep in memory, in all (each shard gets its share).
pub const CACHE_CAPACITY: usize = 16_384;

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
    ) -> Applier {
        Applier {
            store,
            committer,
            limits,
            cache: Cache::new(cache_capacity),
            replies,
            next_generation: 1,
            ownership,
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
                let durable = self.committer.submit(write).await;
                self.reply(Reply::Written {
                    durable,
                    key,
                    generation,
                    client_token: token,
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
