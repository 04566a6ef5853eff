//! `--spawn-hub`: starts a hub binary on `127.0.0.1:0` with a temporary data directory, a
//! generated admin token and service user, and waits for its `iothub ready mqtt=.. http=..` line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use iothub_launch::{HubCommand, HubProcess};

use crate::ctx::rand_u32;

/// How long the hub may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running hub started by the suite; killed on drop.
pub struct SpawnedHub {
    bin: PathBuf,
    process: HubProcess,
    dir: tempfile::TempDir,
    /// MQTT address `host:port`.
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
        let dir = tempfile::Builder::new()
            .prefix("iothub-conformance-")
            .tempdir()
            .context("creating the hub's data directory")?;
        let token = format!("tok-{}", random_word());
        let service = ("$conformance".to_string(), random_word());
        let (process, mqtt, http) = launch(
            bin,
            dir.path(),
            "127.0.0.1:0",
            "127.0.0.1:0",
            &token,
            &service,
        )
        .await?;
        Ok(SpawnedHub {
            bin: bin.to_path_buf(),
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
        let (process, mqtt, http) = launch(
            &self.bin,
            self.dir.path(),
            "127.0.0.1:0",
            "127.0.0.1:0",
            &self.token,
            &self.service,
        )
        .await?;
        self.process = process;
        self.mqtt = mqtt;
        self.http = http;
        Ok(())
    }
}

async fn launch(
    bin: &Path,
    dir: &Path,
    mqtt: &str,
    http: &str,
    token: &str,
    service: &(String, String),
) -> anyhow::Result<(HubProcess, String, String)> {
    let mut cmd = HubCommand::new(bin);
    cmd.without_env_prefix("IOTHUB_")
        .args(["--mqtt-addr", mqtt, "--http-addr", http, "--data-dir"])
        .arg(dir)
        .args(["--admin-token", token, "--service-user"])
        .arg(format!("{}:{}", service.0, service.1))
        .stderr_to(dir.join("hub.log"))
        .ready_timeout(READY_TIMEOUT);
    let log = dir.join("hub.log");
    // Waiting for the ready line blocks; keep it off the runtime's worker threads.
    let process = tokio::task::spawn_blocking(move || cmd.spawn())
        .await
        .context("waiting for the hub")?
        .with_context(|| format!("starting {}; log: {}", bin.display(), tail(&log)))?;
    let ready = process.ready();
    Ok((process, ready.mqtt.to_string(), ready.http.to_string()))
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
