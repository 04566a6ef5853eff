//! The admin commands: `things`, `shadow`, `method`, `ota` and `query` against a running hub's
//! REST API (S-9). Request and answer bodies are the API's own types (`api::schema`,
//! `api::ota`), so the CLI cannot drift from the hub it drives.

use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use iothub_hub::api::ota::{CreateJobRequest, JobView, MetaBody, TargetsBody, TaskBody, TaskView};
use iothub_hub::api::schema::{
    CreateThingRequest, CreatedThingView, DesiredRequest, MethodRequest, MethodResult, Page,
    PatchThingRequest, QueryRequest, Thing,
};
use iothub_spec::payload::field;

use super::client::{Client, DEFAULT_TIMEOUT, Failure, Remote, segment};
use super::exit::Outcome;
use super::output::{self, fields, table, time};

/// `iothub things ...`
#[derive(Debug, Args)]
pub struct ThingsArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: ThingsCommand,
}

#[derive(Debug, Subcommand)]
enum ThingsCommand {
    /// Register a thing; its secret (MQTT password) is shown this once.
    Create {
        /// The thing id (S-1.1); generated when left out.
        id: Option<String>,
        /// The secret; generated when left out.
        #[arg(long)]
        password: Option<String>,
        /// A tag as KEY=VALUE (VALUE is JSON when it parses as JSON, else a string); repeat.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, Value)>,
    },
    /// List things, a page at a time.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only enabled (true) or disabled (false) things.
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Show one thing.
    Get {
        /// The thing id.
        id: String,
    },
    /// Allow a thing to connect again.
    Enable {
        /// The thing id.
        id: String,
    },
    /// Refuse a thing's connections (its live connection is closed).
    Disable {
        /// The thing id.
        id: String,
    },
    /// Delete a thing with its shadows.
    Delete {
        /// The thing id.
        id: String,
    },
}

/// Paging of lists (S-9.2).
#[derive(Debug, Clone, Args)]
struct PageArgs {
    /// Page number, from 0.
    #[arg(long, default_value_t = 0)]
    page: u64,
    /// Items per page, 1 to 1000.
    #[arg(long, default_value_t = 20)]
    page_size: u64,
}

/// `iothub shadow ...`
#[derive(Debug, Args)]
pub struct ShadowArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: ShadowCommand,
}

#[derive(Debug, Subcommand)]
enum ShadowCommand {
    /// Show a shadow: desired, reported, delta, version.
    Get {
        /// The thing id.
        thing: String,
        /// The shadow's name.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Merge JSON into a shadow's desired state (`null` deletes a key).
    SetDesired {
        /// The thing id.
        thing: String,
        /// The desired state to merge, a JSON object, e.g. '{"led":"on"}'.
        desired: String,
        /// The shadow's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Apply only at this shadow version (exit code 4 otherwise).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete a shadow.
    Delete {
        /// The thing id.
        thing: String,
        /// The shadow's name.
        #[arg(long, default_value = "default")]
        name: String,
    },
}

/// `iothub method ...`
#[derive(Debug, Args)]
pub struct MethodArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: MethodCommand,
}

#[derive(Debug, Subcommand)]
enum MethodCommand {
    /// Invoke a direct method on a connected thing and print the device's answer.
    Call {
        /// The thing id.
        thing: String,
        /// The method's name.
        name: String,
        /// The request's data, JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Seconds to wait for the device's answer (1 to 300).
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Seconds to wait for an offline thing to connect (0 to 300).
        #[arg(long)]
        connect_timeout: Option<f64>,
    },
}

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

/// `iothub query 'SQL'`
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    remote: Remote,
    /// An S-9.4 query: `SELECT * FROM things [WHERE ..] [ORDER BY ..]`.
    sql: String,
    #[command(flatten)]
    page: PageArgs,
}

