//! The hub's configuration: every port, path, limit and credential, from flags or environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use iothub_spec::limits::Limits;

/// Configuration of one hub process. Every field has a flag and an `IOTHUB_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of the MQTT listener (MQTT 3.1.1 and 5 on the same port). Port 0 picks a free one.
    #[arg(long, env = "IOTHUB_MQTT_ADDR", default_value = "0.0.0.0:1883")]
    pub mqtt_addr: SocketAddr,

    /// Address of the REST API, `/healthz` and `/metrics`. Port 0 picks a free one.
    #[arg(long, env = "IOTHUB_HTTP_ADDR", default_value = "0.0.0.0:9000")]
    pub http_addr: SocketAddr,

    /// Serve the REST API on --http-addr over HTTPS (TLS with --tls-cert and --tls-key)
    /// instead of plain HTTP.
    #[arg(long, env = "IOTHUB_HTTPS")]
    pub https: bool,

    /// Address of MQTT over TLS (usually 0.0.0.0:8883), served beside the plain MQTT listener;
    /// needs --tls-cert and --tls-key. Off when not set.
    #[arg(long, env = "IOTHUB_MQTTS_ADDR")]
    pub mqtts_addr: Option<SocketAddr>,

    /// Address of MQTT over WebSocket for browsers (e.g. 0.0.0.0:8083): path `/mqtt`,
    /// subprotocol `mqtt`. Off when not set.
    #[arg(long, env = "IOTHUB_WS_ADDR")]
    pub ws_addr: Option<SocketAddr>,

    /// Address of MQTT over secure WebSocket (e.g. 0.0.0.0:8084): path `/mqtt`, subprotocol
    /// `mqtt`; needs --tls-cert and --tls-key. Off when not set.
    #[arg(long, env = "IOTHUB_WSS_ADDR")]
    pub wss_addr: Option<SocketAddr>,

    /// The server certificate chain (PEM, leaf first) of the TLS listeners (--mqtts-addr,
    /// --wss-addr, --https). Read again, with the key, on SIGHUP: new connections get the new
    /// certificate, open ones keep theirs. `iothub dev-certs` makes one for development.
    #[arg(long, env = "IOTHUB_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "IOTHUB_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM): when set, MQTT clients of the TLS listeners (--mqtts-addr,
    /// --wss-addr) must present a certificate signed by one of them, in addition to their
    /// credentials. Not used by HTTPS.
    #[arg(long, env = "IOTHUB_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Directory for the embedded SQLite database (`iothub.db`), created if missing.
    #[arg(long, env = "IOTHUB_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database URL; overrides --data-dir. The scheme picks the store:
    /// `sqlite:///var/lib/iothub/iothub.db` (embedded, the default) or
    /// `postgres://user:password@host:5432/iothub` (shared by several hub instances;
    /// `?max_connections=N` sizes the pool, default 8).
    #[arg(long, env = "IOTHUB_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Bearer token for the admin REST API. When absent, a random development token is
    /// generated and printed at start-up.
    #[arg(long, env = "IOTHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A REST token with a scope, as `SCOPE:TOKEN` (D-58); repeat the flag or separate with
    /// commas. `registry`: create and delete things, nothing else (for an external registry
    /// that keeps the hub in step); `read-only`: every read, no write; `admin`: everything, as
    /// --admin-token. Tokens are 16 to 256 visible ASCII characters.
    #[arg(long = "api-token", env = "IOTHUB_API_TOKENS", value_delimiter = ',',
          value_parser = crate::api::scopes::parse_scoped_token, hide_env_values = true)]
    pub api_tokens: Vec<(crate::api::scopes::Scope, String)>,

    /// A service user as `$name:secret` (S-1.5); repeat the flag or separate with commas.
    /// Service users may publish and subscribe on any `$iothub/...` topic.
    #[arg(long = "service-user", env = "IOTHUB_SERVICE_USERS", value_delimiter = ',',
          value_parser = parse_service_user, hide_env_values = true)]
    pub service_users: Vec<(String, String)>,

    /// Serve clients written for tio as tio does (docs/tio-compatibility.md): the REST API also
    /// accepts HTTP Basic auth with the admin token as password, and a thing's shadow update
    /// writes `reported` only, with `"version": 0` meaning no version check.
    #[arg(long, env = "IOTHUB_TIO_COMPAT")]
    pub tio_compat: bool,

    /// Most concurrent MQTT connections.
    #[arg(long, env = "IOTHUB_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Seconds an MQTT client has, from the TCP connection, to send its whole CONNECT; a
    /// client that sends nothing, or too little, is disconnected when they pass.
    #[arg(long, env = "IOTHUB_HANDSHAKE_TIMEOUT", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout: u64,

    /// Largest CONNECT packet in bytes, read before the client is authenticated; a larger one
    /// closes the connection before its bytes are buffered.
    #[arg(long, env = "IOTHUB_MAX_CONNECT_SIZE", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u32).range(128..=1024 * 1024))]
    pub max_connect_size: u32,

    /// Most MQTT connections not yet authenticated (TCP accepted, CONNACK not yet sent), in
    /// all; more are closed at accept.
    #[arg(long, env = "IOTHUB_MAX_PENDING_CONNECTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_pending_connects: u64,

    /// Most MQTT connections not yet authenticated from one IP address; more are closed at
    /// accept.
    #[arg(long, env = "IOTHUB_MAX_PENDING_CONNECTS_PER_ADDR", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_pending_connects_per_addr: u64,

    /// Seconds an HTTP client may take to send a request's head (also the idle limit of a
    /// kept-alive connection waiting for its next request).
    #[arg(long, env = "IOTHUB_HTTP_HEADER_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout: u64,

    /// Seconds an HTTP client may take between two pieces of a request body.
    #[arg(long, env = "IOTHUB_HTTP_READ_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_read_timeout: u64,

    /// Seconds an HTTP client may take to send a whole request body, counted from its head;
    /// a body still incomplete then ends with an error answer and the connection is closed.
    #[arg(long, env = "IOTHUB_HTTP_REQUEST_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_request_timeout: u64,

    /// Most concurrent HTTP connections to the REST API; more are answered 503 at once and
    /// closed.
    #[arg(long, env = "IOTHUB_MAX_HTTP_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_http_connections: u64,

    /// Most concurrent HTTP connections from one IP address; more are answered 503 at once
    /// and closed.
    #[arg(long, env = "IOTHUB_MAX_HTTP_CONNECTIONS_PER_ADDR", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_http_connections_per_addr: u64,

    /// Most shadow writes committed in one storage transaction (group commit).
    #[arg(long, env = "IOTHUB_COMMIT_BATCH", default_value_t = 512)]
    pub commit_batch: usize,

    /// Dispatch shards for device requests (shadow, NTP, method responses, OTA results): each
    /// thing belongs to one shard, whose requests are handled in order. Default: one per core.
    #[arg(long, env = "IOTHUB_DISPATCH_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub dispatch_shards: Option<u16>,

    /// Largest shadow request payload in bytes (S-3.9); larger requests get 413.
    #[arg(long, env = "IOTHUB_MAX_REQUEST_PAYLOAD", default_value_t = Limits::DEFAULT.max_request_payload)]
    pub max_request_payload: usize,

    /// Largest whole shadow state in bytes (S-3.9); updates that would exceed it get 413.
    #[arg(long, env = "IOTHUB_MAX_STATE_BYTES", default_value_t = Limits::DEFAULT.max_state_bytes)]
    pub max_state_bytes: usize,

    /// Deepest JSON nesting accepted in a request (S-3.9); deeper gets 400.
    #[arg(long, env = "IOTHUB_MAX_JSON_DEPTH", default_value_t = Limits::DEFAULT.max_json_depth)]
    pub max_json_depth: usize,

    /// Longest clientToken in bytes (S-4.1).
    #[arg(long, env = "IOTHUB_MAX_CLIENT_TOKEN", default_value_t = Limits::DEFAULT.max_client_token)]
    pub max_client_token: usize,

    /// Shadow requests per second allowed per thing (S-3.9); more get 429.
    #[arg(long, env = "IOTHUB_SHADOW_REQUESTS_PER_SEC", default_value_t = Limits::DEFAULT.shadow_requests_per_sec)]
    pub shadow_requests_per_sec: u32,

    /// Shadow requests in flight per thing (S-3.9); more get 429.
    #[arg(long, env = "IOTHUB_MAX_IN_FLIGHT", default_value_t = Limits::DEFAULT.max_in_flight)]
    pub max_in_flight: u32,

    /// Named shadows per thing (S-3.9).
    #[arg(long, env = "IOTHUB_MAX_NAMED_SHADOWS", default_value_t = Limits::DEFAULT.max_named_shadows)]
    pub max_named_shadows: u32,

    /// Topic filters one thing may hold subscribed at once; more are refused in SUBACK
    /// (0x97 in MQTT 5, 0x80 in 3.1.1). Service users are not limited.
    #[arg(long, env = "IOTHUB_MAX_SUBSCRIPTIONS", default_value_t = Limits::DEFAULT.max_subscriptions)]
    pub max_subscriptions: u32,

    /// Most things per second that configurations (S-11) are applied to.
    #[arg(long, env = "IOTHUB_CONFIGURATION_RATE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub configuration_rate: u32,

    /// Milliseconds between two sweeps of the configurations when nothing wakes them (a sweep
    /// also refreshes the success counts).
    #[arg(long, env = "IOTHUB_CONFIGURATION_SWEEP_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub configuration_sweep_ms: u64,

    /// Hours a fleet job (S-12) stays readable after it ended, with its per-thing results;
    /// then it is deleted (checked once a minute).
    #[arg(long, env = "IOTHUB_JOB_RETENTION_HOURS", default_value_t = 168,
          value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub job_retention_hours: u64,

    /// Run on an external MQTT broker instead of the embedded one, as `mqtt://HOST:PORT`: a
    /// Mosquitto 2.0 with its dynamic-security plugin (docs/running-at-scale.md, "The hub on
    /// Mosquitto"). Devices connect to that broker; the hub joins it as an MQTT 5 client, keeps
    /// one account per thing there, and opens no MQTT listener of its own (--mqtt-addr is
    /// unused). Several hubs may share one broker when they share one PostgreSQL database:
    /// they split the things between them (docs/running-at-scale.md, "Several hub
    /// instances"). Default: the embedded broker.
    #[arg(long, env = "IOTHUB_BROKER")]
    pub broker: Option<String>,

    /// This hub instance's name among the instances sharing a --broker and a database; also
    /// the tail of its client identifier on the broker (`USERNAME/INSTANCE`). Give each instance
    /// a stable one, so the broker keeps its session across restarts. Default: `hub-PID-RANDOM`.
    #[arg(long, env = "IOTHUB_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    /// The hub's user name on the --broker: a dynamic-security client
    /// whose role allows `$iothub/#`, `$CONTROL/dynamic-security/#` and the `$SYS/broker/log`
    /// topics.
    #[arg(long, env = "IOTHUB_BROKER_USERNAME", default_value = "$hub")]
    pub broker_username: String,

    /// The hub's password on the --broker (or --broker-password-file).
    #[arg(long, env = "IOTHUB_BROKER_PASSWORD", hide_env_values = true)]
    pub broker_password: Option<String>,

    /// A file holding the hub's password on the --broker (a trailing newline is ignored);
    /// keeps the password out of the process list.
    #[arg(long, env = "IOTHUB_BROKER_PASSWORD_FILE")]
    pub broker_password_file: Option<PathBuf>,

    /// Bearer token a broker presents to the hub's HTTP authentication and authorization routes,
    /// `POST /api/v1/broker/authn` and `/api/v1/broker/authz` (EMQX 5's HTTP authenticator and
    /// authorizer; docs/running-at-scale.md, "The hub behind EMQX"). Off when not set: the
    /// routes do not exist (404).
    #[arg(long, env = "IOTHUB_BROKER_AUTH_TOKEN", hide_env_values = true,
          value_parser = parse_token)]
    pub broker_auth_token: Option<String>,

    /// Log line format on stderr: `text` for people, `json` (one object per line, span fields
    /// included) for log collectors. Colours only when stderr is a terminal.
    #[arg(long, env = "IOTHUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Registry sync with an external registry (S-13): the `[registry_sync]` section of the
    /// config file, which has no flags (it is a structure). `None`: no sync.
    #[arg(skip)]
    pub registry_sync: Option<crate::sync::SyncConfig>,
    /// Routes declared in the config file's `[[routes]]` tables (S-14.1); no flag. Written over
    /// the stored routes of the same id at start-up; a file route no longer in the file is
    /// deleted.
    #[arg(skip)]
    pub routes: Vec<crate::routes::RouteSpec>,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The limits of S-3.9 as configured.
    pub fn limits(&self) -> Limits {
        Limits {
            max_request_payload: self.max_request_payload,
            max_state_bytes: self.max_state_bytes,
            max_json_depth: self.max_json_depth,
            max_client_token: self.max_client_token,
            shadow_requests_per_sec: self.shadow_requests_per_sec,
            max_in_flight: self.max_in_flight,
            max_named_shadows: self.max_named_shadows,
            max_subscriptions: self.max_subscriptions,
        }
    }

    /// The TLS files, when a TLS listener is asked for; an error names the flag that needs
    /// them. `None`: no TLS listener.
    pub fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>, crate::tls::TlsError> {
        let wanted = [
            (self.mqtts_addr.is_some(), "--mqtts-addr"),
            (self.wss_addr.is_some(), "--wss-addr"),
            (self.https, "--https"),
        ]
        .into_iter()
        .find_map(|(on, flag)| on.then_some(flag));
        let Some(listener) = wanted else {
            return Ok(None);
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            _ => Err(crate::tls::TlsError::NotConfigured { listener }),
        }
    }

    /// The database URL: `--database-url`, or the SQLite file in `--data-dir`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("iothub.db").display()),
        }
    }
}

