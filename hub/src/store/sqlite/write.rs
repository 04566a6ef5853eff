//! Write transactions on the single write connection, and what happens when one fails.
//!
//! # Why not sqlx's `Transaction`
//! sqlx counts open transactions itself and turns a nested `begin` into a `SAVEPOINT`. When COMMIT
//! fails because the disk is full, SQLite has already rolled the transaction back; sqlx's
//! `ROLLBACK` then fails ("no transaction is active") and its count stays at 1, so the next
//! `begin` is a `SAVEPOINT` and, after one more failed statement, every later "commit" only
//! releases a savepoint inside a transaction that never commits: the hub acknowledged writes it
//! never stored (issue 14, reproduced by `fault_tests`).
//!
//! Here a transaction is plain `BEGIN IMMEDIATE` … `COMMIT` on a connection taken from the writer
//! pool, and **any** failure (a statement, the commit, an injected fault, a caller that gives
//! up) discards that connection instead of returning it: SQLite rolls back whatever is left when
//! it closes, and the pool opens a fresh connection, in a known state, for the next write. A
//! `COMMIT` that returns `Ok` is therefore a real, durable commit (`synchronous=FULL`).
//!
//! Every write reports its outcome to the store's [`StoreHealth`](crate::store::health::StoreHealth)
//! through [`SqliteStore::writing`]; while writes fail, a probe retries a one-row write every
//! [`PROBE_EVERY`] so that health returns by itself once space does.

use std::future::Future;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection};

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::fault::{Step, Writer};

/// How often an unhealthy store tries a write of its own.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One write transaction, holding the write connection until it commits or is dropped.
pub(super) struct WriteTx<'s> {
    conn: PoolConnection<Sqlite>,
    store: &'s SqliteStore,
    writer: Writer,
    statements: u32,
    /// Ended cleanly (committed or rolled back): the connection goes back to the pool.
    committed: bool,
}

impl SqliteStore {
    /// Starts a write transaction for `writer` (`BEGIN IMMEDIATE`: the write lock is taken now,
    /// so a busy database fails here rather than halfway through).
    pub(super) async fn begin_write(&self, writer: Writer) -> Result<WriteTx<'_>, StoreError> {
        let conn = self.writer.acquire().await?;
        let mut tx = WriteTx {
            conn,
            store: self,
            writer,
            statements: 0,
            committed: false,
        };
        tx.inject(Step::Begin)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *tx.conn)
            .await?;
        Ok(tx)
    }

    /// Runs one write operation and records its outcome in the store's health: a database
    /// failure ([`StoreError::Unavailable`]) marks the store unhealthy, anything else (success
    /// or an answer about the data) healthy.
    pub(super) async fn writing<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = op.await;
        match &result {
            Err(StoreError::Unavailable(reason)) => self.health.write_failed(reason),
            _ => self.health.write_ok(),
        }
        result
    }
}

impl WriteTx<'_> {
    /// The connection, for the next statement of this transaction.
    pub(super) fn conn(&mut self) -> Result<&mut SqliteConnection, StoreError> {
        self.statements += 1;
        self.inject(Step::Statement(self.statements))?;
        Ok(&mut self.conn)
    }

    /// Commits. `Ok` means durable; on `Err` nothing of the transaction is stored.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        self.inject(Step::Commit)?;
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        self.store
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Ends a transaction that changed nothing worth keeping. On failure the connection is
    /// discarded, as for any failure.
    pub(super) async fn rollback(mut self) -> Result<(), StoreError> {
        sqlx::query("ROLLBACK").execute(&mut *self.conn).await?;
        self.committed = true;
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
        if !self.committed {
            // Whatever state SQLite is in (inside the transaction, or already rolled back by
            // itself), closing the connection ends it; the pool opens a fresh one.
            tracing::debug!(
                writer = self.writer.as_str(),
                "write transaction not committed; discarding the write connection"
            );
            self.conn.close_on_drop();
        }
    }
}

/// While the store is unhealthy, tries a one-row write every [`PROBE_EVERY`] so that health
/// comes back without waiting for a client's write. Ends when the store is closed.
pub(super) async fn probe_loop(store: SqliteStore) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.writer.is_closed() {
            return;
        }
        if store.health.is_healthy() {
            continue;
        }
        let _ = store
            .writing(async {
                let mut tx = store.begin_write(Writer::Probe).await?;
                sqlx::query("UPDATE store_probe SET at = $1 WHERE id = 1")
                    .bind(super::to_db(crate::clock::now_ms()))
                    .execute(tx.conn()?)
                    .await?;
                tx.commit().await
            })
            .await;
    }
}
