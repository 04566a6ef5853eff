//! `iothub-sim`: load runs against an iothub hub. `iothub-sim run` needs no setup.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iothub_sim::embedded::{self, ChildArgs, EmbeddedHub};
use iothub_sim::progress::Mode;
use iothub_sim::report::Report;
use iothub_sim::run::{Options, Target, TlsTarget, run};
use iothub_sim::scenario::Scenario;
use iothub_sim::shard::Shard;
use iothub_sim::threshold::{self, EXIT_THRESHOLDS};
use iothub_sim::{report, workers};
use tracing_subscriber::EnvFilter;

/// Load runs against an iothub hub: virtual things, each with its own MQTT connection and the
/// SDKs' device core, keep their shadows in sync, answer methods and sync time while the
/// business side changes desired state and calls methods over REST; the report gives latency
/// percentiles per interaction and errors by kind.
///
/// With no --mqtt/--api it starts the reference hub itself, as a child process (this same
/// executable) with a temporary data directory on free loopback ports; the hub's warnings and
/// errors appear on this stderr (RUST_LOG changes the level of both), and it is stopped and its
/// data removed when the run ends or is interrupted. The report then gives the CPU and memory of
/// the hub's process and of the simulator's separately.
#[derive(Parser)]
#[command(name = "iothub-sim", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario (the built-in default without --scenario) and print the report.
    ///
    /// Without --mqtt/--api the reference hub runs as a child process (this executable again)
    /// with a temporary data directory on free loopback ports; its warnings and errors appear on
    /// this stderr (RUST_LOG sets the level of both, default warn), and it is stopped (SIGTERM)
    /// and its data removed when the run ends, fails or is interrupted (Ctrl-C: exit status 130).
    /// The report gives the CPU and memory of the simulator's and the hub's processes.
    Run(Box<RunArgs>),
    /// Merge the JSON reports of a run's shards (`run --shard I/N --report-json`) into the report
    /// of the whole run: counts added, latency histograms added (exact percentiles), thresholds
    /// checked on the merged figures.
    Merge(MergeArgs),
    /// The embedded hub's process (started by `run`; not for direct use).
    #[command(name = embedded::SUBCOMMAND, hide = true)]
    EmbeddedHub(Box<ChildArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario file (TOML, see examples/scenarios/); the flags below override its fields.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Number of virtual things (each one MQTT connection).
    #[arg(long)]
    things: Option<usize>,
    /// Measured activity after the ramp: 15s, 2m, 1h30m (a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<f64>,
    /// Reported-state updates per second over all things.
    #[arg(long)]
    rate: Option<f64>,
    /// Approximate reported-state update size in bytes.
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Connects per second while ramping up.
    #[arg(long)]
    ramp: Option<f64>,
    /// Unanswered updates allowed per thing (at most the hub's 10).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Business side: desired-state changes per second (REST).
    #[arg(long)]
    desired_per_sec: Option<f64>,
    /// Business side: method calls per second (REST).
    #[arg(long)]
    methods_per_sec: Option<f64>,
    /// Business side: seconds between OTA jobs (0 = none).
    #[arg(long)]
    ota_job_interval: Option<f64>,
    /// Business side: things per OTA job.
    #[arg(long)]
    ota_job_things: Option<usize>,
    /// Business side: roll out one configuration (S-11) to the whole fleet when the measured
    /// period begins (desired telemetryInterval, targeting the things' `simulator` tag) and
    /// measure each thing's convergence and the hub's times to all applied and all succeeded.
    #[arg(long)]
    configuration_rollout: bool,
    /// Business side: run one method job (S-12) over the whole fleet when the measured period
    /// begins (the scenario's business.method) and measure its duration and each thing's
    /// latency from the job's start to `succeeded`.
    #[arg(long)]
    method_job: bool,
    /// Business side: the method job's maxPerMinute (1 to 60000).
    #[arg(long, value_name = "N")]
    method_job_per_minute: Option<u32>,
    /// Connection drops per second over the fleet.
    #[arg(long)]
    churn_per_sec: Option<f64>,
    /// Seconds between NTP exchanges per thing (0 = none).
    #[arg(long)]
    ntp_interval: Option<f64>,
    /// Share of things speaking MQTT 5 (0.0 to 1.0).
    #[arg(long)]
    mqtt5_share: Option<f64>,
    /// Seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,
    /// Thing id pattern (`{i}` or `{i:06}` is the index), e.g. d1-{i:06}.
    #[arg(long)]
    id_pattern: Option<String>,
    /// Prefix of the generated thing ids (shorthand for --id-pattern PREFIX-{i:06}).
    #[arg(long, conflicts_with = "id_pattern")]
    id_prefix: Option<String>,
    /// Provision on first boot (S-10): create one enrollment instead of the things; each thing
    /// starts with only the claim credential, provisions itself over MQTT (429/503 retried with
    /// backoff and jitter), then connects as the thing it got. The report adds the provisioning
    /// counts and the claim->accepted and claim->first report latencies.
    #[arg(long)]
    first_boot: bool,
    /// The first-boot run's enrollment id (default sim-first-boot; a shard appends -I).
    #[arg(long, value_name = "ID")]
    enrollment: Option<String>,
    /// MQTT address of an external hub: HOST:PORT or mqtt://HOST:PORT. Without it, the
    /// reference hub is started as a child process.
    #[arg(long, requires_all = ["api", "token"], value_parser = parse_mqtt)]
    mqtt: Option<String>,
    /// The external hub's REST API: HOST:PORT or a base URL (http://127.0.0.1:9000).
    #[arg(long, requires = "mqtt", value_parser = parse_api)]
    api: Option<String>,
    /// Admin token of the external hub.
    #[arg(long, env = "IOTHUB_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Connect the things over MQTT over TLS (a full handshake each, no session resumption).
    /// Without --mqtt the simulator makes a CA and a server certificate for the run and starts
    /// the embedded hub with a TLS listener; with --mqtt (then the hub's TLS port) give
    /// --tls-ca.
    #[arg(long)]
    tls: bool,
    /// The CA (PEM file) that signed the external hub's certificate; implies --tls.
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    tls_ca: Option<PathBuf>,
    /// The name the external hub's certificate must carry (default: the --mqtt host).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Keep the things (and a first-boot run's enrollment) on an external hub after the run
    /// (they are deleted by default).
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    out: Outputs,
    /// Pass criterion, as in k6 (repeatable, added to the scenario's `thresholds`):
    /// METRIC.STAT OP VALUE, e.g. 'update.p99<10ms', 'connect.max<2s', 'errors==0',
    /// 'accepted_per_sec>=4500'. A failed one makes the exit status 99 and is named on stderr.
    #[arg(long = "threshold", value_name = "EXPR")]
    thresholds: Vec<String>,
    /// Run only shard I of N (from 0): a deterministic slice of the fleet with its share of the
    /// fleet-wide rates; merge the shards' --report-json files with `iothub-sim merge`.
    #[arg(long, value_name = "I/N", conflicts_with = "workers")]
    shard: Option<Shard>,
    /// Run the scenario as N local worker processes (one shard each, past one process's
    /// descriptor limit) and merge their reports.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Live progress: bar (a line fitted to the terminal), plain (a status line every
    /// --progress-interval, for logs and CI), none, or auto (bar on a terminal, else plain).
    #[arg(long, default_value = "auto", value_name = "MODE")]
    progress: Mode,
    /// Interval of the plain progress lines.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    progress_interval: f64,
    /// Same as --progress none.
    #[arg(long)]
    no_progress: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while running (off by default; port 0
    /// picks a free one, printed on stderr): live counters, errors by kind, latency summaries,
    /// CPU and memory of the simulator and the hub.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Process id of an external hub on this machine, to report its CPU and memory.
    #[arg(long, requires = "mqtt")]
    hub_pid: Option<u32>,
    /// Extra flags for the embedded hub, e.g. --hub-arg=--commit-batch=256 (repeatable; its
    /// admin token is generated per run).
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    hub_args: Vec<String>,
}

/// Where the report goes besides stdout.
#[derive(clap::Args, Clone)]
struct Outputs {
    /// Write the report as JSON to this file (with the latency histograms `merge` needs).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write the report as CSV to this file (a `kind` column: latency, counter, resource).
    #[arg(long)]
    report_csv: Option<PathBuf>,
    /// Write the report as one HTML page with charts (opens offline).
    #[arg(long)]
    report_html: Option<PathBuf>,
}

#[derive(clap::Args)]
struct MergeArgs {
    /// The shards' JSON reports.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    #[command(flatten)]
    out: Outputs,
    /// Pass criterion checked on the merged report (repeatable; added to the scenario's).
    #[arg(long = "threshold", value_name = "EXPR")]
    thresholds: Vec<String>,
}

/// A duration flag in seconds: `15s`, `2m`, `1h30m`, `500ms`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<f64, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(secs)
        } else {
            Err(format!("{s:?}: not a duration"))
        };
    }
    humantime::parse_duration(s.trim())
        .map(|d| d.as_secs_f64())
        .map_err(|e| format!("{s:?}: {e} (e.g. 15s, 2m, 1h)"))
}

