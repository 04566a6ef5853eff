//! `iothub things create|list|get|enable|disable|delete|tag` (S-9.2, S-9.3).

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value};

use iothub_hub::api::schema::{
    CreateThingRequest, CreatedThingView, PatchThingRequest, TagsRequest, TagsView, Thing,
};

use super::{PageArgs, page_query, show, show_page, typed};
use crate::cli::client::{Client, DEFAULT_TIMEOUT, Failure, Remote, segment};
use crate::cli::exit::Outcome;
use crate::cli::output::{fields, time};

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
    /// Edit a thing's tags in place with a JSON merge-patch (RFC 7386): objects merge, `null`
    /// deletes, anything else replaces; the other tags stay (D-42).
    Tag {
        /// The thing id.
        id: String,
        /// The merge-patch, a JSON object, e.g. '{"location":{"floor":3},"owner":null}'.
        #[arg(long, value_parser = parse_patch)]
        patch: Map<String, Value>,
        /// Apply only at this tags version (exit code 4 when the tags have changed since).
        #[arg(long)]
        version: Option<u64>,
    },
}

fn parse_patch(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the patch must be a JSON object".into()),
        Err(e) => Err(format!("the patch is not JSON: {e}")),
    }
}

fn parse_tag(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("tag {s:?} is not KEY=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

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
        ThingsCommand::Tag { id, patch, version } => {
            let path = format!("/things/{}/tags", segment(&id));
            let body = TagsRequest {
                tags: patch,
                version,
            };
            let data = client
                .call(Method::PATCH, &path, &[], Some(&body), DEFAULT_TIMEOUT)
                .await?;
            show(remote, data, |data| {
                let t: TagsView = typed(data)?;
                fields(&[
                    ("thing", id.clone()),
                    ("tags", Value::Object(t.tags).to_string()),
                    ("tags version", t.version.to_string()),
                ]);
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
