//! Configurations (S-11): named desired-state patches applied to every thing a query targets,
//! now and as things come to match later.
//!
//! - [`plan`]: which configuration owns which key on a thing (priority, then name; D-48).
//! - [`pace`]: the rate limit of applying (D-50).
//! - [`engine`]: the sweep loop that applies plans through the shadow pipeline, records what it
//!   applied in the store and publishes the counts (D-49, D-50).
//! - this file: the service behind `/api/v1/configurations` (validation, D-47) and the live
//!   counts.
//!
//! The store is the truth: the configurations and, per (configuration, thing), the patch that
//! was applied. The engine loads it at start-up, so a restart (even SIGKILL) re-applies only
//! what was not yet recorded.

pub mod engine;
pub mod pace;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::{MAX_CONFIGURATION_DESIRED, MAX_CONFIGURATIONS};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::query::{Filter, ThingQuery};
use crate::store::configurations::{Configuration, ConfigurationRecord, ConfigurationStore};
use crate::store::{SharedStore, StoreError};

/// Deepest `desired` accepted, as for a shadow request (S-3.9's default).
const MAX_DESIRED_DEPTH: usize = iothub_spec::limits::Limits::DEFAULT.max_json_depth;

/// Why a configuration request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigurationError {
    /// Bad name, condition, desired patch or priority (400).
    #[error("{0}")]
    Invalid(String),
    /// Already [`MAX_CONFIGURATIONS`] configurations (403, as a quota).
    #[error("at most {MAX_CONFIGURATIONS} configurations")]
    TooMany,
    /// No such configuration (404).
    #[error("no such configuration")]
    NotFound,
    /// The name is taken (409).
    #[error("a configuration with this name exists")]
    Exists,
    /// Storage failed or has no configurations (503).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl ConfigurationError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ConfigurationError::Invalid(_) => ErrorCode::BadRequest.as_u16(),
            ConfigurationError::TooMany => ErrorCode::Forbidden.as_u16(),
            ConfigurationError::NotFound => ErrorCode::NotFound.as_u16(),
            ConfigurationError::Exists => ErrorCode::Conflict.as_u16(),
            ConfigurationError::Unavailable(_) => ErrorCode::Unavailable.as_u16(),
        }
    }
}

impl From<StoreError> for ConfigurationError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ConfigurationError::NotFound,
            StoreError::AlreadyExists => ConfigurationError::Exists,
            other => ConfigurationError::Unavailable(other.to_string()),
        }
    }
}

/// What a configuration is doing, per status of its targeted things (S-11.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Things the target condition matches now.
    pub targeted: u64,
    /// Targeted things whose patch is in their desired state.
    pub applied: u64,
    /// Targeted things whose success condition holds.
    pub succeeded: u64,
    /// Targeted things whose patch the shadow pipeline refused.
    pub failed: u64,
    /// Targeted things not yet applied nor failed.
    pub pending: u64,
}

/// A configuration to create or replace, as the API received it.
#[derive(Debug, Clone)]
pub struct ConfigurationSpec {
    /// Target condition (`WHERE` part of an S-9.4 query).
    pub target: String,
    /// Priority (default 0).
    pub priority: i64,
    /// The desired-state patch.
    pub desired: Map<String, Value>,
    /// Success condition.
    pub success: Option<String>,
    /// Delete the keys from `desired` when a thing stops matching.
    pub remove_on_unmatch: bool,
}

/// Parses a condition as the `WHERE` of `SELECT * FROM things` (D-47): a filter, no `ORDER BY`.
pub fn condition(text: &str, what: &str) -> Result<Filter, ConfigurationError> {
    let query = ThingQuery::parse(&format!("SELECT * FROM things WHERE {text}"))
        .map_err(|e| ConfigurationError::Invalid(format!("{what}: {e}")))?;
    match query.filter {
        Some(filter) if query.order.is_empty() => Ok(filter),
        _ => Err(ConfigurationError::Invalid(format!(
            "{what}: a condition only, without ORDER BY"
        ))),
    }
}

/// The query of the things `c` targets and, with `success`, of those where it also succeeded.
pub fn target_query(c: &Configuration, success: bool) -> Result<ThingQuery, ConfigurationError> {
    let mut filter = condition(&c.target, "targetCondition")?;
    if success {
        let Some(s) = &c.success else {
            return Err(ConfigurationError::Invalid("no successCondition".into()));
        };
        let s = condition(s, "successCondition")?;
        filter = Filter::And(Box::new(filter), Box::new(s));
    }
    Ok(ThingQuery {
        filter: Some(filter),
        order: Vec::new(),
    })
}

