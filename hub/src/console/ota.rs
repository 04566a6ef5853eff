//! OTA jobs pages (`/console/ota...`): running jobs, a form to create a job (S-9.6), a job's
//! progress (tasks per state and per thing, refreshed every few seconds while it runs) and
//! cancelling it. They drive the same [`OtaService`](crate::ota::OtaService) as the REST API.
//!
//! The store keeps no index of ended jobs, so the list shows running jobs; an ended job is
//! opened by its id (the form on the list, or the link the create form led to).

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use iothub_spec::code::OtaTaskState;
use maud::{Markup, html};
use serde::Deserialize;

use super::login::csrf_refused;
use super::{Notice, PageError, SignedIn, format_ms, layout};
use crate::api::ota::{service, timeout_ms};
use crate::api::{ApiError, AppState};
use crate::ota::{CreateJob, Targets};
use crate::store::ota::{OtaJobRecord, OtaJobStatus, OtaTemplate};

/// Running jobs shown on the list, and tasks shown on a job's page.
pub const SHOWN: u64 = 50;
/// Seconds between two refreshes of a running job's page (the `Refresh` header).
const REFRESH: &str = "2";

/// `?id=`: the job to open.
#[derive(Deserialize)]
pub struct OpenParams {
    #[serde(default)]
    id: String,
}

/// The create form; numbers are text so that an empty field means the default.
#[derive(Deserialize, Default)]
pub struct CreateForm {
    /// Missing is refused like a wrong token (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    /// Thing ids separated by commas or spaces, or an S-9.4 query (`SELECT ...`).
    #[serde(default)]
    targets: String,
    #[serde(default)]
    task_type: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    file_url: String,
    #[serde(default)]
    sha256: String,
    #[serde(default)]
    max_per_minute: String,
    #[serde(default)]
    timeout_minutes: String,
    #[serde(default)]
    retries: String,
}

/// The cancel form.
#[derive(Deserialize)]
pub struct CancelForm {
    /// Missing is refused like a wrong token (403).
    #[serde(default)]
    csrf: String,
}

/// `GET /console/ota`.
pub async fn page(signed: SignedIn, State(state): State<AppState>) -> Response {
    render_list(&state, &signed, None, &CreateForm::default()).await
}

/// `GET /console/ota/open?id=`: goes to a job's page.
pub async fn open(_signed: SignedIn, Query(p): Query<OpenParams>) -> Response {
    let id = p.id.trim();
    if crate::ota::is_job_id(id) {
        Redirect::to(&format!("/console/ota/jobs/{id}")).into_response()
    } else {
        PageError(ApiError::new(StatusCode::NOT_FOUND, "no such job")).into_response()
    }
}

/// `POST /console/ota/jobs`: creates the job and shows its page.
pub async fn create(
    signed: SignedIn,
    State(state): State<AppState>,
    Form(f): Form<CreateForm>,
) -> Response {
    if !signed.csrf_ok(&f.csrf) {
        return csrf_refused();
    }
    let created = async {
        let job = job_of(&f)?;
        let ota = service(&state)?;
        Ok::<_, ApiError>(ota.create(job, crate::clock::now_ms()).await?)
    }
    .await;
    match created {
        Ok(job) => Redirect::to(&format!("/console/ota/jobs/{}", job.job_id)).into_response(),
        Err(e) => {
            let mut resp = render_list(&state, &signed, Some(Notice::Failed(e)), &f).await;
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp
        }
    }
}

