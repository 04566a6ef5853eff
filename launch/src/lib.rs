//! Runs the reference hub `iothub` as a child process.
//!
//! The hub announces that it is serving by printing one line on stdout,
//! `iothub ready mqtt=ADDR http=ADDR` ([`ReadyLine`]), after both listeners are bound (followed by
//! `mqtts=ADDR`, `ws=ADDR`, `wss=ADDR` for the TLS and WebSocket MQTT listeners it serves, and the
//! word `https` when the REST API is served over TLS); with
//! `127.0.0.1:0` the line is the only way to learn the ports. The hub binary writes that line with
//! [`ReadyLine`]'s `Display`, and everything that starts a hub (the conformance suite's
//! `--spawn-hub`, the simulator's embedded hub, the integration tests of the hub, the SDK and the
//! examples) reads it with [`ReadyLine::parse`] through [`HubCommand::spawn`], so the format lives
//! in one place.
//!
//! Blocking (`std::process`): it is used from tests and from start-up code, and a thread that
//! drains the hub's stdout for the whole life of the process keeps the hub from ever blocking on a
//! full pipe. Async callers run [`HubCommand::spawn`] on a blocking thread.
//!
//! With the feature `test-servers`, the modules `postgres` and `mosquitto` start the servers a hub in
//! external mode runs on (PostgreSQL, Mosquitto 2.0 with dynamic security), for tests.

pub mod addr;
#[cfg(feature = "test-servers")]
pub mod mosquitto;
#[cfg(feature = "test-servers")]
pub mod postgres;

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The line the hub prints on stdout once it serves MQTT and HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLine {
    /// Where the MQTT listener is bound.
    pub mqtt: SocketAddr,
    /// Where the HTTP (REST) listener is bound.
    pub http: SocketAddr,
    /// Where MQTT over TLS listens, if it does.
    pub mqtts: Option<SocketAddr>,
    /// Where MQTT over WebSocket (`/mqtt`) listens, if it does.
    pub mqtt_ws: Option<SocketAddr>,
    /// Where MQTT over secure WebSocket (`/mqtt`) listens, if it does.
    pub mqtt_wss: Option<SocketAddr>,
    /// Whether `http` serves HTTPS.
    pub https: bool,
}

impl ReadyLine {
    const PREFIX: &'static str = "iothub ready ";

    /// A hub with plain MQTT and HTTP only.
    pub fn new(mqtt: SocketAddr, http: SocketAddr) -> ReadyLine {
        ReadyLine {
            mqtt,
            http,
            mqtts: None,
            mqtt_ws: None,
            mqtt_wss: None,
            https: false,
        }
    }

    /// Parses `iothub ready mqtt=ADDR http=ADDR` (surrounding whitespace allowed); `None` for any
    /// other line.
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let rest = line.trim().strip_prefix(Self::PREFIX)?;
        let mut mqtt = None;
        let mut http = None;
        let (mut mqtts, mut mqtt_ws, mut mqtt_wss, mut https) = (None, None, None, false);
        for word in rest.split_whitespace() {
            if let Some(a) = word.strip_prefix("mqtt=") {
                mqtt = Some(a.parse().ok()?);
            } else if let Some(a) = word.strip_prefix("http=") {
                http = Some(a.parse().ok()?);
            } else if let Some(a) = word.strip_prefix("mqtts=") {
                mqtts = Some(a.parse().ok()?);
            } else if let Some(a) = word.strip_prefix("ws=") {
                mqtt_ws = Some(a.parse().ok()?);
            } else if let Some(a) = word.strip_prefix("wss=") {
                mqtt_wss = Some(a.parse().ok()?);
            } else if word == "https" {
                https = true;
            }
        }
        Some(ReadyLine {
            mqtt: mqtt?,
            http: http?,
            mqtts,
            mqtt_ws,
            mqtt_wss,
            https,
        })
    }
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}mqtt={} http={}", Self::PREFIX, self.mqtt, self.http)?;
        for (key, addr) in [
            ("mqtts", self.mqtts),
            ("ws", self.mqtt_ws),
            ("wss", self.mqtt_wss),
        ] {
            if let Some(addr) = addr {
                write!(f, " {key}={addr}")?;
            }
        }
        if self.https {
            f.write_str(" https")?;
        }
        Ok(())
    }
}

