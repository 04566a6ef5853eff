//! Live updates for console pages: what the hub publishes about things (presence, lifecycle,
//! shadow changes), teed off the [`Bus`] into a bounded broadcast channel and streamed to
//! browsers as server-sent events.
//!
//! Bounds: the channel holds [`CHANNEL`] events; a thing's stream that falls behind gets a
//! `snapshot` event followed by the thing's presence and every shadow again, the list's stream
//! gets `resync` and its page reloads. At most [`MAX_STREAMS`] streams are open at once (503 beyond), and each ends
//! after [`STREAM_LIFETIME`] (the browser's `EventSource` reconnects, which re-checks the session).
//! With no stream open, the tee costs one atomic load per publish.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use futures::Stream;
use iothub_spec::topic::Topic;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::Instant;

use super::{PageError, SignedIn, thing};
use crate::api::{ApiError, AppState};
use crate::bus::Bus;

/// Events buffered for the slowest stream.
pub const CHANNEL: usize = 1024;
/// Most event streams open at once.
pub const MAX_STREAMS: usize = 32;
/// How long one stream lasts before the browser must reconnect.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(3600);
/// Comment lines sent on an idle stream, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Something the hub published about a thing.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// The thing.
    pub thing: String,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`HubEvent`].
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A presence event (S-8.1) and whether the thing is connected right after it.
    Presence {
        /// Connected now.
        connected: bool,
        /// The S-8.1 payload.
        payload: Bytes,
    },
    /// A lifecycle event (S-8.3).
    Lifecycle {
        /// The S-8.3 payload.
        payload: Bytes,
    },
    /// A shadow changed (update accepted, delta or documents published).
    Shadow {
        /// The shadow name.
        name: String,
    },
}

/// The console's side of the tee: subscribe to events, count open streams, ask who is connected.
#[derive(Clone)]
pub struct ConsoleEvents {
    tx: broadcast::Sender<HubEvent>,
    streams: Arc<Semaphore>,
    bus: Option<Arc<dyn Bus>>,
}

impl Default for ConsoleEvents {
    fn default() -> Self {
        ConsoleEvents::with_capacity(CHANNEL)
    }
}

impl ConsoleEvents {
    fn with_capacity(capacity: usize) -> Self {
        ConsoleEvents {
            tx: broadcast::channel(capacity).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            bus: None,
        }
    }
}

impl ConsoleEvents {
    /// Whether `thing` is connected now, when the live state is known (`None` without a bus).
    pub fn is_connected(&self, thing: &str) -> Option<bool> {
        self.bus.as_ref().map(|b| b.is_connected(thing))
    }

    /// A receiver of every later event.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.tx.subscribe()
    }

    fn open_stream(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }
}

/// A [`Bus`] that forwards everything to `inner` and copies the publications the console shows.
pub struct TeeBus {
    inner: Arc<dyn Bus>,
    tx: broadcast::Sender<HubEvent>,
}

impl TeeBus {
    /// Wraps `inner`; the returned [`ConsoleEvents`] receives the copies.
    pub fn wrap(inner: Arc<dyn Bus>) -> (Arc<TeeBus>, ConsoleEvents) {
        Self::wrap_with_capacity(inner, CHANNEL)
    }

    /// [`TeeBus::wrap`] with a channel of `capacity` events (tests make streams lag with it).
    fn wrap_with_capacity(inner: Arc<dyn Bus>, capacity: usize) -> (Arc<TeeBus>, ConsoleEvents) {
        let events = ConsoleEvents {
            bus: Some(inner.clone()),
            ..ConsoleEvents::with_capacity(capacity)
        };
        let tee = Arc::new(TeeBus {
            inner,
            tx: events.tx.clone(),
        });
        (tee, events)
    }

    fn copy(&self, topic: &str, payload: &Bytes) {
        let Ok(parsed) = Topic::parse(topic) else {
            return;
        };
        let kind = match parsed {
            Topic::PresenceEvent { thing } => EventKind::Presence {
                connected: self.inner.is_connected(thing),
                payload: payload.clone(),
            },
            Topic::LifecycleEvent { .. } => EventKind::Lifecycle {
                payload: payload.clone(),
            },
            Topic::ShadowUpdateAccepted { shadow, .. }
            | Topic::ShadowUpdateDelta { shadow, .. }
            | Topic::ShadowUpdateDocuments { shadow, .. } => EventKind::Shadow {
                name: shadow.to_owned(),
            },
            _ => return,
        };
        // An error only means that no stream is open any more.
        let _ = self.tx.send(HubEvent {
            thing: parsed.thing().to_owned(),
            kind,
        });
    }
}

