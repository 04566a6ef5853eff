//! Mode (a), the external registry is master (S-13.3): every interval, list both sides, diff,
//! create the missing things from the template and delete (or, with `soft_delete`, disable) the
//! extra ones.
//!
//! The diff is [`plan`], a pure function; [`Scheduler::round`] reads both sides, applies the
//! plan through the registry service ([`Things`], so broker accounts, lifecycle events and
//! cached credentials follow as for a REST call) and records the events. A round whose listing
//! of the external registry fails changes nothing: a partial list is never taken for the
//! registry's content.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use iothub_spec::code::SyncEventKind;
use iothub_spec::payload::field;
use serde::Serialize;
use serde_json::{Map, Value};

use super::client::{Client, Device, Listing};
use super::config::ScheduleConfig;
use super::events::{Recorder, event};
use crate::clock::now_ms;
use crate::shadow::ShadowService;
use crate::store::SharedStore;
use crate::store::sync::NewSyncEvent;
use crate::things::{CreateThing, MAX_BATCH, MAX_PAGE_SIZE, Things, ThingsError, check_tags};

/// What a round found and did (`GET /api/v1/sync`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoundReport {
    /// When the round started, ms since the epoch.
    pub started_at: u64,
    /// How long it took, ms.
    pub took_ms: u64,
    /// Devices listed by the external registry (valid ones).
    pub external_devices: u64,
    /// Things in the hub before the round.
    pub hub_things: u64,
    /// Things created.
    pub created: u64,
    /// Things deleted.
    pub deleted: u64,
    /// Things disabled (soft delete).
    pub disabled: u64,
    /// Devices that could not become things (`template-check-failed`).
    pub refused: u64,
    /// Whether the creations or removals went through the batch path.
    pub batched: bool,
    /// Why the round stopped early, if it did.
    pub error: Option<String>,
}

/// The diff of one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Devices with no thing: to create.
    pub create: Vec<Device>,
    /// Things with no device: to delete, or to disable when enabled and soft deleting.
    pub remove: Vec<String>,
}

/// Why removing `remove` of `hub` things is refused: more than `max_percent` of them.
fn too_many_removals(remove: usize, hub: usize, max_percent: u8) -> Option<String> {
    let over = remove.saturating_mul(100) > hub.saturating_mul(usize::from(max_percent));
    (max_percent < 100 && over).then(|| {
        format!(
            "refused to remove {remove} of {hub} things, more than max_removal_percent = \
             {max_percent} %; check the external registry's list, or raise the limit"
        )
    })
}

/// The diff of `external` against `hub` (thing id → enabled). With `soft_delete`, things
/// already disabled are left alone.
pub fn plan(external: &BTreeMap<String, Device>, hub: &BTreeMap<String, bool>, soft: bool) -> Plan {
    Plan {
        create: external
            .values()
            .filter(|d| !hub.contains_key(&d.id))
            .cloned()
            .collect(),
        remove: hub
            .iter()
            .filter(|(id, enabled)| !external.contains_key(*id) && (!soft || **enabled))
            .map(|(id, _)| id.clone())
            .collect(),
    }
}

/// The scheduled sync.
#[derive(Clone)]
pub struct Scheduler {
    /// The hub's registry.
    pub things: Things,
    /// Where the template's desired state is written.
    pub shadows: ShadowService,
    /// The store (to list every thing).
    pub store: SharedStore,
    /// The external registry.
    pub client: Client,
    /// Interval, template, soft delete, threshold.
    pub config: ScheduleConfig,
    /// Records the events.
    pub recorder: Recorder,
    /// The last round's report.
    pub last: Arc<Mutex<Option<RoundReport>>>,
}

impl Scheduler {
    /// A round every interval, the first at once, forever (the caller drops it to stop).
    pub async fn run(self) {
        loop {
            let report = self.round().await;
            match &report.error {
                Some(e) => tracing::warn!(error = %e, "registry sync round failed"),
                None => tracing::info!(
                    external = report.external_devices,
                    hub = report.hub_things,
                    created = report.created,
                    deleted = report.deleted,
                    disabled = report.disabled,
                    refused = report.refused,
                    batched = report.batched,
                    took_ms = report.took_ms,
                    "registry sync round done"
                ),
            }
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
            tokio::time::sleep(self.config.interval).await;
        }
    }