/// Checks a request (D-47) and builds the stored configuration.
fn validate(
    name: &str,
    spec: ConfigurationSpec,
    created_at: u64,
    now: u64,
) -> Result<Configuration, ConfigurationError> {
    if !iothub_spec::ids::is_valid_thing_id(name) {
        return Err(ConfigurationError::Invalid(
            "name must be 1 to 64 characters of [0-9A-Za-z_-]".into(),
        ));
    }
    if spec.desired.is_empty() {
        return Err(ConfigurationError::Invalid(
            "desired must not be empty".into(),
        ));
    }
    let text = Value::Object(spec.desired.clone()).to_string();
    if text.len() > MAX_CONFIGURATION_DESIRED {
        return Err(ConfigurationError::Invalid(format!(
            "desired is over {MAX_CONFIGURATION_DESIRED} bytes"
        )));
    }
    if iothub_spec::limits::json_depth_exceeds(text.as_bytes(), MAX_DESIRED_DEPTH) {
        return Err(ConfigurationError::Invalid(format!(
            "desired is deeper than {MAX_DESIRED_DEPTH} levels"
        )));
    }
    let c = Configuration {
        name: name.to_owned(),
        target: spec.target,
        priority: spec.priority,
        desired: spec.desired,
        success: spec.success,
        remove_on_unmatch: spec.remove_on_unmatch,
        created_at,
        updated_at: now,
    };
    target_query(&c, false)?;
    if c.success.is_some() {
        target_query(&c, true)?;
    }
    Ok(c)
}

/// The service behind the REST routes. Cheap to clone.
#[derive(Clone)]
pub struct Configurations {
    store: SharedStore,
    /// Wakes the engine: a configuration changed, or a thing was created or re-tagged.
    wake: Arc<Notify>,
    counts: Arc<RwLock<BTreeMap<String, Counts>>>,
}

impl Configurations {
    /// The service over `store`; `wake` is the notification the engine listens to.
    pub fn new(store: SharedStore, wake: Arc<Notify>) -> Configurations {
        Configurations {
            store,
            wake,
            counts: Arc::default(),
        }
    }

    fn db(&self) -> Result<&dyn ConfigurationStore, ConfigurationError> {
        self.store.configurations().ok_or_else(|| {
            ConfigurationError::Unavailable("this store keeps no configurations".into())
        })
    }

    /// Creates a configuration; the engine starts applying it at once.
    pub async fn create(
        &self,
        name: &str,
        spec: ConfigurationSpec,
        now: u64,
    ) -> Result<(Configuration, Counts), ConfigurationError> {
        let c = validate(name, spec, now, now)?;
        let db = self.db()?;
        if db.configurations().await?.len() >= MAX_CONFIGURATIONS {
            return Err(ConfigurationError::TooMany);
        }
        db.create_configuration(&c).await?;
        tracing::info!(configuration = %c.name, "configuration created");
        self.wake.notify_one();
        Ok((c, Counts::default()))
    }

    /// Replaces a configuration's target, priority, patch and conditions.
    pub async fn update(
        &self,
        name: &str,
        spec: ConfigurationSpec,
        now: u64,
    ) -> Result<(Configuration, Counts), ConfigurationError> {
        let db = self.db()?;
        let old = db
            .configuration(name)
            .await?
            .ok_or(ConfigurationError::NotFound)?;
        let c = validate(name, spec, old.created_at, now)?;
        db.update_configuration(&c).await?;
        tracing::info!(configuration = %c.name, "configuration replaced");
        self.wake.notify_one();
        let counts = self.counts(name);
        Ok((c, counts))
    }

    /// Deletes a configuration and its records; values it applied stay (D-49).
    pub async fn delete(&self, name: &str) -> Result<(), ConfigurationError> {
        self.db()?.delete_configuration(name).await?;
        self.counts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        tracing::info!(configuration = %name, "configuration deleted");
        self.wake.notify_one();
        Ok(())
    }

    /// One configuration with its counts.
    pub async fn get(&self, name: &str) -> Result<(Configuration, Counts), ConfigurationError> {
        let c = self
            .db()?
            .configuration(name)
            .await?
            .ok_or(ConfigurationError::NotFound)?;
        let counts = self.counts(name);
        Ok((c, counts))
    }

    /// Every configuration with its counts, by name.
    pub async fn list(&self) -> Result<Vec<(Configuration, Counts)>, ConfigurationError> {
        let all = self.db()?.configurations().await?;
        Ok(all
            .into_iter()
            .map(|c| {
                let n = self.counts(&c.name);
                (c, n)
            })
            .collect())
    }

    /// Which configuration applied which keys on `thing`.
    pub async fn thing_records(
        &self,
        thing: &str,
    ) -> Result<Vec<ConfigurationRecord>, ConfigurationError> {
        Ok(self.db()?.thing_configuration_records(thing).await?)
    }

    /// The counts of the last sweep (zeros before the first).
    pub fn counts(&self, name: &str) -> Counts {
        self.counts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// Replaces the counts (by the engine, after each sweep).
    fn publish_counts(&self, counts: BTreeMap<String, Counts>) {
        *self.counts.write().unwrap_or_else(PoisonError::into_inner) = counts;
    }
}
