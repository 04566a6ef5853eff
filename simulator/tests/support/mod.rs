//! Harness of the simulator's end-to-end tests: runs the real `iothub-sim` binary, follows its
//! stderr line by line (the embedded hub's line, the metrics address, progress messages),
//! inspects the hub's child process through `/proc` and scrapes the metrics endpoint.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a line the simulator must print may take.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `iothub-sim`, its stdout collected on a thread, its stderr followed line by line.
pub struct Sim {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub stderr: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

/// What the simulator says about its embedded hub (`embedded hub: pid=.. mqtt=.. http=..
/// data_dir=..`).
#[derive(Debug, Clone)]
pub struct HubLine {
    /// The hub's process id.
    pub pid: u32,
    /// Its temporary data directory.
    pub data_dir: PathBuf,
}

impl Sim {
    /// Starts `iothub-sim` with `args`.
    pub fn spawn<I, S>(args: I) -> Sim
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start iothub-sim");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Sim {
            child,
            lines,
            stderr: Vec::new(),
            stdout: Some(stdout),
        }
    }

    /// The first stderr line from now on that starts with `prefix`; panics after
    /// [`LINE_TIMEOUT`] or when the simulator's stderr ends.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stderr line {prefix:?} ({e}); stderr so far:\n{}",
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Waits for the embedded hub's line and parses it.
    pub fn hub_line(&mut self) -> HubLine {
        let line = self.wait_line("embedded hub: ");
        let pid = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        let data_dir = line
            .split_once(" data_dir=")
            .map(|(_, d)| PathBuf::from(d))
            .unwrap_or_else(|| panic!("no data_dir in {line:?}"));
        HubLine { pid, data_dir }
    }

    /// Waits (at most `within`) for the simulator to exit; then returns its status, stdout and
    /// the rest of its stderr.
    pub fn wait(mut self, within: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "iothub-sim did not exit within {within:?}; stderr:\n{}",
                    self.stderr.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        // The writer has exited: the channel ends once the reader thread has drained the pipe
        // (unless a child of it still holds stderr; bounded anyway).
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        (status, stdout, self.stderr.join("\n"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The state letter of process `pid` (`R`, `S`, `Z`, ...), or None when there is no such
/// process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The parent process id of `pid`.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The command line of `pid`, argument by argument.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet), waiting at most `within`.
pub fn ended_within(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match process_state(pid) {
            None | Some('Z') | Some('X') => return true,
            Some(_) if Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `GET path` over plain HTTP/1.1; returns the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the metric sample whose series (name and labels) is exactly `series`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The number at `pointer` in a JSON report; panics, showing the report, when it is missing.
pub fn count(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing: {report}"))
}

/// The number at `pointer`, 0 when absent (maps keyed by outcome list only what happened).
pub fn count_or_zero(report: &Value, pointer: &str) -> u64 {
    report.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// Runs `iothub-sim` with `args` plus `--report-json FILE` to the end, asserts that it succeeded
/// (showing its output otherwise) and returns the JSON report and the human report (stdout).
pub fn run_report<I, S>(args: I) -> (Value, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .args(args)
        .arg("--report-json")
        .arg(&report_path)
        .output()
        .expect("run iothub-sim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "iothub-sim failed:\n{stdout}\n{stderr}"
    );
    let report = serde_json::from_slice(&std::fs::read(&report_path).expect("report written"))
        .expect("JSON report");
    (report, stdout.into_owned())
}
