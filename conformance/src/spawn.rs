//! `--spawn-hub`: starts a hub binary on `127.0.0.1:0` with a temporary data directory, a
//! generated admin token and service user, and waits for its `iothub ready mqtt=.. http=..` line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::ctx::rand_u32;

/// How long the hub may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running hub started by the suite; killed on drop.
pub struct SpawnedHub {
    bin: PathBuf,
    child: Child,
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
        let (child, mqtt, http) = launch(
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
            child,
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
        self.child.start_kill().context("killing the hub")?;
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("hub did not die within 10 s")??;
        let (child, mqtt, http) = launch(
            &self.bin,
            self.dir.path(),
            "127.0.0.1:0",
            "127.0.0.1:0",
            &self.token,
            &self.service,
        )
        .await?;
        self.child = child;
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
) -> anyhow::Result<(Child, String, String)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hub.log"))
        .context("opening hub.log")?;
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("IOTHUB_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--mqtt-addr")
        .arg(mqtt)
        .arg("--http-addr")
        .arg(http)
        .arg("--data-dir")
        .arg(dir)
        .arg("--admin-token")
        .arg(token)
        .arg("--service-user")
        .arg(format!("{}:{}", service.0, service.1))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.trim().strip_prefix("iothub ready ") {
                let mut mqtt = None;
                let mut http = None;
                for w in rest.split_whitespace() {
                    if let Some(a) = w.strip_prefix("mqtt=") {
                        mqtt = Some(a.to_string());
                    } else if let Some(a) = w.strip_prefix("http=") {
                        http = Some(a.to_string());
                    }
                }
                return Ok::<_, std::io::Error>(mqtt.zip(http));
            }
        }
        Ok(None)
    })
    .await;
    let addrs = match ready {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => {
            let status = child.try_wait().ok().flatten();
            bail!(
                "hub exited before its ready line ({status:?}); log: {}",
                tail(&dir.join("hub.log"))
            )
        }
        Ok(Err(e)) => bail!("reading the hub's stdout: {e}"),
        Err(_) => bail!("hub printed no ready line within {READY_TIMEOUT:?}"),
    };
    // Keep draining stdout so the hub never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addrs.0, addrs.1))
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
