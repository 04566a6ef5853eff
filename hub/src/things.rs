//! The thing registry service (S-1, S-8.3, S-9.2): creates, lists, enables, disables and deletes
//! things and edits their tags, on top of the [`Store`](crate::store::Store).
//!
//! Side effects happen only after the store has committed, in this order:
//! 1. forget cached credentials ([`CredentialCache::forget`]) and, on delete, cached shadow state
//!    ([`ShadowService::forget_thing`]);
//! 2. close the thing's live connection ([`Bus::disconnect`], S-1.3) on disable and delete;
//! 3. publish the S-8.3 lifecycle event.
//!
//! Secrets (S-1.6) are generated here when the caller gives none, hashed with
//! [`crate::auth::hash_password`] on the blocking pool (argon2 is slow by design), returned once
//! in [`CreatedThing::password`] and never logged or stored in clear.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iothub_spec::code::LifecycleOp;
use iothub_spec::ids::is_valid_thing_id;
use iothub_spec::payload::LifecycleEvent;
use iothub_spec::topic::Topic;
use serde_json::{Map, Value};

use crate::auth::{self, CredentialCache, SecretOrigin};
use crate::bus::{Bus, ThingChange};
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::shadow::ShadowService;
use crate::store::{NewThing, SharedStore, StoreError, ThingRecord};

mod batch;
mod certs;
pub mod merge_patch;
mod validate;

use validate::{check_page, prepare};
pub(crate) use validate::{check_tags, generate_id};

/// Most things in one `POST /things/batch` (S-9.2).
pub const MAX_BATCH: usize = iothub_spec::limits::MAX_BATCH_CREATE;
/// Longest secret accepted from a caller, in bytes.
pub const MAX_PASSWORD_LEN: usize = 256;
/// Largest tags object, as compact JSON, in bytes.
pub const MAX_TAGS_BYTES: usize = 16 * 1024;
/// Deepest nesting of a tags object (the object itself is depth 1).
pub const MAX_TAGS_DEPTH: usize = 8;
/// Largest page of things (`pageSize`).
pub const MAX_PAGE_SIZE: u64 = 1000;
/// Length of generated thing ids.
const GENERATED_ID_LEN: usize = 20;
/// A disable or delete that raced with a CONNECT being authenticated could leave a connection
/// that was accepted just before the store commit; it is closed again after this delay.
const SECOND_DISCONNECT_AFTER: Duration = Duration::from_millis(500);
/// How often an unversioned tags update retries after losing a compare-and-swap race.
const TAGS_CAS_RETRIES: usize = 32;

/// Why a registry operation failed. [`ThingsError::status`] gives the HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ThingsError {
    /// The thingId does not match `^[0-9A-Za-z_-]{1,64}$` (S-1.1).
    #[error("invalid thingId: must match ^[0-9A-Za-z_-]{{1,64}}$")]
    InvalidId,
    /// The supplied secret is empty or too long.
    #[error("invalid password: must be 1 to {MAX_PASSWORD_LEN} bytes")]
    InvalidPassword,
    /// Tags are too large or too deep.
    #[error("invalid tags: {0}")]
    InvalidTags(String),
    /// More than [`MAX_BATCH`] things in one batch.
    #[error("batch larger than {MAX_BATCH} things")]
    BatchTooLarge,
    /// No such thing.
    #[error("thing not found")]
    NotFound,
    /// The thingId is taken (or repeated within a batch).
    #[error("thing already exists")]
    AlreadyExists,
    /// The tags version given is not the current one.
    #[error("tags version conflict")]
    VersionConflict,
    /// Paging parameters out of range.
    #[error("invalid paging: {0}")]
    InvalidPaging(String),
    /// The storage is unavailable; retry later.
    #[error("storage unavailable")]
    Unavailable,
    /// Hashing the secret failed (internal).
    #[error("password hashing failed")]
    Hash,
    /// A certificate to register is not one PEM X.509 certificate (D-82).
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// This store keeps no certificates (test doubles).
    #[error("certificates are not supported by this store")]
    NoCertificates,
}

impl ThingsError {
    /// The HTTP status of this error (S-9.1): never a blanket 500.
    pub fn status(&self) -> u16 {
        match self {
            ThingsError::InvalidId
            | ThingsError::InvalidPassword
            | ThingsError::InvalidTags(_)
            | ThingsError::BatchTooLarge
            | ThingsError::InvalidPaging(_)
            | ThingsError::InvalidCertificate(_) => 400,
            ThingsError::NotFound => 404,
            ThingsError::AlreadyExists | ThingsError::VersionConflict => 409,
            ThingsError::Unavailable | ThingsError::NoCertificates => 503,
            ThingsError::Hash => 500,
        }
    }
}

