//! Sync events (S-13.5): recorded in the store, counted in `/metrics`, pruned by count and age.

use std::sync::Arc;
use std::time::Duration;

use iothub_spec::code::SyncEventKind;

use super::config::EventsConfig;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::sync::NewSyncEvent;
use crate::store::{SharedStore, StoreError};

/// Longest `detail` of an event, in characters (an external registry's error body is cut).
pub const MAX_DETAIL: usize = 300;
/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// An event of `kind` now.
pub fn event(
    kind: SyncEventKind,
    thing: Option<&str>,
    attempt: Option<u32>,
    detail: Option<String>,
) -> NewSyncEvent {
    NewSyncEvent {
        kind,
        at: now_ms(),
        thing_id: thing.map(str::to_owned),
        attempt,
        detail: detail.map(|d| d.chars().take(MAX_DETAIL).collect()),
    }
}

/// Records events and counts them. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    store: SharedStore,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// A recorder into `store`, counting in `metrics`.
    pub fn new(store: SharedStore, metrics: Arc<Metrics>) -> Recorder {
        Recorder { store, metrics }
    }

    /// Counts an event the caller has stored (with its task's change).
    pub fn counted(&self, kind: SyncEventKind) {
        self.metrics.inc_sync_event(kind);
    }

    /// Stores and counts `events` (in chunks of one transaction each).
    pub async fn record(&self, events: &[NewSyncEvent]) -> Result<(), StoreError> {
        let sync = self
            .store
            .sync()
            .ok_or_else(|| StoreError::Unavailable("this store keeps no sync events".into()))?;
        for chunk in events.chunks(500) {
            sync.add_events(chunk).await?;
            for e in chunk {
                self.counted(e.kind);
            }
        }
        Ok(())
    }

    /// Deletes the events beyond the retention of `config`, once a minute, forever.
    pub async fn prune_forever(&self, config: EventsConfig) {
        let Some(sync) = self.store.sync() else {
            return;
        };
        loop {
            let max_age = u64::try_from(config.max_age.as_millis()).unwrap_or(u64::MAX);
            match sync
                .prune_events(config.keep, now_ms().saturating_sub(max_age))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "old registry sync events pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune registry sync events"),
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    }
}
