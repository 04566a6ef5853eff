//! [`RouteStore`] on PostgreSQL: the statements of `store/routes.rs`, every operation under the
//! store's deadline, writes retried when the server aborted them for a transient reason.
//!
//! Outbox and dead-letter rows get their `seq` when inserted but become visible at commit, so
//! two transactions (two instances enqueueing, or an enqueue and a replay) could make a lower
//! `seq` visible after a higher one; a delivery that removes `seq <= last` would then remove
//! the late row unsent, and readers would see a thing's messages out of order. Every
//! transaction that inserts such rows therefore first takes [`SEQ_LOCK`], so `seq` order is
//! commit order (D-92). SQLite has one writer and needs no lock.

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgStore;
use crate::store::fault::Writer;
use crate::store::postgres::deadline;
use crate::store::routes::{
    Append, DeadLetter, NewMessage, RouteStore, StoredMessage, StoredRoute, limit, sql,
};
use crate::store::{StoreError, from_db, to_db};

/// Key of the transaction-level advisory lock that orders inserts into `route_outbox` and
/// `route_dead_letters` (`"ROUTESEQ"` in ASCII; sqlx's migration lock uses another key).
const SEQ_LOCK: i64 = 0x524F_5554_4553_4551;
const TAKE_SEQ_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

fn message(row: &PgRow) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        seq: from_db(row.try_get(0)?),
        message: NewMessage {
            thing_id: row.try_get(1)?,
            source: row.try_get(2)?,
            topic: row.try_get(3)?,
            payload: row.try_get(4)?,
            received_at: from_db(row.try_get(5)?),
        },
    })
}