#[async_trait]
impl Bus for TeeBus {
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        if self.tx.receiver_count() > 0 {
            self.copy(topic, &payload);
        }
        self.inner.publish(topic, payload, retain).await;
    }

    async fn disconnect(&self, client_id: &str) {
        self.inner.disconnect(client_id).await;
    }

    async fn thing_changed(
        &self,
        thing: &str,
        change: crate::bus::ThingChange<'_>,
    ) -> Result<(), crate::bus::BusError> {
        self.inner.thing_changed(thing, change).await
    }

    async fn things_created(
        &self,
        things: &[(&str, &str)],
    ) -> Vec<Result<(), crate::bus::BusError>> {
        self.inner.things_created(things).await
    }

    fn is_connected(&self, client_id: &str) -> bool {
        self.inner.is_connected(client_id)
    }

    async fn presence_caught_up(&self) {
        self.inner.presence_caught_up().await;
    }

    fn connection(&self, client_id: &str) -> Option<u64> {
        self.inner.connection(client_id)
    }

    async fn disconnect_connection(&self, client_id: &str, connection: u64) {
        self.inner
            .disconnect_connection(client_id, connection)
            .await;
    }

    async fn has_subscribers(&self, topic: &str) -> bool {
        // Shadow documents are built only for listeners; an open console page is one.
        if self.tx.receiver_count() > 0
            && matches!(Topic::parse(topic), Ok(Topic::ShadowUpdateDocuments { .. }))
        {
            return true;
        }
        self.inner.has_subscribers(topic).await
    }
}

/// `?thing=` narrows a stream to one thing.
#[derive(Deserialize)]
pub struct StreamParams {
    thing: Option<String>,
}

struct StreamState {
    /// Sent before anything from `rx`: the state when the stream opened.
    first: std::collections::VecDeque<Event>,
    rx: broadcast::Receiver<HubEvent>,
    app: AppState,
    thing: Option<String>,
    ends: Instant,
    _permit: OwnedSemaphorePermit,
}

