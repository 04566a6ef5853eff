//! Write transactions on PostgreSQL, and what happens when one fails.
//!
//! The shape is SQLite's (`store/sqlite/write.rs`): a plain `BEGIN` … `COMMIT` on a pooled
//! connection, and **any** failure (a statement, the commit, an injected fault, a missed deadline,
//! a caller that gives up) closes that connection instead of returning it, so the next write
//! starts on a connection in a known state; the server rolls back whatever was left open when the
//! session ends. A `COMMIT` that returns `Ok` is durable.
//!
//! A transaction that the server aborts because of another instance's concurrent work (deadlock,
//! serialization failure, a thing deleted under an insert) left nothing behind; [`PgStore::writing`]
//! runs it again, up to [`ATTEMPTS`] times, before reporting the store unavailable.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};

use super::{PgStore, deadline};
use crate::store::StoreError;
use crate::store::fault::{Step, Writer};

/// Attempts of a write transaction that the server aborted for a transient reason.
const ATTEMPTS: u32 = 4;
/// How long a request waits for a connection while the store is unhealthy. The probe, which
/// finds out that the server is back, waits the pool's full acquire timeout instead.
const UNHEALTHY_ACQUIRE: Duration = Duration::from_millis(250);
/// First and largest pause of the unhealthy store's probe (doubling, with jitter).
const PROBE_MIN: Duration = Duration::from_millis(250);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// SQLSTATEs of failures caused by concurrent transactions, after which the same transaction
/// may simply be run again: serialization_failure, deadlock_detected, foreign_key_violation (a
/// thing deleted between the check and the insert) and unique_violation.
const RETRYABLE: [&str; 4] = ["40001", "40P01", "23503", "23505"];

/// One write transaction, holding its connection until it commits or is dropped.
pub(super) struct WriteTx<'s> {
    conn: PoolConnection<Postgres>,
    store: &'s PgStore,
    writer: Writer,
    statements: u32,
    /// Ended cleanly (committed or rolled back): the connection goes back to the pool.
    ended: bool,
}

/// The outcome of one attempt: a retryable database error is kept apart from the rest.
pub(super) enum TxError {
    Retry(String),
    Fail(StoreError),
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        let retry = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| RETRYABLE.contains(&code.as_ref()));
        if retry {
            TxError::Retry(e.to_string())
        } else {
            TxError::Fail(e.into())
        }
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Fail(e)
    }
}

impl PgStore {
    /// A connection from the pool, for a read or a write.
    ///
    /// While the store is unhealthy a connection is awaited for [`UNHEALTHY_ACQUIRE`] only, not
    /// the pool's full acquire timeout: with the server down, every request would otherwise hang
    /// for the whole timeout (sqlx keeps retrying a refused connection until then) and devices
    /// would see their requests time out instead of a prompt 503.
    pub(super) async fn conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        if self.health.is_healthy() {
            return Ok(self.pool.acquire().await?);
        }
        match tokio::time::timeout(UNHEALTHY_ACQUIRE, self.pool.acquire()).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no postgres connection within {} ms while writes are failing",
                UNHEALTHY_ACQUIRE.as_millis()
            ))),
        }
    }

    /// Starts a write transaction for `writer`.
    pub(super) async fn begin_write(&self, writer: Writer) -> Result<WriteTx<'_>, TxError> {
        let conn = match writer {
            Writer::Probe => self.pool.acquire().await?,
            _ => self.conn().await?,
        };
        let mut tx = WriteTx {
            conn,
            store: self,
            writer,
            statements: 0,
            ended: false,
        };
        tx.inject(Step::Begin)?;
        sqlx::query("BEGIN").execute(&mut *tx.conn).await?;
        Ok(tx)
    }

    /// Runs the write transaction made by `op` under the operation deadline, again when the
    /// server aborted it for a transient reason, and records the outcome in the store's health:
    /// a database failure ([`StoreError::Unavailable`]) marks the store unhealthy, anything else
    /// (success or an answer about the data) healthy.
    pub(super) async fn writing<'a, T, F, Fut>(&'a self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, TxError>> + 'a,
    {
        let result = deadline(async {
            let mut attempt = 1;
            loop {
                match op().await {
                    Ok(v) => return Ok(v),
                    Err(TxError::Fail(e)) => return Err(e),
                    Err(TxError::Retry(reason)) if attempt >= ATTEMPTS => {
                        return Err(StoreError::Unavailable(reason));
                    }
                    Err(TxError::Retry(reason)) => {
                        tracing::debug!(%reason, attempt, "write transaction aborted by a concurrent one; retrying");
                        attempt += 1;
                        let pause = rand::thread_rng().gen_range(1..=10 * u64::from(attempt));
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
        })
        .await;
        match &result {
            Err(StoreError::Unavailable(reason)) => self.health.write_failed(reason),
            _ => self.health.write_ok(),
        }
        result
    }
}

impl WriteTx<'_> {
    /// The connection, for the next statement of this transaction.
    pub(super) fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.statements += 1;
        self.inject(Step::Statement(self.statements))?;
        Ok(&mut self.conn)
    }

    /// Commits. `Ok` means durable; on `Err` nothing of the transaction is stored (or, if the
    /// connection broke during the `COMMIT` itself, the outcome is unknown and the caller is told
    /// it failed).
    pub(super) async fn commit(mut self) -> Result<(), TxError> {
        self.inject(Step::Commit)?;
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.ended = true;
        Ok(())
    }

    /// Ends a transaction that changed nothing worth keeping.
    pub(super) async fn rollback(mut self) -> Result<(), TxError> {
        sqlx::query("ROLLBACK").execute(&mut *self.conn).await?;
        self.ended = true;
        Ok(())
    }

    fn inject(&self, step: Step) -> Result<(), StoreError> {
        match &self.store.faults {
            Some(faults) => faults.check(self.writer, step),
            None => Ok(()),
        }
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // Inside a transaction or in an unknown state: closing the session ends it on the
            // server; the pool opens a fresh connection.
            tracing::debug!(
                writer = self.writer.as_str(),
                "write transaction not committed; discarding its connection"
            );
            self.conn.close_on_drop();
        }
    }
}

/// While the store is unhealthy, tries a one-row write, pausing [`PROBE_MIN`] doubling up to
/// [`PROBE_MAX`] (with jitter, so instances sharing a database do not probe in step), so that
/// health comes back without waiting for a client's write. Ends when the store is closed.
pub(super) async fn probe_loop(store: PgStore) {
    let mut pause = PROBE_MIN;
    loop {
        let jitter = rand::thread_rng().gen_range(0..=pause.as_millis() as u64 / 2);
        tokio::time::sleep(pause + Duration::from_millis(jitter)).await;
        if store.pool.is_closed() {
            return;
        }
        if store.health.is_healthy() {
            pause = PROBE_MIN;
            continue;
        }
        let _ = store
            .writing(|| async {
                let mut tx = store.begin_write(Writer::Probe).await?;
                sqlx::query("UPDATE store_probe SET at = $1 WHERE id = 1")
                    .bind(super::to_db(crate::clock::now_ms()))
                    .execute(tx.conn()?)
                    .await?;
                tx.commit().await
            })
            .await;
        pause = (pause * 2).min(PROBE_MAX);
    }
}
