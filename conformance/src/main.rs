//! `iothub-conformance`: runs the conformance suite against a hub (`hub`) or a device
//! (`device`), or lists its cases (`list`). See the crate README for usage.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use iothub_conformance::case::{Case, Outcome};
use iothub_conformance::cases;
use iothub_conformance::ctx::Ctx;
use iothub_conformance::device::DeviceCtx;
use iothub_conformance::external::{self, Denials};
use iothub_conformance::net::{TlsClient, TlsOptions, TlsSetupError};
use iothub_conformance::report::{self, CaseResult};
use iothub_conformance::spawn::{SpawnSpec, SpawnedHub};

#[derive(Parser)]
#[command(version, about = "Conformance suite for iothub hubs (docs/spec.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// The human table (default).
    Table,
    /// JSON with the same content.
    Json,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Cmd {
    /// Check a hub: play devices over MQTT and the business side over REST.
    Hub {
        /// MQTT address of the hub: `HOST:PORT` or `mqtt://HOST:PORT`.
        #[arg(long, required_unless_present = "spawn_hub")]
        mqtt: Option<String>,
        /// REST address of the hub: `HOST:PORT` or `http://HOST:PORT`.
        #[arg(long, required_unless_present = "spawn_hub")]
        api: Option<String>,
        /// Admin bearer token.
        #[arg(
            long,
            env = "IOTHUB_ADMIN_TOKEN",
            hide_env_values = true,
            required_unless_present = "spawn_hub"
        )]
        token: Option<String>,
        /// Keep the things the run created (their ids carry the run id, printed at the start);
        /// by default they are deleted at the end, also after Ctrl-C.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        files: ReportFiles,
        /// A service user of the hub, `$name:secret` (cases that need one are skipped without).
        #[arg(long)]
        service_user: Option<String>,
        /// Run only cases checking a clause with this prefix (`S-3`, `S-3.4`), or this case id;
        /// repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Skip a case: `CASE=reason`; repeatable.
        #[arg(long)]
        skip: Vec<String>,
        /// Start this hub binary on 127.0.0.1:0 with a temporary data dir, a generated admin
        /// token and service user (instead of --mqtt/--api/--token).
        #[arg(long)]
        spawn_hub: Option<PathBuf>,
        /// With --spawn-hub: one more argument for the spawned hub (repeatable), e.g.
        /// `--hub-arg=--mqtts-addr=127.0.0.1:0` for --tls.
        #[arg(
            long,
            requires = "spawn_hub",
            allow_hyphen_values = true,
            value_name = "ARG"
        )]
        hub_arg: Vec<String>,
        #[command(flatten)]
        tls: TlsArgs,
        /// The hub runs on a broker it does not run (docs/spec.md D-59..D-66, e.g. `iothub
        /// --broker` on Mosquitto): --mqtt is that broker; its refusals are its own (D-59) and
        /// the cases that cannot apply there are skipped with the reason.
        #[arg(long, conflicts_with = "spawn_hub")]
        external_broker: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        report: Format,
        /// Diff the run against this expected-results file; any change makes the exit code
        /// non-zero.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Write the run's results as an expected-results file.
        #[arg(long)]
        write_expected: Option<PathBuf>,
        /// Name of the implementation recorded by --write-expected.
        #[arg(long, default_value = "reference hub (hub/, binary iothub)")]
        implementation: String,
    },
    /// Check a device: play the hub (a scripted MQTT server on a free loopback port) and run
    /// the device with COMMAND; see the README for the environment it gets.
    Device {
        /// The command that runs the device under test (split like a shell would, run
        /// directly; use `sh -c '..'` for shell features).
        #[arg(long)]
        exec: String,
        /// The direct method the device implements and answers 200 (S-5.2).
        #[arg(long, default_value = "reboot")]
        method: String,
        /// Let the device's stdout/stderr through.
        #[arg(long)]
        device_output: bool,
        /// Run only cases checking a clause with this prefix, or this case id; repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Skip a case: `CASE=reason`; repeatable.
        #[arg(long)]
        skip: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        report: Format,
        /// Diff the run against this expected-results file.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Write the run's results as an expected-results file.
        #[arg(long)]
        write_expected: Option<PathBuf>,
        /// Name of the implementation recorded by --write-expected.
        #[arg(long, default_value = "device")]
        implementation: String,
        #[command(flatten)]
        files: ReportFiles,
    },
    /// Print the coverage list: every case with the clauses it checks.
    List,
}

fn list() {
    let hub = cases::all();
    let device = iothub_conformance::device::cases::all();
    println!("hub side (iothub-conformance hub):");
    list_side(&hub);
    println!("device side (iothub-conformance device):");
    list_side(&device);
    let mut clauses: Vec<&String> = hub
        .iter()
        .flat_map(|c| &c.clauses)
        .chain(device.iter().flat_map(|c| &c.clauses))
        .collect();
    clauses.sort();
    clauses.dedup();
    println!(
        "{} cases over {} clauses",
        hub.len() + device.len(),
        clauses.len()
    );
}

