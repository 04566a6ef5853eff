//! The admin commands: `things`, `shadow`, `method`, `ota` and `query` against a running hub's
//! REST API (S-9). Request and answer bodies are the API's own types (`api::schema`,
//! `api::ota`), so the CLI cannot drift from the hub it drives. One file per resource; the
//! helpers they share (paging, typed answers, `--json` or a table) are here.

mod devices;
mod ota;
mod things;

pub use devices::{MethodArgs, ShadowArgs, method, shadow};
pub use ota::{OtaArgs, ota};
pub use things::{ThingsArgs, things};

use clap::Args;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use iothub_hub::api::schema::{Page, QueryRequest, Thing};

use super::client::{Client, DEFAULT_TIMEOUT, Failure, Remote};
use super::exit::Outcome;
use super::output::{self, table, time};

/// Paging of lists (S-9.2).
#[derive(Debug, Clone, Args)]
pub(crate) struct PageArgs {
    /// Page number, from 0.
    #[arg(long, default_value_t = 0)]
    pub(crate) page: u64,
    /// Items per page, 1 to 1000.
    #[arg(long, default_value_t = 20)]
    pub(crate) page_size: u64,
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

pub(crate) fn parse_json(what: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text)
        .map_err(|e| Failure::new(Outcome::Usage, format!("{what} is not JSON: {e}")))
}

pub(crate) fn typed<T: DeserializeOwned>(value: Value) -> Result<T, Failure> {
    serde_json::from_value(value)
        .map_err(|e| Failure::new(Outcome::Failure, format!("unexpected answer: {e}")))
}

pub(crate) fn page_query(page: &PageArgs) -> Vec<(&'static str, String)> {
    vec![
        ("pageIndex", page.page.to_string()),
        ("pageSize", page.page_size.to_string()),
    ]
}

/// Prints `data` as JSON when asked, else with `human`.
pub(crate) fn show(
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

pub(crate) fn thing_rows(things: &[Thing]) -> Vec<Vec<String>> {
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

pub(crate) const THING_HEADERS: [&str; 5] = ["THING", "ENABLED", "CONNECTED", "CREATED", "TAGS"];

pub(crate) fn show_page(remote: &Remote, data: Value) -> Result<(), Failure> {
    show(remote, data, |data| {
        let page: Page<Thing> = typed(data)?;
        table(&THING_HEADERS, &thing_rows(&page.content));
        println!("({} of {})", page.content.len(), page.total);
        Ok(())
    })
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
