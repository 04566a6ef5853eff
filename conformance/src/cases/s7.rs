//! S-7 OTA: listed, not run. The hub has no OTA jobs yet (S-7.3, S-9.6), so these cases are
//! always skipped with that reason until both exist.

use crate::case::Case;

const REASON: &str =
    "S-7 OTA jobs do not exist yet (no hub support for /api/v1/ota/jobs; checks not written)";

/// The S-7 cases (all pending).
pub fn cases() -> Vec<Case> {
    vec![
        Case::pending(
            "s7_ota_task_delivered",
            &["S-7.1"],
            "a job's task reaches the thing on T/ota/task with the S-7.1 shape",
            REASON,
        ),
        Case::pending(
            "s7_ota_results_recorded",
            &["S-7.2", "S-7.3"],
            "ongoing/done/failed results on T/ota/task/result update the task status",
            REASON,
        ),
        Case::pending(
            "s7_ota_rollout_rate",
            &["S-7.3"],
            "a job sends at most maxPerMinute tasks per minute",
            REASON,
        ),
        Case::pending(
            "s7_ota_resend_on_reconnect",
            &["S-7.3"],
            "a pending task is sent again when its thing reconnects",
            REASON,
        ),
        Case::pending(
            "s7_ota_task_timeout",
            &["S-7.3"],
            "a task without a final result times out",
            REASON,
        ),
        Case::pending(
            "s7_ota_job_cancel",
            &["S-7.3", "S-9.6"],
            "cancelling a job cancels its open tasks",
            REASON,
        ),
        Case::pending(
            "s9_ota_jobs_rest",
            &["S-9.6"],
            "POST /ota/jobs, GET /ota/jobs/{id}, /tasks, /cancel shapes and codes",
            REASON,
        ),
    ]
}