impl From<StoreError> for ThingsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ThingsError::NotFound,
            StoreError::AlreadyExists => ThingsError::AlreadyExists,
            StoreError::VersionConflict => ThingsError::VersionConflict,
            other => {
                tracing::warn!(error = %other, "registry store failure");
                ThingsError::Unavailable
            }
        }
    }
}

/// What to create (one item of `POST /things` or `/things/batch`).
#[derive(Debug, Clone, Default)]
pub struct CreateThing {
    /// The id; generated when `None`.
    pub thing_id: Option<String>,
    /// The secret; generated when `None`.
    pub password: Option<String>,
    /// Initial tags.
    pub tags: Map<String, Value>,
}

/// A created thing and its secret, shown this one time (S-1.6).
#[derive(Clone)]
pub struct CreatedThing {
    /// The stored thing.
    pub thing: ThingRecord,
    /// The secret in clear: hand it to the caller, never log it.
    pub password: String,
}

impl std::fmt::Debug for CreatedThing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedThing")
            .field("thing", &self.thing)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The tags of a thing after an update.
#[derive(Debug, Clone, PartialEq)]
pub struct Tags {
    /// All tags.
    pub tags: Map<String, Value>,
    /// Their version (for the next compare-and-swap).
    pub version: u64,
}

/// The registry service. Cheap to clone; share one per hub.
#[derive(Clone)]
pub struct Things {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    bus: Arc<dyn Bus>,
    shadows: ShadowService,
    credentials: Arc<CredentialCache>,
    metrics: Arc<Metrics>,
    /// Told when a thing is created or its tags change (the configuration engine listens).
    changes: Arc<tokio::sync::Notify>,
}

impl Things {
    /// The registry over `store`, publishing lifecycle events and disconnecting through `bus`,
    /// and telling `shadows` and `credentials` about deleted and disabled things.
    pub fn new(
        store: SharedStore,
        bus: Arc<dyn Bus>,
        shadows: ShadowService,
        credentials: Arc<CredentialCache>,
        metrics: Arc<Metrics>,
    ) -> Things {
        Things {
            inner: Arc::new(Inner {
                store,
                bus,
                shadows,
                credentials,
                metrics,
                changes: Arc::default(),
            }),
        }
    }

