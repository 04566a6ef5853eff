//! Durable state of configurations (S-11): the configurations themselves and, per
//! (configuration, thing), the patch the engine applied ([`crate::configurations`]).
//!
//! The engine is the only writer of the records; it loads them all at start-up, so after a
//! restart (even a SIGKILL) it knows exactly which things already got which keys. The SQLite
//! implementation is in `sqlite/configurations.rs`, PostgreSQL's in `postgres/configurations.rs`;
//! their statements are the same standard SQL with `$N` placeholders.

use serde_json::{Map, Value};

use super::StoreError;

/// A configuration as stored (S-11.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    /// Its name (an S-1.1 id), unique.
    pub name: String,
    /// The target condition: the `WHERE` part of an S-9.4 query.
    pub target: String,
    /// Higher wins a key that several configurations set (D-48).
    pub priority: i64,
    /// The desired-state patch applied to every targeted thing.
    pub desired: Map<String, Value>,
    /// The success condition (a `WHERE` part over the thing), if any.
    pub success: Option<String>,
    /// Whether a thing that stops matching gets its keys deleted from `desired` (D-49).
    pub remove_on_unmatch: bool,
    /// Creation time, ms.
    pub created_at: u64,
    /// Last change, ms.
    pub updated_at: u64,
}

/// Outcome of applying a configuration to one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    /// The patch is in the thing's desired state.
    Applied,
    /// The shadow pipeline refused the patch (e.g. the state would be too large).
    Failed,
}

impl RecordStatus {
    /// The stored (and REST) string.
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Applied => "applied",
            RecordStatus::Failed => "failed",
        }
    }

    /// Parses a stored string.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Applied, Self::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// What one configuration applied to one thing: the keys it owns there and their values.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigurationRecord {
    /// The configuration.
    pub configuration: String,
    /// The thing.
    pub thing_id: String,
    /// Applied or failed.
    pub status: RecordStatus,
    /// The top-level desired keys this configuration owns on this thing, with their values.
    pub patch: Map<String, Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// When, ms.
    pub updated_at: u64,
}

/// Storage of configurations. Every write method is durable when it returns `Ok`.
#[async_trait::async_trait]
pub trait ConfigurationStore: Send + Sync {
    /// Stores a new configuration. [`StoreError::AlreadyExists`] if the name is taken.
    async fn create_configuration(&self, c: &Configuration) -> Result<(), StoreError>;

    /// Replaces a configuration (all fields but `name` and `created_at`).
    /// [`StoreError::NotFound`] if absent.
    async fn update_configuration(&self, c: &Configuration) -> Result<(), StoreError>;

    /// Deletes a configuration and its records. [`StoreError::NotFound`] if absent.
    async fn delete_configuration(&self, name: &str) -> Result<(), StoreError>;

    /// Every configuration, by name.
    async fn configurations(&self) -> Result<Vec<Configuration>, StoreError>;

    /// One configuration, if it exists.
    async fn configuration(&self, name: &str) -> Result<Option<Configuration>, StoreError>;

    /// Every record (loaded by the engine at start-up).
    async fn configuration_records(&self) -> Result<Vec<ConfigurationRecord>, StoreError>;

    /// The records of one thing, by configuration name.
    async fn thing_configuration_records(
        &self,
        thing: &str,
    ) -> Result<Vec<ConfigurationRecord>, StoreError>;

    /// Upserts `put` and deletes `remove` (configuration, thing) in ONE transaction. A record
    /// whose configuration or thing is gone is skipped.
    async fn write_configuration_records(
        &self,
        put: &[ConfigurationRecord],
        remove: &[(String, String)],
    ) -> Result<(), StoreError>;
}
