//! Durable state of the hub: the thing registry and the shadow documents.
//!
//! Everything that must survive a restart goes through the [`Store`] trait, so the rest of the hub
//! never sees SQL. Two implementations exist, chosen by the URL's scheme ([`open`]):
//! [`sqlite::SqliteStore`], the embedded default, and [`postgres::PgStore`], for several hub
//! instances sharing one database. Each renders its own SQL (the S-9.4 query included) from its
//! own migrations (`migrations/sqlite`, `migrations/postgres`), and both pass one behavioural
//! suite (`hub/tests/store_suite`).
//!
//! # Durability
//! S-3.5 says an accepted update is published only after it is durably stored. The store
//! therefore never weakens fsync (`synchronous=FULL` on SQLite, `synchronous_commit` left on for
//! PostgreSQL): when a write method returns `Ok`, the data is on disk. Paying one fsync per shadow update would cap throughput at the disk's sync
//! rate, so shadow writes are funnelled through the [`commit::GroupCommitter`], which commits many
//! queued updates in a single transaction (one fsync) and answers each of them afterwards.
//!
//! # Concurrency
//! Each shadow write carries the version it expects to replace (compare-and-swap). Two concurrent
//! updates against the same version can never both succeed (S-3.4): the second one finds the
//! version already moved and gets [`StoreError::VersionConflict`].
//!
//! # Failures
//! A write that did not commit is always reported to its caller ([`StoreError::Unavailable`],
//! answered 503), never acknowledged, and it leaves the store ready for the next write (see
//! `sqlite/write.rs`). While writes fail, [`Store::health`] says so and why (`/healthz` 503, the
//! `iothub_store_healthy` metric); it recovers by itself when writes succeed again.

pub mod certs;
pub mod commit;
pub mod configurations;
pub mod enroll;
pub mod fault;
pub mod health;
pub mod jobs;
pub mod lease;
pub mod ota;
pub mod postgres;
pub mod routes;
pub mod sqlite;
pub mod sync;
mod wal;

use std::sync::Arc;

use serde_json::{Map, Value};

/// The store shared by every service of the hub.
pub type SharedStore = Arc<dyn Store>;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The thing or shadow does not exist (REST 404).
    #[error("not found")]
    NotFound,
    /// A thing with this id exists already (REST 409).
    #[error("already exists")]
    AlreadyExists,
    /// The expected version did not match the stored one; nothing was changed (409).
    #[error("version conflict")]
    VersionConflict,
    /// The database could not be reached or failed; retry later (503).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A thing as the registry shows it. It NEVER carries the password hash: that is only read through
/// [`Store::password_hash`], by the broker's authentication.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThingRecord {
    /// The thing's id (S-1.1).
    pub thing_id: String,
    /// A disabled thing is refused at CONNECT (S-1.3).
    pub enabled: bool,
    /// Free-form tags (S-9.3), never sent to the device.
    pub tags: Map<String, Value>,
    /// Version of `tags`, starting at 1 when the thing is created; +1 per [`Store::replace_tags`].
    pub tags_version: u64,
    /// Whether the thing has a live MQTT connection (S-8.2).
    pub connected: bool,
    /// Time of the last connect, ms since the Unix epoch.
    pub connected_at: Option<u64>,
    /// Time of the last disconnect, ms since the Unix epoch.
    pub disconnected_at: Option<u64>,
    /// Creation time, ms since the Unix epoch.
    pub created_at: u64,
}

/// A thing to create. The secret is already hashed (see [`crate::auth::hash_password`]).
#[derive(Debug, Clone)]
pub struct NewThing {
    /// The thing's id (S-1.1), validated by the caller.
    pub thing_id: String,
    /// argon2id PHC string of the thing's secret.
    pub password_hash: String,
    /// Initial tags.
    pub tags: Map<String, Value>,
    /// Whether the thing may connect.
    pub enabled: bool,
}

/// A shadow as stored.
#[derive(Debug, Clone)]
pub struct StoredShadow {
    /// Owning thing.
    pub thing_id: String,
    /// Shadow name (`default` or a named shadow).
    pub name: String,
    /// Current version, 1 after the first accepted update (S-3.4).
    pub version: u64,
    /// JSON text: `{"state":{"desired":{..},"reported":{..}},"metadata":{"desired":{..},"reported":{..}}}`
    /// (empty sections may be omitted). Query code relies on this layout.
    pub body: String,
    /// Time of the last accepted update, ms since the Unix epoch.
    pub updated_at: u64,
}

/// What [`Store::rewrite_shadow`] makes of the shadow it read: the writes to store.
pub type BuildWrites<'a> =
    dyn for<'s> Fn(Option<&'s StoredShadow>) -> Vec<ShadowWrite> + Send + Sync + 'a;

