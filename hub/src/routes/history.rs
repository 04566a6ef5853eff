//! The history sink: messages kept in the hub's own database, read back with
//! `GET /api/v1/things/{id}/messages?from=&to=&limit=` (S-14.4).
//!
//! Retention: once the route's outbox is drained after a delivery, and at least once per
//! [`PRUNE_EVERY`] under steady load, messages older than `maxAgeS` go, and, with
//! `maxPerThing`, all but each thing's newest. Age also prunes at each idle check of the
//! route (every few seconds). The history is one table
//! for the hub; with several history routes the strictest retention wins.

use std::time::{Duration, Instant};

use crate::store::SharedStore;
use crate::store::routes::{NewMessage, StoredMessage};

/// Shortest time between two prunes of one history route.
pub const PRUNE_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct HistorySink {
    store: SharedStore,
    max_age_ms: u64,
    max_per_thing: Option<u64>,
    pruned: Option<Instant>,
    dirty: bool,
}

impl HistorySink {
    pub(crate) fn new(
        store: SharedStore,
        max_age_s: u64,
        max_per_thing: Option<u64>,
    ) -> HistorySink {
        HistorySink {
            store,
            max_age_ms: max_age_s.saturating_mul(1000),
            max_per_thing,
            pruned: None,
            dirty: true,
        }
    }

    pub(crate) async fn deliver(&mut self, batch: &[StoredMessage]) -> Result<(), String> {
        let Some(rs) = self.store.routes() else {
            return Err("this store keeps no history".into());
        };
        let messages: Vec<NewMessage> = batch.iter().map(|m| m.message.clone()).collect();
        rs.append_history(&messages)
            .await
            .map_err(|e| e.to_string())?;
        self.dirty = true;
        if self.pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            self.prune().await;
        }
        Ok(())
    }

    /// Prunes if anything was appended since the last prune, or [`PRUNE_EVERY`] passed.
    pub(crate) async fn tidy(&mut self) {
        if self.dirty || self.pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            self.prune().await;
        }
    }

    async fn prune(&mut self) {
        let Some(rs) = self.store.routes() else {
            return;
        };
        self.pruned = Some(Instant::now());
        let before = crate::clock::now_ms().saturating_sub(self.max_age_ms);
        match rs.prune_history(before, self.max_per_thing).await {
            Ok(n) => {
                self.dirty = false;
                if n > 0 {
                    tracing::debug!(messages = n, "history pruned");
                }
            }
            // The messages are stored; pruning is tried again later.
            Err(e) => tracing::warn!(error = %e, "history prune failed"),
        }
    }
}
