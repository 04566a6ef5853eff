//! Registry sync (S-13): keeping the hub's registry and an external one (a LoRaWAN network
//! server, a device management system) in step, through a small HTTP contract an adapter can
//! put in front of any registry.
//!
//! - [`config`]: the `[registry_sync]` section of the config file.
//! - [`client`]: the hub's client of the contract (S-13.3), with timeouts and checked answers.
//! - [`schedule`]: mode (a), the external registry is master, on a schedule.
//! - [`tasks`]: mode (b), the hub is master, in real time, through durable tasks that the
//!   store writes with each change (`store/sync.rs`).
//! - [`events`]: the sync events (S-13.5), stored, counted and pruned.
//!
//! Mode (c), the external registry drives the hub through its REST API, is the `registry` token
//! scope (D-58, `api/scopes.rs`). Everything here runs on the leader instance only (D-76).

pub mod client;
pub mod config;
pub mod events;
pub mod schedule;
pub mod tasks;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::Metrics;
use crate::shadow::ShadowService;
use crate::store::{SharedStore, StoreError};
use crate::things::Things;

pub use config::SyncConfig;
use schedule::RoundReport;

/// What the REST API shows of the sync (`GET /api/v1/sync`). Cheap to clone.
#[derive(Clone)]
pub struct SyncHandle {
    /// The configuration in force.
    pub config: Arc<SyncConfig>,
    /// The last scheduled round, once one ran on this instance.
    pub last_round: Arc<Mutex<Option<RoundReport>>>,
}

impl SyncHandle {
    /// The last scheduled round's report.
    pub fn last_round(&self) -> Option<RoundReport> {
        self.last_round
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Why the sync could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The store keeps no sync state.
    #[error("registry sync needs a store with sync tasks (SQLite or PostgreSQL)")]
    NoStore,
    /// The store failed.
    #[error("registry sync: {0}")]
    Store(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("registry sync: {0}")]
    Client(#[from] client::ClientError),
}

/// The services the sync drives.
#[derive(Clone)]
pub struct Services {
    /// The store.
    pub store: SharedStore,
    /// The registry.
    pub things: Things,
    /// Shadows (the template's desired state).
    pub shadows: ShadowService,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The prepared sync: [`prepare`] before the hub serves, [`Prepared::run`] per leadership.
#[derive(Clone)]
pub struct Prepared {
    handle: SyncHandle,
    services: Services,
    client: client::Client,
}

/// Turns the writing of tasks by the store on or off (push mode). Called at start-up before
/// any listener accepts, so that no change made from then on misses its task. With no push
/// configured the triggers are turned off: a hub that stopped pushing queues nothing.
pub async fn set_push_mode(
    store: &SharedStore,
    config: Option<&SyncConfig>,
) -> Result<(), SyncError> {
    match store.sync() {
        Some(sync) => Ok(sync
            .set_push(config.is_some_and(|c| c.push.is_some()))
            .await?),
        None if config.is_some() => Err(SyncError::NoStore),
        None => Ok(()),
    }
}

/// The sync of `config`, ready to run; `None` when there is none.
pub fn prepare(
    config: Option<&SyncConfig>,
    services: Services,
) -> Result<Option<Prepared>, SyncError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let client = client::Client::new(config)?;
    Ok(Some(Prepared {
        handle: SyncHandle {
            config: Arc::new(config.clone()),
            last_round: Arc::default(),
        },
        services,
        client,
    }))
}

impl Prepared {
    /// What the REST API shows.
    pub fn handle(&self) -> SyncHandle {
        self.handle.clone()
    }

    /// Runs the configured modes and the event pruning until `stop` completes.
    pub async fn run(self, stop: Pin<Box<dyn Future<Output = ()> + Send>>) {
        let config = self.handle.config.clone();
        let recorder =
            events::Recorder::new(self.services.store.clone(), self.services.metrics.clone());
        let schedule = config.schedule.clone().map(|c| schedule::Scheduler {
            things: self.services.things.clone(),
            shadows: self.services.shadows.clone(),
            store: self.services.store.clone(),
            client: self.client.clone(),
            config: c,
            recorder: recorder.clone(),
            last: self.handle.last_round.clone(),
        });
        let push = config.push.clone().map(|c| tasks::Worker {
            store: self.services.store.clone(),
            client: self.client.clone(),
            config: c,
            recorder: recorder.clone(),
            metrics: self.services.metrics.clone(),
        });
        tracing::info!(url = %config.url, schedule = schedule.is_some(), push = push.is_some(), "registry sync running");
        let modes = async {
            tokio::join!(
                async {
                    if let Some(s) = schedule {
                        s.run().await;
                    }
                },
                async {
                    if let Some(w) = push {
                        w.run().await;
                    }
                },
                recorder.prune_forever(config.events.clone()),
            )
        };
        tokio::select! {
            () = stop => {}
            _ = modes => {}
        }
    }
}
