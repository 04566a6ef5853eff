//! A back-end receiver: connects to the hub as a service user, prints the fleet's telemetry (or
//! any other streams) to stdout as JSON lines, and optionally forwards each message over HTTP.
//! Run several with the same `--group` to split the stream between them (S-2.8). See
//! `examples/README.md`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use iothub_sdk::service::{HttpForward, JsonLines, Receiver, ReceiverOptions, Stream};

/// A fleet stream, as a flag value.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum StreamArg {
    Telemetry,
    User,
    ShadowDocuments,
    Presence,
    PresenceEvents,
    Lifecycle,
    Wills,
}

impl From<StreamArg> for Stream {
    fn from(s: StreamArg) -> Stream {
        match s {
            StreamArg::Telemetry => Stream::Telemetry,
            StreamArg::User => Stream::UserMessages,
            StreamArg::ShadowDocuments => Stream::ShadowDocuments,
            StreamArg::Presence => Stream::Presence,
            StreamArg::PresenceEvents => Stream::PresenceEvents,
            StreamArg::Lifecycle => Stream::LifecycleEvents,
            StreamArg::Wills => Stream::Wills,
        }
    }
}

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    about = "Receive the fleet's messages as a service user: JSON lines on stdout, optionally \
             forwarded over HTTP"
)]
struct Args {
    /// The hub's MQTT address, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// The service user (configured in the hub with `--service-user NAME:SECRET`).
    #[arg(long, env = "IOTHUB_SERVICE_USER", default_value = "$backend")]
    user: String,
    /// The service user's secret.
    #[arg(
        long,
        env = "IOTHUB_SERVICE_SECRET",
        hide_env_values = true,
        default_value = "backend-secret"
    )]
    secret: String,
    /// Join this shared subscription group: receivers of one group split the messages.
    #[arg(long)]
    group: Option<String>,
    /// The streams to receive (repeat or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "telemetry")]
    streams: Vec<StreamArg>,
    /// Also POST each message as JSON to this URL.
    #[arg(long)]
    forward_http: Option<String>,
    /// Seconds per HTTP attempt.
    #[arg(long, default_value_t = 5)]
    http_timeout: u64,
    /// HTTP attempts per message (transport errors, 5xx, 408 and 429 are retried).
    #[arg(long, default_value_t = 5)]
    http_attempts: u32,
    /// Connect over TLS, trusting the CA certificates in this PEM file (`--mqtt` is then the
    /// hub's MQTT over TLS listener, its host as the hub's certificate names it).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for a hub that asks for one; needs --tls-ca and --tls-key.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let (host, port) = args
        .mqtt
        .rsplit_once(':')
        .context("--mqtt must be host:port")?;
    let port: u16 = port.parse().context("--mqtt port")?;
    let mut opts = ReceiverOptions::new(host, port, &args.user, &args.secret)?
        .streams(args.streams.iter().map(|s| Stream::from(*s)));
    if let Some(group) = &args.group {
        opts = opts.shared_group(group)?;
    }
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("--tls-ca {}", ca.display()))?;
        opts = opts.tls_ca_pem(&pem)?;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let cert = std::fs::read(cert).with_context(|| format!("--tls-cert {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?;
        opts = opts.tls_client_cert_pem(&cert, &key)?;
    }
    let mut receiver = Receiver::new(opts).handler(JsonLines::stdout());
    if let Some(url) = &args.forward_http {
        let http = HttpForward::new(url)?
            .timeout(Duration::from_secs(args.http_timeout))?
            .attempts(args.http_attempts);
        receiver = receiver.handler(http);
    }
    // One line per (re)subscription, so that an operator (or a test) sees the receiver ready.
    let mut subscribed = receiver.subscribed();
    tokio::spawn(async move {
        while subscribed.changed().await.is_ok() {
            if *subscribed.borrow_and_update() {
                tracing::info!("subscribed");
            }
        }
    });
    let stats = receiver
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    eprintln!("received {} messages", stats.received);
    for h in stats.handlers {
        eprintln!("  {}: {} handled, {} failed", h.name, h.handled, h.failed);
    }
    Ok(())
}