/// A bearer token: not empty, and visible ASCII only, since it travels in an HTTP header
/// (whose value the hub trims, and cannot read with other bytes), so any other token could
/// never match.
fn parse_token(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the token is empty".to_owned());
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be visible ASCII characters, without spaces".to_owned());
    }
    Ok(s.to_owned())
}

fn parse_service_user(s: &str) -> Result<(String, String), String> {
    let (name, secret) = s
        .split_once(':')
        .ok_or_else(|| format!("service user {s:?} is not of the form $name:secret"))?;
    if !iothub_spec::ids::is_service_user(name) || name.len() < 2 {
        return Err(format!("service user name {name:?} must start with '$'"));
    }
    if secret.is_empty() {
        return Err(format!("service user {name:?} has an empty secret"));
    }
    Ok((name.to_owned(), secret.to_owned()))
}

/// `--instance-id`: 1 to 64 letters, digits, `-`, `_` or `.` (it goes into an MQTT client
/// identifier and into log lines).
fn parse_instance_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("1 to 64 of A-Z a-z 0-9 - _ .".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_users_need_dollar_names_and_secrets() {
        assert_eq!(
            parse_service_user("$app:s3"),
            Ok(("$app".into(), "s3".into()))
        );
        assert!(parse_service_user("app:s3").is_err());
        assert_eq!(parse_instance_id("hub-a.1_x"), Ok("hub-a.1_x".into()));
        for bad in ["", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(parse_instance_id(bad).is_err(), "{bad:?}");
        }
        assert!(parse_service_user("$app").is_err());
        assert!(parse_service_user("$app:").is_err());
    }

    #[test]
    fn tokens_fit_in_a_header() {
        assert_eq!(parse_token("s3cr3t-_.~"), Ok("s3cr3t-_.~".into()));
        assert!(parse_token("").is_err());
        assert!(parse_token("two words").is_err());
        assert!(parse_token("trailing\n").is_err());
        assert!(parse_token("caf\u{e9}").is_err());
    }
}
