//! The firmware-style thermostat (`iothub-firmware-app`, `no_std`) on Linux: the same
//! application and the same minimq adapter as on the microcontroller, with a tokio `TcpStream`
//! (through `embedded-io-adapters`) instead of an embassy-net socket and embassy-time's std
//! driver instead of a hardware timer. OTA tasks are downloaded over plain HTTP (`http://` URLs
//! only) and verified by the SDK's `OtaVerifier`. See `examples/README.md`.
//!
//! `--small-inbox` shrinks the adapter's inbox to 256 bytes (with a receive buffer for 4 KiB
//! documents), so that a desired state of a few hundred bytes shows what a message too large
//! for the device does: `Event::TooLarge`, reported by the thermostat as `too_large`.
//!
//! `--tls-ca` connects over TLS 1.3 instead (the hub's `--mqtts-addr`), through the SDK's
//! `no_std` `TlsTransport` (embedded-tls, the firmware's code) over the tokio socket, trusting
//! that CA for `--tls-server-name`; `--tls-cert` and `--tls-key` add the thing's client
//! certificate (D-82: a registered one authenticates the thing whatever its secret).

use std::net::SocketAddr;

use clap::Parser;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embedded_io_adapters::tokio_1::FromTokio;
use iothub_firmware_app::ota::{FileSource, run_downloading};
use iothub_firmware_app::{IN_FLIGHT, N_SHADOWS, OUT, QUEUE, TX, Thermostat, device_config};
use iothub_sdk_nostd::Device;
use iothub_sdk_nostd::minimq::{self, MqttConfig, Resources, Runner, State, Transport};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "The firmware-style thermostat (no_std core) on Linux")]
struct Args {
    /// The hub's MQTT listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// The thing id.
    #[arg(long, default_value = "thermostat-fw-1")]
    thing: String,
    /// The thing's secret (not needed with `--credentials`).
    #[arg(
        long,
        env = "IOTHUB_THING_SECRET",
        required_unless_present = "credentials"
    )]
    secret: Option<String>,
    /// Where the device keeps its credentials (thing id and secret, one per line), like a
    /// flash page on the board. When the file is missing, the device provisions itself with
    /// `--enrollment`, `--serial` and `--claim-secret` (S-10) and writes it; `--thing` and
    /// `--secret` are then ignored.
    #[arg(long, requires_all = ["enrollment", "serial", "claim_secret"])]
    credentials: Option<std::path::PathBuf>,
    /// The enrollment of the factory claim (first boot).
    #[arg(long)]
    enrollment: Option<String>,
    /// The device's serial number (first boot).
    #[arg(long)]
    serial: Option<String>,
    /// The enrollment's claim secret (first boot).
    #[arg(long, env = "IOTHUB_CLAIM_SECRET")]
    claim_secret: Option<String>,
    /// Milliseconds between ticks (telemetry, OTA progress, retries).
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Use a 256-byte inbox (and a receive buffer for 4 KiB documents) instead of the
    /// firmware's sizes: messages larger than 256 bytes become `Event::TooLarge`.
    #[arg(long)]
    small_inbox: bool,
    /// Connect over TLS, trusting this CA certificate (PEM) for the hub's certificate.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// The hub's DNS name in its certificate (with `--tls-ca`).
    #[arg(long, default_value = "localhost")]
    tls_server_name: String,
    /// The thing's client certificate (PEM), with `--tls-key`.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's ECDSA P-256 key (PKCS#8 PEM, as `iothub dev-certs` writes).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// The inbox of `--small-inbox`.
const SMALL_INBOX: usize = 256;
/// minimq's receive buffer with `--small-inbox`: documents of states up to 1 KiB, so that what
/// does not fit the small inbox still reaches the adapter (a message larger than minimq's
/// receive buffer never does: the broker refuses to send it, see sdk-nostd's README).
const SMALL_INBOX_RX: usize = minimq::rx_size(minimq::document_size(1024, 8));

/// Opens a new TCP connection for every (re)connect of the runner.
struct Tcp {
    addr: SocketAddr,
}

impl Transport for Tcp {
    type Io<'t> = FromTokio<TcpStream>;
    type Error = std::io::Error;

    async fn connect(&mut self) -> Result<Self::Io<'_>, Self::Error> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}

/// The same, as a stream `TlsTransport` reconnects in place.
struct TcpStreamSlot {
    addr: SocketAddr,
    stream: Option<FromTokio<TcpStream>>,
}

fn not_connected() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl embedded_io_async::ErrorType for TcpStreamSlot {
    type Error = std::io::Error;
}

impl embedded_io_async::Read for TcpStreamSlot {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stream = self.stream.as_mut().ok_or_else(not_connected)?;
        embedded_io_async::Read::read(stream, buf).await
    }
}

