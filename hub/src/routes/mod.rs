//! Routes (S-14): messages from the hub to other systems, at least once.
//!
//! A route is sources + filters + a sink ([`config::RouteSpec`]). Messages come in two ways:
//! - from devices, through [`Routes::offer`] called by the broker boundary
//!   ([`crate::edge::HubEvents`]) *before* the PUBACK: the answer ([`Acceptance`]) decides it,
//!   so a QoS 1 message is acknowledged only once it is committed in every matching route's
//!   outbox (D-78);
//! - from the hub itself (shadow documents, lifecycle and presence events), through
//!   `tap::RoutesBus`, which offers what the hub publishes before publishing it.
//!
//! `outbox` commits offers in groups and applies the full-outbox policy; `deliver` runs one
//! task per route that reads its outbox in order and hands batches to its sink (`webhook`,
//! `file`, `history`, `bridge`), retrying with backoff and jitter, then dead-lettering.
//!
//! Filters: a topic filter, matched here, and an S-9.4 query over the thing, evaluated by the
//! store with the REST query's own rules (D-32) and cached per (route, thing) for
//! [`QUERY_TTL`] (D-77).
//!
//! Several instances on one database (D-73, D-92): each follows the stored routes every
//! [`FOLLOW_EVERY`], so a route created, changed, paused or deleted through one instance runs
//! the same on all, and a route's delivery runs only on the instance that holds the partition
//! of the route's id, so the common outbox is delivered once.

mod bridge;
pub mod config;
mod deliver;
mod file;
pub mod history;
mod outbox;
mod tap;
mod webhook;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use iothub_spec::topic::filter_matches;
use tokio::sync::{Notify, oneshot, watch};

pub use self::config::{RouteSpec, Source, SpecError};
pub use self::tap::RoutesBus;
use crate::cluster::Ownership;
use crate::edge::Acceptance;
use crate::metrics::{Metrics, RouteCounters};
use crate::query::{CmpOp, Field, Filter, Literal, ThingQuery};
use crate::store::routes::{NewMessage, StoredRoute};
use crate::store::{SharedStore, StoreError};

/// How long a route's query verdict about a thing is reused.
pub const QUERY_TTL: Duration = Duration::from_secs(1);
/// Most cached query verdicts; the cache is emptied when it would grow past this.
const QUERY_CACHE: usize = 100_000;
/// How often an instance that shares its database reads the stored routes (D-92), plus up to
/// a fifth of it at random.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// Why a route operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The definition is invalid (400).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No route with this id (404).
    #[error("no such route")]
    NotFound,
    /// A route with this id exists already (409).
    #[error("a route with this id exists")]
    Exists,
    /// The id in the path and in the body differ (400).
    #[error("the body's id differs from the path's")]
    IdMismatch,
    /// [`config::MAX_ROUTES`] routes exist already (409).
    #[error("at most {} routes", config::MAX_ROUTES)]
    TooMany,
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RouteError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::Spec(_) | RouteError::IdMismatch => 400,
            RouteError::NotFound => 404,
            RouteError::Exists | RouteError::TooMany => 409,
            RouteError::Store(StoreError::NotFound) => 404,
            RouteError::Store(_) => 503,
        }
    }
}

/// A route that is running: its definition, counters and delivery task.
pub(crate) struct Running {
    pub spec: RouteSpec,
    query: Option<ThingQuery>,
    pub paused: AtomicBool,
    /// Deleted: offers that matched it before are no longer written for it (its outbox rows
    /// would have no route).
    pub deleted: AtomicBool,
    pub from_file: bool,
    pub counters: Arc<RouteCounters>,
    /// Wakes the delivery task: new messages, resume, replay.
    pub wake: Notify,
    stop: watch::Sender<bool>,
    /// The last delivery error, for the route's status.
    pub last_error: Mutex<Option<String>>,
}

impl Running {
    fn wants(&self, source: Source, topic: &str) -> bool {
        self.spec.sources.contains(&source)
            && self
                .spec
                .topic
                .as_deref()
                .is_none_or(|filter| filter_matches(filter, topic))
    }

