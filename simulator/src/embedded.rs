//! The reference hub as a child process, for runs that need no setup.
//!
//! `iothub-sim run` without `--mqtt`/`--api` starts its own executable again with the hidden
//! subcommand [`SUBCOMMAND`], which runs [`iothub_hub::start`] and prints the hub's ready line
//! ([`ReadyLine`]: `iothub ready mqtt=ADDR http=ADDR`, written and parsed by `iothub-launch` as
//! for the `iothub` binary). Hub and simulator
//! are then separate processes, as in a real deployment: neither one's CPU or memory hides in
//! the other's, and the report gives each separately. Re-executing itself means that
//! `cargo run -p iothub-sim -- run` needs no other build step.
//!
//! The child gets ephemeral loopback ports, a temporary data directory and an admin token that
//! the parent generates (passed in the environment, not on the command line, where `ps` would
//! show it). Its logs go to the simulator's stderr, at `warn` unless `RUST_LOG` says otherwise.
//! It runs in its own process group, so a Ctrl-C at the terminal reaches only the simulator,
//! which then stops the hub in order: SIGTERM, a bounded wait, SIGKILL, and the data directory
//! removed.
//!
//! `iothub_launch::HubCommand` is not used to start the child: it gives the hub `/dev/null` as
//! stdin, and the pipe on stdin is how the child notices that the simulator died.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use iothub_hub::Config;
use iothub_launch::ReadyLine;
use rand::RngCore;

/// The hidden subcommand that runs the hub in the child process.
pub const SUBCOMMAND: &str = "embedded-hub";
/// How long the hub may take to print its ready line (debug builds start slowly).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the hub may take to shut down after SIGTERM before it is killed. Its data is
/// temporary, but a graceful stop flushes and closes the database like a real shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The environment variable the hub reads its admin token from.
const TOKEN_ENV: &str = "IOTHUB_ADMIN_TOKEN";

/// Flags of the hidden [`SUBCOMMAND`]: the hub's own flags, plus what the child needs to know
/// about its parent.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// Every `iothub` flag.
    #[command(flatten)]
    pub config: Config,
    /// Remove `--data-dir` when the hub stops because its parent went away (nobody else will).
    #[arg(long)]
    pub remove_data_dir_if_orphaned: bool,
}

/// A hub running as a child process with a temporary data directory; stopped (and the
/// directory removed) by [`EmbeddedHub::stop`] or on drop.
pub struct EmbeddedHub {
    /// Where its MQTT listener is.
    pub mqtt_addr: SocketAddr,
    /// Where its HTTP API is.
    pub http_addr: SocketAddr,
    /// Where its MQTT over TLS listener is, when it was started with one.
    pub mqtts_addr: Option<SocketAddr>,
    /// Its admin token.
    pub admin_token: String,
    pid: u32,
    data_dir: PathBuf,
    child: Option<Child>,
    /// The write end of the child's stdin, never written: the kernel closes it when this
    /// process ends in any way, and the child stops at that end of file (see [`serve_child`]).
    parent_alive: Option<ChildStdin>,
    data: Option<tempfile::TempDir>,
}

impl EmbeddedHub {
    /// Starts the hub on loopback with free ports; `extra` are more `iothub` flags (the admin
    /// token is generated here, so `--admin-token` is refused). Blocks until the hub is ready.
    pub fn start(extra: &[String]) -> anyhow::Result<EmbeddedHub> {
        if extra.iter().any(|a| a.starts_with("--admin-token")) {
            bail!("--hub-arg=--admin-token: the embedded hub's admin token is generated per run");
        }
        let data = tempfile::Builder::new()
            .prefix("iothub-sim-hub-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let admin_token = generate_token();
        let exe = std::env::current_exe().context("cannot find the simulator's executable")?;
        let mut cmd = Command::new(&exe);
        cmd.arg(SUBCOMMAND)
            .args(["--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--remove-data-dir-if-orphaned")
            .args(extra)
            .env(TOKEN_ENV, &admin_token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            // Its own process group: the terminal's Ctrl-C goes to the simulator only, which
            // stops the hub after the run's tasks, not before.
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} {SUBCOMMAND}", exe.display()))?;
        let pid = child.id();
        let parent_alive = child.stdin.take();
        let ready = child
            .stdout
            .take()
            .context("no stdout from the embedded hub")
            .and_then(|out| wait_ready(out, &mut child));
        let ready = match ready {
            Ok(ready) => ready,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(EmbeddedHub {
            mqtt_addr: ready.mqtt,
            http_addr: ready.http,
            mqtts_addr: ready.mqtts,
            admin_token,
            pid,
            data_dir: data.path().to_path_buf(),
            child: Some(child),
            parent_alive,
            data: Some(data),
        })
    }

    /// The hub's process id (for its CPU and memory figures).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its temporary data directory (removed when it stops).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the hub gracefully (SIGTERM; SIGKILL after a bounded wait), waits for it and
    /// removes its data directory. An error says the hub did not end well: it had exited
    /// during the run, exited with a failure, or had to be killed.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let result = stop_child(&mut child, &mut self.parent_alive);
        self.parent_alive.take();
        let removed = match self.data.take() {
            Some(dir) => dir
                .close()
                .with_context(|| format!("cannot remove {}", self.data_dir.display())),
            None => Ok(()),
        };
        result.and(removed)
    }
}

impl Drop for EmbeddedHub {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!("embedded hub: {e:#}");
        }
    }
}

