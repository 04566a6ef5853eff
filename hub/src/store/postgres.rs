//! The PostgreSQL implementation of [`Store`](super::Store) and
//! [`OtaStore`](super::ota::OtaStore), for several hub instances sharing one database.
//!
//! # Why these settings
//! - **A pool of connections** (`max_connections`, default [`DEFAULT_CONNECTIONS`]): unlike
//!   SQLite, PostgreSQL runs writers concurrently. Each connection is checked before use
//!   (sqlx's `test_before_acquire`), so connections broken by a server restart are replaced by
//!   fresh ones: the pool reconnects by itself once the server is back.
//! - **Deadlines everywhere**: the pool's acquire timeout bounds connecting (and waiting for a
//!   free connection), `statement_timeout` bounds every statement on the server, and every
//!   operation as a whole runs under a client-side deadline (`OP_DEADLINE`, 15 s), which also covers a server
//!   that stopped answering without closing the socket. A missed deadline is
//!   [`StoreError::Unavailable`] (503).
//! - **Durability** is PostgreSQL's own: `synchronous_commit` is left at its default (`on`), so a
//!   `COMMIT` that returns is in the server's WAL on disk (S-3.5).
//!
//! # Concurrency between hub instances (S-3.4)
//! Shadow writes are compare-and-swap on `version` (`UPDATE … WHERE version = $expected`,
//! `INSERT … ON CONFLICT DO NOTHING` for a first version). Under READ COMMITTED a second writer
//! of the same row waits for the first one's row lock, then re-checks its `WHERE` against the
//! committed row: it finds the version moved and updates nothing, which the caller gets as
//! [`StoreError::VersionConflict`], never as a silent overwrite (a write that names the body it
//! was merged on also compares that, D-85). An update that lost so is applied again through
//! [`Store::rewrite_shadow`](super::Store::rewrite_shadow), which reads the row `FOR UPDATE` and
//! writes it in the same transaction, so it cannot lose twice. A batch locks its existing rows
//! in key order first, so two instances' batches cannot deadlock on each other; a deadlock or a
//! serialization failure the server reports anyway is retried (nothing of the failed attempt was
//! committed).
//!
//! # Failures
//! As for SQLite (`store/health.rs`): every write transaction reports its outcome; while they fail
//! a probe retries a one-row write with exponential backoff and jitter, so `/healthz` recovers by
//! itself when the server is back.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::fault::Faults;
use super::health::StoreHealth;
use super::{StoreError, from_db, to_db};

mod batch;
mod certs;
mod configurations;
mod enroll;
mod jobs;
mod lease;
mod ota;
pub mod query;
mod routes;
mod statements;
mod sync;
mod write;

/// Largest page [`Store::list_things`](super::Store::list_things) returns.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// Connections in the pool unless the URL says otherwise (`?max_connections=N`, hub-specific).
pub const DEFAULT_CONNECTIONS: u32 = 8;
/// How long a caller waits for a connection (including connecting) before the store reports
/// itself unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a single statement may run on the server.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any store operation (a whole transaction included) may take on the client.
pub(crate) const OP_DEADLINE: Duration = Duration::from_secs(15);

/// Schema migrations, embedded in the binary. sqlx runs them under an advisory lock, so hub
/// instances starting together do not race; applied files are never edited (checksums).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/postgres");

/// [`Store`](super::Store) on a PostgreSQL database. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    health: Arc<StoreHealth>,
    faults: Option<Arc<Faults>>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database?…`, the libpq URL form
    /// sqlx accepts; `max_connections=N` sizes the pool) and runs the embedded migrations.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        Self::open_with(url, Faults::from_env()).await
    }

    /// [`PgStore::open`] with injected write faults (see [`super::fault`]); test builds only.
    #[cfg(any(test, feature = "fault-injection"))]
    pub async fn open_with_faults(url: &str, faults: Arc<Faults>) -> Result<PgStore, StoreError> {
        Self::open_with(url, Some(faults)).await
    }

    async fn open_with(url: &str, faults: Option<Arc<Faults>>) -> Result<PgStore, StoreError> {
        let (url, connections) = split_pool_size(url)?;
        let options = PgConnectOptions::from_str(&url)?
            .application_name("iothub")
            .options([(
                "statement_timeout",
                format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(true)
            .connect_with(options)
            .await?;
        deadline(async { Ok(MIGRATOR.run(&pool).await?) }).await?;
        let store = PgStore {
            pool,
            health: Arc::default(),
            faults,
        };
        tokio::spawn(write::probe_loop(store.clone()));
        Ok(store)
    }
}

/// Takes the hub's own `max_connections` parameter out of the URL (libpq would refuse it).
fn split_pool_size(url: &str) -> Result<(String, u32), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), DEFAULT_CONNECTIONS));
    };
    let mut size = DEFAULT_CONNECTIONS;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("max_connections", n)) => {
                size = n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        StoreError::Unavailable(format!(
                            "max_connections must be 1..=1000, not {n:?}"
                        ))
                    })?;
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, size))
}

/// Runs `op` under [`OP_DEADLINE`]; a miss is [`StoreError::Unavailable`]. Dropping the operation
/// drops its connection: a write transaction's connection is closed (see `write.rs`), a read's
/// is rolled back by sqlx before it is reused.
pub(crate) async fn deadline<T>(
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_DEADLINE, op).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "postgres did not answer within {} s",
            OP_DEADLINE.as_secs()
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_comes_out_of_the_url() {
        assert_eq!(
            split_pool_size("postgres://u@h/db").unwrap(),
            ("postgres://u@h/db".to_owned(), DEFAULT_CONNECTIONS)
        );
        assert_eq!(
            split_pool_size("postgres://u@h/db?sslmode=disable&max_connections=3").unwrap(),
            ("postgres://u@h/db?sslmode=disable".to_owned(), 3)
        );
        assert_eq!(
            split_pool_size("postgres://u@h/db?max_connections=12").unwrap(),
            ("postgres://u@h/db".to_owned(), 12)
        );
        for bad in ["0", "x", "1001", ""] {
            assert!(split_pool_size(&format!("postgres://h/db?max_connections={bad}")).is_err());
        }
    }
}
