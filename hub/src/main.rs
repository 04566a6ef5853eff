//! `iothub`: the reference hub. `iothub` (or `iothub serve`) starts everything with no setup.

use clap::{Parser, Subcommand};
use iothub_hub::Config;
use tracing_subscriber::EnvFilter;

/// The iothub reference hub: MQTT 3.1.1 + 5 broker, thing registry, shadows, direct methods,
/// NTP, presence and the REST API, with an embedded SQLite database.
///
/// With no arguments it serves MQTT on 0.0.0.0:1883 and HTTP on 0.0.0.0:9000, keeps data in
/// ./data/iothub.db and prints a development admin token. Logs go to stderr; set RUST_LOG
/// (e.g. RUST_LOG=iothub_hub=debug) for more.
#[derive(Parser)]
#[command(name = "iothub", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (the default).
    Serve(Box<Config>),
}

/// glibc's malloc showed up at the top of the hub's profile under load (many small JSON
/// allocations across worker threads); mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // rmqtt logs every refused or dropped connection at INFO; the hub summarizes
            // refusals itself (guard::refusals), so a flood cannot flood the log.
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rmqtt=warn,rmqtt_net=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => *config,
        None => cli.config,
    };
    let token_was_generated = config.admin_token.is_none();
    let hub = iothub_hub::start(config).await?;
    if token_was_generated {
        tracing::warn!("no --admin-token given; using a development token printed below");
        println!("admin token (development): {}", hub.admin_token);
    }
    // One machine-readable line, for scripts and tests that start the hub on port 0.
    let ready = iothub_launch::ReadyLine {
        mqtt: hub.mqtt_addr,
        http: hub.http_addr,
    };
    println!("{ready}");
    tracing::info!(mqtt = %hub.mqtt_addr, http = %hub.http_addr, "iothub ready");
    shutdown_signal().await;
    tracing::info!("signal received; shutting down gracefully");
    hub.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