fn stop_child(child: &mut Child, parent_alive: &mut Option<ChildStdin>) -> anyhow::Result<()> {
    if let Some(status) = child.try_wait()? {
        bail!("the embedded hub had exited during the run ({status})");
    }
    terminate(child, parent_alive);
    let start = Instant::now();
    let deadline = start + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            tracing::debug!(
                millis = start.elapsed().as_millis() as u64,
                "embedded hub stopped"
            );
            return check_exit(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the embedded hub did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_exit(status: ExitStatus) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("the embedded hub exited with {status}")
    }
}

/// Asks the child to shut down gracefully (SIGTERM, as a service manager would).
#[cfg(unix)]
fn terminate(child: &mut Child, _parent_alive: &mut Option<ChildStdin>) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Without signals, closing its stdin stops the child just as well.
#[cfg(not(unix))]
fn terminate(_child: &mut Child, parent_alive: &mut Option<ChildStdin>) {
    drop(parent_alive.take());
}

/// Reads the child's stdout until the ready line (within [`READY_TIMEOUT`]), then keeps
/// draining it on a thread so the child never blocks on a full pipe.
fn wait_ready(out: std::process::ChildStdout, child: &mut Child) -> anyhow::Result<ReadyLine> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("hub-stdout".into())
        .spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        })
        .context("cannot start a thread")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(ready) = ReadyLine::parse(&line) {
                    return Ok(ready);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                bail!(
                    "the embedded hub exited before it was ready ({status}); see its messages above"
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the embedded hub was not ready within {READY_TIMEOUT:?}")
            }
        }
    }
}

/// A random admin token for one run (128 bits from the OS).
fn generate_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sim-{hex}")
}

/// Why the child hub stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// SIGTERM or SIGINT: the parent's orderly stop (or someone else's).
    Signal,
    /// Stdin reached its end: the parent is gone.
    Orphaned,
}

/// The child's side ([`SUBCOMMAND`]): runs the hub, prints its ready line on stdout and serves
/// until SIGTERM/SIGINT or until stdin ends, then shuts down gracefully.
///
/// Stdin's end is how the child learns that its parent died, even by SIGKILL: the parent holds
/// the only write end of that pipe, and the kernel closes it with the parent. This was chosen
/// over `prctl(PR_SET_PDEATHSIG)` because that signal fires when the *thread* that spawned the
/// child exits (tokio's blocking-pool threads do, after idling), it is Linux-only, and it needs
/// a syscall crate or `unsafe` (forbidden in this workspace); a pipe needs neither.
pub async fn serve_child(args: ChildArgs) -> anyhow::Result<()> {
    let data_dir = args.config.data_dir.clone();
    let hub = iothub_hub::start(args.config).await?;
    // The same line as the `iothub` binary prints; the parent waits for it.
    println!("{}", hub.ready_line());
    let reason = stop_reason().await?;
    tracing::debug!(?reason, "embedded hub shutting down");
    hub.shutdown().await;
    if reason == StopReason::Orphaned && args.remove_data_dir_if_orphaned {
        match std::fs::remove_dir_all(&data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("cannot remove {}: {e}", data_dir.display());
            }
            _ => {}
        }
    }
    Ok(())
}

async fn stop_reason() -> anyhow::Result<StopReason> {
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = eof_tx.send(());
        })
        .context("cannot start a thread")?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(tokio::select! {
            _ = term.recv() => StopReason::Signal,
            _ = int.recv() => StopReason::Signal,
            _ = eof_rx => StopReason::Orphaned,
        })
    }
    #[cfg(not(unix))]
    {
        Ok(tokio::select! {
            _ = tokio::signal::ctrl_c() => StopReason::Signal,
            _ = eof_rx => StopReason::Orphaned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_long() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 32);
    }
}
