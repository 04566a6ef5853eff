//! `iothub shadow get|set-desired|delete` (S-9.3) and `iothub method call` (S-9.5).

use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value};

use iothub_hub::api::schema::{DesiredRequest, MethodRequest, MethodResult};
use iothub_spec::payload::field;

use super::{parse_json, show, typed};
use crate::cli::client::{Client, DEFAULT_TIMEOUT, Failure, Remote, segment};
use crate::cli::exit::Outcome;
use crate::cli::output::{self, fields, time};

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
