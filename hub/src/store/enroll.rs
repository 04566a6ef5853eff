//! Durable state of provisioning (S-10): enrollments and which serial got which thing.
//!
//! Both backends implement [`EnrollmentStore`] (`sqlite/enroll.rs`, `postgres/enroll.rs`) with
//! the statements below, which are plain SQL with `$N` placeholders that both accept. The one
//! write that matters, [`EnrollmentStore::provision`], counts the use, records the serial and
//! creates or re-keys the thing in ONE transaction (D-45): it either all happened or none of it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{NewThing, StoreError};

/// Largest page of [`EnrollmentStore::list_enrollments`].
pub const MAX_ENROLLMENT_PAGE: u64 = 1000;

/// What a provisioned thing starts as (S-10.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingTemplate {
    /// Tags of every thing provisioned; `serial`, `enrollment` and `attributes` are added.
    #[serde(default)]
    pub tags: Map<String, Value>,
    /// Initial desired state of the `default` shadow, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    /// Whether provisioned things may connect.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for ThingTemplate {
    fn default() -> Self {
        ThingTemplate {
            tags: Map::new(),
            desired: None,
            enabled: true,
        }
    }
}

/// How the thing id of a provisioned device is chosen (D-44).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum IdRule {
    /// The hub picks a random id.
    #[default]
    Generated,
    /// The requested id must start with this prefix (default: prefix + serial).
    Prefix(String),
    /// The requested id must match this pattern, `*` standing for any run of id characters.
    Pattern(String),
}

/// An enrollment as stored, without its claim secret's hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentRecord {
    /// The enrollment's id (thing id rule).
    pub enrollment_id: String,
    /// What provisioned things start as.
    pub template: ThingTemplate,
    /// How their ids are chosen.
    pub id_rule: IdRule,
    /// Most new things it may provision; `None` for no limit.
    pub max_uses: Option<u64>,
    /// New things it has provisioned (re-provisioning a serial does not count).
    pub uses: u64,
    /// After this time (ms) it provisions nothing; `None` for never.
    pub expires_at: Option<u64>,
    /// A disabled enrollment provisions nothing.
    pub enabled: bool,
    /// Creation time, ms.
    pub created_at: u64,
}

/// Changes to an enrollment (`PATCH`); `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnrollmentPatch {
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New maximum (`Some(None)` removes it).
    pub max_uses: Option<Option<u64>>,
    /// New expiry (`Some(None)` removes it).
    pub expires_at: Option<Option<u64>>,
}

/// One provisioning to store (see [`EnrollmentStore::provision`]).
#[derive(Debug, Clone)]
pub struct Provisioning<'a> {
    /// The enrollment.
    pub enrollment_id: &'a str,
    /// The device's serial.
    pub serial: &'a str,
    /// The thing to create when the serial is new; for a known serial only its
    /// `password_hash` is used (the thing keeps its id, tags and flag).
    pub thing: &'a NewThing,
    /// Now, ms: the creation time, and the expiry check.
    pub now: u64,
    /// The storage body of the new thing's `default` shadow at version 1 (the template's
    /// initial desired state, S-10.4), written in the same transaction; unused for a known serial.
    pub initial_shadow: Option<&'a str>,
}

/// What [`EnrollmentStore::provision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionOutcome {
    /// A new thing with this id was created and a use counted.
    Created(String),
    /// The serial's existing thing got the new secret.
    Rekeyed(String),
    /// The enrollment is gone, disabled, expired or out of uses (nothing written).
    Refused,
    /// The thing id is taken by a thing this serial did not provision (nothing written).
    IdTaken,
}

/// Durable enrollments. Writes are durable when they return `Ok`.
#[async_trait::async_trait]
pub trait EnrollmentStore: Send + Sync {
    /// Creates an enrollment with 0 uses; [`StoreError::AlreadyExists`] if the id is taken.
    async fn create_enrollment(
        &self,
        e: &EnrollmentRecord,
        claim_hash: &str,
    ) -> Result<(), StoreError>;

