//! The [`Store`] operations on PostgreSQL.
//!
//! Batches are bound as arrays and expanded with `unnest`, so each statement has one shape
//! whatever the batch size (one prepared statement, one round trip).

use std::collections::HashSet;

use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};

use super::query::QueryParam;
use super::write::{TxError, WriteTx};
use super::{MAX_PAGE_SIZE, PgStore, deadline, from_db, to_db};
use crate::store::fault::Writer;
use crate::store::{
    BuildWrites, NewThing, RewriteResult, ShadowWrite, Store, StoreError, StoredShadow, ThingRecord,
};

/// Columns of [`ThingRecord`], in the order [`thing_from_row`] reads them.
macro_rules! thing_cols {
    () => {
        "thing_id, enabled, tags, tags_version, connected, connected_at, disconnected_at, created_at"
    };
}

pub(super) fn thing_from_row(row: &PgRow) -> Result<ThingRecord, StoreError> {
    let thing_id: String = row.try_get(0)?;
    let tags_text: String = row.try_get(2)?;
    let tags = serde_json::from_str::<Map<String, Value>>(&tags_text)
        .map_err(|e| StoreError::Unavailable(format!("corrupt tags of thing {thing_id}: {e}")))?;
    Ok(ThingRecord {
        enabled: row.try_get(1)?,
        tags,
        tags_version: from_db(row.try_get(3)?),
        connected: row.try_get(4)?,
        connected_at: row.try_get::<Option<i64>, _>(5)?.map(from_db),
        disconnected_at: row.try_get::<Option<i64>, _>(6)?.map(from_db),
        created_at: from_db(row.try_get(7)?),
        thing_id,
    })
}

/// Binds the parameters of a rendered thing query ([`super::query::render`]) in order.
fn bind_query_params<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    params: &'q [QueryParam],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for p in params {
        query = match p {
            QueryParam::Text(s) => query.bind(s.as_str()),
            QueryParam::Path(segments) => query.bind(segments.as_slice()),
            QueryParam::Int(i) => query.bind(*i),
            QueryParam::Real(f) => query.bind(*f),
            QueryParam::Bool(b) => query.bind(*b),
            QueryParam::NullBool => query.bind(None::<bool>),
        };
    }
    query
}

fn tags_json(tags: &Map<String, Value>) -> Result<String, StoreError> {
    serde_json::to_string(tags).map_err(|e| StoreError::Unavailable(format!("tags: {e}")))
}

