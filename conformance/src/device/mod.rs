//! The device side: `iothub-conformance device --exec COMMAND`.
//!
//! The suite plays the hub. Each case starts its own scripted hub ([`broker::Broker`], a
//! minimal single-device MQTT 3.1.1 / 5 server on a free loopback port) and runs the device
//! under test with `COMMAND` (split into words as a shell would, run directly), passing the broker address and the thing's
//! credentials in the environment ([`ENV_ADDR`], [`ENV_THING`], [`ENV_SECRET`]). The case then
//! plays business-side actions (desired changes, method calls, OTA tasks, a dropped
//! connection) and judges what the device publishes and subscribes ([`judge`]). Every
//! expectation comes from docs/spec.md and the `spec/` types; every wait has a time limit.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`wire`] | MQTT framing of both versions through rumqttc's codecs |
//! | [`broker`] | the scripted hub's MQTT server and observation log |
//! | [`hub`] | the scripted hub's answers (shadow get/update, NTP) and log types |
//! | [`judge`] | pure checks over the log |
//! | [`cases`] | the device cases |

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::payload::field;
use iothub_spec::topic::Topic;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ctx::rand_u32;

pub mod broker;
pub mod cases;
pub mod hub;
pub mod judge;
pub mod wire;

use broker::Broker;
use hub::{ObsEv, Shadows};

/// Environment variable with the scripted hub's MQTT address, `127.0.0.1:PORT`.
pub const ENV_ADDR: &str = "IOTHUB_MQTT_ADDR";
/// Environment variable with the thing id (also client id and user name, S-1.2).
pub const ENV_THING: &str = "IOTHUB_THING_ID";
/// Environment variable with the thing's secret (the MQTT password).
pub const ENV_SECRET: &str = "IOTHUB_THING_SECRET";

/// How long a device may take from its start to its first report (process start, connect,
/// subscriptions, shadow get, NTP).
pub const STARTUP: Duration = Duration::from_secs(20);
/// How long the device may take to react to one hub action (a delta, a method call).
pub const REACT: Duration = Duration::from_secs(5);

/// Lines of the device's stderr kept to explain an exit.
pub const STDERR_TAIL: usize = 10;

/// What every device case gets: how to start the device under test.
pub struct DeviceCtx {
    /// The command that runs the device, split into words as a shell would (quotes respected)
    /// and run directly (wrap it in `sh -c '..'` for shell features).
    pub exec: String,
    /// Let the device's stdout/stderr through (else discarded).
    pub show_output: bool,
    /// The direct method the device implements and answers 200 (S-5.2).
    pub method: String,
    run: String,
    counter: AtomicU32,
}

impl DeviceCtx {
    /// A context running `exec` for every case.
    pub fn new(exec: impl Into<String>, method: impl Into<String>, show_output: bool) -> Self {
        DeviceCtx {
            exec: exec.into(),
            show_output,
            method: method.into(),
            run: format!("cfd{:06x}", rand_u32() & 0xFF_FFFF),
            counter: AtomicU32::new(0),
        }
    }

    /// Starts a scripted hub serving `shadows`, then the device under test for a fresh thing.
    pub async fn start(&self, shadows: Shadows) -> anyhow::Result<Run> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let thing = format!("{}-{n}", self.run);
        let secret = format!("s{:08x}{:08x}", rand_u32(), rand_u32());
        let hub = Broker::start(&thing, &secret, shadows).await?;
        let argv = shlex::split(&self.exec)
            .filter(|a| !a.is_empty())
            .with_context(|| format!("--exec {:?} is not a valid command line", self.exec))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env(ENV_ADDR, hub.addr().to_string())
            .env(ENV_THING, &thing)
            .env(ENV_SECRET, &secret)
            .stdin(Stdio::piped())
            .kill_on_drop(true);
        if !self.show_output {
            cmd.stdout(Stdio::null());
        }
        // Always read: the last lines explain a device that exits.
        cmd.stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the device {argv:?}"))?;
        // The device's stdin stays open until the case ends: a device may exit on its EOF, so
        // that it never outlives a suite that was killed.
        let stdin = child.stdin.take();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let (eof_tx, eof) = watch::channel(false);
        if let Some(err) = child.stderr.take() {
            let (tail, show) = (tail.clone(), self.show_output);
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if show {
                        eprintln!("{line}");
                    }
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_TAIL {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
                let _ = eof_tx.send(true);
            });
        }
        // The task owns the process: dropping the run aborts it, and `kill_on_drop` ends the
        // device with it.
        let (exit_tx, exited) = watch::channel(None);
        let waiter = tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let _ = exit_tx.send(Some(status));
            }
            // Keep the sender (and the process handle) until the run ends.
            std::future::pending::<()>().await;
        });
        Ok(Run {
            hub,
            thing,
            waiter,
            exited,
            stderr_eof: eof,
            stderr_tail: tail,
            _stdin: stdin,
        })
    }
}

/// One device under test and its scripted hub; the device process is killed on drop.
pub struct Run {
    /// The scripted hub.
    pub hub: Broker,
    /// The thing id the device was given.
    pub thing: String,
    waiter: JoinHandle<()>,
    exited: watch::Receiver<Option<ExitStatus>>,
    stderr_eof: watch::Receiver<bool>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    _stdin: Option<tokio::process::ChildStdin>,
}

impl Drop for Run {
    fn drop(&mut self) {
        // Only the process the suite started, by its own handle (dropped with the task).
        self.waiter.abort();
    }
}