impl embedded_io_async::Write for TcpStreamSlot {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let stream = self.stream.as_mut().ok_or_else(not_connected)?;
        embedded_io_async::Write::write(stream, buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let stream = self.stream.as_mut().ok_or_else(not_connected)?;
        embedded_io_async::Write::flush(stream).await
    }
}

impl minimq::Reconnect for TcpStreamSlot {
    type ConnectError = std::io::Error;

    async fn reconnect(&mut self) -> std::io::Result<()> {
        self.stream = None;
        self.stream = Some(Tcp { addr: self.addr }.connect().await?);
        Ok(())
    }
}

/// Prints why a connection could not be opened (the runner only counts it).
struct Logged<T>(T);

impl<T: Transport> Transport for Logged<T>
where
    T::Error: std::fmt::Debug,
{
    type Io<'t>
        = T::Io<'t>
    where
        Self: 't;
    type Error = T::Error;

    async fn connect(&mut self) -> Result<Self::Io<'_>, Self::Error> {
        let result = self.0.connect().await;
        if let Err(e) = &result {
            tracing::warn!("firmware_host connect failed: {e:?}");
        }
        result
    }
}

/// The CA, client certificate and key of the `--tls-*` flags, read and decoded.
struct TlsFiles {
    ca: Vec<u8>,
    client: Option<(Vec<u8>, [u8; 32])>,
}

fn tls_files(args: &Args) -> anyhow::Result<Option<TlsFiles>> {
    use anyhow::Context as _;
    use p256::pkcs8::DecodePrivateKey as _;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let cert = |path: &std::path::Path| {
        CertificateDer::from_pem_file(path)
            .map(|c| c.to_vec())
            .with_context(|| format!("{}: a PEM certificate", path.display()))
    };
    let client = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => {
            let der = PrivatePkcs8KeyDer::from_pem_file(k)
                .with_context(|| format!("{}: a PKCS#8 PEM key", k.display()))?;
            let key = p256::SecretKey::from_pkcs8_der(der.secret_pkcs8_der())
                .map_err(|e| anyhow::anyhow!("{}: not a P-256 key: {e}", k.display()))?;
            Some((cert(c)?, key.to_bytes().into()))
        }
        _ => None,
    };
    Ok(Some(TlsFiles {
        ca: cert(ca)?,
        client,
    }))
}

/// A minimal HTTP/1.0 GET client: the body of an `http://` URL with status 200.
#[derive(Default)]
struct HttpSource {
    body: Option<BufReader<TcpStream>>,
}

/// Longest status line or header accepted.
const MAX_HEADER_LINE: usize = 8 * 1024;

impl FileSource for HttpSource {
    type Error = std::io::Error;