fn parse_tag(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("tag {s:?} is not KEY=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

fn parse_json(what: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text)
        .map_err(|e| Failure::new(Outcome::Usage, format!("{what} is not JSON: {e}")))
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, Failure> {
    serde_json::from_value(value)
        .map_err(|e| Failure::new(Outcome::Failure, format!("unexpected answer: {e}")))
}

fn page_query(page: &PageArgs) -> Vec<(&'static str, String)> {
    vec![
        ("pageIndex", page.page.to_string()),
        ("pageSize", page.page_size.to_string()),
    ]
}

/// Prints `data` as JSON when asked, else with `human`.
fn show(
    remote: &Remote,
    data: Value,
    human: impl FnOnce(Value) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if remote.json {
        println!("{}", output::json(&data));
        Ok(())
    } else {
        human(data)
    }
}

fn thing_rows(things: &[Thing]) -> Vec<Vec<String>> {
    things
        .iter()
        .map(|t| {
            vec![
                t.thing_id.clone(),
                t.enabled.to_string(),
                t.connected.to_string(),
                time(Some(t.created_at)),
                Value::Object(t.tags.clone()).to_string(),
            ]
        })
        .collect()
}

const THING_HEADERS: [&str; 5] = ["THING", "ENABLED", "CONNECTED", "CREATED", "TAGS"];

fn show_thing(t: &Thing) {
    fields(&[
        ("thing", t.thing_id.clone()),
        ("enabled", t.enabled.to_string()),
        ("connected", t.connected.to_string()),
        ("connected at", time(t.connected_at)),
        ("disconnected at", time(t.disconnected_at)),
        ("created", time(Some(t.created_at))),
        ("tags", Value::Object(t.tags.clone()).to_string()),
        ("tags version", t.tags_version.to_string()),
    ]);
}

fn show_page(remote: &Remote, data: Value) -> Result<(), Failure> {
    show(remote, data, |data| {
        let page: Page<Thing> = typed(data)?;
        table(&THING_HEADERS, &thing_rows(&page.content));
        println!("({} of {})", page.content.len(), page.total);
        Ok(())
    })
}

/// Runs `iothub things ...`.
pub async fn things(args: ThingsArgs) -> Result<Outcome, Failure> {
    let client = Client::new(&args.remote)?;
    let remote = &args.remote;
    let no_body: Option<&Value> = None;
    match args.command {
        ThingsCommand::Create { id, password, tags } => {
            let body = CreateThingRequest {
                thing_id: id,
                password,
                tags: (!tags.is_empty()).then(|| tags.into_iter().collect::<Map<_, _>>()),
            };
            let data = client
                .call(Method::POST, "/things", &[], Some(&body), DEFAULT_TIMEOUT)
                .await?;
            show(remote, data, |data| {
                let t: CreatedThingView = typed(data)?;
                fields(&[
                    ("thing", t.thing_id),
                    ("password", t.password),
                    ("enabled", t.enabled.to_string()),
                    ("tags", Value::Object(t.tags).to_string()),
                ]);
                eprintln!("The password is shown only this once: keep it now.");
                Ok(())
            })?;
        }
        ThingsCommand::List { page, enabled } => {
            let mut query = page_query(&page);
            if let Some(enabled) = enabled {
                query.push(("enabled", enabled.to_string()));
            }
            let data = client
                .call(Method::GET, "/things", &query, no_body, DEFAULT_TIMEOUT)
                .await?;
            show_page(remote, data)?;
        }
        ThingsCommand::Get { id } => {
            let path = format!("/things/{}", segment(&id));
            let data = client
                .call(Method::GET, &path, &[], no_body, DEFAULT_TIMEOUT)
                .await?;
            show(remote, data, |data| {
                show_thing(&typed(data)?);
                Ok(())
            })?;
        }
        ThingsCommand::Enable { id } => set_enabled(&client, remote, &id, true).await?,
        ThingsCommand::Disable { id } => set_enabled(&client, remote, &id, false).await?,
        ThingsCommand::Delete { id } => {
            let path = format!("/things/{}", segment(&id));
            let data = client
                .call(Method::DELETE, &path, &[], no_body, DEFAULT_TIMEOUT)
                .await?;
            show(remote, data, |_| {
                println!("deleted {id}");
                Ok(())
            })?;
        }
    }
    Ok(Outcome::Ok)
}

async fn set_enabled(client: &Client, remote: &Remote, id: &str, on: bool) -> Result<(), Failure> {
    let path = format!("/things/{}", segment(id));
    let body = PatchThingRequest { enabled: on };
    let data = client
        .call(Method::PATCH, &path, &[], Some(&body), DEFAULT_TIMEOUT)
        .await?;
    show(remote, data, |data| {
        show_thing(&typed(data)?);
        Ok(())
    })
}

/// Runs `iothub shadow ...`.
pub async fn shadow(args: ShadowArgs) -> Result<Outcome, Failure> {
    let client = Client::new(&args.remote)?;
    let remote = &args.remote;
    let no_body: Option<&Value> = None;
    let path =
        |thing: &str, name: &str| format!("/things/{}/shadows/{}", segment(thing), segment(name));
    match args.command {
        ShadowCommand::Get { thing, name } => {
            let data = client
                .call(
                    Method::GET,
                    &path(&thing, &name),
                    &[],
                    no_body,
                    DEFAULT_TIMEOUT,
                )
                .await?;
            show(remote, data, |doc| {
                let state = &doc[field::STATE];
                fields(&[
                    ("version", doc[field::VERSION].to_string()),
                    ("desired", state[field::DESIRED].to_string()),
                    ("reported", state[field::REPORTED].to_string()),
                    ("delta", state[field::DELTA].to_string()),
                    ("updated", time(doc[field::TIMESTAMP].as_u64())),
                ]);
                Ok(())
            })?;
        }
        ShadowCommand::SetDesired {
            thing,
            desired,
            name,
            version,
        } => {
            let desired = parse_json("the desired state", &desired)?;
            let mut state = Map::new();
            state.insert(field::DESIRED.to_owned(), desired);
            let body = DesiredRequest {
                state: Value::Object(state),
                client_token: None,
                version,
            };
            let target = format!("{}/state/desired", path(&thing, &name));
            let data = client
                .call(Method::PUT, &target, &[], Some(&body), DEFAULT_TIMEOUT)
                .await?;
            show(remote, data, |accepted| {
                fields(&[
                    ("version", accepted[field::VERSION].to_string()),
                    (
                        "desired",
                        accepted[field::STATE][field::DESIRED].to_string(),
                    ),
                ]);
                Ok(())
            })?;
        }
        ShadowCommand::Delete { thing, name } => {
            let data = client
                .call(
                    Method::DELETE,
                    &path(&thing, &name),
                    &[],
                    no_body,
                    DEFAULT_TIMEOUT,
                )
                .await?;
            show(remote, data, |_| {
                println!("deleted shadow {name} of {thing}");
                Ok(())
            })?;
        }
    }
    Ok(Outcome::Ok)
}

/// Runs `iothub method call ...`; exit code 9 when the device answered with an error code.
pub async fn method(args: MethodArgs) -> Result<Outcome, Failure> {
    let client = Client::new(&args.remote)?;
    let remote = &args.remote;
    let MethodCommand::Call {
        thing,
        name,
        payload,
        timeout,
        connect_timeout,
    } = args.command;
    let body = MethodRequest {
        data: parse_json("--payload", &payload)?,
        timeout: Some(timeout),
        connect_timeout,
        resp_timeout: None,
        conn_timeout: None,
    };
    // The hub answers within both waits; give the HTTP call a little more than that.
    let waits = timeout.max(0.0) + connect_timeout.unwrap_or(0.0).max(0.0) + 10.0;
    let path = format!("/things/{}/methods/{}", segment(&thing), segment(&name));
    let data = client
        .call(
            Method::POST,
            &path,
            &[],
            Some(&body),
            Duration::from_secs_f64(waits.min(3600.0)),
        )
        .await?;
    let result: MethodResult = typed(data.clone())?;
    show(remote, data, |_| {
        fields(&[
            ("code", result.code.to_string()),
            ("message", result.message.clone()),
            ("data", output::json(&result.data)),
        ]);
        Ok(())
    })?;
    Ok(if result.code >= 400 {
        Outcome::DeviceError
    } else {
        Outcome::Ok
    })
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
            if remote.json {
                if let (Some(page), Value::Object(job)) = (&task_page, &mut data) {
                    job.insert("tasks".to_owned(), page.clone());
                }
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

/// Runs `iothub query 'SQL'`.
pub async fn query(args: QueryArgs) -> Result<Outcome, Failure> {
    let client = Client::new(&args.remote)?;
    let body = QueryRequest {
        query: args.sql,
        page_index: Some(args.page.page),
        page_size: Some(args.page.page_size),
    };
    let data = client
        .call(
            Method::POST,
            "/things/query",
            &[],
            Some(&body),
            DEFAULT_TIMEOUT,
        )
        .await?;
    show_page(&args.remote, data)?;
    Ok(Outcome::Ok)
}