    /// Stops its delivery task (which finishes the batch it is sending, if any).
    fn halt(&self) {
        let _ = self.stop.send(true);
        self.wake.notify_one();
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// A route's definition and state, as the API shows it.
#[derive(Debug, Clone)]
pub struct RouteStatus {
    /// The definition (secret redacted).
    pub spec: RouteSpec,
    /// Paused: the outbox fills, nothing is delivered.
    pub paused: bool,
    /// Declared in the config file.
    pub from_file: bool,
    /// Messages in the outbox.
    pub outbox: u64,
    /// Counters since the hub started.
    pub accepted: u64,
    /// Messages the sink confirmed.
    pub delivered: u64,
    /// Failed delivery attempts.
    pub failed: u64,
    /// Dropped by drop-oldest.
    pub dropped: u64,
    /// Refused by refuse.
    pub refused: u64,
    /// Moved to dead letters.
    pub dead_lettered: u64,
    /// Dead letters deleted for the count or age bound (D-88).
    pub dead_letters_dropped: u64,
    /// The last delivery error, cleared by a success.
    pub last_error: Option<String>,
}

/// The routes of this hub. Cheap to clone.
#[derive(Clone)]
pub struct Routes {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    metrics: Arc<Metrics>,
    /// The running routes; readers take a snapshot (an `Arc` clone) per message.
    table: RwLock<Arc<Vec<Arc<Running>>>>,
    /// Serializes changes to the table (create, update, delete).
    changes: tokio::sync::Mutex<()>,
    writer: outbox::Writer,
    verdicts: DashMap<(String, String), (bool, Instant)>,
    /// Which route ids' delivery runs here (D-92).
    ownership: Arc<Ownership>,
    /// Stops the task that follows the stored routes.
    stop_follow: watch::Sender<bool>,
}

impl Routes {
    /// Loads the stored routes, writes the config file's `file_routes` over them (a file route
    /// no longer in the file is deleted), and starts every route's delivery. With a store that
    /// other instances share ([`Ownership::shared`]), also starts following the stored routes
    /// (D-92).
    pub async fn start(
        store: SharedStore,
        metrics: Arc<Metrics>,
        file_routes: &[RouteSpec],
        ownership: Arc<Ownership>,
    ) -> Result<Routes, RouteError> {
        let (stop_follow, stop_follow_rx) = watch::channel(false);
        let routes = Routes {
            inner: Arc::new(Inner {
                writer: outbox::Writer::spawn(store.clone()),
                store,
                metrics,
                table: RwLock::new(Arc::new(Vec::new())),
                changes: tokio::sync::Mutex::new(()),
                verdicts: DashMap::new(),
                ownership,
                stop_follow,
            }),
        };
        let Some(rs) = routes.inner.store.routes() else {
            return Ok(routes);
        };
        let now = crate::clock::now_ms();
        let mut stored: BTreeMap<String, StoredRoute> = rs
            .routes()
            .await?
            .into_iter()
            .map(|r| (r.route_id.clone(), r))
            .collect();
        for spec in file_routes {
            spec.validate()?;
            let paused = stored
                .get(&spec.id)
                .map_or(spec.paused, |r| r.paused && r.from_file);
            let row = StoredRoute {
                route_id: spec.id.clone(),
                spec: serde_json::to_string(spec)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                paused,
                from_file: true,
                updated_at: now,
            };
            rs.put_route(&row).await?;
            stored.insert(spec.id.clone(), row);
        }
        let gone: Vec<String> = stored
            .values()
            .filter(|r| r.from_file && !file_routes.iter().any(|s| s.id == r.route_id))
            .map(|r| r.route_id.clone())
            .collect();
        for id in gone {
            tracing::info!(route = %id, "route no longer in the config file: deleted");
            rs.delete_route(&id).await?;
            stored.remove(&id);
        }
        let depths: BTreeMap<String, u64> = rs.outbox_depths().await?.into_iter().collect();
        let mut table = Vec::new();
        for row in stored.into_values() {
            let spec: RouteSpec = match serde_json::from_str(&row.spec) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(route = %row.route_id, error = %e, "stored route unreadable; skipped");
                    continue;
                }
            };
            let running = routes.launch(spec, row.paused, row.from_file)?;
            running.counters.depth.store(
                depths.get(&row.route_id).copied().unwrap_or(0),
                Ordering::Relaxed,
            );
            table.push(running);
        }
        *routes
            .inner
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        if routes.inner.ownership.shared() {
            tokio::spawn(routes.clone().follow(stop_follow_rx));
        }
        Ok(routes)
    }

