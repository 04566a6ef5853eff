//! [`SyncStore`] on SQLite: the shared statements of `store/sync.rs`, reads on the read pool,
//! writes in one `BEGIN IMMEDIATE` transaction each.

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::fault::Writer;
use crate::store::jobs::{Db, with_args};
use crate::store::sync::{
    EventFilter, MAX_DUE, NewSyncEvent, SyncEvent, SyncStore, SyncTask, event_from_row, events_sql,
    insert_event, sql, task_from_row,
};

type S = sqlx::Sqlite;

impl SqliteStore {
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
        self.writing(async {
            let mut tx = self.begin_write(Writer::Things).await?;
            let mut changed = Vec::new();
            for id in ids {
                let row = with_args::<S>(text, &[id], &[])
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
impl SyncStore for SqliteStore {
    async fn set_push(&self, on: bool) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Sync).await?;
            with_args::<S>(sql::SET_PUSH, &[], &[u64::from(on)])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await
        })
        .await
    }

    async fn due_tasks(&self, now: u64, limit: u64) -> Result<Vec<SyncTask>, StoreError> {
        let rows = with_args::<S>(sql::DUE, &[], &[now, limit.min(MAX_DUE)])
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(task_from_row::<S>).collect()
    }

    async fn pending_tasks(&self) -> Result<u64, StoreError> {
        let row = with_args::<S>(sql::COUNT, &[], &[])
            .fetch_one(&self.reader)
            .await?;
        Ok(crate::store::from_db(S::get_int(&row, 0)?.unwrap_or(0)))
    }

    async fn finish_task(&self, id: u64, event: &NewSyncEvent) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Sync).await?;
            with_args::<S>(sql::FINISH, &[], &[id])
                .execute(tx.conn()?)
                .await?;
            insert_event::<S>(event).execute(tx.conn()?).await?;
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
        self.writing(async {
            let mut tx = self.begin_write(Writer::Sync).await?;
            with_args::<S>(sql::RETRY, &[error], &[u64::from(attempts), next_at, id])
                .execute(tx.conn()?)
                .await?;
            insert_event::<S>(event).execute(tx.conn()?).await?;
            tx.commit().await
        })
        .await
    }

    async fn add_events(&self, events: &[NewSyncEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.writing(async {
            let mut tx = self.begin_write(Writer::Sync).await?;
            for e in events {
                insert_event::<S>(e).execute(tx.conn()?).await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<SyncEvent>, StoreError> {
        let (text, texts, ints) = events_sql(filter);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let rows = with_args::<S>(&text, &texts, &ints)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(event_from_row::<S>).collect()
    }

    async fn prune_events(&self, keep: u64, before: u64) -> Result<u64, StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Sync).await?;
            let old = with_args::<S>(sql::PRUNE_AGE, &[], &[before])
                .execute(tx.conn()?)
                .await?;
            let over = with_args::<S>(sql::PRUNE_COUNT, &[], &[keep])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(old.rows_affected() + over.rows_affected())
        })
        .await
    }
}