    /// One round: list, diff, apply, record.
    pub async fn round(&self) -> RoundReport {
        let started = std::time::Instant::now();
        let mut report = RoundReport {
            started_at: now_ms(),
            ..RoundReport::default()
        };
        let mut events = Vec::new();
        if let Err(e) = self.apply(&mut report, &mut events).await {
            report.error = Some(e);
        }
        if let Err(e) = self.recorder.record(&events).await {
            tracing::warn!(error = %e, "cannot record registry sync events");
        }
        report.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        report
    }

    async fn apply(
        &self,
        report: &mut RoundReport,
        events: &mut Vec<NewSyncEvent>,
    ) -> Result<(), String> {
        let Listing { devices, refused } =
            self.client.list_all().await.map_err(|e| e.to_string())?;
        for (id, why) in refused {
            report.refused += 1;
            events.push(event(
                SyncEventKind::TemplateCheckFailed,
                id.as_deref(),
                None,
                Some(why),
            ));
        }
        let hub = self.hub_things().await?;
        report.external_devices = devices.len() as u64;
        report.hub_things = hub.len() as u64;
        let plan = plan(&devices, &hub, self.config.soft_delete);
        self.create(plan.create, report, events).await?;
        if let Some(why) = too_many_removals(
            plan.remove.len(),
            hub.len(),
            self.config.max_removal_percent,
        ) {
            tracing::warn!("registry sync: {why}");
            return Err(why);
        }
        self.remove(plan.remove, report, events).await
    }

