//! The sweep loop that applies configurations (D-49, D-50).
//!
//! A sweep reads every configuration, finds the things each targets (S-9.4 queries through the
//! store, so the D-32 rules hold), plans each thing ([`super::plan`]) and compares the plan with
//! what is recorded as applied. The difference is written to the things' `default` shadow
//! through the shadow pipeline (same merge, versions, limits and publications as a REST write,
//! D-36), at most `--configuration-rate` things per second; each chunk's records are stored after
//! its shadow writes are durable. A crash in between re-applies the same values once: nothing is
//! lost, and a thing is never counted applied before its desired state holds the patch.
//!
//! Sweeps run every `--configuration-sweep-ms`, at once when woken (a configuration changed, a
//! thing was created or re-tagged), and back to back while work remains.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub_spec::code::ErrorCode;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::pace::Pace;
use super::plan::plan;
use super::{Configurations, Counts, target_query};
use crate::metrics::Metrics;
use crate::query::ThingQuery;
use crate::shadow::ShadowService;
use crate::store::configurations::{Configuration, ConfigurationRecord, RecordStatus};
use crate::store::{SharedStore, StoreError};

/// The shadow configurations write (S-9.4's `state.*` reads it too).
const SHADOW: &str = iothub_spec::ids::DEFAULT_SHADOW;
/// Things per page when listing a configuration's targets.
const PAGE: u64 = 1000;
/// Most things applied concurrently (one chunk); the group committer batches their writes.
const MAX_CHUNK: u32 = 256;

/// Settings of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Things applied per second, at most.
    pub rate: u32,
    /// Time between sweeps when nothing wakes the engine.
    pub sweep: Duration,
}

/// (configuration, thing).
type Key = (String, String);

/// What one thing needs: one shadow write, then record changes.
#[derive(Debug, Default)]
struct Work {
    /// The desired patch: the keys of changed configurations, `null` for removed keys.
    patch: Map<String, Value>,
    /// Records to store once the patch is durable.
    put: Vec<ConfigurationRecord>,
    /// Records to delete (the thing stopped matching).
    remove: Vec<Key>,
}

/// The engine; [`Engine::run`] drives it.
pub struct Engine {
    store: SharedStore,
    shadows: ShadowService,
    service: Configurations,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    /// What the store says was applied, by (configuration, thing).
    records: BTreeMap<Key, ConfigurationRecord>,
    pace: Pace,
}

impl Engine {
    /// An engine over the hub's services.
    pub fn new(
        store: SharedStore,
        shadows: ShadowService,
        service: Configurations,
        metrics: Arc<Metrics>,
        config: EngineConfig,
    ) -> Engine {
        Engine {
            store,
            shadows,
            service,
            metrics,
            pace: Pace::per_second(config.rate),
            config,
            records: BTreeMap::new(),
        }
    }

