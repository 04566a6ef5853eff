//! [`LeaseStore`] on PostgreSQL (tables of migration 0007). Every time is the database's
//! `clock_timestamp()`, read once per round, so instances on hosts with different clocks agree.
//! Concurrent rounds take disjoint partitions: the candidates are locked with `SKIP LOCKED` and
//! re-checked as free in the `UPDATE`.

use sqlx::Row;

use super::{PgStore, deadline};
use crate::store::lease::{LeaseRound, LeaseStore, share};
use crate::store::{StoreError, to_db};

/// Rows of instances gone for longer than this are deleted, so the table stays as small as the
/// set of recent instances.
const FORGET_INSTANCES_AFTER_MS: i64 = 60_000;

const NOW_MS: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

#[async_trait::async_trait]
impl LeaseStore for PgStore {
    async fn lease_round(
        &self,
        instance: &str,
        ttl_ms: u64,
        give_back: &[u16],
    ) -> Result<LeaseRound, StoreError> {
        deadline(async {
            let mut tx = self.pool.begin().await?;
            let now: i64 = sqlx::query_scalar(NOW_MS).fetch_one(&mut *tx).await?;
            let until = now.saturating_add(to_db(ttl_ms));
            sqlx::query(
                "INSERT INTO hub_instances (instance_id, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (instance_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
            )
            .bind(instance)
            .bind(until)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM hub_instances WHERE expires_at < $1")
                .bind(now - FORGET_INSTANCES_AFTER_MS)
                .execute(&mut *tx)
                .await?;
            let give_back: Vec<i32> = give_back.iter().map(|p| i32::from(*p)).collect();
            sqlx::query(
                "UPDATE partition_leases SET owner = NULL, expires_at = 0 \
                 WHERE owner = $1 AND partition = ANY($2)",
            )
            .bind(instance)
            .bind(&give_back)
            .execute(&mut *tx)
            .await?;
            // Only leases that are still ours: one that expired may have been taken meanwhile.
            let mut held: Vec<i32> = sqlx::query_scalar(
                "UPDATE partition_leases SET expires_at = $2 \
                 WHERE owner = $1 AND expires_at >= $3 RETURNING partition",
            )
            .bind(instance)
            .bind(until)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let live: i64 =
                sqlx::query_scalar("SELECT count(*) FROM hub_instances WHERE expires_at > $1")
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
            let live = u32::try_from(live).unwrap_or(u32::MAX).max(1);
            let share = share(live);
            let mut taken: Vec<i32> = Vec::new();
            let missing = usize::from(share).saturating_sub(held.len());
            if missing > 0 {
                taken = sqlx::query(
                    "UPDATE partition_leases SET owner = $1, expires_at = $2 \
                     WHERE partition IN ( \
                         SELECT partition FROM partition_leases \
                         WHERE owner IS NULL OR expires_at < $3 \
                         ORDER BY partition LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     AND (owner IS NULL OR expires_at < $3) RETURNING partition",
                )
                .bind(instance)
                .bind(until)
                .bind(now)
                .bind(i64::try_from(missing).unwrap_or(0))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<i32, _>(0))
                .collect::<Result<_, _>>()?;
            }
            tx.commit().await?;
            held.extend(&taken);
            let to_u16 = |v: Vec<i32>| -> Vec<u16> {
                let mut v: Vec<u16> = v
                    .into_iter()
                    .filter_map(|p| u16::try_from(p).ok())
                    .collect();
                v.sort_unstable();
                v
            };
            Ok(LeaseRound {
                held: to_u16(held),
                taken: to_u16(taken),
                live,
                share,
            })
        })
        .await
    }

    async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        deadline(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE partition_leases SET owner = NULL, expires_at = 0 WHERE owner = $1",
            )
            .bind(instance)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM hub_instances WHERE instance_id = $1")
                .bind(instance)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
