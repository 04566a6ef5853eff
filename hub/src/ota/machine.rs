//! The task state machine (S-7.3): which device result (S-7.2) may move a task where. Pure
//! functions, no I/O, no clock.
//!
//! ```text
//! queued ──send──▶ sent ──ongoing──▶ ongoing ──done|failed|canceled──▶ (final)
//!   ▲               └──────────done|failed|canceled──────────────────▶ (final)
//!   └── retry ◀── failed | timed_out (while attempts remain)
//! cancel (API): queued|sent|ongoing ──▶ canceled     timeout: sent|ongoing ──▶ timed_out
//! ```

use iothub_spec::code::{OtaStatus, OtaTaskState};
use iothub_spec::limits::OTA_PROGRESS_MAX;

/// Why a device result was refused. Nothing changes when a result is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The payload is not an S-7.2 result.
    #[error("malformed result")]
    Malformed,
    /// The thing has no open task with this `taskId` (never had one, an older attempt, or the
    /// task has ended and its job is finished).
    #[error("no such task")]
    NoSuchTask,
    /// The `clientToken` is not the one sent with the task.
    #[error("client token does not match the task")]
    WrongToken,
    /// The task has not been sent yet (e.g. `done` while still queued).
    #[error("task not sent yet")]
    NotSent,
    /// The task has ended already; nothing may follow a final state.
    #[error("task has ended already")]
    AfterFinal,
    /// `progress` is smaller than one already reported.
    #[error("progress going backwards")]
    ProgressBackwards,
    /// `progress` is over 100.
    #[error("progress out of range")]
    ProgressOutOfRange,
}

/// What an accepted result does to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The state changes to this one (recorded as a transition), with the progress to keep.
    Move(OtaTaskState, Option<u8>),
    /// Still `ongoing`; only the progress changes (not a transition).
    Progress(Option<u8>),
}

/// Checks a device result against the task's current `state` and last `progress`.
pub fn on_result(
    state: OtaTaskState,
    progress: Option<u8>,
    status: OtaStatus,
    reported: Option<u8>,
) -> Result<Step, Rejection> {
    if state == OtaTaskState::Queued {
        return Err(Rejection::NotSent);
    }
    if state.is_final() {
        return Err(Rejection::AfterFinal);
    }
    if reported.is_some_and(|p| p > OTA_PROGRESS_MAX) {
        return Err(Rejection::ProgressOutOfRange);
    }
    match status {
        OtaStatus::Ongoing => {
            if let (Some(old), Some(new)) = (progress, reported)
                && new < old
            {
                return Err(Rejection::ProgressBackwards);
            }
            let kept = reported.or(progress);
            if state == OtaTaskState::Sent {
                Ok(Step::Move(OtaTaskState::Ongoing, kept))
            } else {
                Ok(Step::Progress(kept))
            }
        }
        OtaStatus::Done => Ok(Step::Move(OtaTaskState::Done, Some(OTA_PROGRESS_MAX))),
        final_status => Ok(Step::Move(final_status.into(), progress)),
    }
}

/// Whether a task in `state` may be canceled through the API.
pub fn cancelable(state: OtaTaskState) -> bool {
    !state.is_final()
}

/// Whether a task in `state` times out when its deadline passes.
pub fn times_out(state: OtaTaskState) -> bool {
    matches!(state, OtaTaskState::Sent | OtaTaskState::Ongoing)
}

/// Whether an ended task in `state` at `attempt` is queued again, given the job's `retries`.
pub fn retries(state: OtaTaskState, attempt: u32, retries: u32) -> bool {
    matches!(state, OtaTaskState::Failed | OtaTaskState::TimedOut) && attempt <= retries
}

#[cfg(test)]
mod tests {
    use super::*;
    use OtaTaskState::*;

    #[test]
    fn nothing_before_sent_or_after_final() {
        for status in [
            OtaStatus::Ongoing,
            OtaStatus::Done,
            OtaStatus::Failed,
            OtaStatus::Canceled,
        ] {
            assert_eq!(
                on_result(Queued, None, status, None),
                Err(Rejection::NotSent)
            );
            for end in [Done, Failed, Canceled, TimedOut] {
                assert_eq!(
                    on_result(end, Some(10), status, Some(20)),
                    Err(Rejection::AfterFinal)
                );
            }
        }
    }

    #[test]
    fn progress_only_moves_forward() {
        assert_eq!(
            on_result(Sent, None, OtaStatus::Ongoing, Some(5)),
            Ok(Step::Move(Ongoing, Some(5)))
        );
        assert_eq!(
            on_result(Ongoing, Some(5), OtaStatus::Ongoing, Some(5)),
            Ok(Step::Progress(Some(5)))
        );
        assert_eq!(
            on_result(Ongoing, Some(50), OtaStatus::Ongoing, Some(40)),
            Err(Rejection::ProgressBackwards)
        );
        assert_eq!(
            on_result(Ongoing, Some(50), OtaStatus::Ongoing, None),
            Ok(Step::Progress(Some(50)))
        );
        assert_eq!(
            on_result(Sent, None, OtaStatus::Ongoing, Some(101)),
            Err(Rejection::ProgressOutOfRange)
        );
    }

    #[test]
    fn final_results_from_sent_or_ongoing() {
        assert_eq!(
            on_result(Sent, None, OtaStatus::Done, None),
            Ok(Step::Move(Done, Some(100)))
        );
        assert_eq!(
            on_result(Ongoing, Some(30), OtaStatus::Failed, None),
            Ok(Step::Move(Failed, Some(30)))
        );
        assert_eq!(
            on_result(Ongoing, Some(30), OtaStatus::Canceled, None),
            Ok(Step::Move(Canceled, Some(30)))
        );
    }

    #[test]
    fn retry_rules() {
        assert!(retries(Failed, 1, 1));
        assert!(!retries(Failed, 2, 1));
        assert!(retries(TimedOut, 1, 2));
        assert!(!retries(Canceled, 1, 5));
        assert!(!retries(Done, 1, 5));
        assert!(!retries(Failed, 1, 0));
        assert!(times_out(Sent) && times_out(Ongoing) && !times_out(Queued));
        assert!(cancelable(Queued) && cancelable(Ongoing) && !cancelable(Done));
    }
}
