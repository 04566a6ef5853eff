//! The SQLite implementation of [`Store`](super::Store).
//!
//! # Why these settings
//! - **WAL journal** so that readers never block the writer and the writer never blocks readers:
//!   REST reads and shadow `get`s keep flowing while a group commit is being synced.
//! - **`synchronous=FULL`**: in WAL mode every commit syncs the log before it returns. With
//!   `NORMAL`, a power cut could lose the last transactions although their `update/accepted` was
//!   already published, which S-3.5 forbids. Never weaken it; the cost of fsync is amortised by
//!   [`crate::store::commit::GroupCommitter`] instead.
//! - **One write connection** (a pool of size 1): SQLite allows one writer at a time, and with a
//!   single connection writers queue in the pool instead of failing with `SQLITE_BUSY`. The pool's
//!   acquire timeout bounds that wait; a timeout surfaces as [`StoreError::Unavailable`] (503).
//! - **A small read pool** with `query_only` connections for concurrent readers.
//! - **Foreign keys on**, so deleting a thing cascades to its shadows; `busy_timeout` covers the
//!   rare lock held by a checkpoint or by another process (e.g. a backup).
//!
//! # PostgreSQL
//! The PostgreSQL store (`store/postgres/`) has its own statements and migrations; the comments
//! here that mention PostgreSQL explain why a statement avoids SQL errors for per-row answers
//! (an error aborts a PostgreSQL transaction), which both stores rely on. The schema is in
//! `migrations/sqlite/`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::fault::Faults;
use super::health::StoreHealth;
use super::wal;

use super::{StoreError, from_db, to_db};

mod certs;
pub(crate) mod configurations;
mod enroll;
mod jobs;
mod ota;
pub mod query;
mod routes;
mod statements;
mod sync;
mod write;

/// Largest page [`Store::list_things`](super::Store::list_things) returns.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// How long a statement waits on a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection before the store reports itself unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent read connections.
const READERS: u32 = 4;

/// Schema migrations, embedded in the binary. sqlx checksums each file as a whole, comments
/// included: an applied migration is never edited, not even its comments.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

/// [`Store`](super::Store) on a SQLite file. Cheap to share behind an `Arc`; see the module docs
/// for the connection layout.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
    /// Write transactions committed so far; the background checkpoint skips a tick in which
    /// this did not move.
    commits: Arc<AtomicU64>,
    health: Arc<StoreHealth>,
    faults: Option<Arc<Faults>>,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Unavailable(format!("migration failed: {e}"))
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://relative/path` or
    /// `sqlite:///absolute/path`, optionally with SQLite URI parameters) and runs the embedded
    /// migrations. In-memory databases are refused: the hub's data must be durable.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        Self::open_with(url, Faults::from_env()).await
    }

    /// [`SqliteStore::open`] with injected write faults (see [`super::fault`]); test builds only.
    #[cfg(any(test, feature = "fault-injection"))]
    pub async fn open_with_faults(
        url: &str,
        faults: Arc<Faults>,
    ) -> Result<SqliteStore, StoreError> {
        Self::open_with(url, Some(faults)).await
    }

    async fn open_with(url: &str, faults: Option<Arc<Faults>>) -> Result<SqliteStore, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Unavailable(
                "in-memory sqlite is not durable; use a file".into(),
            ));
        }
        let base = SqliteConnectOptions::from_str(url)?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        if let Some(parent) = base.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }

        let write_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // The writer's own checkpoints stall commits; see `checkpoint_loop` for why it keeps
            // them, less often than SQLite's default of 1,000 pages. Bounds the WAL at ~32 MiB.
            .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string());
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(write_options)
            .await?;
        MIGRATOR.run(&writer).await?;
        preallocate_wal(&writer, base.get_filename()).await;

        // Readers are opened after the writer created the file and switched it to WAL (a
        // persistent property of the file). `query_only` guards against a write slipping onto a
        // reader connection, where it would compete with the single writer.
        let read_options = base.clone().pragma("query_only", "ON");
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(read_options)
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(base.synchronous(SqliteSynchronous::Full))
            .await?;
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(checkpoint_loop(checkpointer.clone(), commits.clone()));
        let store = SqliteStore {
            writer,
            reader,
            checkpointer,
            commits,
            health: Arc::default(),
            faults,
        };
        tokio::spawn(write::probe_loop(store.clone()));
        Ok(store)
    }
}