fn parse_mqtt(s: &str) -> Result<String, String> {
    iothub_launch::addr::mqtt(s).map_err(|e| e.to_string())
}

fn parse_api(s: &str) -> Result<String, String> {
    iothub_launch::addr::http_base(s).map_err(|e| e.to_string())
}

/// The simulator allocates many small buffers across worker threads; mimalloc keeps that cheap
/// and returns memory well.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status of a run that was interrupted (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Plain text when stderr is a pipe or file (the embedded hub logs here too).
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Run(args) => run_command(*args).await,
        Command::Merge(args) => merge_command(&args),
        Command::EmbeddedHub(args) => {
            embedded::serve_child(*args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The scenario with the flags applied.
fn scenario(args: &RunArgs) -> anyhow::Result<Scenario> {
    let mut s = match &args.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::default(),
    };
    if let Some(n) = args.things {
        s.population.count = n;
    }
    if let Some(d) = args.duration {
        s.duration_s = d;
    }
    if let Some(rate) = args.rate {
        s.profile.reported_changes_per_s = rate / s.population.count.max(1) as f64;
    }
    if let Some(b) = args.payload_bytes {
        s.profile.reported_bytes = b;
    }
    if let Some(r) = args.ramp {
        s.ramp.connects_per_s = r;
    }
    if let Some(m) = args.max_in_flight {
        s.profile.max_in_flight = m;
    }
    if let Some(r) = args.desired_per_sec {
        s.business.desired_per_s = r;
    }
    if let Some(r) = args.methods_per_sec {
        s.business.methods_per_s = r;
    }
    if let Some(i) = args.ota_job_interval {
        s.business.ota_job_interval_s = i;
    }
    if let Some(n) = args.ota_job_things {
        s.business.ota_job_things = n;
    }
    if args.configuration_rollout {
        s.business.configuration_rollout = true;
    }
    if args.method_job {
        s.business.method_job = true;
    }
    if let Some(n) = args.method_job_per_minute {
        s.business.method_job_per_minute = n;
    }
    if let Some(r) = args.churn_per_sec {
        s.profile.churn_per_s = r;
    }
    if let Some(i) = args.ntp_interval {
        s.profile.ntp_interval_s = i;
    }
    if let Some(m) = args.mqtt5_share {
        s.population.mqtt5_share = m;
    }
    if let Some(seed) = args.seed {
        s.seed = seed;
    }
    if let Some(p) = &args.id_pattern {
        s.population.id_pattern = p.clone();
    }
    if let Some(p) = &args.id_prefix {
        s.population.id_pattern = format!("{p}-{{i:06}}");
    }
    if args.first_boot {
        s.population.first_boot = true;
    }
    if let Some(e) = &args.enrollment {
        s.population.enrollment = e.clone();
    }
    s.thresholds.extend(args.thresholds.iter().cloned());
    s.validate()?;
    Ok(s)
}

/// The embedded hub's flags: the user's `--hub-arg`s, and a per-address cap on unauthenticated
/// connections that fits the scenario. The hub's default (32) protects it from one address
/// holding many half-open connections; the simulator puts `things_per_source_address` things on
/// each loopback address by design, and a fast ramp on a busy machine otherwise has more CONNECTs
/// of one address in flight than that, which the hub refuses at accept.
fn embedded_hub_args(scenario: &Scenario, user: &[String]) -> Vec<String> {
    const FLAG: &str = "--max-pending-connects-per-addr";
    let mut hub_args = user.to_vec();
    if !user.iter().any(|a| a.starts_with(FLAG)) {
        let per_addr = scenario
            .population
            .things_per_source_address
            .min(scenario.population.count)
            .max(32);
        hub_args.push(format!("{FLAG}={per_addr}"));
    }
    hub_args
}

/// The `run` command: starts the embedded hub when no hub is given, runs, reports, and stops the
/// hub however the run ends (done, failed, or interrupted by SIGINT/SIGTERM).
async fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = scenario(&args)?;
    // Handlers first: a signal from now on ends the run in order instead of killing the process
    // (the hub child would stop by itself then, but the simulator's clean-up would not run).
    let mut interrupted = std::pin::pin!(interrupted()?);
    if args.tls && args.mqtt.is_some() && args.tls_ca.is_none() {
        anyhow::bail!("--tls with --mqtt needs --tls-ca: the CA that signed the hub's certificate");
    }
    // The embedded hub's certificates for a TLS run, kept until the run ends.
    let certs_dir = match args.tls && args.mqtt.is_none() {
        true => Some(
            tempfile::Builder::new()
                .prefix("iothub-sim-tls-")
                .tempdir()
                .context("cannot create a temporary directory")?,
        ),
        false => None,
    };
    let embedded_ca = match &certs_dir {
        Some(dir) => Some(iothub_sim::dev_certs::write(dir.path())?),
        None => None,
    };
    let embedded = match &args.mqtt {
        Some(_) => None,
        None => {
            let mut hub_args = embedded_hub_args(&scenario, &args.hub_args);
            if let Some(certs) = &embedded_ca {
                hub_args.extend([
                    "--mqtts-addr=127.0.0.1:0".to_owned(),
                    format!("--tls-cert={}", certs.cert.display()),
                    format!("--tls-key={}", certs.key.display()),
                ]);
            }
            let hub = tokio::task::spawn_blocking(move || EmbeddedHub::start(&hub_args))
                .await
                .context("the embedded hub's start panicked")??;
            eprintln!(
                "embedded hub: pid={} mqtt={}{} http={} data_dir={}",
                hub.pid(),
                hub.mqtt_addr,
                hub.mqtts_addr
                    .map(|a| format!(" mqtts={a}"))
                    .unwrap_or_default(),
                hub.http_addr,
                hub.data_dir().display()
            );
            Some(hub)
        }
    };
    let outcome = tokio::select! {
        r = drive(&args, scenario, embedded.as_ref(), embedded_ca.as_ref().map(|c| c.ca.as_path())) => r.map(Some),
        () = &mut interrupted => Ok(None),
    };
    if let Ok(None) = outcome {
        if embedded.is_some() {
            eprintln!("iothub-sim: interrupted; stopping the embedded hub");
        } else {
            eprintln!("iothub-sim: interrupted; the run's things are left on the hub");
        }
    }
    let stopped = match embedded {
        Some(hub) => tokio::task::spawn_blocking(move || hub.stop())
            .await
            .context("stopping the embedded hub panicked")?,
        None => Ok(()),
    };
    if let Err(e) = &stopped {
        eprintln!("iothub-sim: {e:#}");
    }
    match outcome? {
        None => Ok(ExitCode::from(INTERRUPTED)),
        // A hub that crashed or would not stop spoils the run even if the things saw nothing.
        Some(Verdict::Passed) if stopped.is_err() => Ok(ExitCode::FAILURE),
        Some(v) => Ok(exit_code(v)),
    }
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM after this call.
fn interrupted() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// How a run ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Clean, every threshold held.
    Passed,
    /// Something the run counts as an error happened (see the report).
    Unclean,
    /// A threshold failed (named on stderr).
    ThresholdsFailed,
}

