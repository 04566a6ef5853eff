//! [`OtaStore`] on PostgreSQL: SQLite's statements (`store/sqlite/ota.rs`) with typed `NULL`
//! parameters, run under the operation deadline and the write retry of `write.rs`.

use iothub_spec::code::OtaTaskState;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::write::{TxError, WriteTx};
use super::{PgStore, deadline, from_db, to_db};
use crate::store::StoreError;
use crate::store::fault::Writer;
use crate::store::ota::{
    MAX_TASK_PAGE, NewOtaJob, OtaCounts, OtaJobRecord, OtaJobSettings, OtaJobStatus, OtaStore,
    OtaTaskRecord, OtaTaskWrite, OtaTemplate, OtaTransition,
};

/// Rows per multi-row statement when creating a job (7 parameters each).
const CHUNK: usize = 64;

/// Columns of [`OtaTaskRecord`], in the order [`task_from_row`] reads them.
macro_rules! task_cols {
    () => {
        "job_id, thing_id, seq, attempt, task_id, client_token, status, progress, err_code, \
         err_msg, deadline, transitions, updated_at"
    };
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt ota {what}: {value:?}"))
}

fn state_from(s: &str) -> Result<OtaTaskState, StoreError> {
    OtaTaskState::parse(s).ok_or_else(|| corrupt("task status", s))
}

/// A stored small number (attempt, progress, code); out-of-range values read as 0.
fn small<T: TryFrom<i64> + Default>(v: i64) -> T {
    T::try_from(v).unwrap_or_default()
}

fn task_from_row(row: &PgRow) -> Result<OtaTaskRecord, StoreError> {
    let status: String = row.try_get(6)?;
    Ok(OtaTaskRecord {
        job_id: row.try_get(0)?,
        thing_id: row.try_get(1)?,
        seq: from_db(row.try_get(2)?),
        attempt: small(row.try_get(3)?),
        task_id: row.try_get(4)?,
        client_token: row.try_get(5)?,
        status: state_from(&status)?,
        progress: row.try_get::<Option<i64>, _>(7)?.map(small),
        err_code: row.try_get::<Option<i64>, _>(8)?.map(small),
        err_msg: row.try_get(9)?,
        deadline: row.try_get::<Option<i64>, _>(10)?.map(from_db),
        transitions: small(row.try_get(11)?),
        updated_at: from_db(row.try_get(12)?),
    })
}

/// `($1, $2, ..), ($8, ..)`: `rows` rows of `columns` numbered placeholders.
fn numbered(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn missing_things(tx: &mut WriteTx<'_>, things: &[String]) -> Result<Vec<String>, TxError> {
    let mut missing = Vec::new();
    for chunk in things.chunks(CHUNK) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT thing_id FROM things WHERE thing_id IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for t in chunk {
            q = q.bind(t);
        }
        let found: std::collections::HashSet<String> =
            q.fetch_all(tx.conn()?).await?.into_iter().collect();
        missing.extend(chunk.iter().filter(|t| !found.contains(*t)).cloned());
    }
    Ok(missing)
}

