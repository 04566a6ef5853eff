//! [`SyncedState`]: the application's typed state bound to a shadow.

use std::pin::Pin;

use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use tokio::sync::watch;

use crate::driver::SyncProblem;
use crate::error::{Error, Result};
use crate::shadow::{Delta, Shadow};
use crate::typed;

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

/// A delta that [`SyncedState::next`] applied to the state. Owned, so the state can be read
/// ([`SyncedState::get`], [`SyncedState::version`]) while holding it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Applied {
    /// The shadow version of the delta.
    pub version: u64,
    /// The top-level desired keys the delta changed (empty for a resynchronization that only
    /// re-reported the state).
    pub keys: Vec<String>,
    /// True when the delta came from a document fetched after a (re)connect.
    pub resync: bool,
    /// The shadow version the new state was reported at, or why the report failed. A report
    /// the hub refused for now (429, 503) is retried a few times first; one that still failed
    /// is sent again after the next resynchronization. The change is applied either way.
    pub report: Result<u64>,
}

/// Reports the hub refused for now (429, 503) are retried this many times...
const REPORT_RETRIES: u32 = 4;
/// ...first after this pause, doubled each time (0.1 + 0.2 + 0.4 + 0.8 s: past the hub's
/// one-second rate window).
const REPORT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);