/// Runs the scenario against the embedded hub or the one given (in this process, or in
/// `--workers` processes), prints the report and writes its files.
async fn drive(
    args: &RunArgs,
    scenario: Scenario,
    embedded: Option<&EmbeddedHub>,
    embedded_ca: Option<&std::path::Path>,
) -> anyhow::Result<Verdict> {
    let target = match embedded {
        Some(hub) => Target {
            mqtt: match embedded_ca {
                Some(_) => hub
                    .mqtts_addr
                    .context("the embedded hub announced no TLS listener")?,
                None => hub.mqtt_addr,
            },
            api: format!("http://{}", hub.http_addr),
            token: hub.admin_token.clone(),
            tls: embedded_ca.map(|ca| TlsTarget {
                ca_file: ca.to_path_buf(),
                server_name: "127.0.0.1".to_owned(),
            }),
        },
        None => {
            let mqtt = args.mqtt.as_deref().unwrap_or_default();
            let addr = tokio::net::lookup_host(mqtt)
                .await
                .with_context(|| format!("cannot resolve --mqtt {mqtt}"))?
                .next()
                .with_context(|| format!("--mqtt {mqtt} resolves to nothing"))?;
            Target {
                mqtt: addr,
                api: args.api.clone().unwrap_or_default(),
                token: args.token.clone().unwrap_or_default(),
                tls: args.tls_ca.as_ref().map(|ca| TlsTarget {
                    ca_file: ca.clone(),
                    server_name: args.tls_server_name.clone().unwrap_or_else(|| {
                        let host = mqtt.rsplit_once(':').map_or(mqtt, |(host, _)| host);
                        host.trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned()
                    }),
                }),
            }
        }
    };
    let progress = if args.no_progress {
        Mode::None
    } else {
        args.progress
    };
    let progress_every = std::time::Duration::from_secs_f64(args.progress_interval.max(1.0));
    // The embedded hub's database is temporary: nothing to clean up.
    let keep = args.keep || embedded.is_some();
    let hub_pid = embedded.map(EmbeddedHub::pid).or(args.hub_pid);
    let thresholds = threshold::parse_all(&scenario.thresholds)?;
    let mut report = match args.workers {
        Some(n) if n > 1 => {
            workers::run(&workers::Plan {
                workers: usize::from(n),
                scenario,
                target,
                keep,
                hub_pid,
                progress,
                progress_every,
                metrics_addr: args.metrics_addr,
            })
            .await?
        }
        _ => {
            let options = Options {
                progress,
                progress_every,
                shard: args.shard.unwrap_or_default(),
                keep,
                hub_pid,
                metrics_addr: args.metrics_addr,
            };
            run(scenario, target, options).await?
        }
    };
    report.thresholds = thresholds.iter().map(|t| t.check(&report)).collect();
    finish(&report, &args.out)
}