fn job_of(f: &CreateForm) -> Result<CreateJob, ApiError> {
    let targets = f.targets.trim();
    let targets = if targets
        .get(..7)
        .is_some_and(|w| w.eq_ignore_ascii_case("select "))
    {
        Targets::Query(targets.to_owned())
    } else {
        Targets::Things(
            targets
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    };
    let optional = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let number = |name: &str, s: &str| -> Result<Option<u32>, ApiError> {
        optional(s)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number")))
            })
            .transpose()
    };
    let minutes = optional(&f.timeout_minutes)
        .map(|v| {
            v.parse::<f64>()
                .map_err(|_| ApiError::bad_request("timeout must be a number of minutes"))
        })
        .transpose()?;
    let task_type = optional(&f.task_type).unwrap_or_else(|| "app".to_owned());
    Ok(CreateJob {
        targets,
        template: OtaTemplate {
            task_type,
            version: f.version.trim().to_owned(),
            md5: None,
            sha256: optional(&f.sha256),
            content_type: None,
            content_length: None,
            file_url: f.file_url.trim().to_owned(),
        },
        max_per_minute: number("rate", &f.max_per_minute)?,
        timeout_ms: timeout_ms(minutes)?,
        retries: number("retries", &f.retries)?,
    })
}

async fn render_list(
    state: &AppState,
    signed: &SignedIn,
    notice: Option<Notice>,
    f: &CreateForm,
) -> Response {
    let (jobs, error) = match running(state).await {
        Ok(jobs) => (jobs, None),
        Err(e) => (Vec::new(), Some(Notice::Failed(e))),
    };
    let body = html! {
        h1 { "OTA jobs" }
        @if let Some(n) = &notice { (n.render()) }
        @if let Some(n) = &error { (n.render()) }
        h2 { "Running" }
        @if jobs.is_empty() {
            p.hint #no-jobs { "No job is running." }
        } @else {
            table #jobs {
                thead { tr { th { "job" } th { "version" } th { "created" } th { "progress" } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td { a href=(format!("/console/ota/jobs/{}", j.job_id)) { (j.job_id) } }
                            td { (j.template.task_type) " " (j.template.version) }
                            td { (format_ms(j.created_at)) }
                            td { (progress_bar(j)) }
                        }
                    }
                }
            }
        }
        form #open-job.toolbar method="get" action="/console/ota/open" {
            input #job-id type="text" name="id" placeholder="job id (16 hex digits)" size="20";
            button type="submit" { "Open job" }
        }
        h2 { "New job" }
        form #ota-form.card method="post" action="/console/ota/jobs" {
            (signed.csrf_field())
            label for="targets" { "Things (ids separated by commas) or an S-9.4 query (SELECT ...)" }
            input #targets type="text" name="targets" value=(f.targets) required;
            label for="task_type" { "Type" }
            input #task_type type="text" name="task_type" value=(f.task_type) placeholder="app";
            label for="version" { "Version" }
            input #version type="text" name="version" value=(f.version) required;
            label for="file_url" { "File URL" }
            input #file_url type="text" name="file_url" value=(f.file_url) placeholder="https://..." required;
            label for="sha256" { "SHA-256 (hex, optional)" }
            input #sha256 type="text" name="sha256" value=(f.sha256);
            label for="max_per_minute" { "Tasks per minute (default 1000)" }
            input #max_per_minute type="number" name="max_per_minute" min="1" value=(f.max_per_minute);
            label for="timeout_minutes" { "Timeout in minutes (default 60)" }
            input #timeout_minutes type="number" name="timeout_minutes" min="0" step="any" value=(f.timeout_minutes);
            label for="retries" { "Retries (default 0)" }
            input #retries type="number" name="retries" min="0" max="10" value=(f.retries);
            button #create-job type="submit" { "Create job" }
        }
    };
    layout("OTA jobs", Some(signed), None, body)
}

async fn running(state: &AppState) -> Result<Vec<OtaJobRecord>, ApiError> {
    let ota = service(state)?;
    let Some(store) = state.store.ota() else {
        return Ok(Vec::new());
    };
    let ids = store
        .ota_running_jobs()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut jobs = Vec::new();
    for id in ids
        .iter()
        .take(usize::try_from(SHOWN).unwrap_or(usize::MAX))
    {
        // A job that ended since the listing is left out.
        if let Ok(job) = ota.job(id).await {
            jobs.push(job);
        }
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at));
    Ok(jobs)
}

