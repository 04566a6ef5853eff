//! Shadows (S-3): [`Shadow`] handles, documents, the delta stream and [`SyncedState`].

use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::driver::Command;
use crate::error::{Error, Result};
use crate::synced::SyncedState;
use crate::thing::Thing;
use crate::typed::{self, StateError};

/// A shadow document (S-3.2), as answered to [`Shadow::get`].
///
/// A shadow never written comes as version 0 with every section `None` (S-3.2: the SDK turns
/// the hub's 404 into an empty shadow).
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Document {
    /// The shadow version.
    pub version: u64,
    /// `state.desired`.
    pub desired: Option<Value>,
    /// `state.reported`.
    pub reported: Option<Value>,
    /// `state.delta`: desired keys that differ from reported.
    pub delta: Option<Value>,
}

impl Document {
    /// `state.reported` as the application's type `T` (an absent section parses as `{}`).
    /// Fails with [`StateError`] naming the key: one `T` has no field for, or one whose value
    /// does not fit.
    pub fn reported_as<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        typed::parse_section(self.reported.as_ref())
    }

    /// `state.desired` as `T`, checked like [`Document::reported_as`].
    pub fn desired_as<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        typed::parse_section(self.desired.as_ref())
    }

    /// `state.delta` as `T`, checked like [`Document::reported_as`]. A delta holds only the
    /// keys that differ, so `T` is usually a type with `Option` fields and `#[serde(default)]`.
    pub fn delta_as<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        typed::parse_section(self.delta.as_ref())
    }
}

/// What the device should apply to catch up with the desired state (S-3.6).
///
/// `state` is the *full* current delta at `version`, never a difference to a previous delta,
/// which is why the stream can keep only the newest one (see [`Shadow::deltas`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Delta {
    /// The shadow version this delta belongs to.
    pub version: u64,
    /// Desired keys whose value differs from reported (an empty object when in sync).
    pub state: Map<String, Value>,
    /// True when this comes from a document fetched after a (re)connect or by
    /// [`Shadow::get`] rather than from an `update/delta` message: the application is
    /// resynchronized, and should report its whole state again if an earlier report failed.
    pub resync: bool,
}

impl Delta {
    /// The delta's state as the application's type `T` (usually `Option` fields with
    /// `#[serde(default)]`: a delta holds only the keys that differ).
    ///
    /// Fails with [`StateError::UnknownKeys`] when the delta has keys `T` has no field for
    /// (serde would skip them silently, and the delta would stay open for ever), and with
    /// [`StateError::Invalid`] naming the key whose value does not fit its field.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        typed::parse(&Value::Object(self.state.clone()))
    }
}

/// A shadow update request (S-3.3) for [`Shadow::update`]: `desired` and/or `reported`, each
/// merged (S-3.4: `null` deletes a key) or cleared whole, optionally only at a given version.
///
/// ```
/// use iothub_sdk::ShadowUpdate;
/// use serde_json::json;
/// let request = ShadowUpdate::new()
///     .reported(json!({"setpoint": 21}))
///     .clear_desired()
///     .if_version(7);
/// # let _ = request;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ShadowUpdate {
    desired: Option<Value>,
    reported: Option<Value>,
    version: Option<u64>,
}

impl ShadowUpdate {
    /// An empty request (it needs `desired` or `reported` before it is sent).
    pub fn new() -> Self {
        ShadowUpdate::default()
    }

    /// Merges `desired` into `state.desired` (a JSON object; `null` values delete keys).
    pub fn desired(mut self, desired: Value) -> Self {
        self.desired = Some(desired);
        self
    }

    /// Merges `reported` into `state.reported` (a JSON object; `null` values delete keys).
    pub fn reported(mut self, reported: Value) -> Self {
        self.reported = Some(reported);
        self
    }

    /// Deletes the whole `state.desired` section (`"desired": null`).
    pub fn clear_desired(self) -> Self {
        self.desired(Value::Null)
    }

    /// Deletes the whole `state.reported` section (`"reported": null`).
    pub fn clear_reported(self) -> Self {
        self.reported(Value::Null)
    }

    /// Applies the request only if the shadow is still at `version` (S-3.4); otherwise the hub
    /// answers 409 ([`Error::is_version_conflict`]).
    pub fn if_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }
}

/// One shadow of a connected [`Thing`]; get one with [`Thing::shadow`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shadow {
    pub(crate) thing: Thing,
    pub(crate) name: String,
    pub(crate) id: Option<usize>,
}