/// What [`Store::rewrite_shadow`] read, and the result of each write it made of it.
pub type RewriteResult = (Option<StoredShadow>, Vec<Result<(), StoreError>>);

/// One compare-and-swap write of a shadow, as produced by the shadow pipeline.
#[derive(Debug, Clone)]
pub struct ShadowWrite {
    /// Owning thing; the write fails with [`StoreError::NotFound`] if it does not exist.
    pub thing_id: String,
    /// Shadow name.
    pub name: String,
    /// The version the write replaces; 0 means "the shadow must not exist yet".
    pub expected_version: u64,
    /// The version stored by the write (normally `expected_version + 1`).
    pub new_version: u64,
    /// The new body (layout in [`StoredShadow::body`]).
    pub body: String,
    /// Time of the update, ms since the Unix epoch.
    pub updated_at: u64,
    /// The body of the write this one was merged onto, when that write was not yet known to be
    /// durable (a pipelined write, docs/spec.md D-85): the store then also requires the stored
    /// body to be exactly this. Another instance may have stored a different document under
    /// the same version number meanwhile; without this check the write would land on it and
    /// erase it. A mismatch is a [`StoreError::VersionConflict`]. `None`: the version alone.
    pub expected_body: Option<String>,
}

/// Durable storage of things and shadows. Every method is durable when it returns `Ok`.
///
/// Database failures surface as [`StoreError::Unavailable`]; the other variants are answers about
/// the data (absent, duplicate, stale version).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a thing with `tags_version` 1 and `created_at = now`.
    /// [`StoreError::AlreadyExists`] if the id is taken.
    async fn create_thing(&self, t: &NewThing, now: u64) -> Result<ThingRecord, StoreError>;

    /// Creates many things in ONE transaction (`POST /things/batch`). Each entry gets its own
    /// result (a duplicate id fails only that entry); the outer error means nothing was stored.
    async fn create_things(
        &self,
        ts: &[NewThing],
        now: u64,
    ) -> Result<Vec<Result<ThingRecord, StoreError>>, StoreError>;

    /// The thing with this id, if any.
    async fn get_thing(&self, id: &str) -> Result<Option<ThingRecord>, StoreError>;

    /// The password hash and the enabled flag of a thing, for CONNECT authentication.
    async fn password_hash(&self, id: &str) -> Result<Option<(String, bool)>, StoreError>;

    /// One page of things ordered by id, and the total number of things matching `enabled`
    /// (`None` = all). `page_index` is 0-based; `page_size` is capped at 1000.
    async fn list_things(
        &self,
        page_index: u64,
        page_size: u64,
        enabled: Option<bool>,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError>;

    /// One page of the things matching the S-9.4 query `q`, in the query's `ORDER BY` and then by
    /// id, and the total number of matches. Each backend renders `q` in its own SQL with the
    /// comparison rules of D-32 (every value bound, nothing spliced). `page_index` is 0-based; `page_size` is capped at 1000.
    async fn query_things(
        &self,
        q: &crate::query::ThingQuery,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError>;

    /// Enables or disables a thing and returns it. [`StoreError::NotFound`] if absent.
    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<ThingRecord, StoreError>;

    /// Deletes a thing and, by cascade, its shadows. [`StoreError::NotFound`] if absent.
    async fn delete_thing(&self, id: &str) -> Result<(), StoreError>;

    /// Deletes many things in ONE transaction (the registry sync's batch path, S-13.3) and
    /// returns the ids that existed. The default deletes them one by one (test doubles).
    async fn delete_things(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut gone = Vec::new();
        for id in ids {
            match self.delete_thing(id).await {
                Ok(()) => gone.push(id.clone()),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(gone)
    }

    /// Disables many things in ONE transaction (S-13.3, soft delete) and returns the ids that
    /// were enabled. The default disables them one by one (test doubles).
    async fn disable_things(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut changed = Vec::new();
        for id in ids {
            match self.get_thing(id).await? {
                Some(t) if t.enabled => {
                    self.set_enabled(id, false).await?;
                    changed.push(id.clone());
                }
                _ => {}
            }
        }
        Ok(changed)
    }

    /// Replaces all tags if the current tags version equals `expected_version` (CAS) and returns
    /// the new version. [`StoreError::NotFound`] or [`StoreError::VersionConflict`] otherwise.
    async fn replace_tags(
        &self,
        id: &str,
        tags: &Map<String, Value>,
        expected_version: u64,
    ) -> Result<u64, StoreError>;

    /// Records a connect (`connected_at = at`) or disconnect (`disconnected_at = at`) (S-8.2).
    /// [`StoreError::NotFound`] if the thing does not exist (e.g. deleted while connected).
    async fn set_connected(&self, id: &str, connected: bool, at: u64) -> Result<(), StoreError>;

    /// Marks every connected thing disconnected at `at`; called at start-up (S-8.2).
    async fn mark_all_disconnected(&self, at: u64) -> Result<(), StoreError>;

    /// The shadow, if it has ever been written (S-3.2).
    async fn get_shadow(&self, thing: &str, name: &str)
    -> Result<Option<StoredShadow>, StoreError>;

    /// Names of the thing's shadows, sorted; empty if the thing has none or does not exist.
    async fn shadow_names(&self, thing: &str) -> Result<Vec<String>, StoreError>;

    /// Deletes one shadow. [`StoreError::NotFound`] if it does not exist.
    async fn delete_shadow(&self, thing: &str, name: &str) -> Result<(), StoreError>;

    /// All writes in ONE transaction; each checks its expected_version (CAS). A failed CAS fails
    /// only that write. Writes are applied in slice order, so a later write may build on an
    /// earlier one in the same batch. Per write: [`StoreError::VersionConflict`] when the stored
    /// version differs (or the shadow exists while 0 was expected), [`StoreError::NotFound`] when
    /// the thing does not exist. The outer error means nothing was stored.
    async fn write_shadows(
        &self,
        writes: &[ShadowWrite],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// Reads one shadow and stores the writes `build` makes of it (as [`Store::write_shadows`]
    /// would) in one transaction that holds the shadow from the read to the commit, so that no
    /// other writer (another hub instance) can change it in between (docs/spec.md D-85).
    /// Returns what was read and each write's result; the outer error means nothing was stored.
    /// `build` may be called more than once (a transaction the server aborted runs again).
    ///
    /// The default reads, then writes with the usual compare-and-swap: enough for a store that
    /// no other instance writes.
    async fn rewrite_shadow(
        &self,
        thing: &str,
        name: &str,
        build: &BuildWrites<'_>,
    ) -> Result<RewriteResult, StoreError> {
        let current = self.get_shadow(thing, name).await?;
        let writes = build(current.as_ref());
        let results = if writes.is_empty() {
            Vec::new()
        } else {
            self.write_shadows(&writes).await?
        };
        Ok((current, results))
    }

    /// Flushes and closes the database (graceful shutdown). Later calls fail with
    /// [`StoreError::Unavailable`].
    async fn close(&self);

    /// Whether writes currently succeed, and why not (for `/healthz` and `/metrics`). Stores
    /// that do not track it are always healthy.
    fn health(&self) -> health::HealthReport {
        health::HealthReport::healthy()
    }

    /// The OTA job storage of this store (S-7.3), `None` when it has none (test doubles).
    fn ota(&self) -> Option<&dyn ota::OtaStore> {
        None
    }

    /// The client certificates registered on things (D-82), `None` when it has none (test
    /// doubles).
    fn certificates(&self) -> Option<&dyn certs::CertificateStore> {
        None
    }

    /// The enrollments of this store (S-10), `None` when it has none (test doubles).
    fn enrollments(&self) -> Option<&dyn enroll::EnrollmentStore> {
        None
    }

    /// The configuration storage of this store (S-11), `None` when it has none (test doubles).
    fn configurations(&self) -> Option<&dyn configurations::ConfigurationStore> {
        None
    }

    /// Partition leases for several hub instances (D-73); `None`: this store serves one hub.
    fn leases(&self) -> Option<&dyn lease::LeaseStore> {
        None
    }

    /// The fleet job storage of this store (S-12), `None` when it has none (test doubles).
    fn jobs(&self) -> Option<&dyn jobs::JobStore> {
        None
    }

    /// The registry sync tasks and events of this store (S-13), `None` when it has none.
    fn sync(&self) -> Option<&dyn sync::SyncStore> {
        None
    }

    /// The route outboxes, dead letters and message history of this store (S-14), `None` when
    /// it has none (test doubles).
    fn routes(&self) -> Option<&dyn routes::RouteStore> {
        None
    }
}

/// u64 → SQL integer (i64). Timestamps and versions never come near `i64::MAX`; saturate anyway.
pub(crate) fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// SQL integer → u64. Negative values are never written; clamp to 0 anyway.
pub(crate) fn from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Opens the store named by `url` and brings its schema up to date.
///
/// The scheme chooses the backend:
/// - `sqlite://path` (relative) or `sqlite:///abs/path`: the embedded default; the file and its
///   parent directories are created if missing. See [`sqlite::SqliteStore::open`].
/// - `postgres://…` or `postgresql://…`: a PostgreSQL database that several hub instances may
///   share. See [`postgres::PgStore::open`].
pub async fn open(url: &str) -> Result<SharedStore, StoreError> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::open(url).await?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = postgres::PgStore::open(url).await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::Unavailable(format!(
            "unsupported store url scheme: {}",
            url.split(':').next().unwrap_or_default()
        )))
    }
}