    /// Notified when a thing is created or re-tagged: what may change which things a
    /// configuration targets (S-11.2).
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.inner.changes.clone()
    }

    /// Creates one thing (`POST /things`). Publishes `create` (S-8.3).
    pub async fn create(&self, req: CreateThing) -> Result<CreatedThing, ThingsError> {
        self.create_as(req, true).await
    }

    /// Creates one thing, enabled or not (the registry sync's template, S-13.3).
    pub async fn create_as(
        &self,
        req: CreateThing,
        enabled: bool,
    ) -> Result<CreatedThing, ThingsError> {
        let (thing_id, password, origin) = prepare(&req)?;
        let hash = hash_blocking(password.clone(), origin).await?;
        let new = NewThing {
            thing_id,
            password_hash: hash,
            tags: req.tags,
            enabled,
        };
        let thing = self.inner.store.create_thing(&new, now_ms()).await?;
        self.admit_on_broker(&thing.thing_id, &password).await?;
        if !enabled {
            self.tell_broker(&thing.thing_id, ThingChange::Enabled(false))
                .await?;
        }
        self.remember_issued(&thing.thing_id, &password);
        self.lifecycle(&thing.thing_id, LifecycleOp::Create).await;
        Ok(CreatedThing { thing, password })
    }

    /// Puts a new thing's secret in the credential cache, as a verified CONNECT would: the hub
    /// has just hashed it, so the thing's first connection need not pay for argon2 again. This
    /// is what lets a freshly provisioned fleet connect at thousands per second (issue 6) instead
    /// of at the ~600/s two cores can verify; after a restart the cache is empty and the first
    /// connect of each thing verifies against the stored hash.
    /// After a provisioning committed (S-10.4): the cached secret is replaced; a thing that got
    /// a new secret loses its live connection, whose old secret no longer works (D-44); and the
    /// lifecycle event `provision` is published.
    pub async fn provisioned(&self, thing: &str, password: &str, rekeyed: bool) {
        self.inner.credentials.forget(thing);
        if rekeyed {
            self.inner.bus.disconnect(thing).await;
        }
        self.remember_issued(thing, password);
        self.lifecycle(thing, LifecycleOp::Provision).await;
    }

    /// Gives a new thing its account on a broker that keeps its own (D-61). When the broker
    /// cannot, the thing is removed from the registry again and the caller told: a thing that
    /// exists but cannot connect would be acknowledged without being usable.
    async fn admit_on_broker(&self, thing: &str, password: &str) -> Result<(), ThingsError> {
        let change = ThingChange::Created { password };
        let Err(e) = self.inner.bus.thing_changed(thing, change).await else {
            return Ok(());
        };
        tracing::warn!(%thing, error = %e, "the broker did not take the new thing; not created");
        if let Err(undo) = self.inner.store.delete_thing(thing).await {
            tracing::error!(%thing, error = %undo, "cannot remove the thing the broker refused; start-up reconciliation will");
        }
        Err(ThingsError::Unavailable)
    }

    /// Applies an enable, disable or delete already written to the registry to a broker that
    /// keeps its own accounts. A failure is the caller's 503; the registry stays as written and
    /// the broker follows it at the next start-up reconciliation (D-61).
    async fn tell_broker(&self, thing: &str, change: ThingChange<'_>) -> Result<(), ThingsError> {
        self.inner
            .bus
            .thing_changed(thing, change)
            .await
            .map_err(|e| {
                tracing::warn!(%thing, ?change, error = %e, "the broker did not follow a registry change");
                ThingsError::Unavailable
            })
    }

    fn remember_issued(&self, thing: &str, password: &str) {
        self.inner.credentials.remember(thing, password.as_bytes());
    }

    /// The thing, with its connection status (never its secret).
    pub async fn get(&self, id: &str) -> Result<ThingRecord, ThingsError> {
        if !is_valid_thing_id(id) {
            return Err(ThingsError::NotFound);
        }
        self.inner
            .store
            .get_thing(id)
            .await?
            .ok_or(ThingsError::NotFound)
    }

    /// One page of things in id order and the total matching `enabled` (`None` = all).
    /// `page_index` is 0-based; `page_size` is 1 to [`MAX_PAGE_SIZE`].
    pub async fn list(
        &self,
        page_index: u64,
        page_size: u64,
        enabled: Option<bool>,
    ) -> Result<(u64, Vec<ThingRecord>), ThingsError> {
        check_page(page_index, page_size)?;
        Ok(self
            .inner
            .store
            .list_things(page_index, page_size, enabled)
            .await?)
    }

    /// Enables or disables a thing (`PATCH /things/{id}`). Disabling forgets cached credentials
    /// and closes the live connection (S-1.3). The lifecycle event is published only when the
    /// flag actually changes.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<ThingRecord, ThingsError> {
        let before = self.get(id).await?;
        let thing = self.inner.store.set_enabled(id, enabled).await?;
        // The registry changed: everything local follows even when the broker does not.
        let broker = self.tell_broker(id, ThingChange::Enabled(enabled)).await;
        if !enabled {
            self.inner.credentials.forget(id);
            self.kick(id).await;
        }
        if before.enabled != enabled {
            let op = if enabled {
                LifecycleOp::Enable
            } else {
                LifecycleOp::Disable
            };
            self.lifecycle(id, op).await;
        }
        broker.map(|()| thing)
    }

    /// Deletes a thing and its shadows (`DELETE /things/{id}`), closes its live connection and
    /// publishes `delete`.
    pub async fn delete(&self, id: &str) -> Result<(), ThingsError> {
        if !is_valid_thing_id(id) {
            return Err(ThingsError::NotFound);
        }
        self.inner.store.delete_thing(id).await?;
        // The registry changed: everything local follows even when the broker does not.
        let broker = self.tell_broker(id, ThingChange::Deleted).await;
        self.inner.credentials.forget(id);
        self.inner.shadows.forget_thing(id);
        self.kick(id).await;
        self.lifecycle(id, LifecycleOp::Delete).await;
        broker
    }

    /// Applies a tags patch (`PUT /things/{id}/tags`): each key of `patch` replaces that tag,
    /// `null` deletes it, other tags are untouched. With `version`, the update applies only if
    /// it is the current tags version ([`ThingsError::VersionConflict`] otherwise); without, it
    /// is retried over concurrent updates.
    pub async fn update_tags(
        &self,
        id: &str,
        patch: Map<String, Value>,
        version: Option<u64>,
    ) -> Result<Tags, ThingsError> {
        self.edit_tags(id, version, |tags| {
            for (k, v) in &patch {
                if v.is_null() {
                    tags.remove(k);
                } else {
                    tags.insert(k.clone(), v.clone());
                }
            }
        })
        .await
    }

    /// Replaces every tag (a fleet job's `tags` operation with `replace`, S-12.1), retried over
    /// concurrent updates.
    pub async fn replace_tags(
        &self,
        id: &str,
        tags: Map<String, Value>,
    ) -> Result<Tags, ThingsError> {
        self.edit_tags(id, None, |current| *current = tags.clone())
            .await
    }

    /// Applies an RFC 7386 JSON merge-patch to the tags (`PATCH /things/{id}/tags`, D-42): a
    /// deep merge where `null` deletes. `version` is a precondition as in [`Things::update_tags`].
    pub async fn merge_tags(
        &self,
        id: &str,
        patch: Map<String, Value>,
        version: Option<u64>,
    ) -> Result<Tags, ThingsError> {
        self.edit_tags(id, version, |tags| merge_patch::merge_patch(tags, &patch))
            .await
    }

    /// The compare-and-swap loop behind every tags edit: read, check `version`, edit, check the
    /// limits on the result, write at the version read. Without `version`, losing the race to
    /// another writer retries with the newer tags.
    async fn edit_tags(
        &self,
        id: &str,
        version: Option<u64>,
        edit: impl Fn(&mut Map<String, Value>),
    ) -> Result<Tags, ThingsError> {
        for _ in 0..TAGS_CAS_RETRIES {
            let current = self.get(id).await?;
            if version.is_some_and(|v| v != current.tags_version) {
                return Err(ThingsError::VersionConflict);
            }
            let mut tags = current.tags;
            edit(&mut tags);
            check_tags(&tags)?;
            match self
                .inner
                .store
                .replace_tags(id, &tags, current.tags_version)
                .await
            {
                Ok(version) => {
                    self.inner.changes.notify_one();
                    return Ok(Tags { tags, version });
                }
                Err(StoreError::VersionConflict) if version.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ThingsError::VersionConflict)
    }

    /// One page of the things matching `q` (S-9.4) and the total number of matches.
    pub async fn query(
        &self,
        q: &crate::query::ThingQuery,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<ThingRecord>), ThingsError> {
        check_page(page_index, page_size)?;
        Ok(self
            .inner
            .store
            .query_things(q, page_index, page_size)
            .await?)
    }

    /// Closes the thing's connection now and once more a little later (see
    /// [`SECOND_DISCONNECT_AFTER`]).
    async fn kick(&self, id: &str) {
        self.inner.bus.disconnect(id).await;
        let bus = self.inner.bus.clone();
        let store = self.inner.store.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(SECOND_DISCONNECT_AFTER).await;
            if !bus.is_connected(&id) {
                return;
            }
            // Only if the thing is still disabled or gone: it may have been re-enabled since.
            let still_barred = match store.get_thing(&id).await {
                Ok(Some(t)) => !t.enabled,
                Ok(None) => true,
                Err(_) => false,
            };
            if still_barred {
                bus.disconnect(&id).await;
            }
        });
    }

    async fn lifecycle(&self, thing: &str, op: LifecycleOp) {
        if matches!(op, LifecycleOp::Create) {
            self.inner.changes.notify_one();
        }
        let event = LifecycleEvent {
            thing_id: thing,
            op,
            timestamp: now_ms(),
        };
        match serde_json::to_vec(&event) {
            Ok(payload) => {
                let topic = Topic::LifecycleEvent { thing }.to_string();
                self.inner
                    .bus
                    .publish(&topic, Bytes::from(payload), false)
                    .await;
                self.inner.metrics.inc_lifecycle_event();
            }
            Err(e) => tracing::error!(%thing, error = %e, "lifecycle event not serializable"),
        }
    }
}

async fn hash_blocking(secret: String, origin: SecretOrigin) -> Result<String, ThingsError> {
    tokio::task::spawn_blocking(move || auth::hash_password(&secret, origin))
        .await
        .map_err(|_| ThingsError::Hash)?
        .map_err(|_| ThingsError::Hash)
}

/// Hashes many secrets on the blocking pool, in as many chunks as there are cores.
async fn hash_many(secrets: Vec<(String, SecretOrigin)>) -> Result<Vec<String>, ThingsError> {
    if secrets.is_empty() {
        return Ok(Vec::new());
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
        .clamp(1, 16);
    let chunk = secrets.len().div_ceil(workers);
    let mut tasks = Vec::new();
    for part in secrets.chunks(chunk) {
        let part = part.to_vec();
        tasks.push(tokio::task::spawn_blocking(move || {
            part.iter()
                .map(|(secret, origin)| auth::hash_password(secret, *origin))
                .collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut out = Vec::with_capacity(secrets.len());
    for t in tasks {
        let hashes = t
            .await
            .map_err(|_| ThingsError::Hash)?
            .map_err(|_| ThingsError::Hash)?;
        out.extend(hashes);
    }
    Ok(out)
}