    /// The enrollment and its claim secret's hash.
    async fn enrollment(&self, id: &str) -> Result<Option<(EnrollmentRecord, String)>, StoreError>;

    /// One page of enrollments by id, and their total.
    async fn list_enrollments(
        &self,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<EnrollmentRecord>), StoreError>;

    /// Applies `patch` and returns the result; [`StoreError::NotFound`] if absent.
    async fn update_enrollment(
        &self,
        id: &str,
        patch: &EnrollmentPatch,
    ) -> Result<EnrollmentRecord, StoreError>;

    /// Deletes an enrollment and its serials (things stay); [`StoreError::NotFound`] if absent.
    async fn delete_enrollment(&self, id: &str) -> Result<(), StoreError>;

    /// The thing a serial was provisioned as, if any.
    async fn serial_thing(
        &self,
        enrollment: &str,
        serial: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Provisions in one transaction (D-45): a serial whose thing still exists gets the new
    /// secret; otherwise, if the enrollment is enabled, unexpired and has uses left, a use is
    /// counted, the thing created and the serial recorded.
    async fn provision(&self, p: &Provisioning<'_>) -> Result<ProvisionOutcome, StoreError>;
}

/// Columns of [`EnrollmentRecord`] (and the hash last), in the order the backends read them.
pub(crate) const ENROLLMENT_COLS: &str = "enrollment_id, template, id_rule, max_uses, uses, \
     expires_at, enabled, created_at, claim_hash";

/// Statements shared by both backends.
pub(crate) mod sql {
    /// Insert an enrollment; affects 0 rows if the id exists.
    pub const INSERT: &str = "INSERT INTO enrollments (enrollment_id, template, id_rule, \
         max_uses, uses, expires_at, enabled, created_at, claim_hash) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8) ON CONFLICT (enrollment_id) DO NOTHING";
    /// Patch an enrollment: `$2`/`$4`/`$6` say whether to set `enabled`/`max_uses`/`expires_at`.
    pub const UPDATE: &str = "UPDATE enrollments SET \
         enabled = CASE WHEN $2 THEN $3 ELSE enabled END, \
         max_uses = CASE WHEN $4 THEN $5 ELSE max_uses END, \
         expires_at = CASE WHEN $6 THEN $7 ELSE expires_at END \
         WHERE enrollment_id = $1";
    /// Delete an enrollment (its serials cascade).
    pub const DELETE: &str = "DELETE FROM enrollments WHERE enrollment_id = $1";
    /// Count enrollments.
    pub const COUNT: &str = "SELECT COUNT(*) FROM enrollments";
    /// The serial's thing.
    pub const SERIAL: &str =
        "SELECT thing_id FROM enrollment_serials WHERE enrollment_id = $1 AND serial = $2";
    /// New secret for an existing thing.
    pub const REKEY: &str = "UPDATE things SET password_hash = $2 WHERE thing_id = $1";
    /// Count a use if the enrollment may still provision.
    pub const USE: &str = "UPDATE enrollments SET uses = uses + 1 WHERE enrollment_id = $1 \
         AND enabled = TRUE AND (max_uses IS NULL OR uses < max_uses) \
         AND (expires_at IS NULL OR expires_at > $2)";
    /// Record (or move) the serial's thing.
    pub const RECORD_SERIAL: &str = "INSERT INTO enrollment_serials \
         (enrollment_id, serial, thing_id, provisioned_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (enrollment_id, serial) DO UPDATE SET thing_id = $3, provisioned_at = $4";
    /// The new thing's first shadow (`thing_id`, `name`, `body`, `updated_at`).
    pub const INITIAL_SHADOW: &str = "INSERT INTO shadows (thing_id, name, version, body, updated_at) \
         VALUES ($1, $2, 1, $3, $4)";
}

/// JSON text of a stored column.
pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("enrollment: {e}")))
}

/// A stored JSON column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    id: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Unavailable(format!("corrupt enrollment {id}: {e}")))
}