async fn insert_tasks(tx: &mut WriteTx<'_>, job: &NewOtaJob) -> Result<(), TxError> {
    let queued = OtaTaskState::Queued.as_str();
    for (c, chunk) in job.things.chunks(CHUNK).enumerate() {
        // Every task starts queued, attempt 1, with one transition (n = 0) recorded.
        let sql = format!(
            "INSERT INTO ota_tasks (job_id, thing_id, seq, attempt, task_id, client_token, status, \
               transitions, updated_at) VALUES {}",
            numbered(chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for (i, thing) in chunk.iter().enumerate() {
            let seq = (c * CHUNK + i) as i64;
            q = q
                .bind(&job.job_id)
                .bind(thing)
                .bind(seq)
                .bind(1_i64)
                .bind(crate::ota::task_id(&job.job_id, 1))
                .bind(crate::ota::client_token())
                .bind(queued)
                .bind(1_i64)
                .bind(to_db(job.created_at));
        }
        q.execute(tx.conn()?).await?;
        let sql = format!(
            "INSERT INTO ota_transitions (job_id, thing_id, n, attempt, to_status, at) VALUES {}",
            numbered(chunk.len(), 6)
        );
        let mut q = sqlx::query(&sql);
        for thing in chunk {
            q = q
                .bind(&job.job_id)
                .bind(thing)
                .bind(0_i64)
                .bind(1_i64)
                .bind(queued)
                .bind(to_db(job.created_at));
        }
        q.execute(tx.conn()?).await?;
    }
    Ok(())
}

/// The reads of [`OtaStore`], each run under the operation deadline by the trait methods.
impl PgStore {
    async fn read_ota_job(&self, job_id: &str) -> Result<Option<OtaJobRecord>, StoreError> {
        // One read transaction: the job and its counts come from the same snapshot.
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let row = sqlx::query(
            "SELECT task_type, version, md5, sha256, content_type, content_length, file_url, \
               target_query, max_per_minute, timeout_ms, retries, status, created_at, updated_at \
             FROM ota_jobs WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let counted =
            sqlx::query("SELECT status, COUNT(*) FROM ota_tasks WHERE job_id = $1 GROUP BY status")
                .bind(job_id)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut counts = OtaCounts::default();
        for c in &counted {
            let status: String = c.try_get(0)?;
            *counts.get_mut(state_from(&status)?) = from_db(c.try_get(1)?);
        }
        let status: String = row.try_get(11)?;
        Ok(Some(OtaJobRecord {
            job_id: job_id.to_owned(),
            template: OtaTemplate {
                task_type: row.try_get(0)?,
                version: row.try_get(1)?,
                md5: row.try_get(2)?,
                sha256: row.try_get(3)?,
                content_type: row.try_get(4)?,
                content_length: row.try_get::<Option<i64>, _>(5)?.map(from_db),
                file_url: row.try_get(6)?,
            },
            target_query: row.try_get(7)?,
            settings: OtaJobSettings {
                max_per_minute: small(row.try_get(8)?),
                timeout_ms: from_db(row.try_get(9)?),
                retries: small(row.try_get(10)?),
            },
            status: OtaJobStatus::parse(&status).ok_or_else(|| corrupt("job status", &status))?,
            created_at: from_db(row.try_get(12)?),
            updated_at: from_db(row.try_get(13)?),
            counts,
        }))
    }

    async fn read_ota_running_jobs(&self) -> Result<Vec<String>, StoreError> {
        let ids = sqlx::query_scalar(
            "SELECT job_id FROM ota_jobs WHERE status = $1 ORDER BY created_at, job_id",
        )
        .bind(OtaJobStatus::Running.as_str())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(ids)
    }

    async fn read_ota_open_tasks(&self, job_id: &str) -> Result<Vec<OtaTaskRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM ota_tasks WHERE job_id = $1 AND status IN ($2, $3, $4) ORDER BY seq"
        ))
        .bind(job_id)
        .bind(OtaTaskState::Queued.as_str())
        .bind(OtaTaskState::Sent.as_str())
        .bind(OtaTaskState::Ongoing.as_str())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn read_ota_tasks_page(
        &self,
        job_id: &str,
        status: Option<OtaTaskState>,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<OtaTaskRecord>), StoreError> {
        let size = page_size.min(MAX_TASK_PAGE);
        let offset = page_index.saturating_mul(size);
        // `$2 IS NULL OR status = $2` keeps one statement for both cases.
        let status = status.map(|s| s.as_str());
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ota_tasks WHERE job_id = $1 AND ($2::text IS NULL OR status = $2::text)",
        )
        .bind(job_id)
        .bind(status)
        .fetch_one(&mut *tx)
        .await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM ota_tasks WHERE job_id = $1 AND ($2::text IS NULL OR status = $2::text) \
              ORDER BY seq LIMIT $3 OFFSET $4"
        ))
        .bind(job_id)
        .bind(status)
        .bind(to_db(size))
        .bind(to_db(offset))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
        Ok((from_db(total), tasks))
    }

    async fn read_ota_task(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<Option<(OtaTaskRecord, Vec<OtaTransition>)>, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM ota_tasks WHERE job_id = $1 AND thing_id = $2"
        ))
        .bind(job_id)
        .bind(thing_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT attempt, from_status, to_status, at, err_code FROM ota_transitions \
             WHERE job_id = $1 AND thing_id = $2 ORDER BY n",
        )
        .bind(job_id)
        .bind(thing_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut transitions = Vec::with_capacity(rows.len());
        for r in &rows {
            let from: Option<String> = r.try_get(1)?;
            let to: String = r.try_get(2)?;
            transitions.push(OtaTransition {
                attempt: small(r.try_get(0)?),
                from: from.as_deref().map(state_from).transpose()?,
                to: state_from(&to)?,
                at: from_db(r.try_get(3)?),
                err_code: r.try_get::<Option<i64>, _>(4)?.map(small),
            });
        }
        Ok(Some((task_from_row(&row)?, transitions)))
    }
}

