//! `--spawn-hub`: starts a hub binary on `127.0.0.1:0` with a temporary data directory, a
//! generated admin token and service user, and waits for its `iothub ready mqtt=.. http=..` line.
//! With `--tls` the suite talks to the hub's MQTT over TLS listener (`mqtts=` of that line),
//! which the `--hub-arg`s must set up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use iothub_launch::{HubCommand, HubProcess};

use crate::ctx::rand_u32;
use crate::net::TlsClient;

/// How to spawn a hub: the binary, extra arguments, and whether the suite connects over TLS.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The hub binary.
    pub bin: PathBuf,
    /// Arguments added after the suite's own (`--mqtts-addr`, `--tls-cert`, ..).
    pub args: Vec<String>,
    /// When set, MQTT goes to the hub's TLS listener with this client.
    pub tls: Option<Arc<TlsClient>>,
}

impl SpawnSpec {
    /// `bin` with no extra arguments, plain MQTT.
    pub fn plain(bin: &Path) -> SpawnSpec {
        SpawnSpec {
            bin: bin.to_path_buf(),
            args: Vec::new(),
            tls: None,
        }
    }
}

/// How long the hub may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running hub started by the suite; killed on drop.
pub struct SpawnedHub {
    spec: SpawnSpec,
    process: HubProcess,
    dir: tempfile::TempDir,
    /// MQTT address `host:port` (the TLS listener's when spawned for TLS).
    pub mqtt: String,
    /// HTTP address `host:port`.
    pub http: String,
    /// The admin token it was given.
    pub token: String,
    /// The service user `(name, secret)` it was given.
    pub service: (String, String),
}

fn random_word() -> String {
    format!("{:08x}{:08x}", rand_u32(), rand_u32().rotate_left(7))
}

impl SpawnedHub {
    /// Starts `bin` and waits for it to be ready.
    pub async fn start(bin: &Path) -> anyhow::Result<SpawnedHub> {
        SpawnedHub::start_spec(&SpawnSpec::plain(bin)).await
    }

    /// Starts the hub `spec` describes and waits for it to be ready.
    pub async fn start_spec(spec: &SpawnSpec) -> anyhow::Result<SpawnedHub> {
        let dir = tempfile::Builder::new()
            .prefix("iothub-conformance-")
            .tempdir()
            .context("creating the hub's data directory")?;
        let token = format!("tok-{}", random_word());
        let service = ("$conformance".to_string(), random_word());
        let (process, mqtt, http) = launch(spec, dir.path(), &token, &service).await?;
        Ok(SpawnedHub {
            spec: spec.clone(),
            process,
            dir,
            mqtt,
            http,
            token,
            service,
        })
    }

    /// Kills the hub with SIGKILL (a crash: no graceful shutdown) and starts it again on the
    /// same data directory. It listens on fresh ports (the old ones may still be held by
    /// closing connections); read [`SpawnedHub::mqtt`] and [`SpawnedHub::http`] again.
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let (process, mqtt, http) =
            launch(&self.spec, self.dir.path(), &self.token, &self.service).await?;
        self.process = process;
        self.mqtt = mqtt;
        self.http = http;
        Ok(())
    }

    /// How this hub was spawned.
    pub fn spec(&self) -> &SpawnSpec {
        &self.spec
    }

    /// The TLS client for its MQTT listener, when it was spawned for TLS.
    pub fn tls(&self) -> Option<&Arc<TlsClient>> {
        self.spec.tls.as_ref()
    }
}

async fn launch(
    spec: &SpawnSpec,
    dir: &Path,
    token: &str,
    service: &(String, String),
) -> anyhow::Result<(HubProcess, String, String)> {
    let bin = &spec.bin;
    let mut cmd = HubCommand::new(bin);
    cmd.without_env_prefix("IOTHUB_")
        .args(["--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--admin-token", token, "--service-user"])
        .arg(format!("{}:{}", service.0, service.1))
        .args(&spec.args)
        .stderr_to(dir.join("hub.log"))
        .ready_timeout(READY_TIMEOUT);
    let log = dir.join("hub.log");
    // Waiting for the ready line blocks; keep it off the runtime's worker threads.
    let process = tokio::task::spawn_blocking(move || cmd.spawn())
        .await
        .context("waiting for the hub")?
        .with_context(|| format!("starting {}; log: {}", bin.display(), tail(&log)))?;
    let ready = process.ready();
    let mqtt = match (&spec.tls, ready.mqtts) {
        (None, _) => ready.mqtt,
        (Some(_), Some(mqtts)) => mqtts,
        (Some(_), None) => {
            return Err(anyhow!(
                "--tls with --spawn-hub: {} reports no MQTT over TLS listener (pass \
                 --hub-arg=--mqtts-addr=127.0.0.1:0 and its --tls-cert/--tls-key)",
                bin.display()
            ));
        }
    };
    Ok((process, mqtt.to_string(), ready.http.to_string()))
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    // The panic or error line says more than a backtrace's tail.
    let key: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("ERROR") || l.contains("Error"))
        .take(5)
        .collect();
    if !key.is_empty() {
        return key.join(" | ");
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join(" | ")
}
