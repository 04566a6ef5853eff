//! Enrollment CRUD for `/api/v1/enrollments` (D-46): validation at the edge, the claim secret
//! generated (or taken), hashed and shown once.

use iothub_spec::ids::{CLAIM_USER_PREFIX, is_valid_thing_id};

use super::Provisioner;
use super::id_rule::is_valid_rule;
use crate::auth::{self, SecretOrigin};
use crate::clock::now_ms;
use crate::store::StoreError;
use crate::store::enroll::{
    EnrollmentPatch, EnrollmentRecord, EnrollmentStore, IdRule, MAX_ENROLLMENT_PAGE, ThingTemplate,
};
use crate::things::{MAX_PASSWORD_LEN, check_tags};

/// Why an enrollment operation failed; [`EnrollError::status`] gives the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The id does not follow the thing id rule (S-1.1).
    #[error("invalid enrollmentId: must match ^[0-9A-Za-z_-]{{1,64}}$")]
    InvalidId,
    /// The id rule's prefix or pattern can never give a valid thing id.
    #[error("invalid idRule: prefix or pattern of thing id characters ('*' in a pattern)")]
    InvalidRule,
    /// The template's tags or desired state are over the tags limits.
    #[error("invalid template: {0}")]
    InvalidTemplate(String),
    /// The claim secret given is empty or too long.
    #[error("invalid claimSecret: must be 1 to {MAX_PASSWORD_LEN} bytes")]
    InvalidSecret,
    /// Paging out of range.
    #[error("invalid paging: pageSize must be 1 to {MAX_ENROLLMENT_PAGE}")]
    InvalidPaging,
    /// No such enrollment.
    #[error("enrollment not found")]
    NotFound,
    /// The id is taken.
    #[error("enrollment already exists")]
    AlreadyExists,
    /// The store failed; retry later.
    #[error("storage unavailable")]
    Unavailable,
}

impl EnrollError {
    /// The HTTP status (S-9.1).
    pub fn status(&self) -> u16 {
        match self {
            EnrollError::InvalidId
            | EnrollError::InvalidRule
            | EnrollError::InvalidTemplate(_)
            | EnrollError::InvalidSecret
            | EnrollError::InvalidPaging => 400,
            EnrollError::NotFound => 404,
            EnrollError::AlreadyExists => 409,
            EnrollError::Unavailable => 503,
        }
    }
}

impl From<StoreError> for EnrollError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => EnrollError::NotFound,
            StoreError::AlreadyExists => EnrollError::AlreadyExists,
            other => {
                tracing::warn!(error = %other, "enrollment store failure");
                EnrollError::Unavailable
            }
        }
    }
}

/// An enrollment to create.
#[derive(Debug, Clone, Default)]
pub struct CreateEnrollment {
    /// Its id.
    pub enrollment_id: String,
    /// What provisioned things start as.
    pub template: ThingTemplate,
    /// How their ids are chosen.
    pub id_rule: IdRule,
    /// Most new things; `None` for no limit.
    pub max_uses: Option<u64>,
    /// Expiry, ms; `None` for never.
    pub expires_at: Option<u64>,
    /// Whether it provisions (default true at the REST layer).
    pub enabled: bool,
    /// The claim secret; generated when `None`.
    pub claim_secret: Option<String>,
}

/// A created enrollment and its claim secret, shown this once.
#[derive(Clone)]
pub struct CreatedEnrollment {
    /// The stored enrollment.
    pub enrollment: EnrollmentRecord,
    /// The claim secret in clear: hand it to the caller, never log it.
    pub claim_secret: String,
}

impl std::fmt::Debug for CreatedEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedEnrollment")
            .field("enrollment", &self.enrollment)
            .field("claim_secret", &"<redacted>")
            .finish()
    }
}

impl Provisioner {
    fn enrollment_store(&self) -> Result<&dyn EnrollmentStore, EnrollError> {
        self.store().enrollments().ok_or(EnrollError::Unavailable)
    }

    /// Forgets the cached claim secret of `id` (its enrollment was replaced or removed).
    fn forget_claim(&self, id: &str) {
        self.credentials()
            .forget(&format!("{CLAIM_USER_PREFIX}{id}"));
    }

    /// Creates an enrollment (`POST /enrollments`).
    pub async fn create_enrollment(
        &self,
        req: CreateEnrollment,
    ) -> Result<CreatedEnrollment, EnrollError> {
        if !is_valid_thing_id(&req.enrollment_id) {
            return Err(EnrollError::InvalidId);
        }
        if !is_valid_rule(&req.id_rule) {
            return Err(EnrollError::InvalidRule);
        }
        check_tags(&req.template.tags).map_err(|e| EnrollError::InvalidTemplate(e.to_string()))?;
        if let Some(desired) = &req.template.desired {
            check_tags(desired).map_err(|e| EnrollError::InvalidTemplate(e.to_string()))?;
        }
        let (secret, origin) = match req.claim_secret {
            Some(s) if s.is_empty() || s.len() > MAX_PASSWORD_LEN => {
                return Err(EnrollError::InvalidSecret);
            }
            Some(s) => (s, SecretOrigin::Chosen),
            None => (auth::generate_secret(), SecretOrigin::Generated),
        };
        let to_hash = secret.clone();
        let hash = tokio::task::spawn_blocking(move || auth::hash_password(&to_hash, origin))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(EnrollError::Unavailable)?;
        let enrollment = EnrollmentRecord {
            enrollment_id: req.enrollment_id,
            template: req.template,
            id_rule: req.id_rule,
            max_uses: req.max_uses,
            uses: 0,
            expires_at: req.expires_at,
            enabled: req.enabled,
            created_at: now_ms(),
        };
        self.enrollment_store()?
            .create_enrollment(&enrollment, &hash)
            .await?;
        self.forget_claim(&enrollment.enrollment_id);
        Ok(CreatedEnrollment {
            enrollment,
            claim_secret: secret,
        })
    }

    /// One enrollment (`GET /enrollments/{id}`).
    pub async fn get_enrollment(&self, id: &str) -> Result<EnrollmentRecord, EnrollError> {
        if !is_valid_thing_id(id) {
            return Err(EnrollError::NotFound);
        }
        let found = self.enrollment_store()?.enrollment(id).await?;
        found.map(|(e, _)| e).ok_or(EnrollError::NotFound)
    }

    /// A page of enrollments and their total (`GET /enrollments`).
    pub async fn list_enrollments(
        &self,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<EnrollmentRecord>), EnrollError> {
        if page_size == 0 || page_size > MAX_ENROLLMENT_PAGE {
            return Err(EnrollError::InvalidPaging);
        }
        Ok(self
            .enrollment_store()?
            .list_enrollments(page_index, page_size)
            .await?)
    }

    /// Changes `enabled`, `maxUses` or `expiresAt` (`PATCH /enrollments/{id}`).
    pub async fn update_enrollment(
        &self,
        id: &str,
        patch: &EnrollmentPatch,
    ) -> Result<EnrollmentRecord, EnrollError> {
        if !is_valid_thing_id(id) {
            return Err(EnrollError::NotFound);
        }
        Ok(self
            .enrollment_store()?
            .update_enrollment(id, patch)
            .await?)
    }

    /// Removes an enrollment (`DELETE /enrollments/{id}`); its things stay.
    pub async fn delete_enrollment(&self, id: &str) -> Result<(), EnrollError> {
        if !is_valid_thing_id(id) {
            return Err(EnrollError::NotFound);
        }
        self.enrollment_store()?.delete_enrollment(id).await?;
        self.forget_claim(id);
        Ok(())
    }
}
