//! `iothub`: the reference hub. `iothub` (or `iothub serve`) starts everything with no setup;
//! the other subcommands inspect the configuration or administer a running hub (`cli/`).

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use iothub_hub::Config;

use cli::admin;
use cli::config_file::{self, FileSettings};
use cli::exit::{self, Outcome};

/// The iothub reference hub: MQTT 3.1.1 + 5 broker, thing registry, shadows, direct methods,
/// NTP, presence and the REST API, with an embedded SQLite database.
///
/// With no arguments it serves MQTT on 0.0.0.0:1883 and HTTP on 0.0.0.0:9000, keeps data in
/// ./data/iothub.db and prints a development admin token. Settings come from flags, `IOTHUB_*`
/// environment variables and a TOML file (`--config`), in that order of precedence; `iothub
/// config example` prints a commented file. Logs go to stderr; set RUST_LOG (e.g.
/// RUST_LOG=iothub_hub=debug) for more.
#[derive(Parser)]
#[command(name = "iothub", version, about, long_about)]
struct Cli {
    /// A TOML file with settings of `serve` (keys are the flags' names with underscores, e.g.
    /// `mqtt_addr`); environment variables and flags override it. Its `[registry_sync]`
    /// section, which has no flags, syncs the things with an external registry (docs/spec.md
    /// S-13; hub/README.md).
    #[arg(long, global = true, env = config_file::CONFIG_ENV, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (the default).
    Serve(Box<Config>),
    /// Show the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage things on a running hub (REST; token in IOTHUB_TOKEN).
    #[command(after_help = exit::help())]
    Things(admin::ThingsArgs),
    /// Read and change shadows on a running hub.
    #[command(after_help = exit::help())]
    Shadow(admin::ShadowArgs),
    /// Invoke direct methods on things of a running hub.
    #[command(after_help = exit::help())]
    Method(admin::MethodArgs),
    /// Create, follow and cancel OTA jobs on a running hub.
    #[command(after_help = exit::help())]
    Ota(admin::OtaArgs),
    /// Search things with an S-9.4 query, e.g. iothub query "SELECT * FROM things WHERE
    /// connected = true".
    #[command(after_help = exit::help())]
    Query(admin::QueryArgs),
    /// Print a shell completion script: `iothub completions bash > /etc/bash_completion.d/iothub`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `iothub man | man -l -`.
    Man,
    /// Write a development CA, server and per-thing client certificates (TLS in one command).
    ///
    /// `iothub dev-certs --out certs --name localhost --thing t1`, then `iothub --mqtts-addr
    /// 0.0.0.0:8883 --tls-cert certs/server.pem --tls-key certs/server.key` (add
    /// `--tls-client-ca certs/ca.pem` to require the things' certificates). A CA already in
    /// --out is reused. Not for production: the CA key lies beside the certificates.
    DevCerts(cli::dev_certs::DevCertsArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration of `serve` (file, environment and flags combined) as
    /// TOML, each value's source in a comment; credentials are masked.
    Print(Box<Config>),
    /// Print a commented config file with every setting at its default.
    Example,
}

/// glibc's malloc showed up at the top of the hub's profile under load (many small JSON
/// allocations across worker threads); mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = match config_file::config_path(&args) {
        Some(path) => match FileSettings::load(&path) {
            Ok(file) => file,
            Err(e) => return fail(&e),
        },
        None => FileSettings::default(),
    };
    let matches = file.apply(Cli::command()).get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let admin_result = match cli.command {
        Some(Command::Serve(mut config)) => {
            config.registry_sync = file.registry_sync.clone();
            config.routes = file.routes.clone();
            return done(serve(*config));
        }
        None => {
            let mut config = cli.serve;
            config.registry_sync = file.registry_sync.clone();
            config.routes = file.routes.clone();
            return done(serve(config));
        }
        Some(Command::Config(ConfigCommand::Print(_))) => {
            let Some(sub) = matches
                .subcommand_matches("config")
                .and_then(|m| m.subcommand_matches("print"))
            else {
                return fail(&anyhow::anyhow!("config print: no arguments parsed"));
            };
            print!("{}", config_file::render_effective(sub, &file));
            return ExitCode::SUCCESS;
        }
        Some(Command::Config(ConfigCommand::Example)) => {
            print!("{}", config_file::render_example());
            return ExitCode::SUCCESS;
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "iothub", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&anyhow::Error::from(e)),
            };
        }
        Some(Command::DevCerts(args)) => {
            return match cli::dev_certs::run(&args) {
                Ok(written) => {
                    for path in written {
                        println!("{}", path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&anyhow::Error::from(e)),
            };
        }
        Some(Command::Things(args)) => admin_runtime(admin::things(args)),
        Some(Command::Shadow(args)) => admin_runtime(admin::shadow(args)),
        Some(Command::Method(args)) => admin_runtime(admin::method(args)),
        Some(Command::Ota(args)) => admin_runtime(admin::ota(args)),
        Some(Command::Query(args)) => admin_runtime(admin::query(args)),
    };
    match admin_result {
        Ok(outcome) => outcome.into(),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            failure.outcome.into()
        }
    }
}

/// Runs one admin command on a small runtime of its own (the hub's runtime is for `serve`).
fn admin_runtime(
    command: impl std::future::Future<Output = Result<Outcome, cli::client::Failure>>,
) -> Result<Outcome, cli::client::Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| cli::client::Failure::new(Outcome::Failure, format!("runtime: {e}")))?
        .block_on(command)
}

fn done(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("Error: {e:?}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    iothub_hub::logging::init(config.log_format);
    let token_was_generated = config.admin_token.is_none();
    let hub = iothub_hub::start(config).await?;
    if token_was_generated {
        tracing::warn!("no --admin-token given; using a development token printed below");
        println!("admin token (development): {}", hub.admin_token);
    }
    // One machine-readable line, for scripts and tests that start the hub on port 0.
    let ready = hub.ready_line();
    println!("{ready}");
    tracing::info!(mqtt = %hub.mqtt_addr, http = %hub.http_addr, mqtts = ?ready.mqtts,
        ws = ?ready.mqtt_ws, wss = ?ready.mqtt_wss, https = ready.https, "iothub ready");
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