/// `GET /console/events`: `presence` (`{"thing","connected","row"}`), and with `?thing=` also
/// `shadow` (the changed shadow's markup) and `activity` (a lifecycle event's row). When events
/// were lost, a thing's stream sends `snapshot` (the number lost) and the current state again;
/// the list's stream sends `resync`, which asks the page to reload.
pub async fn stream(
    _signed: SignedIn,
    State(app): State<AppState>,
    Query(p): Query<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let events = &app.console.events;
    let Some(permit) = events.open_stream() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console event streams open",
        )
        .into());
    };
    // Subscribe before reading the snapshot, so that no change falls between the two.
    let rx = events.subscribe();
    let first = match &p.thing {
        Some(thing) => snapshot(&app, thing).await,
        None => Default::default(),
    };
    let state = StreamState {
        first,
        rx,
        thing: p.thing,
        app: app.clone(),
        ends: Instant::now() + STREAM_LIFETIME,
        _permit: permit,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let event = next_event(&mut s).await?;
        Some((Ok(event), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A thing's connected state and shadows now: what changed between the page and its stream.
async fn snapshot(app: &AppState, thing: &str) -> std::collections::VecDeque<Event> {
    let mut out = std::collections::VecDeque::new();
    if let Some(connected) = app.console.events.is_connected(thing) {
        let data = serde_json::json!({ "thing": thing, "connected": connected });
        out.push_back(Event::default().event("presence").data(data.to_string()));
    }
    for name in app.store.shadow_names(thing).await.unwrap_or_default() {
        if let Ok(doc) = app.shadows.get(thing, &name).await {
            let markup = thing::shadow_section(&name, &doc);
            out.push_back(Event::default().event("shadow").data(markup.into_string()));
        }
    }
    out
}

async fn next_event(s: &mut StreamState) -> Option<Event> {
    if let Some(first) = s.first.pop_front() {
        return Some(first);
    }
    loop {
        let received = tokio::time::timeout_at(s.ends, s.rx.recv()).await.ok()?;
        let ev = match received {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "console event stream lagged; resyncing");
                // A thing's page gets its state again on the same stream; the list (every
                // thing) is cheaper to render again, so its page reloads.
                return Some(match &s.thing {
                    Some(thing) => {
                        s.first = snapshot(&s.app, thing).await;
                        Event::default().event("snapshot").data(missed.to_string())
                    }
                    None => Event::default().event("resync").data("lagged"),
                });
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        if s.thing.as_deref().is_some_and(|t| t != ev.thing) {
            continue;
        }
        match ev.kind {
            EventKind::Presence { connected, payload } => {
                let row =
                    thing::activity_row(&ev.thing, "presence", &String::from_utf8_lossy(&payload));
                let data = serde_json::json!({
                    "thing": ev.thing,
                    "connected": connected,
                    "row": row.into_string(),
                });
                return Some(Event::default().event("presence").data(data.to_string()));
            }
            EventKind::Lifecycle { payload } if s.thing.is_some() => {
                return Some(activity(&ev.thing, "lifecycle", &payload));
            }
            EventKind::Lifecycle { .. } => {}
            EventKind::Shadow { name } if s.thing.is_some() => {
                // Read after the event, so the page shows the state the event announced (or newer).
                let markup = match s.app.shadows.get(&ev.thing, &name).await {
                    Ok(doc) => thing::shadow_section(&name, &doc),
                    Err(e) => {
                        tracing::debug!(thing = %ev.thing, shadow = %name, error = %e.message, "console cannot read shadow");
                        continue;
                    }
                };
                return Some(Event::default().event("shadow").data(markup.into_string()));
            }
            EventKind::Shadow { .. } => {}
        }
    }
}

fn activity(thing: &str, kind: &str, payload: &[u8]) -> Event {
    let row = thing::activity_row(thing, kind, &String::from_utf8_lossy(payload));
    Event::default().event("activity").data(row.into_string())
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;
    use crate::things::CreateThing;

    /// The hub's side of the bus with no device on it: only the tee's copies matter here.
    struct NoDevices;

    #[async_trait]
    impl Bus for NoDevices {
        async fn publish(&self, _topic: &str, _payload: Bytes, _retain: bool) {}
        async fn disconnect(&self, _client_id: &str) {}
        fn is_connected(&self, _client_id: &str) -> bool {
            false
        }
    }

    /// The events as a browser receives them.
    async fn sse_text(events: Vec<Event>) -> String {
        let body = Sse::new(futures::stream::iter(
            events.into_iter().map(Ok::<_, Infallible>),
        ))
        .into_response()
        .into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("sse body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn a_lagging_thing_stream_gets_the_state_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = crate::store::open(&url).await.expect("store");
        // A channel of 4: the updates below publish more than that before the stream reads.
        let (tee, events) = TeeBus::wrap_with_capacity(Arc::new(NoDevices), 4);
        let bus: Arc<dyn Bus> = tee;
        let committer = crate::store::commit::GroupCommitter::spawn(store.clone(), 64, 1024);
        let limits = iothub_spec::limits::Limits::default();
        let shadows = crate::shadow::ShadowService::spawn(
            store.clone(),
            committer,
            bus.clone(),
            limits,
            Default::default(),
        );
        let metrics = crate::metrics::Metrics::new();
        let things = crate::things::Things::new(
            store.clone(),
            bus.clone(),
            shadows.clone(),
            Arc::new(crate::auth::CredentialCache::new(16)),
            metrics.clone(),
        );
        let app = AppState::new(
            store,
            shadows.clone(),
            crate::method::Methods::new(bus),
            things.clone(),
            limits,
            "token",
            metrics,
        )
        .with_console_events(events.clone());
        things
            .create(CreateThing {
                thing_id: Some("t1".into()),
                ..CreateThing::default()
            })
            .await
            .expect("create");
        let mut s = StreamState {
            first: Default::default(),
            rx: events.subscribe(),
            app,
            thing: Some("t1".into()),
            ends: Instant::now() + STREAM_LIFETIME,
            _permit: events.open_stream().expect("a stream slot"),
        };
        for v in 1..=5 {
            let body = format!(r#"{{"state":{{"desired":{{"v":{v}}}}}}}"#);
            shadows
                .update_desired("t1", "default", body.as_bytes())
                .await
                .expect("update");
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next_event(&mut s).await.expect("an event"));
        }
        let text = sse_text(got).await;
        let blocks: Vec<&str> = text.split("\n\n").collect();
        assert!(
            blocks[0].starts_with("event: snapshot\n"),
            "lag announced first: {text}"
        );
        assert!(
            blocks[1].starts_with("event: presence\n")
                && blocks[1].contains(r#""connected":false"#),
            "then the thing's presence: {text}"
        );
        assert!(
            blocks[2].starts_with("event: shadow\n")
                && blocks[2].contains(r#"<span class="version">5</span>"#),
            "then the shadow as it is now (version 5): {text}"
        );
    }
}
