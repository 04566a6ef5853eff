//! The registry sync page (`/console/sync`, S-13): what is configured, the last scheduled
//! round, the pending tasks and the latest sync events, newest first. Read-only; the same data
//! as `GET /api/v1/sync` and `/api/v1/sync/events`.

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::{SignedIn, format_ms, layout};
use crate::api::AppState;
use crate::store::sync::{EventFilter, SyncEvent};

/// Events shown.
const SHOWN: u64 = 100;

/// `GET /console/sync`.
pub async fn page(signed: SignedIn, State(state): State<AppState>) -> Response {
    let (pending, events) = match state.store.sync() {
        Some(sync) => (
            sync.pending_tasks().await.ok(),
            latest(sync).await.unwrap_or_default(),
        ),
        None => (None, Vec::new()),
    };
    let config = state.sync.as_ref().map(|s| s.config.clone());
    let round = state.sync.as_ref().and_then(|s| s.last_round());
    let body = html! {
        h1 { "Registry sync" }
        @match &config {
            None => p.hint #sync-off { "No [registry_sync] section is configured." },
            Some(c) => dl #sync-config {
                dt { "External registry" } dd { (c.url) }
                dt { "Scheduled (external is master)" }
                dd { @if let Some(s) = &c.schedule { "every " (humantime::format_duration(s.interval))
                    @if s.soft_delete { ", soft delete" } } @else { "off" } }
                dt { "Real time (hub is master)" } dd { @if c.push.is_some() { "on" } @else { "off" } }
                dt { "Pending tasks" } dd #pending { (pending.map_or("?".to_owned(), |n| n.to_string())) }
            },
        }
        @if let Some(r) = round {
            h2 { "Last scheduled round" }
            p #last-round { (format_ms(r.started_at)) ": " (r.external_devices) " devices, "
                (r.hub_things) " things; created " (r.created) ", deleted " (r.deleted)
                ", disabled " (r.disabled) ", refused " (r.refused)
                @if let Some(e) = &r.error { "; failed: " (e) } }
        }
        h2 { "Latest events" }
        @if events.is_empty() {
            p.hint #no-events { "No sync event yet." }
        } @else {
            table #sync-events {
                thead { tr { th { "time" } th { "kind" } th { "thing" } th { "attempt" } th { "detail" } } }
                tbody {
                    @for e in &events {
                        tr {
                            td { (format_ms(e.event.at)) }
                            td { (e.event.kind.as_str()) }
                            td { @if let Some(t) = &e.event.thing_id {
                                a href=(format!("/console/things/{t}")) { (t) } } }
                            td { (e.event.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                            td { (e.event.detail.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    };
    layout("Registry sync", Some(&signed), None, body)
}

/// The newest [`SHOWN`] events, newest first.
async fn latest(
    sync: &dyn crate::store::sync::SyncStore,
) -> Result<Vec<SyncEvent>, crate::store::StoreError> {
    sync.events(&EventFilter {
        limit: SHOWN,
        newest_first: true,
        ..EventFilter::default()
    })
    .await
}
