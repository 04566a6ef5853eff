//! [`ConfigurationStore`] on SQLite (types per `0005_configurations.sql`). The statements are
//! standard SQL with `$N` placeholders and `CAST`s, run unchanged by `postgres/configurations.rs`.

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, from_db, to_db};
use crate::store::StoreError;
use crate::store::configurations::{
    Configuration, ConfigurationRecord, ConfigurationStore, RecordStatus,
};
use crate::store::fault::Writer;

/// Statements shared with the PostgreSQL store.
pub(crate) mod sql {
    /// Columns of [`Configuration`](crate::store::configurations::Configuration), in read order.
    pub const CONFIG_COLS: &str =
        "name, target, priority, desired, success, remove_on_unmatch, created_at, updated_at";
    /// Columns of a record, in read order.
    pub const RECORD_COLS: &str = "configuration, thing_id, status, patch, error, updated_at";
    pub const INSERT: &str = "INSERT INTO configurations \
        (name, target, priority, desired, success, remove_on_unmatch, created_at, updated_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    pub const EXISTS: &str = "SELECT COUNT(*) FROM configurations WHERE name = $1";
    pub const UPDATE: &str = "UPDATE configurations SET target = $2, priority = $3, desired = $4, \
        success = $5, remove_on_unmatch = $6, updated_at = $7 WHERE name = $1";
    pub const DELETE: &str = "DELETE FROM configurations WHERE name = $1";
    /// Skips a record whose configuration or thing is gone instead of failing the batch.
    pub const UPSERT_RECORD: &str = "INSERT INTO configuration_things \
        (configuration, thing_id, status, patch, error, updated_at) \
        SELECT CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS TEXT), CAST($4 AS TEXT), \
               CAST($5 AS TEXT), CAST($6 AS BIGINT) \
        WHERE EXISTS (SELECT 1 FROM configurations WHERE name = $1) \
          AND EXISTS (SELECT 1 FROM things WHERE thing_id = $2) \
        ON CONFLICT (configuration, thing_id) DO UPDATE SET status = excluded.status, \
          patch = excluded.patch, error = excluded.error, updated_at = excluded.updated_at";
    pub const DELETE_RECORD: &str =
        "DELETE FROM configuration_things WHERE configuration = $1 AND thing_id = $2";
}

pub(crate) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt configuration {what}: {value:?}"))
}

/// A stored JSON object.
pub(crate) fn object(what: &str, text: &str) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|_| corrupt(what, text))
}

pub(crate) fn status(text: &str) -> Result<RecordStatus, StoreError> {
    RecordStatus::parse(text).ok_or_else(|| corrupt("status", text))
}

fn config_from_row(row: &SqliteRow) -> Result<Configuration, StoreError> {
    let desired: String = row.try_get(3)?;
    Ok(Configuration {
        name: row.try_get(0)?,
        target: row.try_get(1)?,
        priority: row.try_get(2)?,
        desired: object("desired", &desired)?,
        success: row.try_get(4)?,
        remove_on_unmatch: row.try_get::<i64, _>(5)? != 0,
        created_at: from_db(row.try_get(6)?),
        updated_at: from_db(row.try_get(7)?),
    })
}

fn record_from_row(row: &SqliteRow) -> Result<ConfigurationRecord, StoreError> {
    let st: String = row.try_get(2)?;
    let patch: String = row.try_get(3)?;
    Ok(ConfigurationRecord {
        configuration: row.try_get(0)?,
        thing_id: row.try_get(1)?,
        status: status(&st)?,
        patch: object("patch", &patch)?,
        error: row.try_get(4)?,
        updated_at: from_db(row.try_get(5)?),
    })
}

#[async_trait::async_trait]
impl ConfigurationStore for SqliteStore {
    async fn create_configuration(&self, c: &Configuration) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Configurations).await?;
            let n: i64 = sqlx::query_scalar(sql::EXISTS)
                .bind(&c.name)
                .fetch_one(tx.conn()?)
                .await?;
            if n > 0 {
                tx.rollback().await?;
                return Err(StoreError::AlreadyExists);
            }
            sqlx::query(sql::INSERT)
                .bind(&c.name)
                .bind(&c.target)
                .bind(c.priority)
                .bind(Value::Object(c.desired.clone()).to_string())
                .bind(&c.success)
                .bind(i64::from(c.remove_on_unmatch))
                .bind(to_db(c.created_at))
                .bind(to_db(c.updated_at))
                .execute(tx.conn()?)
                .await?;
            tx.commit().await
        })
        .await
    }

    async fn update_configuration(&self, c: &Configuration) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Configurations).await?;
            let done = sqlx::query(sql::UPDATE)
                .bind(&c.name)
                .bind(&c.target)
                .bind(c.priority)
                .bind(Value::Object(c.desired.clone()).to_string())
                .bind(&c.success)
                .bind(i64::from(c.remove_on_unmatch))
                .bind(to_db(c.updated_at))
                .execute(tx.conn()?)
                .await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                return Err(StoreError::NotFound);
            }
            tx.commit().await
        })
        .await
    }

    async fn delete_configuration(&self, name: &str) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Configurations).await?;
            let done = sqlx::query(sql::DELETE)
                .bind(name)
                .execute(tx.conn()?)
                .await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                return Err(StoreError::NotFound);
            }
            tx.commit().await
        })
        .await
    }

    async fn configurations(&self) -> Result<Vec<Configuration>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM configurations ORDER BY name",
            sql::CONFIG_COLS
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(config_from_row).collect()
    }

    async fn configuration(&self, name: &str) -> Result<Option<Configuration>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM configurations WHERE name = $1",
            sql::CONFIG_COLS
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(config_from_row).transpose()
    }

    async fn configuration_records(&self) -> Result<Vec<ConfigurationRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM configuration_things ORDER BY configuration, thing_id",
            sql::RECORD_COLS
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn thing_configuration_records(
        &self,
        thing: &str,
    ) -> Result<Vec<ConfigurationRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM configuration_things WHERE thing_id = $1 ORDER BY configuration",
            sql::RECORD_COLS
        ))
        .bind(thing)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn write_configuration_records(
        &self,
        put: &[ConfigurationRecord],
        remove: &[(String, String)],
    ) -> Result<(), StoreError> {
        if put.is_empty() && remove.is_empty() {
            return Ok(());
        }
        self.writing(async {
            let mut tx = self.begin_write(Writer::Configurations).await?;
            for r in put {
                sqlx::query(sql::UPSERT_RECORD)
                    .bind(&r.configuration)
                    .bind(&r.thing_id)
                    .bind(r.status.as_str())
                    .bind(Value::Object(r.patch.clone()).to_string())
                    .bind(&r.error)
                    .bind(to_db(r.updated_at))
                    .execute(tx.conn()?)
                    .await?;
            }
            for (configuration, thing) in remove {
                sqlx::query(sql::DELETE_RECORD)
                    .bind(configuration)
                    .bind(thing)
                    .execute(tx.conn()?)
                    .await?;
            }
            tx.commit().await
        })
        .await
    }
}
