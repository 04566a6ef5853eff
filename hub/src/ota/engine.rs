//! The OTA engine: one task that owns the state of running jobs.
//!
//! Each turn it takes the commands that are waiting (results, ready things, creates, cancels),
//! then sends what the rollout rate allows and times out what is overdue, writes every change
//! of the turn in ONE store transaction, and only then publishes tasks and answers callers.
//! A crash therefore never shows a task as sent that the store does not know about.
//!
//! A turn that cannot be stored leaves memory ahead of the store (tasks moved, jobs ended that
//! the store still has running). The engine then drops its memory and loads every running job
//! again from the store before it takes another command ([`Engine::reload`]); while that load
//! fails it refuses cancels with 503 and leaves results unhandled (the store is unchanged, so
//! their tasks time out and are retried as for any lost result).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iothub_spec::code::OtaTaskState;
use tokio::sync::{mpsc, oneshot};

use super::OtaError;
use super::machine;
use super::rate::Rate;
use crate::bus::Bus;
use crate::clock::now_ms;
use crate::cluster::Ownership;
use crate::store::SharedStore;
use crate::store::ota::{OtaJobSettings, OtaJobStatus, OtaTaskRecord, OtaTaskWrite, OtaTemplate};

mod tasks;

use tasks::transition;

/// Commands the engine takes per turn.
const TURN: usize = 512;
/// Attempts to write a turn before giving up on it.
const WRITE_ATTEMPTS: u32 = 4;
/// How often jobs with offline things are checked for deleted things.
const SWEEP_EVERY_MS: u64 = 60_000;
/// How long to wait before loading the jobs again after a failed load.
const RELOAD_RETRY: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<Result<(), OtaError>>;

/// What the engine is asked to do.
pub(super) enum Cmd {
    /// Load a job just created and start its rollout.
    Start { job_id: String, reply: Reply },
    /// Cancel a job, or one thing's task of it.
    Cancel {
        job_id: String,
        thing: Option<String>,
        reply: Reply,
    },
    /// A thing's result payload.
    Result { thing: String, payload: Bytes },
    /// A thing subscribed to its OTA task topic.
    Ready { thing: String },
    /// Drop the job's open tasks whose things were deleted (their rows are gone).
    Sweep { job_id: String, reply: Reply },
    /// Flush and end.
    Stop,
}

/// A running job.
struct Job {
    template: OtaTemplate,
    settings: OtaJobSettings,
    tasks: HashMap<String, OtaTaskRecord>,
    /// Queued tasks whose thing is believed connected, in rollout order.
    ready: VecDeque<String>,
    /// Queued tasks whose thing is offline.
    waiting: HashSet<String>,
    /// Tasks not ended.
    open: usize,
    /// The rollout rate.
    rate: Rate,
}

/// Everything one turn changes, applied after the store has it.
#[derive(Default)]
struct Turn {
    writes: Vec<OtaTaskWrite>,
    jobs: Vec<(String, OtaJobStatus, u64)>,
    publish: Vec<(String, Bytes)>,
    replies: Vec<(Reply, Result<(), OtaError>)>,
}

impl Turn {
    fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.jobs.is_empty()
            && self.publish.is_empty()
            && self.replies.is_empty()
    }
}

struct Engine {
    store: SharedStore,
    bus: Arc<dyn Bus>,
    jobs: HashMap<String, Job>,
    /// thing → running jobs in which it has a task (ended ones included, to refuse late results).
    by_thing: HashMap<String, Vec<String>>,
    /// (deadline ms, job, thing, attempt); stale entries are skipped when popped.
    deadlines: BinaryHeap<Reverse<(u64, String, String, u32)>>,
    /// Memory may differ from the store (start-up, or a turn that could not be stored): the
    /// running jobs must be loaded again before the next command.
    stale: bool,
}

