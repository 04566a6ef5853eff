//! [`SyncStore`] on PostgreSQL: the shared statements of `store/sync.rs` (as SQLite runs them),
//! under the operation deadline and the write retry of `write.rs`.

use super::{PgStore, deadline};
use crate::store::fault::Writer;
use crate::store::jobs::{Db, with_args};
use crate::store::sync::{
    EventFilter, MAX_DUE, NewSyncEvent, SyncEvent, SyncStore, SyncTask, event_from_row, events_sql,
    insert_event, sql, task_from_row,
};
use crate::store::{StoreError, from_db};

type P = sqlx::Postgres;

impl PgStore {
    /// [`crate::store::Store::delete_things`] (`delete`) and `disable_things`: one statement
    /// per id, one transaction; the ids the statement changed.
    pub(super) async fn remove_things(
        &self,
        ids: &[String],
        delete: bool,
    ) -> Result<Vec<String>, StoreError> {
        let text = if delete {
            sql::DELETE_THING
        } else {
            sql::DISABLE_THING
        };
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Things).await?;
            let mut changed = Vec::new();
            for id in ids {
                let row = with_args::<P>(text, &[id], &[])
                    .fetch_optional(tx.conn()?)
                    .await?;
                if row.is_some() {
                    changed.push(id.clone());
                }
            }
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }
}

#[async_trait::async_trait]
impl SyncStore for PgStore {
    async fn set_push(&self, on: bool) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Sync).await?;
            with_args::<P>(sql::SET_PUSH, &[], &[u64::from(on)])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await
        })
        .await
    }

    async fn due_tasks(&self, now: u64, limit: u64) -> Result<Vec<SyncTask>, StoreError> {
        deadline(async {
            let rows = with_args::<P>(sql::DUE, &[], &[now, limit.min(MAX_DUE)])
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(task_from_row::<P>).collect()
        })
        .await
    }

    async fn pending_tasks(&self) -> Result<u64, StoreError> {
        deadline(async {
            let row = with_args::<P>(sql::COUNT, &[], &[])
                .fetch_one(&mut *self.conn().await?)
                .await?;
            Ok(from_db(P::get_int(&row, 0)?.unwrap_or(0)))
        })
        .await
    }

    async fn finish_task(&self, id: u64, event: &NewSyncEvent) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Sync).await?;
            with_args::<P>(sql::FINISH, &[], &[id])
                .execute(tx.conn()?)
                .await?;
            insert_event::<P>(event).execute(tx.conn()?).await?;
            tx.commit().await
        })
        .await
    }

    async fn retry_task(
        &self,
        id: u64,
        attempts: u32,
        next_at: u64,
        error: &str,
        event: &NewSyncEvent,
    ) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Sync).await?;
            with_args::<P>(sql::RETRY, &[error], &[u64::from(attempts), next_at, id])
                .execute(tx.conn()?)
                .await?;
            insert_event::<P>(event).execute(tx.conn()?).await?;
            tx.commit().await
        })
        .await
    }

    async fn add_events(&self, events: &[NewSyncEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Sync).await?;
            for e in events {
                insert_event::<P>(e).execute(tx.conn()?).await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<SyncEvent>, StoreError> {
        let (text, texts, ints) = events_sql(filter);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        deadline(async {
            let rows = with_args::<P>(&text, &texts, &ints)
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(event_from_row::<P>).collect()
        })
        .await
    }

    async fn prune_events(&self, keep: u64, before: u64) -> Result<u64, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Sync).await?;
            let old = with_args::<P>(sql::PRUNE_AGE, &[], &[before])
                .execute(tx.conn()?)
                .await?;
            let over = with_args::<P>(sql::PRUNE_COUNT, &[], &[keep])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(old.rows_affected() + over.rows_affected())
        })
        .await
    }
}
