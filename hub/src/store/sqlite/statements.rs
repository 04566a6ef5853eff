//! The [`Store`] operations on SQLite: the statements that create, read, page, query and change
//! things, and the batched shadow writes of a group commit.

use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite};

use super::query::QueryParam;
use super::write::WriteTx;
use super::{MAX_PAGE_SIZE, SqliteStore, from_db, to_db};
use crate::store::fault::Writer;
use crate::store::{NewThing, ShadowWrite, Store, StoreError, StoredShadow, ThingRecord};

/// Columns of [`ThingRecord`], in the order [`thing_from_row`] reads them.
macro_rules! thing_cols {
    () => {
        "thing_id, enabled, tags, tags_version, connected, connected_at, disconnected_at, created_at"
    };
}

fn thing_from_row(row: &SqliteRow) -> Result<ThingRecord, StoreError> {
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
    mut query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    params: &'q [QueryParam],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for p in params {
        query = match p {
            QueryParam::Text(s) => query.bind(s.as_str()),
            QueryParam::Int(i) => query.bind(*i),
            QueryParam::Real(f) => query.bind(*f),
        };
    }
    query
}

fn tags_json(tags: &Map<String, Value>) -> Result<String, StoreError> {
    serde_json::to_string(tags).map_err(|e| StoreError::Unavailable(format!("tags: {e}")))
}

impl SqliteStore {
    /// Whether the thing exists, inside the write transaction `tx`.
    async fn thing_exists(tx: &mut WriteTx<'_>, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM things WHERE thing_id = $1")
            .bind(id)
            .fetch_optional(tx.conn()?)
            .await?;
        Ok(row.is_some())
    }

    /// Inserts one thing inside `tx`; `Ok(None)` if the id is taken.
    ///
    /// `ON CONFLICT DO NOTHING` instead of catching a unique violation: on PostgreSQL an error
    /// would abort the whole batch transaction.
    pub(super) async fn insert_thing(
        tx: &mut WriteTx<'_>,
        t: &NewThing,
        now: u64,
    ) -> Result<Option<ThingRecord>, StoreError> {
        let done = sqlx::query(
            "INSERT INTO things \
               (thing_id, password_hash, enabled, tags, tags_version, connected, created_at) \
             VALUES ($1, $2, $3, $4, 1, FALSE, $5) \
             ON CONFLICT (thing_id) DO NOTHING",
        )
        .bind(&t.thing_id)
        .bind(&t.password_hash)
        .bind(t.enabled)
        .bind(tags_json(&t.tags)?)
        .bind(to_db(now))
        .execute(tx.conn()?)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(Some(ThingRecord {
            thing_id: t.thing_id.clone(),
            enabled: t.enabled,
            tags: t.tags.clone(),
            tags_version: 1,
            connected: false,
            connected_at: None,
            disconnected_at: None,
            created_at: now,
        }))
    }