impl PgStore {
    /// Creates the things of `ts` that do not exist yet, in one statement; per entry `Some` with
    /// the record, or `None` when the id was taken (before, or by an earlier entry of `ts`).
    pub(super) async fn insert_things(
        tx: &mut WriteTx<'_>,
        ts: &[NewThing],
        now: u64,
    ) -> Result<Vec<Option<ThingRecord>>, TxError> {
        let mut ids = Vec::with_capacity(ts.len());
        let mut hashes = Vec::with_capacity(ts.len());
        let mut enabled = Vec::with_capacity(ts.len());
        let mut tags = Vec::with_capacity(ts.len());
        for t in ts {
            ids.push(t.thing_id.as_str());
            hashes.push(t.password_hash.as_str());
            enabled.push(t.enabled);
            tags.push(tags_json(&t.tags)?);
        }
        // `ON CONFLICT DO NOTHING` rather than a caught unique violation, which would abort the
        // transaction. Rows go in input order, so of two entries with one id the first wins.
        let created: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO things \
               (thing_id, password_hash, enabled, tags, tags_version, connected, created_at) \
             SELECT id, hash, en, tg, 1, FALSE, $5 \
               FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[]) \
                    WITH ORDINALITY AS v(id, hash, en, tg, ord) \
              ORDER BY ord \
             ON CONFLICT (thing_id) DO NOTHING RETURNING thing_id",
        )
        .bind(&ids)
        .bind(&hashes)
        .bind(&enabled)
        .bind(&tags)
        .bind(to_db(now))
        .fetch_all(tx.conn()?)
        .await?
        .into_iter()
        .collect();
        let mut claimed = HashSet::new();
        Ok(ts
            .iter()
            .map(|t| {
                (created.contains(&t.thing_id) && claimed.insert(t.thing_id.as_str())).then(|| {
                    ThingRecord {
                        thing_id: t.thing_id.clone(),
                        enabled: t.enabled,
                        tags: t.tags.clone(),
                        tags_version: 1,
                        connected: false,
                        connected_at: None,
                        disconnected_at: None,
                        created_at: now,
                    }
                })
            })
            .collect())
    }

    /// A page of things and the number of matches, read from one snapshot.
    async fn page(
        &self,
        count_sql: &str,
        page_sql: &str,
        params: &[QueryParam],
        count_params: usize,
        size: u64,
        offset: u64,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError> {
        deadline(async {
            let mut conn = self.conn().await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            let total: i64 = bind_query_params(sqlx::query(count_sql), &params[..count_params])
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let rows = bind_query_params(sqlx::query(page_sql), params)
                .bind(to_db(size))
                .bind(to_db(offset))
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            let things = rows
                .iter()
                .map(thing_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((from_db(total), things))
        })
        .await
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_thing(&self, t: &NewThing, now: u64) -> Result<ThingRecord, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Things).await?;
            let created = Self::insert_things(&mut tx, std::slice::from_ref(t), now).await?;
            tx.commit().await?;
            Ok(created.into_iter().next().flatten())
        })
        .await?
        .ok_or(StoreError::AlreadyExists)
    }

    async fn create_things(
        &self,
        ts: &[NewThing],
        now: u64,
    ) -> Result<Vec<Result<ThingRecord, StoreError>>, StoreError> {
        if ts.is_empty() {
            return Ok(Vec::new());
        }
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Things).await?;
            let created = Self::insert_things(&mut tx, ts, now).await?;
            tx.commit().await?;
            Ok(created
                .into_iter()
                .map(|c| c.ok_or(StoreError::AlreadyExists))
                .collect())
        })
        .await
    }

    async fn get_thing(&self, id: &str) -> Result<Option<ThingRecord>, StoreError> {
        deadline(async {
            let row = sqlx::query(concat!(
                "SELECT ",
                thing_cols!(),
                " FROM things WHERE thing_id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
            row.as_ref().map(thing_from_row).transpose()
        })
        .await
    }

    async fn password_hash(&self, id: &str) -> Result<Option<(String, bool)>, StoreError> {
        deadline(async {
            let row = sqlx::query("SELECT password_hash, enabled FROM things WHERE thing_id = $1")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
            match row {
                Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_things(
        &self,
        page_index: u64,
        page_size: u64,
        enabled: Option<bool>,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError> {
        let size = page_size.min(MAX_PAGE_SIZE);
        let offset = page_index.saturating_mul(size);
        // `$1 IS NULL OR …` keeps one statement for both cases.
        let params = [match enabled {
            Some(e) => QueryParam::Bool(e),
            None => QueryParam::NullBool,
        }];
        self.page(
            "SELECT COUNT(*) FROM things WHERE ($1::bool IS NULL OR enabled = $1)",
            concat!(
                "SELECT ",
                thing_cols!(),
                " FROM things WHERE ($1::bool IS NULL OR enabled = $1) \
                  ORDER BY thing_id LIMIT $2 OFFSET $3"
            ),
            &params,
            1,
            size,
            offset,
        )
        .await
    }

    async fn query_things(
        &self,
        q: &crate::query::ThingQuery,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError> {
        let size = page_size.min(MAX_PAGE_SIZE);
        let offset = page_index.saturating_mul(size);
        let rendered = super::query::render(q);
        self.page(
            &rendered.count_sql,
            &rendered.page_sql,
            &rendered.params,
            rendered.count_params,
            size,
            offset,
        )
        .await
    }

    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<ThingRecord, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Things).await?;
            let row = sqlx::query(concat!(
                "UPDATE things SET enabled = $2 WHERE thing_id = $1 RETURNING ",
                thing_cols!()
            ))
            .bind(id)
            .bind(enabled)
            .fetch_optional(tx.conn()?)
            .await?;
            let record = row.as_ref().map(thing_from_row).transpose()?;
            tx.commit().await?;
            Ok(record.ok_or(StoreError::NotFound)?)
        })
        .await
    }

    async fn delete_things(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.remove_things(ids, true).await
    }

    async fn disable_things(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.remove_things(ids, false).await
    }

    async fn delete_thing(&self, id: &str) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Things).await?;
            // Shadows and OTA tasks go by ON DELETE CASCADE.
            let done = sqlx::query("DELETE FROM things WHERE thing_id = $1")
                .bind(id)
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound.into());
            }
            Ok(())
        })
        .await
    }

    async fn replace_tags(
        &self,
        id: &str,
        tags: &Map<String, Value>,
        expected_version: u64,
    ) -> Result<u64, StoreError> {
        let text = tags_json(tags)?;
        let text = text.as_str();
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Things).await?;
            // The row lock makes a concurrent replace wait, then fail its version check.
            let row = sqlx::query(
                "UPDATE things SET tags = $2, tags_version = tags_version + 1 \
                 WHERE thing_id = $1 AND tags_version = $3 RETURNING tags_version",
            )
            .bind(id)
            .bind(text)
            .bind(to_db(expected_version))
            .fetch_optional(tx.conn()?)
            .await?;
            let result = match row {
                Some(row) => Ok(from_db(row.try_get(0)?)),
                None => {
                    let exists = sqlx::query("SELECT 1 FROM things WHERE thing_id = $1")
                        .bind(id)
                        .fetch_optional(tx.conn()?)
                        .await?
                        .is_some();
                    Err(if exists {
                        StoreError::VersionConflict
                    } else {
                        StoreError::NotFound
                    })
                }
            };
            tx.commit().await?;
            Ok(result)
        })
        .await?
    }

    async fn set_connected(&self, id: &str, connected: bool, at: u64) -> Result<(), StoreError> {
        let sql = if connected {
            "UPDATE things SET connected = TRUE, connected_at = $2 WHERE thing_id = $1"
        } else {
            // A disconnect older than the last connect (session takeover) must not mark the
            // thing offline; it still records the time.
            "UPDATE things SET disconnected_at = $2, connected = CASE \
               WHEN connected_at IS NOT NULL AND connected_at > $2 THEN connected ELSE FALSE END \
             WHERE thing_id = $1"
        };
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Presence).await?;
            let done = sqlx::query(sql)
                .bind(id)
                .bind(to_db(at))
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound.into());
            }
            Ok(())
        })
        .await
    }

    async fn mark_all_disconnected(&self, at: u64) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Presence).await?;
            sqlx::query(
                "UPDATE things SET connected = FALSE, disconnected_at = $1 WHERE connected = TRUE",
            )
            .bind(to_db(at))
            .execute(tx.conn()?)
            .await?;
            tx.commit().await
        })
        .await
    }

    async fn get_shadow(
        &self,
        thing: &str,
        name: &str,
    ) -> Result<Option<StoredShadow>, StoreError> {
        deadline(async {
            let row = sqlx::query(
                "SELECT version, body, updated_at FROM shadows WHERE thing_id = $1 AND name = $2",
            )
            .bind(thing)
            .bind(name)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
            match row {
                Some(row) => Ok(Some(StoredShadow {
                    thing_id: thing.to_owned(),
                    name: name.to_owned(),
                    version: from_db(row.try_get(0)?),
                    body: row.try_get(1)?,
                    updated_at: from_db(row.try_get(2)?),
                })),
                None => Ok(None),
            }
        })
        .await
    }

    async fn shadow_names(&self, thing: &str) -> Result<Vec<String>, StoreError> {
        deadline(async {
            Ok(
                sqlx::query_scalar("SELECT name FROM shadows WHERE thing_id = $1 ORDER BY name")
                    .bind(thing)
                    .fetch_all(&mut *self.conn().await?)
                    .await?,
            )
        })
        .await
    }

    async fn delete_shadow(&self, thing: &str, name: &str) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Shadows).await?;
            let done = sqlx::query("DELETE FROM shadows WHERE thing_id = $1 AND name = $2")
                .bind(thing)
                .bind(name)
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound.into());
            }
            Ok(())
        })
        .await
    }

    async fn write_shadows(
        &self,
        writes: &[ShadowWrite],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction for the whole batch (one WAL flush on the server).
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Shadows).await?;
            let out = super::batch::apply_writes(&mut tx, writes).await?;
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    async fn rewrite_shadow(
        &self,
        thing: &str,
        name: &str,
        build: &BuildWrites<'_>,
    ) -> Result<RewriteResult, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Shadows).await?;
            // The row stays locked until the commit: another instance's write waits for it.
            let row = sqlx::query(
                "SELECT version, body, updated_at FROM shadows \
                  WHERE thing_id = $1 AND name = $2 FOR UPDATE",
            )
            .bind(thing)
            .bind(name)
            .fetch_optional(tx.conn()?)
            .await?;
            let current = match row {
                Some(row) => Some(StoredShadow {
                    thing_id: thing.to_owned(),
                    name: name.to_owned(),
                    version: from_db(row.try_get(0)?),
                    body: row.try_get(1)?,
                    updated_at: from_db(row.try_get(2)?),
                }),
                None => None,
            };
            let writes = build(current.as_ref());
            let out = if writes.is_empty() {
                Vec::new()
            } else {
                super::batch::apply_writes(&mut tx, &writes).await?
            };
            tx.commit().await?;
            Ok((current, out))
        })
        .await
    }

    fn ota(&self) -> Option<&dyn crate::store::ota::OtaStore> {
        Some(self)
    }

    fn certificates(&self) -> Option<&dyn crate::store::certs::CertificateStore> {
        Some(self)
    }

    fn enrollments(&self) -> Option<&dyn crate::store::enroll::EnrollmentStore> {
        Some(self)
    }

    fn configurations(&self) -> Option<&dyn crate::store::configurations::ConfigurationStore> {
        Some(self)
    }

    fn jobs(&self) -> Option<&dyn crate::store::jobs::JobStore> {
        Some(self)
    }

    fn sync(&self) -> Option<&dyn crate::store::sync::SyncStore> {
        Some(self)
    }

    fn routes(&self) -> Option<&dyn crate::store::routes::RouteStore> {
        Some(self)
    }

    fn leases(&self) -> Option<&dyn crate::store::lease::LeaseStore> {
        Some(self)
    }

    fn health(&self) -> crate::store::health::HealthReport {
        self.health.report()
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
