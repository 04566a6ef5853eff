//! [`ConfigurationStore`] on PostgreSQL: SQLite's statements (`store/sqlite/configurations.rs`),
//! run under the operation deadline and the write retry of `write.rs`.

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PgStore, deadline, from_db, to_db};
use crate::store::StoreError;
use crate::store::configurations::{Configuration, ConfigurationRecord, ConfigurationStore};
use crate::store::fault::Writer;
use crate::store::sqlite::configurations::{object, sql, status};

fn config_from_row(row: &PgRow) -> Result<Configuration, StoreError> {
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

fn record_from_row(row: &PgRow) -> Result<ConfigurationRecord, StoreError> {
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

/// The reads, each run under the operation deadline by the trait methods.
impl PgStore {
    async fn read_configurations(
        &self,
        filter: &str,
        name: Option<&str>,
    ) -> Result<Vec<Configuration>, StoreError> {
        let sql = format!(
            "SELECT {} FROM configurations {filter} ORDER BY name",
            sql::CONFIG_COLS
        );
        let mut q = sqlx::query(&sql);
        if let Some(name) = name {
            q = q.bind(name);
        }
        let rows = q.fetch_all(&mut *self.conn().await?).await?;
        rows.iter().map(config_from_row).collect()
    }

    async fn read_records(
        &self,
        thing: Option<&str>,
    ) -> Result<Vec<ConfigurationRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM configuration_things {} ORDER BY configuration, thing_id",
            sql::RECORD_COLS,
            if thing.is_some() {
                "WHERE thing_id = $1"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(&sql);
        if let Some(thing) = thing {
            q = q.bind(thing);
        }
        let rows = q.fetch_all(&mut *self.conn().await?).await?;
        rows.iter().map(record_from_row).collect()
    }
}

#[async_trait::async_trait]
impl ConfigurationStore for PgStore {
    async fn create_configuration(&self, c: &Configuration) -> Result<(), StoreError> {
        let desired = Value::Object(c.desired.clone()).to_string();
        let desired = &desired;
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Configurations).await?;
            let n: i64 = sqlx::query_scalar(sql::EXISTS)
                .bind(&c.name)
                .fetch_one(tx.conn()?)
                .await?;
            if n > 0 {
                tx.rollback().await?;
                return Err(StoreError::AlreadyExists.into());
            }
            sqlx::query(sql::INSERT)
                .bind(&c.name)
                .bind(&c.target)
                .bind(c.priority)
                .bind(desired)
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
        let desired = Value::Object(c.desired.clone()).to_string();
        let desired = &desired;
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Configurations).await?;
            let done = sqlx::query(sql::UPDATE)
                .bind(&c.name)
                .bind(&c.target)
                .bind(c.priority)
                .bind(desired)
                .bind(&c.success)
                .bind(i64::from(c.remove_on_unmatch))
                .bind(to_db(c.updated_at))
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

    async fn delete_configuration(&self, name: &str) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Configurations).await?;
            let done = sqlx::query(sql::DELETE)
                .bind(name)
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

    async fn configurations(&self) -> Result<Vec<Configuration>, StoreError> {
        deadline(self.read_configurations("", None)).await
    }

    async fn configuration(&self, name: &str) -> Result<Option<Configuration>, StoreError> {
        let found = deadline(self.read_configurations("WHERE name = $1", Some(name))).await?;
        Ok(found.into_iter().next())
    }

    async fn configuration_records(&self) -> Result<Vec<ConfigurationRecord>, StoreError> {
        deadline(self.read_records(None)).await
    }

    async fn thing_configuration_records(
        &self,
        thing: &str,
    ) -> Result<Vec<ConfigurationRecord>, StoreError> {
        deadline(self.read_records(Some(thing))).await
    }

    async fn write_configuration_records(
        &self,
        put: &[ConfigurationRecord],
        remove: &[(String, String)],
    ) -> Result<(), StoreError> {
        if put.is_empty() && remove.is_empty() {
            return Ok(());
        }
        self.writing(|| async move {
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
