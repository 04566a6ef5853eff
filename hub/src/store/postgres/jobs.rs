//! [`JobStore`] on PostgreSQL: the shared statements and helpers of `store/jobs.rs` (as SQLite
//! runs them), under the operation deadline and the write retry of `write.rs`.

use iothub_spec::code::{JobStatus, JobThingState};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PgStore, deadline};
use crate::store::fault::Writer;
use crate::store::jobs::{
    Db, JobRecord, JobStore, JobThingRecord, MAX_JOB_PAGE, Query, count_from_row, end_job,
    insert_job, insert_things, job_from_row, sql, thing_chunks, thing_from_row, things_page_sql,
    update_thing, with_args,
};
use crate::store::{StoreError, from_db};

impl Db for sqlx::Postgres {
    fn text<'q>(q: Query<'q, Self>, v: Option<String>) -> Query<'q, Self> {
        q.bind(v)
    }
    fn int<'q>(q: Query<'q, Self>, v: Option<i64>) -> Query<'q, Self> {
        q.bind(v)
    }
    fn get_text(row: &PgRow, i: usize) -> Result<Option<String>, StoreError> {
        Ok(row.try_get(i)?)
    }
    fn get_int(row: &PgRow, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(row.try_get(i)?)
    }
}

type P = sqlx::Postgres;

#[async_trait::async_trait]
impl JobStore for PgStore {
    async fn create_job(&self, job: &JobRecord, things: &[String]) -> Result<(), StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let row = with_args::<P>(sql::EXISTS, &[&job.job_id], &[])
                .fetch_one(tx.conn()?)
                .await?;
            if P::get_int(&row, 0)?.unwrap_or(0) > 0 {
                tx.rollback().await?;
                return Err(StoreError::AlreadyExists.into());
            }
            insert_job::<P>(job)?.execute(tx.conn()?).await?;
            for (first, chunk) in thing_chunks(things) {
                let text = sql::insert_things(chunk.len());
                insert_things::<P>(&text, &job.job_id, first, chunk, job.created_at)
                    .execute(tx.conn()?)
                    .await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        deadline(async {
            let text = format!("SELECT {} FROM jobs WHERE job_id = $1", sql::JOB_COLS);
            let row = with_args::<P>(&text, &[job_id], &[])
                .fetch_optional(&mut *self.conn().await?)
                .await?;
            row.as_ref().map(job_from_row::<P>).transpose()
        })
        .await
    }

    async fn jobs(&self, page: u64, page_size: u64) -> Result<(u64, Vec<JobRecord>), StoreError> {
        deadline(async {
            let size = page_size.min(MAX_JOB_PAGE);
            let mut conn = self.conn().await?;
            let total = with_args::<P>("SELECT COUNT(*) FROM jobs", &[], &[])
                .fetch_one(&mut *conn)
                .await?;
            let text = format!(
                "SELECT {} FROM jobs ORDER BY created_at DESC, job_id LIMIT $1 OFFSET $2",
                sql::JOB_COLS
            );
            let rows = with_args::<P>(&text, &[], &[size, page.saturating_mul(size)])
                .fetch_all(&mut *conn)
                .await?;
            let jobs = rows
                .iter()
                .map(job_from_row::<P>)
                .collect::<Result<_, _>>()?;
            Ok((from_db(P::get_int(&total, 0)?.unwrap_or(0)), jobs))
        })
        .await
    }

    async fn open_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        deadline(async {
            let text = format!(
                "SELECT {} FROM jobs WHERE {} ORDER BY created_at, job_id",
                sql::JOB_COLS,
                sql::OPEN
            );
            let rows = sqlx::query(&text)
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(job_from_row::<P>).collect()
        })
        .await
    }

    async fn job_counts(&self, job_id: &str) -> Result<Vec<(JobThingState, u64)>, StoreError> {
        deadline(async {
            let rows = with_args::<P>(sql::COUNTS, &[job_id], &[])
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(count_from_row::<P>).collect()
        })
        .await
    }

    async fn job_things_page(
        &self,
        job_id: &str,
        status: Option<JobThingState>,
        page: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<JobThingRecord>), StoreError> {
        deadline(async {
            let size = page_size.min(MAX_JOB_PAGE);
            let (count, select) = things_page_sql(status.is_some());
            let mut texts = vec![job_id];
            if let Some(s) = status {
                texts.push(s.as_str());
            }
            let mut conn = self.conn().await?;
            let total = with_args::<P>(&count, &texts, &[])
                .fetch_one(&mut *conn)
                .await?;
            let rows = with_args::<P>(&select, &texts, &[size, page.saturating_mul(size)])
                .fetch_all(&mut *conn)
                .await?;
            let things = rows
                .iter()
                .map(thing_from_row::<P>)
                .collect::<Result<_, _>>()?;
            Ok((from_db(P::get_int(&total, 0)?.unwrap_or(0)), things))
        })
        .await
    }

    async fn job_thing(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<Option<JobThingRecord>, StoreError> {
        deadline(async {
            let text = format!(
                "SELECT {} FROM job_things WHERE job_id = $1 AND thing_id = $2",
                sql::THING_COLS
            );
            let row = with_args::<P>(&text, &[job_id, thing_id], &[])
                .fetch_optional(&mut *self.conn().await?)
                .await?;
            row.as_ref().map(thing_from_row::<P>).transpose()
        })
        .await
    }

    async fn open_job_things(&self, job_id: &str) -> Result<Vec<JobThingRecord>, StoreError> {
        deadline(async {
            let text = format!(
                "SELECT {} FROM job_things WHERE job_id = $1 AND {} ORDER BY seq",
                sql::THING_COLS,
                sql::THING_OPEN
            );
            let rows = with_args::<P>(&text, &[job_id], &[])
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(thing_from_row::<P>).collect()
        })
        .await
    }

    async fn write_job_things(
        &self,
        things: &[JobThingRecord],
        jobs: &[(String, JobStatus, Option<u64>)],
    ) -> Result<Vec<bool>, StoreError> {
        if things.is_empty() && jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let mut written = Vec::with_capacity(things.len());
            for t in things {
                let done = update_thing::<P>(t).execute(tx.conn()?).await?;
                written.push(done.rows_affected() > 0);
            }
            for (job, status, at) in jobs {
                end_job::<P>(job, *status, *at).execute(tx.conn()?).await?;
            }
            tx.commit().await?;
            Ok(written)
        })
        .await
    }

    async fn cancel_job(&self, job_id: &str, at: u64) -> Result<bool, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let done = end_job::<P>(job_id, JobStatus::Canceled, Some(at))
                .execute(tx.conn()?)
                .await?;
            if done.rows_affected() == 0 {
                let row = with_args::<P>(sql::EXISTS, &[job_id], &[])
                    .fetch_one(tx.conn()?)
                    .await?;
                let exists = P::get_int(&row, 0)?.unwrap_or(0) > 0;
                tx.rollback().await?;
                return if exists {
                    Ok(false)
                } else {
                    Err(StoreError::NotFound.into())
                };
            }
            with_args::<P>(sql::CANCEL_THINGS, &[job_id], &[at])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn delete_jobs_ended_before(&self, t: u64) -> Result<u64, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let done = with_args::<P>(sql::DELETE_ENDED, &[], &[t])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
