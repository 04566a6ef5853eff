//! [`EnrollmentStore`] on PostgreSQL: the shared statements of `store/enroll.rs`, run under the
//! operation deadline and the write retry of `write.rs`.

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::write::TxError;
use super::{MAX_PAGE_SIZE, PgStore, deadline, from_db, to_db};
use crate::store::StoreError;
use crate::store::enroll::{
    ENROLLMENT_COLS, EnrollmentPatch, EnrollmentRecord, EnrollmentStore, ProvisionOutcome,
    Provisioning, from_json, sql, to_json,
};
use crate::store::fault::Writer;

fn enrollment_from_row(row: &PgRow) -> Result<(EnrollmentRecord, String), StoreError> {
    let id: String = row.try_get(0)?;
    let template: String = row.try_get(1)?;
    let rule: String = row.try_get(2)?;
    Ok((
        EnrollmentRecord {
            template: from_json(&id, &template)?,
            id_rule: from_json(&id, &rule)?,
            max_uses: row.try_get::<Option<i64>, _>(3)?.map(from_db),
            uses: from_db(row.try_get(4)?),
            expires_at: row.try_get::<Option<i64>, _>(5)?.map(from_db),
            enabled: row.try_get(6)?,
            created_at: from_db(row.try_get(7)?),
            enrollment_id: id,
        },
        row.try_get(8)?,
    ))
}

#[async_trait::async_trait]
impl EnrollmentStore for PgStore {
    async fn create_enrollment(
        &self,
        e: &EnrollmentRecord,
        claim_hash: &str,
    ) -> Result<(), StoreError> {
        let template = to_json(&e.template)?;
        let rule = to_json(&e.id_rule)?;
        let (template, rule) = (&template, &rule);
        let done = self
            .writing(|| async move {
                let mut tx = self.begin_write(Writer::Enrollments).await?;
                let done = sqlx::query(sql::INSERT)
                    .bind(&e.enrollment_id)
                    .bind(template)
                    .bind(rule)
                    .bind(e.max_uses.map(to_db))
                    .bind(e.expires_at.map(to_db))
                    .bind(e.enabled)
                    .bind(to_db(e.created_at))
                    .bind(claim_hash)
                    .execute(tx.conn()?)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            })
            .await?;
        match done {
            0 => Err(StoreError::AlreadyExists),
            _ => Ok(()),
        }
    }

    async fn enrollment(&self, id: &str) -> Result<Option<(EnrollmentRecord, String)>, StoreError> {
        deadline(async {
            let sql = format!("SELECT {ENROLLMENT_COLS} FROM enrollments WHERE enrollment_id = $1");
            let row = sqlx::query(&sql)
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
            row.as_ref().map(enrollment_from_row).transpose()
        })
        .await
    }

    async fn list_enrollments(
        &self,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<EnrollmentRecord>), StoreError> {
        let size = page_size.min(MAX_PAGE_SIZE);
        deadline(async {
            let mut conn = self.conn().await?;
            let total: i64 = sqlx::query_scalar(sql::COUNT).fetch_one(&mut *conn).await?;
            let sql = format!(
                "SELECT {ENROLLMENT_COLS} FROM enrollments ORDER BY enrollment_id \
                 LIMIT $1 OFFSET $2"
            );
            let rows = sqlx::query(&sql)
                .bind(to_db(size))
                .bind(to_db(page_index.saturating_mul(size)))
                .fetch_all(&mut *conn)
                .await?;
            let page = rows
                .iter()
                .map(|r| enrollment_from_row(r).map(|(e, _)| e))
                .collect::<Result<_, _>>()?;
            Ok((from_db(total), page))
        })
        .await
    }

    async fn update_enrollment(
        &self,
        id: &str,
        patch: &EnrollmentPatch,
    ) -> Result<EnrollmentRecord, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Enrollments).await?;
            let done = sqlx::query(sql::UPDATE)
                .bind(id)
                .bind(patch.enabled.is_some())
                .bind(patch.enabled.unwrap_or_default())
                .bind(patch.max_uses.is_some())
                .bind(patch.max_uses.flatten().map(to_db))
                .bind(patch.expires_at.is_some())
                .bind(patch.expires_at.flatten().map(to_db))
                .execute(tx.conn()?)
                .await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                return Err(TxError::Fail(StoreError::NotFound));
            }
            let sql = format!("SELECT {ENROLLMENT_COLS} FROM enrollments WHERE enrollment_id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_one(tx.conn()?).await?;
            let (record, _) = enrollment_from_row(&row)?;
            tx.commit().await?;
            Ok(record)
        })
        .await
    }

    async fn delete_enrollment(&self, id: &str) -> Result<(), StoreError> {
        let done = self
            .writing(|| async move {
                let mut tx = self.begin_write(Writer::Enrollments).await?;
                let done = sqlx::query(sql::DELETE)
                    .bind(id)
                    .execute(tx.conn()?)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            })
            .await?;
        match done {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    async fn serial_thing(
        &self,
        enrollment: &str,
        serial: &str,
    ) -> Result<Option<String>, StoreError> {
        deadline(async {
            Ok(sqlx::query_scalar(sql::SERIAL)
                .bind(enrollment)
                .bind(serial)
                .fetch_optional(&mut *self.conn().await?)
                .await?)
        })
        .await
    }

    async fn provision(&self, p: &Provisioning<'_>) -> Result<ProvisionOutcome, StoreError> {
        self.writing(|| async move {
            let mut tx = self.begin_write(Writer::Enrollments).await?;
            let known: Option<String> = sqlx::query_scalar(sql::SERIAL)
                .bind(p.enrollment_id)
                .bind(p.serial)
                .fetch_optional(tx.conn()?)
                .await?;
            if let Some(id) = known {
                let done = sqlx::query(sql::REKEY)
                    .bind(&id)
                    .bind(&p.thing.password_hash)
                    .execute(tx.conn()?)
                    .await?;
                if done.rows_affected() == 1 {
                    tx.commit().await?;
                    return Ok(ProvisionOutcome::Rekeyed(id));
                }
                // The thing was deleted since: provision the serial anew (D-44).
            }
            let used = sqlx::query(sql::USE)
                .bind(p.enrollment_id)
                .bind(to_db(p.now))
                .execute(tx.conn()?)
                .await?;
            if used.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(ProvisionOutcome::Refused);
            }
            let created =
                Self::insert_things(&mut tx, std::slice::from_ref(p.thing), p.now).await?;
            if created.into_iter().next().flatten().is_none() {
                tx.rollback().await?;
                return Ok(ProvisionOutcome::IdTaken);
            }
            if let Some(body) = p.initial_shadow {
                sqlx::query(sql::INITIAL_SHADOW)
                    .bind(&p.thing.thing_id)
                    .bind(iothub_spec::ids::DEFAULT_SHADOW)
                    .bind(body)
                    .bind(to_db(p.now))
                    .execute(tx.conn()?)
                    .await?;
            }
            sqlx::query(sql::RECORD_SERIAL)
                .bind(p.enrollment_id)
                .bind(p.serial)
                .bind(&p.thing.thing_id)
                .bind(to_db(p.now))
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(ProvisionOutcome::Created(p.thing.thing_id.clone()))
        })
        .await
    }
}