#[async_trait::async_trait]
impl OtaStore for PgStore {
    async fn create_ota_job(&self, job: &NewOtaJob) -> Result<Result<(), Vec<String>>, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Ota).await?;
            let missing = missing_things(&mut tx, &job.things).await?;
            if !missing.is_empty() {
                tx.rollback().await?;
                return Ok(Err(missing));
            }
            let t = &job.template;
            let s = &job.settings;
            sqlx::query(
                "INSERT INTO ota_jobs (job_id, task_type, version, md5, sha256, content_type, \
               content_length, file_url, target_query, max_per_minute, timeout_ms, retries, \
               status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
            )
            .bind(&job.job_id)
            .bind(&t.task_type)
            .bind(&t.version)
            .bind(&t.md5)
            .bind(&t.sha256)
            .bind(&t.content_type)
            .bind(t.content_length.map(to_db))
            .bind(&t.file_url)
            .bind(&job.target_query)
            .bind(i64::from(s.max_per_minute))
            .bind(to_db(s.timeout_ms))
            .bind(i64::from(s.retries))
            .bind(OtaJobStatus::Running.as_str())
            .bind(to_db(job.created_at))
            .execute(tx.conn()?)
            .await?;
            insert_tasks(&mut tx, job).await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await
    }

    async fn ota_job(&self, job_id: &str) -> Result<Option<OtaJobRecord>, StoreError> {
        deadline(self.read_ota_job(job_id)).await
    }

    async fn ota_running_jobs(&self) -> Result<Vec<String>, StoreError> {
        deadline(self.read_ota_running_jobs()).await
    }

    async fn ota_open_tasks(&self, job_id: &str) -> Result<Vec<OtaTaskRecord>, StoreError> {
        deadline(self.read_ota_open_tasks(job_id)).await
    }

    async fn ota_tasks_page(
        &self,
        job_id: &str,
        status: Option<OtaTaskState>,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<OtaTaskRecord>), StoreError> {
        deadline(self.read_ota_tasks_page(job_id, status, page_index, page_size)).await
    }

    async fn ota_task(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<Option<(OtaTaskRecord, Vec<OtaTransition>)>, StoreError> {
        deadline(self.read_ota_task(job_id, thing_id)).await
    }

    async fn ota_write(
        &self,
        tasks: &[OtaTaskWrite],
        jobs: &[(String, OtaJobStatus, u64)],
    ) -> Result<(), StoreError> {
        if tasks.is_empty() && jobs.is_empty() {
            return Ok(());
        }
        self.writing(|| async move {
        let mut tx = self.begin_write(Writer::Ota).await?;
        for w in tasks {
            let r = &w.record;
            let done = sqlx::query(
                "UPDATE ota_tasks SET attempt = $3, task_id = $4, client_token = $5, status = $6, \
                   progress = $7, err_code = $8, err_msg = $9, deadline = $10, transitions = $11, \
                   updated_at = $12 \
                 WHERE job_id = $1 AND thing_id = $2",
            )
            .bind(&r.job_id)
            .bind(&r.thing_id)
            .bind(i64::from(r.attempt))
            .bind(&r.task_id)
            .bind(&r.client_token)
            .bind(r.status.as_str())
            .bind(r.progress.map(i64::from))
            .bind(r.err_code.map(i64::from))
            .bind(&r.err_msg)
            .bind(r.deadline.map(to_db))
            .bind(i64::from(r.transitions))
            .bind(to_db(r.updated_at))
            .execute(tx.conn()?)
            .await?;
            if done.rows_affected() == 0 {
                tracing::debug!(job = %r.job_id, thing = %r.thing_id, "ota task row gone (thing deleted)");
                continue;
            }
            if let Some(t) = &w.transition {
                sqlx::query(
                    "INSERT INTO ota_transitions \
                       (job_id, thing_id, n, attempt, from_status, to_status, at, err_code) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&r.job_id)
                .bind(&r.thing_id)
                .bind(i64::from(r.transitions.saturating_sub(1)))
                .bind(i64::from(t.attempt))
                .bind(t.from.map(|s| s.as_str()))
                .bind(t.to.as_str())
                .bind(to_db(t.at))
                .bind(t.err_code.map(i64::from))
                .execute(tx.conn()?)
                .await?;
            }
        }
        for (job_id, status, at) in jobs {
            sqlx::query("UPDATE ota_jobs SET status = $2, updated_at = $3 WHERE job_id = $1")
                .bind(job_id)
                .bind(status.as_str())
                .bind(to_db(*at))
                .execute(tx.conn()?)
                .await?;
        }
        tx.commit().await
        })
        .await
    }
}
