//! Shadows (S-3): [`Shadow`] handles, documents, the delta stream and [`SyncedState`].

use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::driver::Command;
use crate::error::{Error, Result};
use crate::thing::Thing;

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
        self.update(None, Some(serde_json::to_value(reported)?), None)
            .await
    }

    /// Like [`Shadow::report`], applied only if the shadow is still at `version` (S-3.4);
    /// otherwise [`Error::Rejected`] with 409 ([`Error::is_version_conflict`]).
    pub async fn report_if_version<R: Serialize + ?Sized>(
        &self,
        reported: &R,
        version: u64,
    ) -> Result<u64> {
        self.update(None, Some(serde_json::to_value(reported)?), Some(version))
            .await
    }

    /// A full update request (S-3.3): `desired` and/or `reported` (`Value::Null` clears a
    /// whole section), with an optional expected `version`. Returns the new version.
    pub async fn update(
        &self,
        desired: Option<Value>,
        reported: Option<Value>,
        version: Option<u64>,
    ) -> Result<u64> {
        let shadow = self.id()?;
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

    /// Keeps a typed state `T` in sync with this shadow, starting from `initial` (the device's
    /// actual state). Reports `initial` at once; see [`SyncedState`].
    pub async fn sync<T>(&self, initial: T) -> Result<SyncedState<T>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let deltas = self.deltas()?;
        let version = self.report(&initial).await?;
        Ok(SyncedState {
            shadow: self.clone(),
            deltas: Box::pin(deltas),
            state: initial,
            version,
            dirty: false,
        })
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

/// Merges `patch` into `target` as S-3.4 does: objects recursively, `null` deletes, anything
/// else replaces.
pub fn merge_json(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_json(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A typed state kept in sync with a shadow: applies each delta to `T`, reports the result
/// back, and re-reports after a reconnect if a report failed meanwhile.
///
/// `T` is the device's whole state as it should appear in `state.reported`; desired keys
/// that `T` cannot hold make [`SyncedState::next`] return [`Error::Json`] (nothing is
/// applied nor reported for that delta).
pub struct SyncedState<T> {
    shadow: Shadow,
    deltas: std::pin::Pin<Box<dyn Stream<Item = Delta> + Send>>,
    state: T,
    version: u64,
    dirty: bool,
}

impl<T> std::fmt::Debug for SyncedState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedState")
            .field("shadow", &self.shadow.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<T> SyncedState<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// The current state.
    pub fn get(&self) -> &T {
        &self.state
    }

    /// The shadow version of the last successful report.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Waits for the next delta, applies it to the state and reports the new state. Returns
    /// the new state, or `None` when the thing is closed.
    ///
    /// A failed report (connection lost) is returned as an error and retried after the next
    /// resynchronization.
    pub async fn next(&mut self) -> Option<Result<&T>> {
        use futures_util::StreamExt as _;
        loop {
            let delta = self.deltas.next().await?;
            if delta.state.is_empty() && !(delta.resync && self.dirty) {
                continue;
            }
            return Some(self.apply(delta).await.map(|()| &self.state));
        }
    }

    async fn apply(&mut self, delta: Delta) -> Result<()> {
        let mut value = serde_json::to_value(&self.state)?;
        merge_json(&mut value, &Value::Object(delta.state));
        self.state = serde_json::from_value(value)?;
        self.report().await
    }

    /// Changes the state locally with `f`, then reports it. Returns the new version.
    pub async fn update(&mut self, f: impl FnOnce(&mut T)) -> Result<u64> {
        f(&mut self.state);
        self.report().await?;
        Ok(self.version)
    }

    async fn report(&mut self) -> Result<()> {
        match self.shadow.report(&self.state).await {
            Ok(v) => {
                self.version = v;
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                Err(e)
            }
        }
    }

    /// The shadow handle.
    pub fn shadow(&self) -> &Shadow {
        &self.shadow
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn merge_follows_s_3_4() {
        let mut t = json!({"a": 1, "o": {"x": 1, "y": 2}, "arr": [1, 2]});
        super::merge_json(
            &mut t,
            &json!({"a": null, "o": {"y": 3, "z": {"k": true}}, "arr": [3]}),
        );
        assert_eq!(
            t,
            json!({"o": {"x": 1, "y": 3, "z": {"k": true}}, "arr": [3]})
        );
    }
}