#[async_trait::async_trait]
impl RouteStore for PgStore {
    async fn routes(&self) -> Result<Vec<StoredRoute>, StoreError> {
        deadline(async {
            let rows = sqlx::query(sql::ROUTES)
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(StoredRoute {
                        route_id: row.try_get(0)?,
                        spec: row.try_get(1)?,
                        paused: row.try_get::<i64, _>(2)? != 0,
                        from_file: row.try_get::<i64, _>(3)? != 0,
                        updated_at: from_db(row.try_get(4)?),
                    })
                })
                .collect()
        })
        .await
    }

    async fn put_route(&self, route: &StoredRoute) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            sqlx::query(sql::PUT_ROUTE)
                .bind(&route.route_id)
                .bind(&route.spec)
                .bind(i64::from(route.paused))
                .bind(i64::from(route.from_file))
                .bind(to_db(route.updated_at))
                .execute(tx.conn()?)
                .await?;
            tx.commit().await
        })
        .await
    }

    async fn delete_route(&self, route_id: &str) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            let done = sqlx::query(sql::DELETE_ROUTE)
                .bind(route_id)
                .execute(tx.conn()?)
                .await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                return Err(StoreError::NotFound.into());
            }
            tx.commit().await
        })
        .await
    }

    async fn enqueue(&self, appends: &[Append]) -> Result<Vec<u64>, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            sqlx::query(TAKE_SEQ_LOCK)
                .bind(SEQ_LOCK)
                .execute(tx.conn()?)
                .await?;
            let mut dropped = Vec::with_capacity(appends.len());
            for append in appends {
                for m in &append.messages {
                    sqlx::query(sql::APPEND)
                        .bind(&append.route_id)
                        .bind(&m.thing_id)
                        .bind(&m.source)
                        .bind(&m.topic)
                        .bind(&m.payload)
                        .bind(to_db(m.received_at))
                        .execute(tx.conn()?)
                        .await?;
                }
                let mut n = 0;
                if append.drop_oldest > 0 {
                    n = sqlx::query(sql::DROP_OLDEST)
                        .bind(&append.route_id)
                        .bind(to_db(append.drop_oldest))
                        .execute(tx.conn()?)
                        .await?
                        .rows_affected();
                }
                dropped.push(n);
            }
            tx.commit().await?;
            Ok(dropped)
        })
        .await
    }

    async fn outbox(&self, route_id: &str, n: u32) -> Result<Vec<StoredMessage>, StoreError> {
        deadline(async {
            let rows = sqlx::query(sql::OUTBOX)
                .bind(route_id)
                .bind(limit(n))
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(message).collect()
        })
        .await
    }

    async fn outbox_depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        deadline(async {
            let rows = sqlx::query(sql::DEPTHS)
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, from_db(row.try_get(1)?))))
                .collect()
        })
        .await
    }

    async fn delivered(&self, route_id: &str, up_to: u64) -> Result<u64, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            let removed = sqlx::query(sql::DELIVERED)
                .bind(route_id)
                .bind(to_db(up_to))
                .execute(tx.conn()?)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(removed)
        })
        .await
    }

    async fn dead_letter(
        &self,
        route_id: &str,
        up_to: u64,
        attempts: u32,
        error: &str,
        now: u64,
    ) -> Result<u64, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            sqlx::query(TAKE_SEQ_LOCK)
                .bind(SEQ_LOCK)
                .execute(tx.conn()?)
                .await?;
            let moved = sqlx::query(sql::TO_DEAD)
                .bind(route_id)
                .bind(to_db(up_to))
                .bind(i64::from(attempts))
                .bind(error)
                .bind(to_db(now))
                .execute(tx.conn()?)
                .await?
                .rows_affected();
            sqlx::query(sql::DELIVERED)
                .bind(route_id)
                .bind(to_db(up_to))
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(moved)
        })
        .await
    }

    async fn trim_dead_letters(
        &self,
        route_id: &str,
        keep: u64,
        failed_before: u64,
    ) -> Result<u64, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            let old = sqlx::query(sql::DEAD_TRIM_AGE)
                .bind(route_id)
                .bind(to_db(failed_before))
                .execute(tx.conn()?)
                .await?
                .rows_affected();
            let beyond = sqlx::query(sql::DEAD_TRIM_COUNT)
                .bind(route_id)
                .bind(route_id)
                .bind(to_db(keep))
                .execute(tx.conn()?)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(old + beyond)
        })
        .await
    }

    async fn dead_letters(
        &self,
        route_id: &str,
        after: u64,
        n: u32,
    ) -> Result<(u64, Vec<DeadLetter>), StoreError> {
        deadline(async {
            let total = sqlx::query(sql::DEAD_COUNT)
                .bind(route_id)
                .fetch_one(&mut *self.conn().await?)
                .await?;
            let rows = sqlx::query(sql::DEAD)
                .bind(route_id)
                .bind(to_db(after))
                .bind(limit(n))
                .fetch_all(&mut *self.conn().await?)
                .await?;
            let letters = rows
                .iter()
                .map(|row| {
                    Ok(DeadLetter {
                        stored: message(row)?,
                        attempts: u32::try_from(row.try_get::<i64, _>(6)?).unwrap_or(u32::MAX),
                        error: row.try_get(7)?,
                        failed_at: from_db(row.try_get(8)?),
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            Ok((from_db(total.try_get(0)?), letters))
        })
        .await
    }

    async fn replay_dead_letters(&self, route_id: &str, n: u32) -> Result<u64, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            sqlx::query(TAKE_SEQ_LOCK)
                .bind(SEQ_LOCK)
                .execute(tx.conn()?)
                .await?;
            let last: Option<i64> = sqlx::query(sql::REPLAY_LAST)
                .bind(route_id)
                .bind(limit(n))
                .fetch_one(tx.conn()?)
                .await?
                .try_get(0)?;
            let Some(last) = last else {
                tx.rollback().await?;
                return Ok(0);
            };
            let moved = sqlx::query(sql::REPLAY_MOVE)
                .bind(route_id)
                .bind(last)
                .execute(tx.conn()?)
                .await?
                .rows_affected();
            sqlx::query(sql::REPLAY_DELETE)
                .bind(route_id)
                .bind(last)
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(moved)
        })
        .await
    }

    async fn append_history(&self, messages: &[NewMessage]) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            for m in messages {
                sqlx::query(sql::HISTORY_APPEND)
                    .bind(&m.thing_id)
                    .bind(&m.source)
                    .bind(&m.topic)
                    .bind(&m.payload)
                    .bind(to_db(m.received_at))
                    .execute(tx.conn()?)
                    .await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn history(
        &self,
        thing_id: &str,
        from: u64,
        to: u64,
        n: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        deadline(async {
            let rows = sqlx::query(sql::HISTORY)
                .bind(thing_id)
                .bind(to_db(from))
                .bind(to_db(to))
                .bind(limit(n))
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(message).collect()
        })
        .await
    }

    async fn prune_history(&self, before: u64, keep: Option<u64>) -> Result<u64, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Routes).await?;
            let mut gone = sqlx::query(sql::PRUNE_AGE)
                .bind(to_db(before))
                .execute(tx.conn()?)
                .await?
                .rows_affected();
            if let Some(keep) = keep {
                gone += sqlx::query(sql::PRUNE_COUNT)
                    .bind(to_db(keep))
                    .execute(tx.conn()?)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(gone)
        })
        .await
    }
}