fn list_side<C>(all: &[Case<C>]) {
    for c in all {
        let note = c
            .pending
            .as_deref()
            .map(|p| format!("  [skipped: {p}]"))
            .unwrap_or_default();
        println!(
            "{:<22} {:<48} {}{}",
            c.clauses.join(","),
            c.id,
            c.title,
            note
        );
    }
    let mut clauses: Vec<&String> = all.iter().flat_map(|c| &c.clauses).collect();
    clauses.sort();
    clauses.dedup();
    println!("  {} cases over {} clauses", all.len(), clauses.len());
}

/// MQTT over TLS (`hub --tls`).
#[derive(clap::Args)]
struct TlsArgs {
    /// Open every MQTT connection over TLS to --mqtt (with --spawn-hub: to the hub's MQTT over
    /// TLS listener), checking the hub's certificate against --ca-file. REST stays as --api
    /// says.
    #[arg(long, requires = "ca_file")]
    tls: bool,
    /// PEM file with the CA certificate(s) the hub's certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) to present, for hubs that require mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The name the hub's certificate must carry (default: the host of the MQTT address).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS client for `--tls`, `None` without it.
    fn client(&self) -> Result<Option<Arc<TlsClient>>, TlsSetupError> {
        let Some(ca_file) = self.ca_file.clone().filter(|_| self.tls) else {
            return Ok(None);
        };
        let opts = TlsOptions {
            ca_file,
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        TlsClient::new(&opts).map(|c| Some(Arc::new(c)))
    }
}

/// Report files of a run.
#[derive(clap::Args)]
struct ReportFiles {
    /// Write the run as JUnit XML (one test case per conformance case, its clauses as the class
    /// name) for CI servers.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write the run as one HTML page (failures first, then a table per clause).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

/// Exit status when the preflight (or unusable `--tls` input) stops the run.
const EXIT_PREFLIGHT: i32 = 2;
/// Exit status of a run interrupted by SIGINT or SIGTERM (128 + SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What both sides share: selection, skips, output, expected-results diff.
struct RunOpts {
    side: &'static str,
    target: String,
    junit: Option<PathBuf>,
    html: Option<PathBuf>,
    only: Vec<String>,
    skip: Vec<String>,
    format: Format,
    expect: Option<PathBuf>,
    write_expected: Option<PathBuf>,
    implementation: String,
}

impl RunOpts {
    fn skips(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut skips = Vec::new();
        for s in &self.skip {
            let Some((id, reason)) = s.split_once('=') else {
                bail!("--skip wants CASE=reason, got {s:?}");
            };
            skips.push((id.to_string(), reason.to_string()));
        }
        Ok(skips)
    }
}

/// Runs the selected `all` cases with `ctx`, prints the table or JSON report, writes the
/// expected file and returns whether the run failed (any failure, or with `--expect` any
/// change).
async fn run_side<C: Send + Sync + 'static>(
    all: Vec<Case<C>>,
    ctx: Arc<C>,
    o: &RunOpts,
) -> anyhow::Result<bool> {
    let skips = o.skips()?;
    let expected = match &o.expect {
        Some(p) => Some(report::parse_expected(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => None,
    };
    let selected: Vec<Case<C>> = all.into_iter().filter(|c| c.selected(&o.only)).collect();
    let mut results = Vec::new();
    for c in &selected {
        let (outcome, elapsed, exchange) = match skips.iter().find(|(id, _)| id == &c.id) {
            Some((_, reason)) => (
                Outcome::Skip(reason.clone()),
                Default::default(),
                Vec::new(),
            ),
            None => c.execute(ctx.clone()).await,
        };
        if o.format == Format::Table {
            eprintln!("{:<6} {}", outcome.word(), c.id);
        }
        results.push(CaseResult {
            id: c.id.clone(),
            clauses: c.clauses.clone(),
            outcome,
            elapsed,
            exchange,
        });
    }
    // D-41: a failed profile check is reported, but is not a spec failure.
    let mut failed = results.iter().any(|r| {
        matches!(r.outcome, Outcome::Fail(_))
            && !r
                .clauses
                .iter()
                .any(|c| c == iothub_conformance::case::PROFILE)
    });
    let mut out = match o.format {
        Format::Table => report::table(&results),
        Format::Json => String::new(),
    };
    let mut json = report::json_report(&results);
    if let Some(exp) = &expected {
        let changes = report::diff(&results, exp, !o.only.is_empty() || !skips.is_empty());
        if o.format == Format::Table {
            out.push_str(&format!(
                "expected-results diff: {} change(s)\n",
                changes.len()
            ));
            for c in &changes {
                out.push_str(&format!("  {c}\n"));
            }
        }
        json["expectedDiff"] = serde_json::json!(changes);
        // An expected failure is not a surprise: with --expect only changes fail the run.
        failed = !changes.is_empty();
    }
    if o.format == Format::Json {
        out = serde_json::to_string_pretty(&json)? + "\n";
    }
    print!("{out}");
    if let Some(p) = &o.write_expected {
        let v = report::expected_file(&o.implementation, &results);
        std::fs::write(p, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &o.junit {
        std::fs::write(p, iothub_conformance::junit::render(o.side, &results))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &o.html {
        std::fs::write(
            p,
            iothub_conformance::html::render(o.side, &o.target, &results),
        )
        .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(failed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let failed = match cli.cmd {
        Cmd::List => {
            list();
            false
        }
        Cmd::Device {
            exec,
            method,
            device_output,
            only,
            skip,
            report: format,
            expect,
            write_expected,
            implementation,
            files,
        } => {
            let o = RunOpts {
                side: "device",
                target: format!("device: {exec}"),
                junit: files.junit,
                html: files.html,
                only,
                skip,
                format,
                expect,
                write_expected,
                implementation,
            };
            let ctx = Arc::new(DeviceCtx::new(exec, method, device_output));
            run_side(iothub_conformance::device::cases::all(), ctx, &o).await?
        }
        Cmd::Hub {
            mqtt,
            api,
            token,
            service_user,
            only,
            skip,
            spawn_hub,
            hub_arg,
            tls,
            external_broker,
            report: format,
            expect,
            write_expected,
            implementation,
            keep,
            files,
        } => {
            let mut o = RunOpts {
                side: "hub",
                target: String::new(),
                junit: files.junit,
                html: files.html,
                only,
                skip,
                format,
                expect,
                write_expected,
                implementation,
            };
            let spawned = spawn_hub.is_some();
            let tls = match tls.client() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("iothub-conformance: --tls: {e}");
                    std::process::exit(EXIT_PREFLIGHT);
                }
            };
            let mut _hub = None;
            let ctx = match spawn_hub {
                Some(bin) => {
                    let spec = SpawnSpec {
                        bin,
                        args: hub_arg,
                        tls: tls.clone(),
                    };
                    let hub = SpawnedHub::start_spec(&spec).await?;
                    let ctx = iothub_conformance::ctx::for_spawned(&hub, Some(spec)).await?;
                    _hub = Some(hub);
                    ctx
                }
                None => {
                    let service = match service_user {
                        Some(s) => {
                            let Some((u, p)) = s.split_once(':') else {
                                bail!("--service-user wants '$name:secret'");
                            };
                            Some((u.to_string(), p.to_string()))
                        }
                        None => None,
                    };
                    Ctx::new(
                        mqtt.as_deref().unwrap_or_default(),
                        api.as_deref().unwrap_or_default(),
                        token.as_deref().unwrap_or_default(),
                        service,
                        None,
                        tls,
                    )
                    .await?
                }
            };
            let mut ctx = ctx;
            let mut all = cases::all();
            if external_broker {
                ctx.denials = Denials::Broker;
                all = external::without_not_applicable(all);
            }
            let ctx = Arc::new(ctx);
            let pre = match iothub_conformance::preflight::hub(&ctx.mqtt, &ctx.api).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("iothub-conformance: preflight: {e}");
                    // `exit` runs no destructors: stop a spawned hub first, or it outlives us.
                    drop(_hub.take());
                    std::process::exit(EXIT_PREFLIGHT);
                }
            };
            o.target = format!(
                "hub {} at mqtt={}:{}{} api={} (run id {})",
                pre.hub_version.as_deref().unwrap_or("(version not stated)"),
                ctx.mqtt.host,
                ctx.mqtt.port,
                match ctx.mqtt.tls() {
                    Some(t) => format!(" over TLS (CA {})", t.ca_file().display()),
                    None => String::new(),
                },
                ctx.api.base(),
                ctx.run_id()
            );
            eprintln!("preflight: {}", o.target);
            let outcome = tokio::select! {
                r = run_side(all, ctx.clone(), &o) => Some(r),
                () = interrupted() => None,
            };
            // A spawned hub goes away with its data; a hub given by address keeps only what
            // --keep asks for.
            if !spawned {
                if keep {
                    eprintln!("kept the things of run {}", ctx.run_id());
                } else {
                    match ctx.cleanup().await {
                        Ok(n) => eprintln!("deleted the {n} things of run {}", ctx.run_id()),
                        Err(e) => eprintln!(
                            "iothub-conformance: could not delete the things of run {}: {e:#}",
                            ctx.run_id()
                        ),
                    }
                }
            }
            match outcome {
                Some(r) => r?,
                None => {
                    eprintln!("iothub-conformance: interrupted");
                    drop(_hub.take());
                    std::process::exit(EXIT_INTERRUPTED);
                }
            }
        }
    };
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