    /// Applies `writes` inside `tx` with a few multi-row statements instead of one statement
    /// per write: with sqlx every statement is a round trip to SQLite's worker thread, which
    /// dominated the cost of a group commit.
    ///
    /// A batch may hold several writes to one shadow (v1→v2, then v2→v3), so it runs in rounds
    /// in which each shadow appears at most once, in submission order; a write that builds on a
    /// failed one then fails its own version check, as it would alone. Per-write failures are
    /// detected from the `RETURNING` rows, never from SQL errors, so they leave the transaction
    /// usable (on PostgreSQL too). Only database errors come back as the outer `Err`.
    async fn apply_writes(
        tx: &mut WriteTx<'_>,
        writes: &[ShadowWrite],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut out: Vec<Option<Result<(), StoreError>>> = vec![None; writes.len()];
        let mut pending: Vec<usize> = (0..writes.len()).collect();
        while !pending.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let (round, later): (Vec<usize>, Vec<usize>) = pending
                .iter()
                .partition(|&&i| seen.insert((&writes[i].thing_id, &writes[i].name)));
            pending = later;
            for chunk in statement_chunks(&round) {
                let (creates, updates): (Vec<usize>, Vec<usize>) = chunk
                    .iter()
                    .partition(|&&i| writes[i].expected_version == 0);
                let mut written = Self::insert_shadows(tx, writes, &creates).await?;
                written.extend(Self::update_shadows(tx, writes, &updates).await?);
                let written: std::collections::HashSet<(&str, &str)> = written
                    .iter()
                    .map(|(thing, name)| (thing.as_str(), name.as_str()))
                    .collect();
                for &i in chunk {
                    let w = &writes[i];
                    out[i] = Some(
                        if written.contains(&(w.thing_id.as_str(), w.name.as_str())) {
                            Ok(())
                        } else if Self::thing_exists(tx, &w.thing_id).await? {
                            Err(StoreError::VersionConflict)
                        } else {
                            Err(StoreError::NotFound)
                        },
                    );
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Unavailable("write not attempted".into()))))
            .collect())
    }

    /// Creates the shadows at `rows` (expected version 0); returns the keys written.
    ///
    /// The EXISTS guard avoids a foreign-key error (which would abort the transaction on
    /// PostgreSQL); the WHERE clause is also required by SQLite to parse an upsert on a SELECT.
    /// PostgreSQL: name the VALUES columns (`AS v(thing_id, ...)`) and cast the numbers.
    async fn insert_shadows(
        tx: &mut WriteTx<'_>,
        writes: &[ShadowWrite],
        rows: &[usize],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        if rows.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "INSERT INTO shadows (thing_id, name, version, body, updated_at) \
             SELECT column1, column2, column3, column4, column5 FROM (VALUES {}) \
             WHERE EXISTS (SELECT 1 FROM things WHERE things.thing_id = column1) \
             ON CONFLICT (thing_id, name) DO NOTHING RETURNING thing_id, name",
            placeholders(rows.len(), 5)
        );
        let mut query = sqlx::query(&sql);
        for &i in rows {
            let w = &writes[i];
            query = query
                .bind(&w.thing_id)
                .bind(&w.name)
                .bind(to_db(w.new_version))
                .bind(&w.body)
                .bind(to_db(w.updated_at));
        }
        Self::written_keys(query.fetch_all(tx.conn()?).await?)
    }

    /// Moves the shadows at `rows` from their expected version (and body, when the write names
    /// one) to the new one (CAS); returns the keys written. PostgreSQL: name the VALUES columns
    /// and cast the numbers.
    async fn update_shadows(
        tx: &mut WriteTx<'_>,
        writes: &[ShadowWrite],
        rows: &[usize],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        if rows.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "UPDATE shadows SET version = v.column3, body = v.column4, updated_at = v.column5 \
             FROM (VALUES {}) AS v \
             WHERE shadows.thing_id = v.column1 AND shadows.name = v.column2 \
               AND shadows.version = v.column6 \
               AND (v.column7 IS NULL OR shadows.body = v.column7) \
             RETURNING thing_id, name",
            placeholders(rows.len(), 7)
        );
        let mut query = sqlx::query(&sql);
        for &i in rows {
            let w = &writes[i];
            query = query
                .bind(&w.thing_id)
                .bind(&w.name)
                .bind(to_db(w.new_version))
                .bind(&w.body)
                .bind(to_db(w.updated_at))
                .bind(to_db(w.expected_version))
                .bind(w.expected_body.as_deref());
        }
        Self::written_keys(query.fetch_all(tx.conn()?).await?)
    }

    fn written_keys(
        rows: Vec<SqliteRow>,
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }
}

/// Most rows in one multi-row statement.
const MAX_ROWS_PER_STATEMENT: usize = 256;