/// Reports `value`, retrying what the hub asked to retry later (429 rate limit, 503 storage)
/// or what the core had no room for yet, a few times with a growing pause; connection errors
/// are left to the next resynchronization.
async fn report_retrying(shadow: Shadow, value: serde_json::Result<Value>) -> Result<u64> {
    let value = value?;
    let mut pause = REPORT_RETRY_FIRST;
    for _ in 0..REPORT_RETRIES {
        match shadow.report(&value).await {
            Err(e)
                if matches!(e, Error::Core(_))
                    || (e.is_retryable() && e.rejection_code().is_some()) =>
            {
                tracing::debug!(error = %e, ?pause, "report refused for now; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    shadow.report(&value).await
}

type ReportFuture = Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send>>;

/// Where [`SyncedState::next`] stands, kept in the struct so that a call dropped half-way (a
/// lost `select!` race) is finished by the next call instead of being lost.
#[derive(Debug)]
enum Stage {
    /// Waiting for a delta.
    Idle,
    /// A delta was applied to the state; its report and its announcement are still due.
    Applied {
        version: u64,
        keys: Vec<String>,
        resync: bool,
    },
}

/// The application's typed state `T`, kept in sync with a shadow: [`SyncedState::next`]
/// applies each delta to `T` and reports the result; a report that failed (connection lost) is
/// sent again after the next resynchronization. Get one with [`Shadow::synced_state`].
///
/// `T` is the device's whole state as it appears in `state.reported`. A delta with keys `T`
/// has no field for, or with a value that does not fit its field, is not applied:
/// [`SyncedState::next`] returns [`Error::State`] naming the keys, every time such a delta
/// comes, until `desired` is fixed.
///
/// **Cancel-safe**: [`SyncedState::next`] can be one branch of a `tokio::select!` next to a
/// timer; when another branch wins, no delta is lost. A delta already applied to the state when
/// the call was dropped is reported and returned by the next call.
pub struct SyncedState<T> {
    shadow: Shadow,
    deltas: Pin<Box<dyn Stream<Item = Delta> + Send>>,
    problems: watch::Receiver<Option<SyncProblem>>,
    state: T,
    version: u64,
    /// The shadow may not hold the state: a report failed or was cancelled.
    dirty: bool,
    stage: Stage,
    /// The report of an applied delta, kept across cancelled calls of `next`.
    in_flight: Option<ReportFuture>,
}

impl<T> std::fmt::Debug for SyncedState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedState")
            .field("shadow", &self.shadow.name())
            .field("version", &self.version)
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl<T> SyncedState<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(
        shadow: Shadow,
        deltas: Pin<Box<dyn Stream<Item = Delta> + Send>>,
        problems: watch::Receiver<Option<SyncProblem>>,
        state: T,
        version: u64,
    ) -> Self {
        SyncedState {
            shadow,
            deltas,
            problems,
            state,
            version,
            dirty: false,
            stage: Stage::Idle,
            in_flight: None,
        }
    }

    /// The current state.
    pub fn get(&self) -> &T {
        &self.state
    }

    /// The shadow version of the last successful report.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the shadow may not hold the current state (the last report failed or was
    /// cancelled; it is sent again after the next resynchronization).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Waits for the next delta, applies it to the state, reports the new state, and returns
    /// what changed; `None` when the thing is closed.
    ///
    /// `Err(Error::State(_))`: the delta does not fit `T` (the error names the keys); nothing
    /// was applied. `Err(Error::TooLarge { .. })` / `Err(Error::SyncLost { .. })`: a message
    /// over [`crate::ThingOptions::max_message_bytes`] was lost; the SDK resyncs by itself,
    /// which succeeds once the desired state shrinks or the limit grows. Cancel-safe (see
    /// [`SyncedState`]).
    pub async fn next(&mut self) -> Option<Result<Applied>> {
        loop {
            if let Stage::Applied { .. } = self.stage {
                // The report future lives in `self`: a call dropped while waiting for the answer
                // is resumed by the next call, never sent twice (a flood of duplicate reports
                // would hit the hub's rate limit).
                if self.in_flight.is_none() {
                    self.dirty = true;
                    let value = serde_json::to_value(&self.state);
                    self.in_flight = Some(Box::pin(report_retrying(self.shadow.clone(), value)));
                }
                let report = match self.in_flight.as_mut() {
                    Some(f) => f.await,
                    None => continue,
                };
                self.in_flight = None;
                if let Ok(v) = report {
                    self.version = v;
                    self.dirty = false;
                }
                let Stage::Applied {
                    version,
                    keys,
                    resync,
                } = std::mem::replace(&mut self.stage, Stage::Idle)
                else {
                    continue;
                };
                return Some(Ok(Applied {
                    version,
                    keys,
                    resync,
                    report,
                }));
            }
            // Both branches are cancel-safe: a watch keeps its place, and the delta stream
            // keeps a delta it had not handed out yet.
            let delta = tokio::select! {
                biased;
                Ok(()) = self.problems.changed() => {
                    if let Some(p) = *self.problems.borrow_and_update() {
                        return Some(Err(p.error()));
                    }
                    continue;
                }
                d = self.deltas.next() => d?,
            };
            if delta.state.is_empty() && !(delta.resync && self.dirty) {
                continue;
            }
            if let Err(e) = self.apply(&delta) {
                return Some(Err(e));
            }
            self.stage = Stage::Applied {
                version: delta.version,
                keys: delta.state.keys().cloned().collect(),
                resync: delta.resync,
            };
        }
    }

    /// Merges the delta into the state, all or nothing.
    fn apply(&mut self, delta: &Delta) -> Result<()> {
        let mut value = serde_json::to_value(&self.state)?;
        merge_json(&mut value, &Value::Object(delta.state.clone()));
        self.state = typed::parse(&value).map_err(Error::State)?;
        Ok(())
    }

    /// Changes the state locally with `f`, then reports the whole state. Returns the new
    /// version. If the report fails (or this call is cancelled), the state stays changed and
    /// is reported again after the next resynchronization.
    pub async fn modify_and_report(&mut self, f: impl FnOnce(&mut T)) -> Result<u64> {
        f(&mut self.state);
        self.report().await
    }

    async fn report(&mut self) -> Result<u64> {
        // Dirty until the hub confirms: a cancelled report is as good as a failed one.
        self.dirty = true;
        let v = self.shadow.report(&self.state).await?;
        self.version = v;
        self.dirty = false;
        Ok(v)
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