    /// Reads the stored routes every [`FOLLOW_EVERY`] until stopped (D-92).
    async fn follow(self, mut stop: watch::Receiver<bool>) {
        loop {
            let fifth = (FOLLOW_EVERY / 5).as_millis() as u64;
            let jitter =
                Duration::from_millis(rand::Rng::gen_range(&mut rand::thread_rng(), 0..=fifth));
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_EVERY + jitter) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.follow_once().await {
                tracing::warn!(error = %e, "cannot read the stored routes; trying again");
            }
        }
    }

    /// Brings this instance's table in step with the stored routes, which other instances
    /// change: starts the routes it lacks, restarts those whose definition changed, applies
    /// pause and resume, stops those deleted, and reads every outbox's depth.
    async fn follow_once(&self) -> Result<(), RouteError> {
        let rs = self.route_store()?;
        // Under the lock, so that a change made here meanwhile is not undone by an older read.
        let _change = self.inner.changes.lock().await;
        let stored = rs.routes().await?;
        let current = self.snapshot();
        // What to start: (definition, its stored row, the running route it replaces).
        let mut changed: Vec<(RouteSpec, &StoredRoute, Option<Arc<Running>>)> = Vec::new();
        for row in &stored {
            let spec: RouteSpec = match serde_json::from_str(&row.spec) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(route = %row.route_id, error = %e, "stored route unreadable; skipped");
                    continue;
                }
            };
            let old = current.iter().find(|r| r.spec.id == row.route_id).cloned();
            match &old {
                Some(old) if old.spec == spec => {
                    if old.paused.swap(row.paused, Ordering::Relaxed) != row.paused {
                        tracing::info!(route = %row.route_id, paused = row.paused, "route paused or resumed through another instance");
                        old.wake.notify_one();
                    }
                }
                _ => changed.push((spec, row, old)),
            }
        }
        // The outboxes are common: this instance's own count of what it added and removed
        // would drift by what the others did.
        let depths: BTreeMap<String, u64> = rs.outbox_depths().await?.into_iter().collect();
        for route in current.iter() {
            let depth = depths.get(&route.spec.id).copied().unwrap_or(0);
            route.counters.depth.store(depth, Ordering::Relaxed);
        }
        for (spec, row, old) in changed {
            let running = match self.launch(spec, row.paused, row.from_file) {
                Ok(running) => running,
                Err(e) => {
                    tracing::error!(route = %row.route_id, error = %e, "stored route invalid; skipped");
                    continue;
                }
            };
            let depth = depths.get(&row.route_id).copied().unwrap_or(0);
            running.counters.depth.store(depth, Ordering::Relaxed);
            tracing::info!(route = %row.route_id, "route created or changed through another instance: started here");
            self.install(&running, old.as_deref());
        }
        for route in current
            .iter()
            .filter(|r| !stored.iter().any(|row| row.route_id == r.spec.id))
        {
            tracing::info!(route = %route.spec.id, "route deleted by another instance: stopped here");
            self.uninstall(route);
        }
        Ok(())
    }

    /// Puts `running` in the table in place of `old` (the route with its id, if any), stops
    /// `old`'s delivery and forgets the query verdicts made for the old definition.
    fn install(&self, running: &Arc<Running>, old: Option<&Running>) {
        if let Some(old) = old {
            old.halt();
        }
        self.swap(|table| {
            table.retain(|r| r.spec.id != running.spec.id);
            table.push(running.clone());
        });
        self.inner.verdicts.retain(|k, _| k.0 != running.spec.id);
    }

    /// Takes a deleted route out of the table: no offer is written for it any more, its
    /// delivery stops and its metrics go.
    fn uninstall(&self, route: &Running) {
        route.deleted.store(true, Ordering::Relaxed);
        route.halt();
        self.swap(|table| table.retain(|r| r.spec.id != route.spec.id));
        self.inner.metrics.remove_route(&route.spec.id);
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Running>>> {
        self.inner
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts the delivery task of a validated route.
    fn launch(
        &self,
        spec: RouteSpec,
        paused: bool,
        from_file: bool,
    ) -> Result<Arc<Running>, RouteError> {
        let query = spec.validate()?;
        let (stop, stop_rx) = watch::channel(false);
        let running = Arc::new(Running {
            counters: self.inner.metrics.route(&spec.id),
            spec,
            query,
            paused: AtomicBool::new(paused),
            deleted: AtomicBool::new(false),
            from_file,
            wake: Notify::new(),
            stop,
            last_error: Mutex::new(None),
        });
        tokio::spawn(deliver::run(
            running.clone(),
            self.inner.store.clone(),
            self.inner.ownership.clone(),
            stop_rx,
        ));
        Ok(running)
    }

    /// Whether any route takes messages of `source` on `topic` (lets the hub skip building a
    /// payload nobody wants).
    pub fn wants(&self, source: Source, topic: &str) -> bool {
        self.snapshot().iter().any(|r| r.wants(source, topic))
    }

    /// Offers a message to every route it matches and returns once it is committed in all of
    /// their outboxes, or why not. Without a matching route: [`Acceptance::Accepted`] at once.
    pub async fn offer(
        &self,
        source: Source,
        thing: &str,
        topic: &str,
        payload: &Bytes,
        received_at: u64,
    ) -> Acceptance {
        let table = self.snapshot();
        if table.is_empty() {
            return Acceptance::Accepted;
        }
        // Boxed: without routes (the common case, on every PUBLISH) the caller's future stays
        // small instead of holding the store query's and the outbox's states (issue 23).
        Box::pin(self.offer_to(table, source, thing, topic, payload, received_at)).await
    }

    /// [`Self::offer`] once there are routes.
    async fn offer_to(
        &self,
        table: Arc<Vec<Arc<Running>>>,
        source: Source,
        thing: &str,
        topic: &str,
        payload: &Bytes,
        received_at: u64,
    ) -> Acceptance {
        let mut matched = Vec::new();
        for route in table.iter().filter(|r| r.wants(source, topic)) {
            match self.query_matches(route, thing).await {
                Ok(true) => matched.push(route.clone()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(route = %route.spec.id, error = %e, "route query unreadable; message refused");
                    route
                        .counters
                        .store_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return Acceptance::Unavailable;
                }
            }
        }
        if matched.is_empty() {
            return Acceptance::Accepted;
        }
        let (answer, answered) = oneshot::channel();
        let offer = outbox::Offer {
            routes: matched,
            message: NewMessage {
                thing_id: thing.to_owned(),
                source: source.as_str().to_owned(),
                topic: topic.to_owned(),
                payload: payload.to_vec(),
                received_at,
            },
            answer,
        };
        self.inner.writer.offer(offer, answered).await
    }

    /// Whether `thing` matches `route`'s query now (D-77: the store evaluates it, with the
    /// REST query's rules; a verdict is reused for [`QUERY_TTL`]).
    async fn query_matches(&self, route: &Running, thing: &str) -> Result<bool, StoreError> {
        let Some(query) = &route.query else {
            return Ok(true);
        };
        let key = (route.spec.id.clone(), thing.to_owned());
        if let Some(hit) = self.inner.verdicts.get(&key)
            && hit.1.elapsed() < QUERY_TTL
        {
            return Ok(hit.0);
        }
        let by_id = Filter::Cmp {
            field: Field::ThingId,
            op: CmpOp::Eq,
            value: Literal::Str(thing.to_owned()),
        };
        let filter = match &query.filter {
            Some(f) => Filter::And(Box::new(f.clone()), Box::new(by_id)),
            None => by_id,
        };
        let one = ThingQuery {
            filter: Some(filter),
            order: Vec::new(),
        };
        let (total, _) = self.inner.store.query_things(&one, 0, 1).await?;
        if self.inner.verdicts.len() >= QUERY_CACHE {
            self.inner.verdicts.clear();
        }
        self.inner.verdicts.insert(key, (total > 0, Instant::now()));
        Ok(total > 0)
    }

    fn find(&self, id: &str) -> Result<Arc<Running>, RouteError> {
        self.snapshot()
            .iter()
            .find(|r| r.spec.id == id)
            .cloned()
            .ok_or(RouteError::NotFound)
    }

    fn status_of(route: &Running) -> RouteStatus {
        let c = &route.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        RouteStatus {
            spec: route.spec.redacted(),
            paused: route.paused.load(Ordering::Relaxed),
            from_file: route.from_file,
            outbox: get(&c.depth),
            accepted: get(&c.accepted),
            delivered: get(&c.delivered),
            failed: get(&c.failed),
            dropped: get(&c.dropped),
            refused: get(&c.refused),
            dead_lettered: get(&c.dead_lettered),
            dead_letters_dropped: get(&c.dead_letters_dropped),
            last_error: route
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Every route, by id.
    pub fn list(&self) -> Vec<RouteStatus> {
        let mut all: Vec<RouteStatus> =
            self.snapshot().iter().map(|r| Self::status_of(r)).collect();
        all.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        all
    }

    /// One route.
    pub fn get(&self, id: &str) -> Result<RouteStatus, RouteError> {
        Ok(Self::status_of(self.find(id)?.as_ref()))
    }

    /// Creates a route (`replace: false`) or replaces the definition of an existing one
    /// (`replace: true`; its outbox and dead letters stay, its delivery restarts).
    pub async fn put(&self, mut spec: RouteSpec, replace: bool) -> Result<RouteStatus, RouteError> {
        spec.validate()?;
        let _change = self.inner.changes.lock().await;
        let existing = self.find(&spec.id).ok();
        let paused = match (&existing, replace) {
            (Some(_), false) => return Err(RouteError::Exists),
            (None, true) => return Err(RouteError::NotFound),
            (Some(old), true) => {
                spec.keep_secret_of(&old.spec);
                old.paused.load(Ordering::Relaxed)
            }
            (None, false) => {
                if self.snapshot().len() >= config::MAX_ROUTES {
                    return Err(RouteError::TooMany);
                }
                spec.paused
            }
        };
        let rs = self.route_store()?;
        rs.put_route(&StoredRoute {
            route_id: spec.id.clone(),
            spec: serde_json::to_string(&spec)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            paused,
            from_file: existing.as_ref().is_some_and(|r| r.from_file),
            updated_at: crate::clock::now_ms(),
        })
        .await?;
        let running = self.launch(spec, paused, existing.as_ref().is_some_and(|r| r.from_file))?;
        if let Some(old) = &existing {
            running.counters.depth.store(
                old.counters.depth.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
        self.install(&running, existing.as_deref());
        Ok(Self::status_of(&running))
    }

    /// Deletes a route with its outbox and dead letters.
    pub async fn delete(&self, id: &str) -> Result<(), RouteError> {
        let _change = self.inner.changes.lock().await;
        let route = self.find(id)?;
        route.deleted.store(true, Ordering::Relaxed);
        if let Err(e) = self.route_store()?.delete_route(id).await {
            route.deleted.store(false, Ordering::Relaxed);
            return Err(e.into());
        }
        self.uninstall(&route);
        Ok(())
    }

    /// Pauses (`true`) or resumes a route's delivery; its outbox keeps filling meanwhile.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<RouteStatus, RouteError> {
        let _change = self.inner.changes.lock().await;
        let route = self.find(id)?;
        self.route_store()?
            .put_route(&StoredRoute {
                route_id: id.to_owned(),
                spec: serde_json::to_string(&route.spec)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                paused,
                from_file: route.from_file,
                updated_at: crate::clock::now_ms(),
            })
            .await?;
        route.paused.store(paused, Ordering::Relaxed);
        route.wake.notify_one();
        Ok(Self::status_of(&route))
    }

    /// A page of a route's dead letters after `after`, and their total.
    pub async fn dead_letters(
        &self,
        id: &str,
        after: u64,
        limit: u32,
    ) -> Result<(u64, Vec<crate::store::routes::DeadLetter>), RouteError> {
        self.find(id)?;
        Ok(self.route_store()?.dead_letters(id, after, limit).await?)
    }

    /// Moves up to `limit` of a route's oldest dead letters back into its outbox; returns how
    /// many. They are delivered after what the outbox holds already.
    pub async fn replay(&self, id: &str, limit: u32) -> Result<u64, RouteError> {
        let route = self.find(id)?;
        let moved = self.route_store()?.replay_dead_letters(id, limit).await?;
        route.counters.depth.fetch_add(moved, Ordering::Relaxed);
        route.wake.notify_one();
        Ok(moved)
    }

    fn route_store(&self) -> Result<&dyn crate::store::routes::RouteStore, RouteError> {
        self.inner
            .store
            .routes()
            .ok_or_else(|| StoreError::Unavailable("this store keeps no routes".into()).into())
    }

    fn swap(&self, change: impl FnOnce(&mut Vec<Arc<Running>>)) {
        let mut guard = self
            .inner
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut table: Vec<Arc<Running>> = guard.as_ref().clone();
        change(&mut table);
        *guard = Arc::new(table);
    }

    /// Stops every delivery task (graceful shutdown; the outboxes stay for the next start).
    pub fn stop(&self) {
        let _ = self.inner.stop_follow.send(true);
        for route in self.snapshot().iter() {
            route.halt();
        }
    }
}