/// Splits `rows` into chunks whose sizes are powers of two (256, 128, ..., 1), so that only a
/// handful of distinct statements exist and sqlx's prepared-statement cache keeps them all;
/// preparing a fresh 500-row statement for every batch cost more than executing it.
fn statement_chunks(rows: &[usize]) -> Vec<&[usize]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let size = if rest.len() >= MAX_ROWS_PER_STATEMENT {
            MAX_ROWS_PER_STATEMENT
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// `(?, ?, ?), (?, ?, ?), ...` for `rows` rows of `columns` parameters.
///
/// Anonymous `?` rather than `$N`: sqlx looks each parameter's name up, and SQLite finds a
/// name by scanning all of them, which made binding a large statement quadratic. PostgreSQL
/// needs `$N` here.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_thing(&self, t: &NewThing, now: u64) -> Result<ThingRecord, StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Things).await?;
            let created = Self::insert_thing(&mut tx, t, now).await?;
            tx.commit().await?;
            created.ok_or(StoreError::AlreadyExists)
        })
        .await
    }

    async fn create_things(
        &self,
        ts: &[NewThing],
        now: u64,
    ) -> Result<Vec<Result<ThingRecord, StoreError>>, StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Things).await?;
            let mut out = Vec::with_capacity(ts.len());
            for t in ts {
                let created = Self::insert_thing(&mut tx, t, now).await?;
                out.push(created.ok_or(StoreError::AlreadyExists));
            }
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    async fn get_thing(&self, id: &str) -> Result<Option<ThingRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            thing_cols!(),
            " FROM things WHERE thing_id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(thing_from_row).transpose()
    }

    async fn password_hash(&self, id: &str) -> Result<Option<(String, bool)>, StoreError> {
        let row = sqlx::query("SELECT password_hash, enabled FROM things WHERE thing_id = $1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        match row {
            Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?))),
            None => Ok(None),
        }
    }

    async fn list_things(
        &self,
        page_index: u64,
        page_size: u64,
        enabled: Option<bool>,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError> {
        let size = page_size.min(MAX_PAGE_SIZE);
        let offset = page_index.saturating_mul(size);
        // One read transaction: the total and the page come from the same snapshot.
        let mut tx = self.reader.begin().await?;
        let (total, rows) = match enabled {
            None => {
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM things")
                    .fetch_one(&mut *tx)
                    .await?;
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    thing_cols!(),
                    " FROM things ORDER BY thing_id LIMIT $1 OFFSET $2"
                ))
                .bind(to_db(size))
                .bind(to_db(offset))
                .fetch_all(&mut *tx)
                .await?;
                (total, rows)
            }
            Some(enabled) => {
                let total: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM things WHERE enabled = $1")
                        .bind(enabled)
                        .fetch_one(&mut *tx)
                        .await?;
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    thing_cols!(),
                    " FROM things WHERE enabled = $3 ORDER BY thing_id LIMIT $1 OFFSET $2"
                ))
                .bind(to_db(size))
                .bind(to_db(offset))
                .bind(enabled)
                .fetch_all(&mut *tx)
                .await?;
                (total, rows)
            }
        };
        tx.commit().await?;
        let things = rows
            .iter()
            .map(thing_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((from_db(total), things))
    }

    async fn query_things(
        &self,
        q: &crate::query::ThingQuery,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<ThingRecord>), StoreError> {
        let size = page_size.min(MAX_PAGE_SIZE);
        let offset = page_index.saturating_mul(size);
        let (count_sql, count_params) = super::query::render_count(q);
        let (page_sql, page_params) = super::query::render(q);
        let page_sql = format!("{page_sql} LIMIT ? OFFSET ?");
        // One read transaction: the total and the page come from the same snapshot.
        let mut tx = self.reader.begin().await?;
        let total: i64 = bind_query_params(sqlx::query(&count_sql), &count_params)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let rows = bind_query_params(sqlx::query(&page_sql), &page_params)
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
    }

    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<ThingRecord, StoreError> {
        self.writing(async {
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
            record.ok_or(StoreError::NotFound)
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
        self.writing(async {
            let mut tx = self.begin_write(Writer::Things).await?;
            // Shadows go by ON DELETE CASCADE (foreign keys are enabled on every connection).
            let done = sqlx::query("DELETE FROM things WHERE thing_id = $1")
                .bind(id)
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
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
        self.writing(async {
            let mut tx = self.begin_write(Writer::Things).await?;
            // PostgreSQL: `tags = $2::jsonb`.
            let row = sqlx::query(
                "UPDATE things SET tags = $2, tags_version = tags_version + 1 \
                 WHERE thing_id = $1 AND tags_version = $3 RETURNING tags_version",
            )
            .bind(id)
            .bind(tags_json(tags)?)
            .bind(to_db(expected_version))
            .fetch_optional(tx.conn()?)
            .await?;
            let result = match row {
                Some(row) => Ok(from_db(row.try_get(0)?)),
                None if Self::thing_exists(&mut tx, id).await? => Err(StoreError::VersionConflict),
                None => Err(StoreError::NotFound),
            };
            tx.commit().await?;
            result
        })
        .await
    }

    async fn set_connected(&self, id: &str, connected: bool, at: u64) -> Result<(), StoreError> {
        let sql = if connected {
            "UPDATE things SET connected = TRUE, connected_at = $2 WHERE thing_id = $1"
        } else {
            // A disconnect older than the last connect (session takeover: the old connection's
            // disconnect may be reported after the new one's connect) must not mark the thing
            // offline; it still records the time.
            "UPDATE things SET disconnected_at = $2, connected = CASE \
               WHEN connected_at IS NOT NULL AND connected_at > $2 THEN connected ELSE FALSE END \
             WHERE thing_id = $1"
        };
        self.writing(async {
            let mut tx = self.begin_write(Writer::Presence).await?;
            let done = sqlx::query(sql)
                .bind(id)
                .bind(to_db(at))
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn mark_all_disconnected(&self, at: u64) -> Result<(), StoreError> {
        self.writing(async {
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
        let row = sqlx::query(
            "SELECT version, body, updated_at FROM shadows WHERE thing_id = $1 AND name = $2",
        )
        .bind(thing)
        .bind(name)
        .fetch_optional(&self.reader)
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
    }

    async fn shadow_names(&self, thing: &str) -> Result<Vec<String>, StoreError> {
        let names =
            sqlx::query_scalar("SELECT name FROM shadows WHERE thing_id = $1 ORDER BY name")
                .bind(thing)
                .fetch_all(&self.reader)
                .await?;
        Ok(names)
    }

    async fn delete_shadow(&self, thing: &str, name: &str) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Shadows).await?;
            let done = sqlx::query("DELETE FROM shadows WHERE thing_id = $1 AND name = $2")
                .bind(thing)
                .bind(name)
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
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
        // One transaction, hence one fsync, for the whole batch. Individual failures are detected
        // by affected-row counts rather than by SQL errors, so they never poison the transaction
        // (no savepoints needed, and the same holds on PostgreSQL).
        self.writing(async {
            let mut tx = self.begin_write(Writer::Shadows).await?;
            let out = Self::apply_writes(&mut tx, writes).await?;
            tx.commit().await?;
            Ok(out)
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

    fn health(&self) -> crate::store::health::HealthReport {
        self.health.report()
    }

    async fn close(&self) {
        self.reader.close().await;
        self.checkpointer.close().await;
        // Fold the WAL back into the main file so the database is a single file at rest. Best
        // effort: every commit is already durable.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await
        {
            tracing::debug!(error = %e, "wal checkpoint at close failed");
        }
        self.writer.close().await;
    }
}