/// How often the WAL is copied back into the database file in the background.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL pages after which the writer checkpoints itself (restarting the WAL).
const WRITER_CHECKPOINT_PAGES: u64 = 8000;

/// Pages the WAL may grow past [`WRITER_CHECKPOINT_PAGES`]: the writer checkpoints after the
/// commit that crosses the mark, and a group commit writes up to a few hundred pages.
const WAL_SLACK_PAGES: u64 = 1000;

/// SQLite's default page size, which the hub keeps; used to size the pre-allocated WAL.
const ASSUMED_PAGE_SIZE: u64 = 4096;

/// Gives the WAL its full size now, so that commits overwrite it instead of growing it (see
/// [`wal`] for why that matters and why it is safe), when the disk has room to spare. Only a
/// speed-up: when skipped or failed, SQLite grows the log itself.
async fn preallocate_wal(writer: &SqlitePool, db: &std::path::Path) {
    let bytes = wal::wal_bytes(WRITER_CHECKPOINT_PAGES + WAL_SLACK_PAGES, ASSUMED_PAGE_SIZE);
    // Holding the only write connection keeps every commit out while the file is extended.
    let _writer = match writer.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "could not pre-allocate the sqlite WAL");
            return;
        }
    };
    let db = db.to_owned();
    match tokio::task::spawn_blocking(move || wal::extend(&db, bytes)).await {
        Ok(Ok(wal::Extended::Added(0))) => {
            tracing::debug!(bytes, "sqlite WAL already pre-allocated")
        }
        Ok(Ok(wal::Extended::Added(added))) => {
            tracing::info!(added, bytes, "sqlite WAL pre-allocated")
        }
        Ok(Ok(wal::Extended::NoRoom { needed, free, keep })) => tracing::warn!(
            needed,
            free,
            keep_free = keep,
            "sqlite WAL not pre-allocated: it would leave too little free disk space; \
             commits may be slower while the log grows"
        ),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "could not pre-allocate the sqlite WAL; the partial extension was removed"
        ),
        Err(e) => tracing::warn!(error = %e, "could not pre-allocate the sqlite WAL"),
    }
}

/// Copies committed WAL frames into the database file in the background (PASSIVE: it never
/// blocks the writer or readers). Ends when the store is closed.
///
/// The writer keeps SQLite's automatic checkpoint: only a checkpoint by the writer itself, with
/// no commit in between, lets the next transaction restart the WAL from its beginning, which is
/// what keeps the file bounded (without it the WAL grew by ~2 MB/s under 5,000 updates/s). This
/// loop does most of the copying beforehand, so the writer's checkpoints, which stall commits,
/// find little left to copy.
///
/// A tick with no commit since the previous checkpoint has nothing to copy and is skipped: the
/// checkpoint is a round trip through sqlx's connection thread, and ten of them a second were
/// most of an idle hub's CPU (issue 23). The first tick always checkpoints (the migrations
/// commit outside [`SqliteStore::begin_write`]), and so does every tick after a checkpoint that
/// could not copy the whole WAL (a reader's snapshot held frames back).
async fn checkpoint_loop(pool: SqlitePool, commits: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut copied = None;
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        // Read before the checkpoint: a commit that lands during it is copied by the next one.
        let committed = commits.load(Ordering::Acquire);
        if copied == Some(committed) {
            continue;
        }
        // (busy, WAL frames, frames copied): only a complete copy lets the next idle tick skip.
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            Ok((busy, frames, done)) => {
                copied = (busy == 0 && done >= frames).then_some(committed);
            }
            Err(e) => {
                if pool.is_closed() {
                    return;
                }
                copied = None;
                tracing::debug!(error = %e, "background WAL checkpoint failed");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fault_tests;
