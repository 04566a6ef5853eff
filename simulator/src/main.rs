//! `iothub-sim`: load runs against an iothub hub. `iothub-sim run` needs no setup.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iothub_sim::embedded::EmbeddedHub;
use iothub_sim::provision::{Api, Credentials};
use iothub_sim::report::Report;
use iothub_sim::shadow_load::{Live, LoadPlan, Schedule, run_thing};
use tracing_subscriber::EnvFilter;

/// Load runs against an iothub hub: virtual things, each with its own MQTT connection, keep
/// their shadows reported at a steady rate; the report gives throughput and latency percentiles.
///
/// With no --mqtt/--api it starts the reference hub itself with a temporary database.
#[derive(Parser)]
#[command(name = "iothub-sim", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the shadow-update load and print the report.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Number of virtual things (each one MQTT connection).
    #[arg(long, default_value_t = 1000)]
    things: usize,
    /// Seconds of reporting after the ramp.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Shadow updates per second over all things.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Approximate update payload size in bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Connects per second while ramping up.
    #[arg(long, default_value_t = 2000)]
    ramp: u32,
    /// Unanswered updates allowed per thing (the hub's default limit is 10).
    #[arg(long, default_value_t = 10)]
    max_in_flight: usize,
    /// MQTT address of an external hub (host:port). Without it, a hub is started in-process.
    #[arg(long, requires_all = ["api", "token"])]
    mqtt: Option<String>,
    /// Base URL of the external hub's REST API (e.g. http://127.0.0.1:9000).
    #[arg(long, requires = "mqtt")]
    api: Option<String>,
    /// Admin token of the external hub.
    #[arg(long, env = "IOTHUB_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Prefix of the generated thing ids.
    #[arg(long, default_value = "sim")]
    id_prefix: String,
    /// Keep the things on an external hub after the run (they are deleted by default).
    #[arg(long)]
    keep: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Extra flags for the embedded hub, e.g. --hub-arg=--commit-batch=256.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    hub_args: Vec<String>,
}

/// glibc's malloc showed up at the top of the hub's profile under load (many small JSON
/// allocations across worker threads); mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Run(args) = Cli::parse().command;
    let report = run(args).await?;
    if !report.is_clean() {
        eprintln!("iothub-sim: the run was not clean (see the report)");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.things > 0, "--things must be at least 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.ramp > 0, "--ramp must be positive");
    let embedded = match &args.mqtt {
        Some(_) => None,
        None => Some(EmbeddedHub::start(&args.hub_args)?),
    };
    let (mqtt, api_base, token) = match &embedded {
        Some(hub) => (
            hub.mqtt_addr,
            format!("http://{}", hub.http_addr),
            hub.admin_token.clone(),
        ),
        None => {
            let mqtt = args.mqtt.as_deref().unwrap_or_default();
            let addr = tokio::net::lookup_host(mqtt)
                .await
                .with_context(|| format!("cannot resolve --mqtt {mqtt}"))?
                .next()
                .with_context(|| format!("--mqtt {mqtt} resolves to nothing"))?;
            (
                addr,
                args.api.clone().unwrap_or_default(),
                args.token.clone().unwrap_or_default(),
            )
        }
    };
    let api = Api::new(&api_base, &token)?;
    let things: Vec<Credentials> = (0..args.things)
        .map(|i| Credentials {
            thing_id: format!("{}-{i:06}", args.id_prefix),
            secret: format!("sim-secret-{i:06}-{}", std::process::id()),
        })
        .collect();
    eprintln!("provisioning {} things ...", things.len());
    api.create_things(&things).await?;

    let plan = Arc::new(LoadPlan {
        mqtt,
        rate: args.rate,
        payload_bytes: args.payload_bytes,
        duration: Duration::from_secs(args.duration),
        ramp_per_sec: args.ramp,
        max_in_flight: args.max_in_flight,
        drain: Duration::from_secs(10),
    });
    let live = Arc::new(Live::default());
    let interval = Duration::from_secs_f64(things.len() as f64 / args.rate);
    let now = tokio::time::Instant::now();
    let all_connected = Arc::new(tokio::sync::Barrier::new(things.len()));
    let mut tasks = Vec::with_capacity(things.len());
    for (i, creds) in things.iter().cloned().enumerate() {
        let schedule = Schedule {
            connect_at: now + Duration::from_secs_f64(i as f64 / args.ramp as f64),
            all_connected: all_connected.clone(),
            duration: plan.duration,
            interval,
        };
        tasks.push(tokio::spawn(run_thing(
            creds,
            plan.clone(),
            live.clone(),
            schedule,
        )));
    }
    let progress = tokio::spawn(progress(live.clone()));
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a virtual thing panicked")?);
    }
    progress.abort();

    let report = Report::build(
        &outcomes,
        plan.duration.as_secs_f64(),
        live.sent.load(Ordering::Relaxed),
        live.throttled.load(Ordering::Relaxed),
    );
    println!("{}", report.table());
    if let Some(path) = &args.report_json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if embedded.is_none() && !args.keep {
        api.delete_things(&things).await?;
    }
    if let Some(hub) = embedded {
        tokio::task::spawn_blocking(move || hub.stop()).await?;
    }
    Ok(report)
}

async fn progress(live: Arc<Live>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last_sent, mut last_accepted) = (0, 0);
    loop {
        tick.tick().await;
        let sent = live.sent.load(Ordering::Relaxed);
        let accepted = live.accepted.load(Ordering::Relaxed);
        eprintln!(
            "connected {:>6}  sent/s {:>7}  accepted/s {:>7}  rejected {:>5}  throttled {:>6}",
            live.connected.load(Ordering::Relaxed),
            sent - last_sent,
            accepted - last_accepted,
            live.rejected.load(Ordering::Relaxed),
            live.throttled.load(Ordering::Relaxed),
        );
        (last_sent, last_accepted) = (sent, accepted);
    }
}