    /// Deletes (or disables) the things of `ids`: one by one up to the threshold, in batches of
    /// one transaction each above it.
    async fn remove(
        &self,
        ids: Vec<String>,
        report: &mut RoundReport,
        events: &mut Vec<NewSyncEvent>,
    ) -> Result<(), String> {
        let soft = self.config.soft_delete;
        let kind = if soft {
            SyncEventKind::HubDisabled
        } else {
            SyncEventKind::HubDeleted
        };
        let mut note = |id: &str, report: &mut RoundReport| {
            if soft {
                report.disabled += 1;
            } else {
                report.deleted += 1;
            }
            events.push(event(kind, Some(id), None, None));
        };
        if ids.len() > self.config.batch_threshold {
            report.batched = true;
            for chunk in ids.chunks(MAX_BATCH) {
                let changed = if soft {
                    self.things.disable_many(chunk).await
                } else {
                    self.things.delete_many(chunk).await
                };
                for id in changed.map_err(|e| format!("removing a batch of things: {e}"))? {
                    note(&id, report);
                }
            }
        } else {
            for id in ids {
                let result = if soft {
                    self.things.set_enabled(&id, false).await.map(|_| ())
                } else {
                    self.things.delete(&id).await
                };
                match result {
                    Ok(()) => note(&id, report),
                    // Gone since the listing: nothing to do.
                    Err(ThingsError::NotFound) => {}
                    Err(e) => return Err(format!("removing {id}: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Every thing of the hub: id → enabled.
    async fn hub_things(&self) -> Result<BTreeMap<String, bool>, String> {
        let mut hub = BTreeMap::new();
        for page in 0.. {
            let (_, things) = self
                .store
                .list_things(page, MAX_PAGE_SIZE, None)
                .await
                .map_err(|e| format!("listing the hub's things: {e}"))?;
            let last = (things.len() as u64) < MAX_PAGE_SIZE;
            hub.extend(things.into_iter().map(|t| (t.thing_id, t.enabled)));
            if last {
                break;
            }
        }
        Ok(hub)
    }

    /// Creates the things of `devices` from the template: one by one up to the threshold, in
    /// batches of one transaction each above it (the path of `POST /things/batch`).
    async fn create(
        &self,
        devices: Vec<Device>,
        report: &mut RoundReport,
        events: &mut Vec<NewSyncEvent>,
    ) -> Result<(), String> {
        let template = &self.config.template;
        let mut reqs = Vec::with_capacity(devices.len());
        for device in devices {
            let mut tags = template.tags.clone();
            tags.extend(device.tags);
            if let Err(e) = check_tags(&tags) {
                report.refused += 1;
                events.push(event(
                    SyncEventKind::TemplateCheckFailed,
                    Some(&device.id),
                    None,
                    Some(e.to_string()),
                ));
                continue;
            }
            reqs.push(CreateThing {
                thing_id: Some(device.id),
                password: None,
                tags,
            });
        }
        let batched = reqs.len() > self.config.batch_threshold;
        report.batched |= batched;
        let mut outcomes: Vec<(String, Result<(), ThingsError>)> = Vec::new();
        if batched {
            for chunk in reqs.chunks(MAX_BATCH) {
                let ids: Vec<String> = chunk.iter().filter_map(|r| r.thing_id.clone()).collect();
                let results = self
                    .things
                    .create_batch_as(chunk.to_vec(), template.enabled)
                    .await
                    .map_err(|e| format!("creating a batch of things: {e}"))?;
                outcomes.extend(
                    ids.into_iter()
                        .zip(results.into_iter().map(|r| r.map(|_| ()))),
                );
            }
        } else {
            for req in reqs {
                let id = req.thing_id.clone().unwrap_or_default();
                let result = self.things.create_as(req, template.enabled).await;
                outcomes.push((id, result.map(|_| ())));
            }
        }
        for (id, result) in outcomes {
            match result {
                Ok(()) => {
                    report.created += 1;
                    events.push(event(SyncEventKind::HubCreated, Some(&id), None, None));
                    if let Some(why) = self.write_desired(&id).await {
                        events.push(event(
                            SyncEventKind::TemplateCheckFailed,
                            Some(&id),
                            None,
                            Some(why),
                        ));
                    }
                }
                // Created meanwhile (REST, provisioning): the next round sees it.
                Err(ThingsError::AlreadyExists) => {}
                Err(e @ (ThingsError::InvalidId | ThingsError::InvalidTags(_))) => {
                    report.refused += 1;
                    events.push(event(
                        SyncEventKind::TemplateCheckFailed,
                        Some(&id),
                        None,
                        Some(e.to_string()),
                    ));
                }
                Err(e) => return Err(format!("creating {id}: {e}")),
            }
        }
        Ok(())
    }

    /// Writes the template's desired state to a new thing's default shadow; `Some(why)` when
    /// the shadow service refused it.
    async fn write_desired(&self, thing: &str) -> Option<String> {
        let desired = self.config.template.desired.as_ref()?;
        let mut state = Map::new();
        state.insert(field::DESIRED.into(), Value::Object(desired.clone()));
        let mut body = Map::new();
        body.insert(field::STATE.into(), Value::Object(state));
        let bytes = serde_json::to_vec(&Value::Object(body)).ok()?;
        self.shadows
            .update_desired(thing, "default", &bytes)
            .await
            .err()
            .map(|e| format!("desired state refused: {}", e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> Device {
        Device {
            id: id.into(),
            tags: Map::new(),
        }
    }

    #[test]
    fn removing_more_than_the_percentage_is_refused() {
        assert_eq!(super::too_many_removals(5, 10, 50), None, "exactly half");
        let why = super::too_many_removals(6, 10, 50).expect("refused");
        assert!(why.contains("6 of 10"), "{why}");
        assert!(
            super::too_many_removals(10, 10, 99).is_some(),
            "an empty list"
        );
        assert_eq!(super::too_many_removals(10, 10, 100), None, "guard off");
        assert_eq!(super::too_many_removals(0, 0, 50), None);
    }

    #[test]
    fn the_plan_creates_missing_and_removes_extra_things() {
        let external: BTreeMap<String, Device> = ["a", "b", "c"]
            .into_iter()
            .map(|id| (id.to_owned(), device(id)))
            .collect();
        let hub: BTreeMap<String, bool> = [("b", true), ("d", true), ("e", false)]
            .into_iter()
            .map(|(id, on)| (id.to_owned(), on))
            .collect();
        let hard = plan(&external, &hub, false);
        assert_eq!(hard.create, vec![device("a"), device("c")]);
        assert_eq!(hard.remove, vec!["d".to_owned(), "e".to_owned()]);
        let soft = plan(&external, &hub, true);
        assert_eq!(soft.remove, vec!["d".to_owned()], "e is disabled already");
        assert_eq!(plan(&external, &BTreeMap::new(), false).create.len(), 3);
    }
}