/// Runs the engine until [`Cmd::Stop`] or until every sender is gone.
///
/// With several hub instances (D-73) only the leader runs rollouts: elsewhere the engine holds
/// nothing and answers as while reloading; when this instance becomes the leader it loads the
/// running jobs from the store.
pub(super) async fn run(
    store: SharedStore,
    bus: Arc<dyn Bus>,
    mut rx: mpsc::Receiver<Cmd>,
    leader: Arc<Ownership>,
) {
    let mut engine = Engine {
        store,
        bus,
        jobs: HashMap::new(),
        by_thing: HashMap::new(),
        deadlines: BinaryHeap::new(),
        stale: true,
    };
    let mut cmds = Vec::with_capacity(TURN);
    let mut last_sweep = now_ms();
    let mut turn = Turn::default();
    loop {
        if !leader.is_leader() {
            if !engine.stale {
                tracing::info!("not the leader instance: OTA rollouts stop here");
            }
            engine.jobs.clear();
            engine.by_thing.clear();
            engine.deadlines.clear();
            engine.stale = true;
        } else if engine.stale {
            engine.reload(now_ms(), &mut turn).await;
        }
        let now = now_ms();
        let sleep = if engine.stale {
            RELOAD_RETRY
        } else if !turn.is_empty() {
            Duration::ZERO
        } else {
            engine
                .next_wake(now)
                .map_or(Duration::from_secs(3600), |at| {
                    Duration::from_millis(at.saturating_sub(now))
                })
        };
        let mut stop = false;
        tokio::select! {
            n = rx.recv_many(&mut cmds, TURN) => if n == 0 { stop = true },
            _ = tokio::time::sleep(sleep) => {}
        }
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Stop => stop = true,
                cmd => engine.handle(cmd, &mut turn).await,
            }
        }
        let now = now_ms();
        if now.saturating_sub(last_sweep) >= SWEEP_EVERY_MS {
            last_sweep = now;
            engine.sweep_waiting(now, &mut turn).await;
        }
        engine.expire(now, &mut turn);
        engine.pace(now, &mut turn);
        engine.commit(std::mem::take(&mut turn)).await;
        if stop {
            return;
        }
    }
}

impl Engine {
    fn ota(&self) -> Option<&dyn crate::store::ota::OtaStore> {
        self.store.ota()
    }