/// The exit status once the process has ended (never completes while it runs).
async fn exit_of(mut rx: watch::Receiver<Option<ExitStatus>>) -> String {
    loop {
        let status = *rx.borrow_and_update();
        if let Some(s) = status {
            return s.to_string();
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A device publish found in the log: its index, topic and JSON body.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index in the log.
    pub index: usize,
    /// Connection.
    pub conn: u32,
    /// Topic.
    pub topic: String,
    /// Payload as JSON (`Null` when not JSON).
    pub body: Value,
}

/// Every device publish in `log` after index `after` whose topic equals `topic`.
pub fn published_in(log: &[hub::Obs], after: usize, topic: &str) -> Vec<Seen> {
    log.iter()
        .enumerate()
        .skip(after)
        .filter_map(|(i, o)| {
            let (t, v) = o.publish()?;
            (t == topic).then(|| Seen {
                index: i,
                conn: o.conn,
                topic: t.to_owned(),
                body: v,
            })
        })
        .collect()
}

impl Run {
    /// Every device publish after log index `after` whose topic equals `topic`.
    pub fn published(&self, after: usize, topic: &str) -> Vec<Seen> {
        self.hub.with(|st| published_in(&st.log, after, topic))
    }

    /// Current length of the log (a mark for "after this").
    pub fn mark(&self) -> usize {
        self.hub.with(|st| st.log.len())
    }

    /// `wait`, unless the device process ends first: then an error at once with its exit
    /// status and the last lines of its stderr (instead of the wait's full time limit).
    pub async fn or_exit<T>(
        &self,
        wait: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            r = wait => r,
            status = exit_of(self.exited.clone()) => {
                // The last lines may still be in the pipe.
                let mut eof = self.stderr_eof.clone();
                let _ = tokio::time::timeout(Duration::from_millis(500), eof.wait_for(|e| *e)).await;
                let tail: Vec<String> = self
                    .stderr_tail
                    .lock()
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                Err(anyhow::anyhow!(
                    "the device process ended ({status}) before the case was done; its last stderr lines: {}",
                    if tail.is_empty() { "(none)".to_owned() } else { tail.join(" | ") }
                ))
            }
        }
    }

    /// Waits for the device's first accepted connection; returns its connection id.
    pub async fn connected(&self) -> anyhow::Result<u32> {
        self.or_exit(self.connected_inner()).await
    }

    async fn connected_inner(&self) -> anyhow::Result<u32> {
        self.hub
            .wait_for(
                STARTUP,
                "the device never connected with accepted credentials",
                |log| {
                    log.iter().find_map(|o| match o.ev {
                        ObsEv::Connect { accepted: true, .. } => Some(o.conn),
                        _ => None,
                    })
                },
            )
            .await
    }

    /// Waits until the device is up: connected, and its `get` of the `default` shadow answered
    /// (S-3.2). Returns the log index of that answer. A device that reports its state only on
    /// change is up here too: the start-up report is a profile check of its own
    /// ([`Run::reported_at_start_up`]), so its absence never fails the other cases.
    pub async fn ready(&self) -> anyhow::Result<usize> {
        self.or_exit(self.ready_inner()).await
    }

    async fn ready_inner(&self) -> anyhow::Result<usize> {
        self.connected_inner().await?;
        let get = self.topic_get();
        let accepted = format!("{get}/accepted");
        let rejected = format!("{get}/rejected");
        self.hub
            .wait_for(
                STARTUP,
                &format!(
                    "S-3.2 the device never got its shadow after connecting (no {get} answered)"
                ),
                |log| {
                    log.iter().position(|o| {
                        matches!(&o.ev, ObsEv::Sent { topic, delivered: true, .. }
                            if *topic == accepted || *topic == rejected)
                    })
                },
            )
            .await
    }

    /// Waits for the device's first state report (an `update` with `state.reported`) after its
    /// start-up `get` was answered; returns its log index. No clause requires it: the case
    /// using it is a profile check.
    pub async fn reported_at_start_up(&self) -> anyhow::Result<usize> {
        let answered = self.ready().await?;
        let update = self.topic_update();
        self.or_exit(self.hub.wait_for(
            STARTUP,
            "profile check (no clause): the device did not report its state (an update with state.reported) after getting its shadow",
            |log| {
                log.iter().enumerate().skip(answered).find_map(|(i, o)| {
                    let (t, v) = o.publish()?;
                    (t == update && v[field::STATE][field::REPORTED].is_object()).then_some(i)
                })
            },
        ))
        .await
    }

    /// Waits for a report (an `update` of `default` after log index `after`) whose
    /// `state.reported.<key>` equals `value` (numbers compared numerically). Returns it.
    pub async fn reported(
        &self,
        after: usize,
        key: &str,
        value: &Value,
        within: Duration,
        what: &str,
    ) -> anyhow::Result<Seen> {
        let update = self.topic_update();
        self.or_exit(self.hub.wait_for(within, what, |log| {
            published_in(log, after, &update)
                .into_iter()
                .find(|s| crate::check::json_eq(&s.body[field::STATE][field::REPORTED][key], value))
        }))
        .await
    }

    /// `$iothub/things/{id}/shadows/name/default/get`.
    pub fn topic_get(&self) -> String {
        Topic::ShadowGet {
            thing: &self.thing,
            shadow: DEFAULT_SHADOW,
        }
        .to_string()
    }

    /// `$iothub/things/{id}/shadows/name/default/update`.
    pub fn topic_update(&self) -> String {
        Topic::ShadowUpdate {
            thing: &self.thing,
            shadow: DEFAULT_SHADOW,
        }
        .to_string()
    }
}