    async fn open(&mut self, url: &str) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        self.body = None;
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| Error::new(ErrorKind::Unsupported, "only http:// URLs"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let stream = TcpStream::connect(authority).await?;
        let mut stream = BufReader::new(stream);
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = Vec::new();
        let mut status_line = true;
        loop {
            line.clear();
            let n = (&mut stream)
                .take(MAX_HEADER_LINE as u64)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 || !line.ends_with(b"\n") {
                return Err(Error::new(ErrorKind::InvalidData, "truncated HTTP header"));
            }
            if status_line {
                let text = String::from_utf8_lossy(&line);
                let code = text.split_whitespace().nth(1).unwrap_or_default();
                if code != "200" {
                    return Err(Error::other(format!("HTTP status {}", text.trim_end())));
                }
                status_line = false;
            } else if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        self.body = Some(stream);
        Ok(())
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.body.as_mut() {
            Some(body) => body.read(buf).await,
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or("info".into()),
        )
        .init();
    let mut args = Args::parse();
    if let Some(path) = args.credentials.clone() {
        let (thing, secret) = credentials(&args, &path).await?;
        args.thing = thing;
        args.secret = Some(secret);
    }
    let addr = args.mqtt;
    let Some(files) = tls_files(&args)? else {
        let tcp = Logged(Tcp { addr });
        return if args.small_inbox {
            run::<SMALL_INBOX, SMALL_INBOX_RX, _>(args, tcp).await
        } else {
            run::<{ iothub_firmware_app::INBOX }, { iothub_firmware_app::RX }, _>(args, tcp).await
        };
    };
    // The firmware's sizes: records of the reference hub (D-91), 1 KiB outgoing records.
    let mut buffers = minimq::TlsResources::<{ minimq::tls::READ_RECORD_HUB }, 1024>::new();
    let client = match &files.client {
        Some((cert, key)) => Some(
            minimq::ClientIdentity::new(cert, key)
                .map_err(|e| anyhow::anyhow!("client identity: {e}"))?,
        ),
        None => None,
    };
    let server_name = args.tls_server_name.clone();
    let config = minimq::TlsConfig {
        server_name: &server_name,
        ca_der: &files.ca,
        client,
    };
    let tls = minimq::TlsTransport::new(
        TcpStreamSlot { addr, stream: None },
        buffers.buffers(),
        config,
        rand_core::OsRng,
    )
    .map_err(|e| anyhow::anyhow!("tls setup: {e}"))?;
    tracing::info!(
        "firmware_host tls server_name={} client_certificate={}",
        args.tls_server_name,
        files.client.is_some()
    );
    if args.small_inbox {
        run::<SMALL_INBOX, SMALL_INBOX_RX, _>(args, Logged(tls)).await
    } else {
        run::<{ iothub_firmware_app::INBOX }, { iothub_firmware_app::RX }, _>(args, Logged(tls))
            .await
    }
}

/// The credentials kept in `path`, or, on first boot (no file), those the device gets by
/// provisioning itself with its claim, written to `path` (whole or not at all: a temporary file
/// renamed into place) before it connects as the new thing.
async fn credentials(args: &Args, path: &std::path::Path) -> anyhow::Result<(String, String)> {
    use anyhow::Context as _;
    use iothub_firmware_app::first_boot::{CREDENTIALS, Claim, first_boot};
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            let mut lines = text.lines();
            if let (Some(thing), Some(secret)) = (lines.next(), lines.next()) {
                println!("firmware_host credentials kept thing={thing}");
                return Ok((thing.to_owned(), secret.to_owned()));
            }
            anyhow::bail!(
                "{}: not a credentials file (thing id, secret)",
                path.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    // clap makes these present together with --credentials.
    let claim = Claim {
        enrollment: args.enrollment.as_deref().unwrap_or_default(),
        serial: args.serial.as_deref().unwrap_or_default(),
        secret: args.claim_secret.as_deref().unwrap_or_default().as_bytes(),
    };
    let mut store = [0u8; CREDENTIALS];
    let started = std::time::Instant::now();
    let creds = first_boot(
        &mut Tcp { addr: args.mqtt },
        claim,
        std::process::id(),
        &mut store,
    )
    .await
    .map_err(|f| anyhow::anyhow!("provisioning failed: {f:?}"))?;
    println!(
        "firmware_host provisioned thing={} in {} ms",
        creds.thing_id,
        started.elapsed().as_millis()
    );
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, format!("{}\n{}\n", creds.thing_id, creds.password))
        .await
        .with_context(|| format!("writing {}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok((creds.thing_id.to_owned(), creds.password.to_owned()))
}

/// Runs the thermostat with an inbox of `INBOX` bytes and minimq's receive buffer of `RX`.
async fn run<const INBOX: usize, const RX: usize, T: Transport>(
    args: Args,
    transport: T,
) -> anyhow::Result<()> {
    let seed = std::process::id();

    // On the microcontroller these are `StaticCell`s; here the runner and the application are
    // joined in one future, so they live on the stack.
    let mut queue = [0u8; iothub_firmware_app::QUEUE_BYTES];
    let device = Device::new(device_config(&args.thing, seed), &mut queue)
        .map_err(|e| anyhow::anyhow!("device config: {e}"))?;
    let state: State<'_, NoopRawMutex, N_SHADOWS, IN_FLIGHT, QUEUE, INBOX> = State::new(device);
    let mut resources = Resources::<RX, TX, OUT>::new();
    let secret = args.secret.as_deref().unwrap_or_default();
    let mut mqtt = MqttConfig::new(&args.thing, secret.as_bytes());
    mqtt.jitter_seed = seed;
    mqtt.backoff_max_ms = 5_000;
    let (client, runner) = Runner::new(&state, transport, resources.buffers(), mqtt)
        .map_err(|e| anyhow::anyhow!("mqtt config: {e}"))?;

    let mut thermostat = Thermostat::new(env!("CARGO_PKG_VERSION"), 1);
    println!(
        "firmware_host started thing={} inbox={INBOX} rx={RX}",
        args.thing
    );
    let tick = embassy_time::Duration::from_millis(args.tick_ms);
    let mut files = HttpSource::default();
    tokio::select! {
        _ = runner.run() => {}
        _ = run_downloading(client, &mut thermostat, tick, &mut files) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
