//! The registry's batch operations: `POST /things/batch` and the registry sync's batch path
//! (S-13.3), each one store transaction followed by the per-thing effects of [`Things`]' single
//! operations.

use iothub_spec::code::LifecycleOp;
use serde_json::{Map, Value};

use super::validate::prepare;
use super::{CreateThing, CreatedThing, MAX_BATCH, Things, ThingsError, hash_many};
use crate::bus::ThingChange;
use crate::clock::now_ms;
use crate::store::NewThing;

impl Things {
    /// Creates up to [`MAX_BATCH`] things in one transaction (`POST /things/batch`), with one
    /// result per item, in order: an invalid or duplicate item (also a repeat within the batch)
    /// fails alone. The outer error means nothing was created.
    pub async fn create_batch(
        &self,
        reqs: Vec<CreateThing>,
    ) -> Result<Vec<Result<CreatedThing, ThingsError>>, ThingsError> {
        self.create_batch_as(reqs, true).await
    }

    /// [`Things::create_batch`] with every thing enabled or not (the registry sync, S-13.3).
    pub async fn create_batch_as(
        &self,
        reqs: Vec<CreateThing>,
        enabled: bool,
    ) -> Result<Vec<Result<CreatedThing, ThingsError>>, ThingsError> {
        if reqs.len() > MAX_BATCH {
            return Err(ThingsError::BatchTooLarge);
        }
        // Validate and detect repeats within the batch (the first occurrence wins).
        let mut seen = std::collections::HashSet::new();
        let mut results: Vec<Option<Result<CreatedThing, ThingsError>>> = Vec::new();
        let mut pending: Vec<(usize, String, String, Map<String, Value>)> = Vec::new();
        let mut origins = Vec::new();
        for (i, req) in reqs.into_iter().enumerate() {
            match prepare(&req) {
                Ok((id, password, origin)) if seen.insert(id.clone()) => {
                    results.push(None);
                    pending.push((i, id, password, req.tags));
                    origins.push(origin);
                }
                Ok(_) => results.push(Some(Err(ThingsError::AlreadyExists))),
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let secrets = pending.iter().map(|p| p.2.clone()).zip(origins).collect();
        let hashes = hash_many(secrets).await?;
        let news: Vec<NewThing> = pending
            .iter()
            .zip(hashes)
            .map(|((_, id, _, tags), hash)| NewThing {
                thing_id: id.clone(),
                password_hash: hash,
                tags: tags.clone(),
                enabled,
            })
            .collect();
        let stored = if news.is_empty() {
            Vec::new()
        } else {
            self.inner.store.create_things(&news, now_ms()).await?
        };
        let created: Vec<(&str, &str)> = pending
            .iter()
            .zip(&stored)
            .filter_map(|((_, _, password, _), outcome)| {
                outcome
                    .as_ref()
                    .ok()
                    .map(|t| (t.thing_id.as_str(), password.as_str()))
            })
            .collect();
        let mut admitted = self.admit_many_on_broker(&created).await.into_iter();
        for ((i, _, password, _), outcome) in pending.into_iter().zip(stored) {
            let r = match outcome {
                Ok(thing) => match admitted.next().unwrap_or(Err(ThingsError::Unavailable)) {
                    Ok(()) => {
                        if !enabled {
                            // The registry refuses it at CONNECT anyway (S-1.3).
                            let _ = self
                                .tell_broker(&thing.thing_id, ThingChange::Enabled(false))
                                .await;
                        }
                        self.remember_issued(&thing.thing_id, &password);
                        self.lifecycle(&thing.thing_id, LifecycleOp::Create).await;
                        Ok(CreatedThing { thing, password })
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(ThingsError::from(e)),
            };
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(r);
            }
        }
        Ok(results
            .into_iter()
            // A slot left empty means the store answered fewer results than writes.
            .map(|r| r.unwrap_or(Err(ThingsError::Unavailable)))
            .collect())
    }

    /// [`Things::admit_on_broker`] for a batch, in as few broker requests as it takes; one
    /// result per thing, in order.
    async fn admit_many_on_broker(&self, things: &[(&str, &str)]) -> Vec<Result<(), ThingsError>> {
        let outcomes = self.inner.bus.things_created(things).await;
        let mut results = Vec::with_capacity(things.len());
        for (i, (thing, _)) in things.iter().enumerate() {
            let Some(Err(e)) = outcomes.get(i) else {
                results.push(if i < outcomes.len() {
                    Ok(())
                } else {
                    Err(ThingsError::Unavailable)
                });
                continue;
            };
            tracing::warn!(%thing, error = %e, "the broker did not take the new thing; not created");
            if let Err(undo) = self.inner.store.delete_thing(thing).await {
                tracing::error!(%thing, error = %undo, "cannot remove the thing the broker refused; start-up reconciliation will");
            }
            results.push(Err(ThingsError::Unavailable));
        }
        results
    }

    /// Deletes many things in one transaction (the registry sync's batch path, S-13.3), then
    /// does for each what [`Things::delete`] does after its commit. Returns the ids deleted.
    pub async fn delete_many(&self, ids: &[String]) -> Result<Vec<String>, ThingsError> {
        let gone = self.inner.store.delete_things(ids).await?;
        for id in &gone {
            // The registry changed; a broker that does not follow catches up at start-up.
            let _ = self.tell_broker(id, ThingChange::Deleted).await;
            self.inner.credentials.forget(id);
            self.inner.shadows.forget_thing(id);
            self.kick(id).await;
            self.lifecycle(id, LifecycleOp::Delete).await;
        }
        Ok(gone)
    }

    /// Disables many things in one transaction (S-13.3, soft delete), then does for each what
    /// [`Things::set_enabled`] does after its commit. Returns the ids that were enabled.
    pub async fn disable_many(&self, ids: &[String]) -> Result<Vec<String>, ThingsError> {
        let changed = self.inner.store.disable_things(ids).await?;
        for id in &changed {
            let _ = self.tell_broker(id, ThingChange::Enabled(false)).await;
            self.inner.credentials.forget(id);
            self.kick(id).await;
            self.lifecycle(id, LifecycleOp::Disable).await;
        }
        Ok(changed)
    }
}