impl Shadow {
    /// The shadow name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn id(&self) -> Result<usize> {
        self.id
            .ok_or_else(|| Error::UnknownShadow(self.name.clone()))
    }

    /// Fetches the shadow document (S-3.2). Its delta, if newer than anything already handed
    /// out, also goes to [`Shadow::deltas`].
    pub async fn get(&self) -> Result<Document> {
        let shadow = self.id()?;
        self.thing
            .request(|reply| Command::Get { shadow, reply })
            .await
    }

    /// Reports `reported` as `state.reported` (S-3.3: merged; `null` deletes a key). Returns
    /// the shadow's new version, or [`Error::Rejected`] with the hub's code.
    pub async fn report<R: Serialize + ?Sized>(&self, reported: &R) -> Result<u64> {
        self.update(ShadowUpdate::new().reported(serde_json::to_value(reported)?))
            .await
    }

    /// Like [`Shadow::report`], applied only if the shadow is still at `version` (S-3.4);
    /// otherwise [`Error::Rejected`] with 409 ([`Error::is_version_conflict`]).
    pub async fn report_if_version<R: Serialize + ?Sized>(
        &self,
        reported: &R,
        version: u64,
    ) -> Result<u64> {
        let request = ShadowUpdate::new().reported(serde_json::to_value(reported)?);
        self.update(request.if_version(version)).await
    }

    /// Sends a full update request (S-3.3), built with [`ShadowUpdate`]. Returns the new
    /// version. A request with neither `desired` nor `reported` fails with
    /// [`Error::InvalidArgument`] without being sent.
    pub async fn update(&self, request: ShadowUpdate) -> Result<u64> {
        let shadow = self.id()?;
        let ShadowUpdate {
            desired,
            reported,
            version,
        } = request;
        if desired.is_none() && reported.is_none() {
            return Err(Error::InvalidArgument(
                "an update needs desired or reported",
            ));
        }
        self.thing
            .request(|reply| Command::Update {
                shadow,
                desired,
                reported,
                version,
                reply,
            })
            .await
    }

    /// The deltas to apply, in version order, starting with the newest one known (typically
    /// the document fetched at connect time).
    ///
    /// **Newest wins**: when the application does not keep up, an unconsumed delta is
    /// replaced by a newer one. Nothing is lost by that, because every delta carries the full
    /// difference between desired and reported at its version (S-3.6). The stream never
    /// blocks the connection. After every reconnect the stream yields the resynchronized
    /// document's delta (`resync: true`, possibly empty), then deltas newer than it. It ends
    /// when the thing is closed.
    ///
    /// Cancel-safe: `deltas.next()` may lose a race in `tokio::select!` without losing a delta
    /// (the stream keeps its place; the next call returns what the dropped one would have).
    pub fn deltas(&self) -> Result<impl Stream<Item = Delta> + Send + Unpin + 'static> {
        let id = self.id()?;
        let mut rx = self
            .thing
            .shared
            .deltas
            .get(id)
            .ok_or_else(|| Error::UnknownShadow(self.name.clone()))?
            .clone();
        rx.mark_changed();
        Ok(Box::pin(delta_stream(rx)))
    }

    /// Binds the application's typed state `T` to this shadow, starting from `initial` (the
    /// device's actual state): reports `initial` at once, then [`SyncedState::next`] applies
    /// each delta to it and reports the result. See [`SyncedState`].
    pub async fn synced_state<T>(&self, initial: T) -> Result<SyncedState<T>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let deltas = self.deltas()?;
        let mut problems = self
            .thing
            .shared
            .problems
            .get(self.id()?)
            .ok_or_else(|| Error::UnknownShadow(self.name.clone()))?
            .clone();
        // Only problems from now on.
        problems.borrow_and_update();
        let version = self.report(&initial).await?;
        Ok(SyncedState::new(
            self.clone(),
            Box::pin(deltas),
            problems,
            initial,
            version,
        ))
    }
}

fn delta_stream(rx: watch::Receiver<Option<Delta>>) -> impl Stream<Item = Delta> + Send {
    futures_util::stream::unfold((rx, 0u64, false), |(mut rx, last, seen)| async move {
        loop {
            rx.changed().await.ok()?;
            let next = rx.borrow_and_update().clone();
            if let Some(d) = next
                && (!seen || d.version >= last)
            {
                let v = d.version;
                return Some((d, (rx, v, true)));
            }
        }
    })
}