/// `GET /console/ota/jobs/{id}`.
pub async fn job_page(
    signed: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ota = service(&state)?;
    let job = ota.job(&id).await.map_err(ApiError::from)?;
    let (total, tasks) = ota
        .tasks(&id, None, 0, SHOWN)
        .await
        .map_err(ApiError::from)?;
    let running = job.status == OtaJobStatus::Running;
    let body = html! {
        h1 { "OTA job " span #job-id { (job.job_id) } " " span.conn #job-status .on[running] .off[!running] { (job.status.as_str()) } }
        p {
            (job.template.task_type) " " b { (job.template.version) } " from " code { (job.template.file_url) }
            ", created " (format_ms(job.created_at))
            @if let Some(q) = &job.target_query { ", targets " code { (q) } }
            "."
        }
        (progress_bar(&job))
        table #counts {
            thead { tr { @for s in OtaTaskState::ALL { th { (s.as_str()) } } th { "total" } } }
            tbody { tr {
                @for s in OtaTaskState::ALL {
                    td id=(format!("count-{}", s.as_str())) { (count(&job, s)) }
                }
                td #count-total { (job.counts.total()) }
            } }
        }
        @if running {
            form #cancel-job method="post" action=(format!("/console/ota/jobs/{}/cancel", job.job_id)) {
                (signed.csrf_field())
                button.danger #cancel type="submit" { "Cancel job" }
            }
        }
        h2 { "Tasks" }
        table #tasks {
            thead { tr { th { "thing" } th { "state" } th { "progress" } th { "attempt" } th { "error" } th { "last change" } } }
            tbody {
                @for t in &tasks {
                    tr data-task=(t.thing_id) {
                        td { a href=(format!("/console/things/{}", t.thing_id)) { (t.thing_id) } }
                        td.state { (t.status.as_str()) }
                        td { @if let Some(p) = t.progress { (p) "%" } }
                        td { (t.attempt) }
                        td { @if let Some(c) = t.err_code { (c) " " } @if let Some(m) = &t.err_msg { (m) } }
                        td { (format_ms(t.updated_at)) }
                    }
                }
            }
        }
        @if total > SHOWN { p.hint { "First " (SHOWN) " of " (total) " tasks; " code { "GET /api/v1/ota/jobs/" (job.job_id) "/tasks" } " has them all." } }
        p { a href="/console/ota" { "All running jobs" } }
    };
    let mut resp = layout(&format!("OTA job {id}"), Some(&signed), None, body);
    if running {
        // Progress without a script: the browser reloads the page while the job runs.
        resp.headers_mut()
            .insert("refresh", HeaderValue::from_static(REFRESH));
    }
    Ok(resp)
}

/// `POST /console/ota/jobs/{id}/cancel`.
pub async fn cancel(
    signed: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(f): Form<CancelForm>,
) -> Result<Response, PageError> {
    if !signed.csrf_ok(&f.csrf) {
        return Ok(csrf_refused());
    }
    service(&state)?.cancel(&id).await.map_err(ApiError::from)?;
    Ok(Redirect::to(&format!("/console/ota/jobs/{id}")).into_response())
}

fn count(job: &OtaJobRecord, state: OtaTaskState) -> u64 {
    let c = &job.counts;
    match state {
        OtaTaskState::Queued => c.queued,
        OtaTaskState::Sent => c.sent,
        OtaTaskState::Ongoing => c.ongoing,
        OtaTaskState::Done => c.done,
        OtaTaskState::Failed => c.failed,
        OtaTaskState::Canceled => c.canceled,
        OtaTaskState::TimedOut => c.timed_out,
    }
}

/// Ended tasks out of all, as a bar (a `<progress>` element: no style needed).
fn progress_bar(job: &OtaJobRecord) -> Markup {
    let (ended, total) = (job.counts.ended(), job.counts.total());
    html! {
        span.progress {
            progress max=(total.max(1)) value=(ended) {}
            " " (ended) " of " (total) " ended, " (job.counts.done) " done"
        }
    }
}
