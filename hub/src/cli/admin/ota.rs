//! `iothub ota create|status|cancel` (S-9.6).

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use iothub_hub::api::ota::{CreateJobRequest, JobView, MetaBody, TargetsBody, TaskBody, TaskView};
use iothub_hub::api::schema::Page;

use super::{show, typed};
use crate::cli::client::{Client, DEFAULT_TIMEOUT, Failure, Remote, segment};
use crate::cli::exit::Outcome;
use crate::cli::output::{fields, table, time};

/// `iothub ota ...`
#[derive(Debug, Args)]
pub struct OtaArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: OtaCommand,
}

#[derive(Debug, Subcommand)]
enum OtaCommand {
    /// Create an OTA job for some things (--thing, repeatable) or a query's things (--query).
    Create {
        /// A target thing; repeat for more.
        #[arg(long = "thing", required_unless_present = "query")]
        things: Vec<String>,
        /// Target the things this S-9.4 query matches now.
        #[arg(long, conflicts_with = "things")]
        query: Option<String>,
        /// Absolute URL of the file the devices download.
        #[arg(long)]
        file_url: String,
        /// The version the devices move to.
        #[arg(long = "file-version")]
        file_version: String,
        /// The task's type.
        #[arg(long = "type", default_value = "firmware")]
        task_type: String,
        /// MD5 of the file, 32 hex digits.
        #[arg(long)]
        md5: Option<String>,
        /// SHA-256 of the file, 64 hex digits.
        #[arg(long)]
        sha256: Option<String>,
        /// Tasks started per minute.
        #[arg(long)]
        max_per_minute: Option<u32>,
        /// Minutes a device has to finish (fractions allowed).
        #[arg(long)]
        timeout_minutes: Option<f64>,
        /// Retries of a failed task.
        #[arg(long)]
        retries: Option<u32>,
    },
    /// Show a job's progress; with --tasks, its tasks too.
    Status {
        /// The job id.
        job: String,
        /// Also list the job's tasks (first page).
        #[arg(long)]
        tasks: bool,
    },
    /// Cancel a job: tasks not yet ended are canceled.
    Cancel {
        /// The job id.
        job: String,
    },
}

fn show_job(job: &JobView) {
    let counts = &job.counts;
    fields(&[
        ("job", job.job_id.clone()),
        ("status", job.status.clone()),
        ("progress", format!("{}%", job.progress)),
        ("version", job.task.meta.version.clone()),
        ("file", job.task.file_url.clone()),
        (
            "tasks",
            format!(
                "{} (queued {}, sent {}, ongoing {}, done {}, failed {}, canceled {}, timed out {})",
                job.total,
                counts.queued,
                counts.sent,
                counts.ongoing,
                counts.done,
                counts.failed,
                counts.canceled,
                counts.timed_out
            ),
        ),
        ("created", time(Some(job.created_at))),
        ("updated", time(Some(job.updated_at))),
    ]);
}

/// Runs `iothub ota ...`.
pub async fn ota(args: OtaArgs) -> Result<Outcome, Failure> {
    let client = Client::new(&args.remote)?;
    let remote = &args.remote;
    let no_body: Option<&Value> = None;
    match args.command {
        OtaCommand::Create {
            things,
            query,
            file_url,
            file_version,
            task_type,
            md5,
            sha256,
            max_per_minute,
            timeout_minutes,
            retries,
        } => {
            let body = CreateJobRequest {
                targets: TargetsBody {
                    thing_ids: (!things.is_empty()).then_some(things),
                    query,
                },
                task: TaskBody {
                    task_type,
                    meta: MetaBody {
                        version: file_version,
                        md5,
                        sha256,
                        content_type: None,
                        content_length: None,
                    },
                    file_url,
                },
                max_per_minute,
                timeout_minutes,
                retries,
            };
            let data = client
                .call(Method::POST, "/ota/jobs", &[], Some(&body), DEFAULT_TIMEOUT)
                .await?;
            show(remote, data, |data| {
                show_job(&typed(data)?);
                Ok(())
            })?;
        }
        OtaCommand::Status { job, tasks } => {
            let path = format!("/ota/jobs/{}", segment(&job));
            let mut data = client
                .call(Method::GET, &path, &[], no_body, DEFAULT_TIMEOUT)
                .await?;
            let task_page = if tasks {
                let path = format!("{path}/tasks");
                Some(
                    client
                        .call(Method::GET, &path, &[], no_body, DEFAULT_TIMEOUT)
                        .await?,
                )
            } else {
                None
            };
            if let (true, Some(page), Value::Object(job)) = (remote.json, &task_page, &mut data) {
                job.insert("tasks".to_owned(), page.clone());
            }
            show(remote, data, |data| {
                show_job(&typed(data)?);
                if let Some(page) = task_page {
                    let page: Page<TaskView> = typed(page)?;
                    println!();
                    let rows: Vec<Vec<String>> = page
                        .content
                        .iter()
                        .map(|t| {
                            vec![
                                t.thing_id.clone(),
                                t.status.clone(),
                                t.attempt.to_string(),
                                t.progress.map_or("-".into(), |p| format!("{p}%")),
                                t.err_msg.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    table(&["THING", "STATUS", "ATTEMPT", "PROGRESS", "ERROR"], &rows);
                    println!("({} of {})", page.content.len(), page.total);
                }
                Ok(())
            })?;
        }
        OtaCommand::Cancel { job } => {
            let path = format!("/ota/jobs/{}/cancel", segment(&job));
            let data = client
                .call(Method::POST, &path, &[], no_body, DEFAULT_TIMEOUT)
                .await?;
            show(remote, data, |data| {
                show_job(&typed(data)?);
                Ok(())
            })?;
        }
    }
    Ok(Outcome::Ok)
}