/// Why a hub could not be started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The hub ended before printing its ready line.
    #[error("the hub exited before it was ready ({status})")]
    Exited {
        /// Its exit status, as text (`unknown` if it could not be read).
        status: String,
    },
    /// No ready line within the timeout (the hub was killed).
    #[error("the hub printed no ready line within {0:?}")]
    NotReady(Duration),
    /// The hub did not exit within the timeout after SIGTERM (it was killed).
    #[error("the hub did not exit within {0:?} of SIGTERM")]
    DidNotStop(Duration),
    /// No hub binary was found or could be built.
    #[error("no iothub binary: {0}")]
    NoBinary(String),
    /// Waiting for or signalling the process failed.
    #[error("hub process: {0}")]
    Io(#[from] std::io::Error),
}

/// How to start a hub: a program, its arguments and environment, where its stderr goes.
#[derive(Debug, Clone)]
pub struct HubCommand {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    removed_env_prefix: Option<String>,
    stderr: Option<PathBuf>,
    ready_timeout: Duration,
}

impl HubCommand {
    /// Starts `program` (normally the `iothub` binary, see [`hub_binary`]) with no arguments;
    /// stderr is inherited and the ready timeout is 60 s until set otherwise.
    pub fn new(program: impl Into<PathBuf>) -> HubCommand {
        HubCommand {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            removed_env_prefix: None,
            stderr: None,
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// Adds one argument.
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut HubCommand {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut HubCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the hub.
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Does not pass on inherited variables whose name starts with `prefix` (e.g. `IOTHUB_`, so
    /// that the caller's own configuration cannot change the hub's flags behind its back).
    pub fn without_env_prefix(&mut self, prefix: &str) -> &mut HubCommand {
        self.removed_env_prefix = Some(prefix.to_owned());
        self
    }

    /// Appends the hub's stderr (its logs) to `path` instead of inheriting it.
    pub fn stderr_to(&mut self, path: impl Into<PathBuf>) -> &mut HubCommand {
        self.stderr = Some(path.into());
        self
    }

    /// How long to wait for the ready line.
    pub fn ready_timeout(&mut self, timeout: Duration) -> &mut HubCommand {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the hub and waits for its ready line. On any failure the process is killed.
    pub fn spawn(&self) -> Result<HubProcess, LaunchError> {
        let spawn_error = |source| LaunchError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut cmd = Command::new(&self.program);
        if let Some(prefix) = &self.removed_env_prefix {
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with(prefix.as_str()) {
                    cmd.env_remove(key);
                }
            }
        }
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(path) = &self.stderr {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(spawn_error)?;
            cmd.stderr(Stdio::from(log));
        }
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let Some(stdout) = child.stdout.take() else {
            kill_and_reap(&mut child);
            return Err(spawn_error(std::io::Error::other("no stdout pipe")));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ready) = ReadyLine::parse(&line) {
                    let _ = tx.send(ready);
                }
            }
        });
        match rx.recv_timeout(self.ready_timeout) {
            Ok(ready) => Ok(HubProcess { child, ready }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the process is ending or has ended.
                let status = wait_briefly(&mut child)
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
                Err(LaunchError::Exited { status })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_and_reap(&mut child);
                Err(LaunchError::NotReady(self.ready_timeout))
            }
        }
    }
}

/// A hub that printed its ready line. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct HubProcess {
    child: Child,
    ready: ReadyLine,
}