    /// Sweeps until `shutdown` completes; a sweep in progress stops at its next chunk.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let wake: Arc<Notify> = self.service.wake.clone();
        tokio::pin!(shutdown);
        let mut loaded = false;
        loop {
            let more = if loaded {
                match self.sweep().await {
                    Ok(more) => more,
                    Err(e) => {
                        tracing::warn!(error = %e, "configuration sweep failed; retrying");
                        false
                    }
                }
            } else {
                loaded = self.load().await;
                !loaded
            };
            let pause = if more && loaded {
                Duration::ZERO
            } else {
                self.config.sweep
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Loads the records once (start-up); false (and logged) when the store fails.
    async fn load(&mut self) -> bool {
        let Some(db) = self.store.configurations() else {
            return false;
        };
        match db.configuration_records().await {
            Ok(all) => {
                tracing::info!(records = all.len(), "configuration records loaded");
                self.records = all
                    .into_iter()
                    .map(|r| ((r.configuration.clone(), r.thing_id.clone()), r))
                    .collect();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load configuration records; retrying");
                false
            }
        }
    }

    /// Every thing `q` matches, by id.
    async fn matching(&self, q: &ThingQuery) -> Result<BTreeSet<String>, StoreError> {
        let mut ids = BTreeSet::new();
        for page in 0.. {
            let (total, things) = self.store.query_things(q, page, PAGE).await?;
            let got = things.len() as u64;
            ids.extend(things.into_iter().map(|t| t.thing_id));
            if got < PAGE || (page + 1) * PAGE >= total {
                break;
            }
        }
        Ok(ids)
    }

    /// One sweep. `Ok(true)` when work remains for the next one.
    async fn sweep(&mut self) -> Result<bool, StoreError> {
        let Some(db) = self.store.configurations() else {
            return Ok(false);
        };
        let configs = db.configurations().await?;
        let mut targets: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut succeeded: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &configs {
            // Stored conditions were validated at creation; a failure here is a bug, logged.
            let Ok(q) = target_query(c, false) else {
                tracing::error!(configuration = %c.name, "stored target condition does not parse");
                continue;
            };
            targets.insert(&c.name, self.matching(&q).await?);
            if c.success.is_some()
                && let Ok(q) = target_query(c, true)
            {
                succeeded.insert(&c.name, self.store.query_things(&q, 0, 1).await?.0);
            }
        }
        let work = self.plan_work(&configs, &targets);
        let budget = self.config.rate.max(1) as usize;
        let more = work.len() > budget;
        let work: Vec<(String, Work)> = work.into_iter().take(budget).collect();
        if !work.is_empty() {
            tracing::debug!(things = work.len(), more, "applying configurations");
        }
        let chunk = self.config.rate.clamp(1, MAX_CHUNK) as usize;
        for batch in work.chunks(chunk) {
            let delay = self.pace.reserve(Instant::now(), batch.len() as u32);
            tokio::time::sleep(delay).await;
            self.apply(batch).await?;
        }
        self.publish(&configs, &targets, &succeeded);
        Ok(more)
    }

    /// Per thing, what differs between the plan and the records.
    fn plan_work(
        &self,
        configs: &[Configuration],
        targets: &BTreeMap<&str, BTreeSet<String>>,
    ) -> BTreeMap<String, Work> {
        let by_name: BTreeMap<&str, &Configuration> =
            configs.iter().map(|c| (c.name.as_str(), c)).collect();
        let mut per_thing: BTreeMap<&str, Vec<&Configuration>> = BTreeMap::new();
        for (name, ids) in targets {
            for id in ids {
                per_thing.entry(id).or_default().push(by_name[name]);
            }
        }
        let now = crate::clock::now_ms();
        let mut work: BTreeMap<String, Work> = BTreeMap::new();
        let mut owned_now: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (thing, targeting) in &per_thing {
            owned_now.insert(
                thing,
                targeting
                    .iter()
                    .flat_map(|c| c.desired.keys().map(String::as_str))
                    .collect(),
            );
            for (name, patch) in plan(targeting) {
                let key = (name.to_owned(), (*thing).to_owned());
                if self.records.get(&key).is_some_and(|r| r.patch == patch) {
                    continue;
                }
                let w = work.entry((*thing).to_owned()).or_default();
                w.patch.extend(patch.clone());
                w.put.push(ConfigurationRecord {
                    configuration: key.0,
                    thing_id: key.1,
                    status: RecordStatus::Applied,
                    patch,
                    error: None,
                    updated_at: now,
                });
            }
        }
        // Records of things no longer targeted (or of deleted configurations).
        for ((name, thing), record) in &self.records {
            if targets
                .get(name.as_str())
                .is_some_and(|ids| ids.contains(thing))
            {
                continue;
            }
            let w = work.entry(thing.clone()).or_default();
            w.remove.push((name.clone(), thing.clone()));
            let remove_keys = by_name
                .get(name.as_str())
                .is_some_and(|c| c.remove_on_unmatch)
                && record.status == RecordStatus::Applied;
            if remove_keys {
                let still = owned_now.get(thing.as_str());
                for k in record.patch.keys() {
                    if !still.is_some_and(|s| s.contains(k.as_str())) {
                        w.patch.insert(k.clone(), Value::Null);
                    }
                }
            }
        }
        work
    }

    /// Applies one chunk: the shadow writes concurrently, then the records in one transaction.
    async fn apply(&mut self, batch: &[(String, Work)]) -> Result<(), StoreError> {
        let writes = batch
            .iter()
            .map(|(thing, w)| self.write_desired(thing, &w.patch));
        let results = futures::future::join_all(writes).await;
        let mut put = Vec::new();
        let mut remove = Vec::new();
        for ((thing, w), result) in batch.iter().zip(results) {
            match result {
                Ok(()) => put.extend(w.put.iter().cloned()),
                Err((code, message)) if is_transient(code) => {
                    tracing::debug!(%thing, %message, "configuration not applied yet; retrying");
                    continue;
                }
                Err((ErrorCode::NotFound, message)) => {
                    tracing::debug!(%thing, %message, "thing gone while applying a configuration");
                }
                Err((_, message)) => {
                    tracing::warn!(%thing, %message, "configuration refused by the shadow");
                    put.extend(w.put.iter().cloned().map(|mut r| {
                        r.status = RecordStatus::Failed;
                        r.error = Some(message.clone());
                        r
                    }));
                }
            }
            remove.extend(w.remove.iter().cloned());
        }
        let db = self
            .store
            .configurations()
            .ok_or_else(|| StoreError::Unavailable("no configuration store".into()))?;
        db.write_configuration_records(&put, &remove).await?;
        for key in remove {
            self.records.remove(&key);
        }
        for r in put {
            self.records
                .insert((r.configuration.clone(), r.thing_id.clone()), r);
        }
        Ok(())
    }

    /// Merges `patch` into the thing's desired state; nothing to write when it is empty.
    async fn write_desired(
        &self,
        thing: &str,
        patch: &Map<String, Value>,
    ) -> Result<(), (ErrorCode, String)> {
        if patch.is_empty() {
            return Ok(());
        }
        self.shadows
            .patch_desired(thing, SHADOW, patch)
            .await
            .map(|_| ())
            .map_err(|e| (e.code, e.message))
    }

    /// Counts per configuration, to the REST service and `/metrics`.
    fn publish(
        &self,
        configs: &[Configuration],
        targets: &BTreeMap<&str, BTreeSet<String>>,
        succeeded: &BTreeMap<&str, u64>,
    ) {
        let mut all = BTreeMap::new();
        for c in configs {
            let Some(ids) = targets.get(c.name.as_str()) else {
                continue;
            };
            let mut n = Counts {
                targeted: ids.len() as u64,
                succeeded: succeeded.get(c.name.as_str()).copied().unwrap_or(0),
                ..Counts::default()
            };
            let first = (c.name.clone(), String::new());
            for ((name, thing), r) in self.records.range(first..) {
                if name != &c.name {
                    break;
                }
                if !ids.contains(thing) {
                    continue;
                }
                match r.status {
                    RecordStatus::Applied => n.applied += 1,
                    RecordStatus::Failed => n.failed += 1,
                }
            }
            n.pending = n.targeted.saturating_sub(n.applied + n.failed);
            all.insert(c.name.clone(), n);
        }
        self.metrics.set_configuration_things(&all);
        self.service.publish_counts(all);
    }
}

/// Errors after which the same write may work later (storage, load).
fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::TooManyRequests | ErrorCode::Internal
    )
}