/// The `merge` command: the whole run's report from its shards' JSON reports.
fn merge_command(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let mut parts = Vec::with_capacity(args.reports.len());
    for path in &args.reports {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let r: Report = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a report of iothub-sim", path.display()))?;
        parts.push(r);
    }
    let mut merged = report::merge::merge(&parts)?;
    merged
        .scenario
        .thresholds
        .extend(args.thresholds.iter().cloned());
    let thresholds = threshold::parse_all(&merged.scenario.thresholds)?;
    merged.thresholds = thresholds.iter().map(|t| t.check(&merged)).collect();
    Ok(exit_code(finish(&merged, &args.out)?))
}

/// Prints `report`, writes its files, names failed thresholds; returns the verdict.
fn finish(report: &Report, out: &Outputs) -> anyhow::Result<Verdict> {
    println!("{}", report.table());
    let write = |path: &Option<PathBuf>, bytes: Vec<u8>| -> anyhow::Result<()> {
        if let Some(path) = path {
            std::fs::write(path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    };
    write(&out.report_json, serde_json::to_vec_pretty(report)?)?;
    write(&out.report_csv, report.csv().into_bytes())?;
    write(&out.report_html, report::html::render(report).into_bytes())?;
    let failed: Vec<_> = report.thresholds.iter().filter(|c| !c.passed).collect();
    for c in &failed {
        eprintln!("iothub-sim: threshold {c}");
    }
    Ok(if !failed.is_empty() {
        Verdict::ThresholdsFailed
    } else if report.is_clean() {
        Verdict::Passed
    } else {
        Verdict::Unclean
    })
}

/// The exit status of a verdict.
fn exit_code(v: Verdict) -> ExitCode {
    match v {
        Verdict::Passed => ExitCode::SUCCESS,
        Verdict::Unclean => {
            eprintln!("iothub-sim: the run was not clean (see the report)");
            ExitCode::FAILURE
        }
        Verdict::ThresholdsFailed => ExitCode::from(EXIT_THRESHOLDS),
    }
}