    /// Forgets every job and loads the running ones from the store (at start-up, and after a
    /// turn that could not be stored). Stays [`Engine::stale`] when the store cannot be read;
    /// the run loop tries again after [`RELOAD_RETRY`].
    async fn reload(&mut self, now: u64, turn: &mut Turn) {
        self.jobs.clear();
        self.by_thing.clear();
        self.deadlines.clear();
        let Some(store) = self.ota() else {
            tracing::warn!("store without OTA tables: OTA jobs disabled");
            self.stale = false;
            return;
        };
        let ids = match store.ota_running_jobs().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot load running OTA jobs; retrying");
                return;
            }
        };
        for id in &ids {
            if let Err(e) = self.load(id, now, turn).await {
                tracing::error!(job = %id, error = %e, "cannot load OTA job; retrying");
                self.jobs.clear();
                self.by_thing.clear();
                self.deadlines.clear();
                return;
            }
        }
        self.stale = false;
        if !ids.is_empty() {
            tracing::info!(jobs = ids.len(), "OTA jobs loaded from the store");
        }
    }

    async fn load(&mut self, job_id: &str, now: u64, turn: &mut Turn) -> Result<(), OtaError> {
        let store = self
            .ota()
            .ok_or_else(|| OtaError::Unavailable("no OTA store".into()))?;
        let record = store.ota_job(job_id).await?.ok_or(OtaError::NoSuchJob)?;
        let open = store.ota_open_tasks(job_id).await?;
        let rate = Rate::new(record.settings.max_per_minute);
        let mut job = Job {
            template: record.template,
            settings: record.settings,
            tasks: HashMap::with_capacity(open.len()),
            ready: VecDeque::new(),
            waiting: HashSet::new(),
            open: open.len(),
            rate,
        };
        for rec in open {
            let thing = rec.thing_id.clone();
            match rec.status {
                OtaTaskState::Queued if self.bus.is_connected(&thing) => {
                    job.ready.push_back(thing.clone())
                }
                OtaTaskState::Queued => {
                    job.waiting.insert(thing.clone());
                }
                _ => {
                    if let Some(d) = rec.deadline {
                        self.deadlines.push(Reverse((
                            d,
                            job_id.to_owned(),
                            thing.clone(),
                            rec.attempt,
                        )));
                    }
                }
            }
            self.by_thing
                .entry(thing.clone())
                .or_default()
                .push(job_id.to_owned());
            job.tasks.insert(thing, rec);
        }
        let empty = job.open == 0;
        self.jobs.insert(job_id.to_owned(), job);
        if empty {
            self.finish(job_id, OtaJobStatus::Completed, now, turn);
        }
        Ok(())
    }

    async fn handle(&mut self, cmd: Cmd, turn: &mut Turn) {
        let now = now_ms();
        if self.stale {
            return Self::refuse(cmd);
        }
        match cmd {
            Cmd::Start { job_id, reply } => {
                // The job is stored already: it runs, now or after the next reload, whatever
                // becomes of this turn. So the answer does not wait for the turn's write.
                let r = if self.jobs.contains_key(&job_id) {
                    Ok(())
                } else {
                    match self.load(&job_id, now, turn).await {
                        Err(OtaError::Unavailable(e)) => {
                            tracing::warn!(job = %job_id, error = %e,
                                "cannot load a new OTA job; it starts after the next reload");
                            self.stale = true;
                            Ok(())
                        }
                        r => r,
                    }
                };
                let _ = reply.send(r);
            }
            Cmd::Cancel {
                job_id,
                thing,
                reply,
            } => {
                let r = self.cancel(&job_id, thing.as_deref(), now, turn);
                turn.replies.push((reply, r));
            }
            Cmd::Result { thing, payload } => self.result(&thing, &payload, now, turn),
            Cmd::Ready { thing } => self.ready(&thing, turn),
            Cmd::Sweep { job_id, reply } => {
                let r = self.sweep(&job_id, now, turn).await;
                turn.replies.push((reply, r));
            }
            Cmd::Stop => {}
        }
    }

    /// A command that comes while the jobs cannot be loaded from the store.
    fn refuse(cmd: Cmd) {
        let unavailable = || {
            Err(OtaError::Unavailable(
                "OTA jobs are being loaded again from the store".into(),
            ))
        };
        match cmd {
            Cmd::Start { reply, .. } => {
                // Stored already; the reload that ends this state loads it.
                let _ = reply.send(Ok(()));
            }
            Cmd::Cancel { reply, .. } | Cmd::Sweep { reply, .. } => {
                let _ = reply.send(unavailable());
            }
            Cmd::Result { thing, .. } => {
                tracing::warn!(%thing, "ota result not handled: OTA jobs are being loaded again");
            }
            // The reload finds the things that are connected by itself.
            Cmd::Ready { .. } | Cmd::Stop => {}
        }
    }

    fn cancel(
        &mut self,
        job_id: &str,
        thing: Option<&str>,
        now: u64,
        turn: &mut Turn,
    ) -> Result<(), OtaError> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            // The caller checked that the job exists: it is no longer running.
            return Err(OtaError::Ended("job"));
        };
        match thing {
            None => {
                for rec in job.tasks.values_mut() {
                    if machine::cancelable(rec.status) {
                        turn.writes
                            .push(transition(rec, OtaTaskState::Canceled, now));
                    }
                }
                self.finish(job_id, OtaJobStatus::Canceled, now, turn);
                Ok(())
            }
            Some(thing) => {
                let rec = job.tasks.get_mut(thing).ok_or(OtaError::NoSuchTask)?;
                if !machine::cancelable(rec.status) {
                    return Err(OtaError::Ended("task"));
                }
                turn.writes
                    .push(transition(rec, OtaTaskState::Canceled, now));
                self.ended(job_id, thing, now, turn);
                Ok(())
            }
        }
    }

    /// Drops the open tasks of `job_id` whose rows are gone: deleting a thing deletes its tasks
    /// (ON DELETE CASCADE), and a queued task of a deleted thing would otherwise keep its job
    /// running forever. The engine is the only writer of task rows and stores a turn before the
    /// next one, so an open task in memory that the store does not list as open has no row.
    async fn sweep(&mut self, job_id: &str, now: u64, turn: &mut Turn) -> Result<(), OtaError> {
        if !self.jobs.contains_key(job_id) {
            return Ok(());
        }
        let store = self
            .ota()
            .ok_or_else(|| OtaError::Unavailable("no OTA store".into()))?;
        let open: HashSet<String> = store
            .ota_open_tasks(job_id)
            .await?
            .into_iter()
            .map(|t| t.thing_id)
            .collect();
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let gone: Vec<String> = job
            .tasks
            .iter()
            .filter(|(thing, rec)| !rec.status.is_final() && !open.contains(*thing))
            .map(|(thing, _)| thing.clone())
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for thing in &gone {
            job.tasks.remove(thing);
            job.waiting.remove(thing);
            job.open = job.open.saturating_sub(1);
        }
        job.ready.retain(|t| !gone.contains(t));
        let empty = job.open == 0;
        tracing::info!(job = %job_id, tasks = gone.len(), "OTA tasks of deleted things dropped");
        for thing in &gone {
            self.forget(thing, job_id);
        }
        if empty {
            self.finish(job_id, OtaJobStatus::Completed, now, turn);
        }
        Ok(())
    }

    /// [`Engine::sweep`] of every job that waits for offline things.
    async fn sweep_waiting(&mut self, now: u64, turn: &mut Turn) {
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| !job.waiting.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Err(e) = self.sweep(&id, now, turn).await {
                tracing::warn!(job = %id, error = %e, "cannot check OTA tasks of deleted things");
            }
        }
    }

    /// Ends a job: drops it from memory and records its status.
    fn finish(&mut self, job_id: &str, status: OtaJobStatus, now: u64, turn: &mut Turn) {
        if let Some(job) = self.jobs.remove(job_id) {
            for thing in job.tasks.keys() {
                self.forget(thing, job_id);
            }
        }
        tracing::info!(job = %job_id, status = status.as_str(), "OTA job ended");
        turn.jobs.push((job_id.to_owned(), status, now));
    }

    fn forget(&mut self, thing: &str, job_id: &str) {
        if let Some(jobs) = self.by_thing.get_mut(thing) {
            jobs.retain(|j| j != job_id);
            if jobs.is_empty() {
                self.by_thing.remove(thing);
            }
        }
    }

    /// Stores the turn, then publishes and answers.
    async fn commit(&mut self, turn: Turn) {
        if turn.is_empty() {
            return;
        }
        let Turn {
            writes,
            jobs,
            publish,
            replies,
        } = turn;
        let mut stored = Ok(());
        if let Some(store) = self.ota() {
            for attempt in 0..WRITE_ATTEMPTS {
                stored = store.ota_write(&writes, &jobs).await;
                match &stored {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "cannot store OTA changes; retrying");
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                }
            }
        }
        match stored {
            Ok(()) => {
                for (topic, payload) in publish {
                    self.bus.publish(&topic, payload, false).await;
                }
                for (reply, r) in replies {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                // Nothing is published that the store does not have, and memory goes back to
                // what the store has before the next command.
                tracing::error!(error = %e, changes = writes.len(),
                    "OTA changes not stored; loading the jobs again from the store");
                self.stale = true;
                for (reply, _) in replies {
                    let _ = reply.send(Err(OtaError::Unavailable(e.to_string())));
                }
            }
        }
    }
}