impl HubProcess {
    /// Where the hub listens.
    pub fn ready(&self) -> ReadyLine {
        self.ready
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (a crash: the hub gets no chance to flush anything), then reaps the process.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// SIGTERM (graceful shutdown), then waits at most `within` for the exit; kills the process
    /// and fails with [`LaunchError::DidNotStop`] if it takes longer.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus, LaunchError> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("pid out of range"))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .map_err(std::io::Error::from)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(LaunchError::DidNotStop(within));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The exit status of a process that closed its stdout, waiting at most 2 s; a process that
/// closed stdout but keeps running is killed.
fn wait_briefly(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    kill_and_reap(child);
    None
}

fn kill_and_reap(child: &mut Child) {
    // Errors mean it has already exited; `wait` then only reaps it.
    let _ = child.kill();
    let _ = child.wait();
}

/// The `iothub` binary for tests and tools run from this workspace: `$IOTHUB_BIN` if set, else
/// `iothub` in the cargo target directory of the running executable (`target/<profile>/`, from
/// `target/<profile>/deps/<test>` or `target/<profile>/<bin>`), built with
/// `cargo build -p iothub-hub --bin iothub` when it is not there yet.
pub fn hub_binary() -> Result<PathBuf, LaunchError> {
    if let Some(path) = std::env::var_os("IOTHUB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    if dir.and_then(Path::file_name).is_some_and(|n| n == "deps") {
        dir = dir.and_then(Path::parent);
    }
    let dir =
        dir.ok_or_else(|| LaunchError::NoBinary(format!("{} has no parent", exe.display())))?;
    let bin = dir.join("iothub");
    if bin.exists() {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "iothub-hub", "--bin", "iothub"]);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| LaunchError::NoBinary(format!("cargo: {e}")))?;
    if !status.success() || !bin.exists() {
        return Err(LaunchError::NoBinary(format!(
            "`cargo build -p iothub-hub` ({status}) left nothing at {}",
            bin.display()
        )));
    }
    Ok(bin)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_round_trips() {
        let line = ReadyLine::new(
            "127.0.0.1:41883".parse().unwrap(),
            "[::1]:49000".parse().unwrap(),
        );
        assert_eq!(
            line.to_string(),
            "iothub ready mqtt=127.0.0.1:41883 http=[::1]:49000"
        );
        assert_eq!(ReadyLine::parse(&format!("  {line}\n")), Some(line));
        let secure = ReadyLine {
            mqtts: Some("127.0.0.1:8883".parse().unwrap()),
            mqtt_ws: Some("127.0.0.1:8080".parse().unwrap()),
            mqtt_wss: Some("127.0.0.1:8443".parse().unwrap()),
            https: true,
            ..line
        };
        assert_eq!(
            secure.to_string(),
            "iothub ready mqtt=127.0.0.1:41883 http=[::1]:49000 mqtts=127.0.0.1:8883 \
             ws=127.0.0.1:8080 wss=127.0.0.1:8443 https"
        );
        assert_eq!(ReadyLine::parse(&secure.to_string()), Some(secure));
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        for line in [
            "",
            "iothub ready",
            "iothub ready mqtt=127.0.0.1:1",
            "iothub ready mqtt=nowhere http=127.0.0.1:2",
            "hub ready mqtt=127.0.0.1:1 http=127.0.0.1:2",
            "admin token: iothub ready mqtt=127.0.0.1:1 http=127.0.0.1:2",
        ] {
            assert_eq!(ReadyLine::parse(line), None, "{line:?}");
        }
    }

    /// A stand-in hub: a shell that prints a ready line, or does not.
    fn sh(script: &str) -> HubCommand {
        let mut cmd = HubCommand::new("/bin/sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn spawn_waits_for_the_ready_line_and_terminate_stops_the_process() {
        // The trap is set before the ready line: a SIGTERM right after it must find it set.
        let mut hub = sh("trap 'exit 7' TERM; echo starting; \
                          echo 'iothub ready mqtt=127.0.0.1:5 http=127.0.0.1:6'; \
                          while true; do sleep 0.05; done")
        .spawn()
        .unwrap();
        assert_eq!(hub.ready().mqtt, "127.0.0.1:5".parse().unwrap());
        assert_eq!(hub.ready().http, "127.0.0.1:6".parse().unwrap());
        assert!(hub.is_running());
        let status = hub.terminate(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(7));
        assert!(!hub.is_running());
    }

    #[test]
    fn a_process_that_exits_early_or_stays_silent_is_an_error() {
        let err = sh("echo not ready; exit 3").spawn().unwrap_err();
        assert!(
            matches!(err, LaunchError::Exited { ref status } if status.contains('3')),
            "{err}"
        );

        let err = sh("sleep 30")
            .ready_timeout(Duration::from_millis(200))
            .spawn()
            .unwrap_err();
        assert!(matches!(err, LaunchError::NotReady(_)), "{err}");

        let err = HubCommand::new("/nonexistent/iothub").spawn().unwrap_err();
        assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
    }

    #[test]
    fn stderr_goes_to_the_named_file_and_the_environment_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hub.log");
        let mut hub = sh("echo \"log $GREETING\" >&2; \
                          echo 'iothub ready mqtt=127.0.0.1:5 http=127.0.0.1:6'; sleep 30");
        let mut hub = hub
            .env("GREETING", "hello")
            .stderr_to(&log)
            .spawn()
            .unwrap();
        hub.kill();
        assert!(!hub.is_running());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "log hello\n");
    }
}
