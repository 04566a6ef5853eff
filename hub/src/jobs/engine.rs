//! The loop that runs fleet jobs (S-12.2, D-52..D-56).
//!
//! Per job the engine holds the things still to reach, in job order, and paces sends with the
//! OTA rate (`ota::rate::Rate`, D-52). A thing's record becomes `in_progress` durably
//! (one transaction per loop turn, all jobs together) before its operation starts; outcomes come
//! back over a channel and are stored at the next turn. A method's thing that is offline (or
//! not yet subscribed to its method topic) waits aside and is looked at every
//! [`OFFLINE_POLL`] (D-54). After a restart the open jobs are
//! loaded again, and a record left `in_progress` is sent again while retries remain (D-55).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub_spec::code::{JobStatus, JobThingState};
use tokio::sync::mpsc;

use super::Jobs;
use super::exec::{Executor, Outcome};
use crate::metrics::Metrics;
use crate::ota::rate::Rate;
use crate::store::jobs::{JobRecord, JobThingRecord};
use crate::store::{SharedStore, StoreError};

/// Operations in flight hub-wide; further sends wait for outcomes. Below the method service's
/// own bound ([`crate::method::MAX_PENDING`]) so that jobs leave room for REST calls.
const MAX_INFLIGHT: usize = 2000;
/// How often offline things are looked at (D-54).
pub const OFFLINE_POLL: Duration = Duration::from_millis(500);
/// Longest sleep of the loop, and the pause after a failed store write.
const IDLE: Duration = Duration::from_secs(1);
/// How often the counts go to `/metrics`.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// How often ended jobs past their retention are deleted (D-56).
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How often the open jobs are read again from the store without a wake-up: a job created or
/// canceled through another hub instance (D-73) wakes only that instance.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Settings of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// How long an ended job stays (D-56).
    pub retention: Duration,
}

/// One job the engine runs.
struct Running {
    job: JobRecord,
    rate: Rate,
    /// Things to reach, in job order.
    pending: VecDeque<JobThingRecord>,
    /// Things whose method waits for them to connect, in job order.
    offline: Vec<JobThingRecord>,
    /// Offline things whose existence was checked (once each).
    checked: BTreeSet<String>,
    inflight: usize,
    /// Canceled: nothing more is sent; the job leaves when its calls in flight ended.
    stopped: bool,
    /// Its end is written (or being written); it leaves after the write.
    ending: bool,
}

/// An outcome from a task.
struct Done {
    record: JobThingRecord,
    outcome: Outcome,
}

/// The engine; [`Engine::run`] drives it.
pub struct Engine {
    store: SharedStore,
    exec: Executor,
    service: Jobs,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    jobs: BTreeMap<String, Running>,
    inflight: usize,
    /// Record changes not yet stored.
    writes: Vec<JobThingRecord>,
    /// Job status changes not yet stored.
    statuses: Vec<(String, JobStatus, Option<u64>)>,
    tx: mpsc::UnboundedSender<Done>,
    rx: mpsc::UnboundedReceiver<Done>,
}

impl Engine {
    /// An engine over the hub's services.
    pub fn new(
        store: SharedStore,
        exec: Executor,
        service: Jobs,
        metrics: Arc<Metrics>,
        config: EngineConfig,
    ) -> Engine {
        // Unbounded, but never holds more than MAX_INFLIGHT outcomes.
        let (tx, rx) = mpsc::unbounded_channel();
        Engine {
            store,
            exec,
            service,
            metrics,
            config,
            jobs: BTreeMap::new(),
            inflight: 0,
            writes: Vec::new(),
            statuses: Vec::new(),
            tx,
            rx,
        }
    }

    /// Runs jobs until `shutdown` completes. Calls in flight then are left `in_progress` and
    /// sent again after the restart (D-55).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let wake = self.service.wake.clone();
        tokio::pin!(shutdown);
        let mut loaded = false;
        let mut last_metrics = Instant::now();
        let mut last_retention: Option<Instant> = None;
        let mut last_load = Instant::now();
        loop {
            if last_load.elapsed() >= RELOAD_EVERY {
                loaded = false;
            }
            if !loaded {
                last_load = Instant::now();
                loaded = match self.load().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load jobs; retrying");
                        false
                    }
                };
            }
            let now = crate::clock::now_ms();
            if loaded {
                self.step(now).await;
            }
            if last_metrics.elapsed() >= METRICS_EVERY {
                last_metrics = Instant::now();
                self.publish_counts().await;
            }
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(Instant::now());
                self.retention(now).await;
            }
            let pause = if loaded { self.pause(now) } else { IDLE };
            tokio::select! {
                () = &mut shutdown => return,
                () = wake.notified() => loaded = false,
                Some(done) = self.rx.recv() => {
                    self.finish(done);
                    while let Ok(done) = self.rx.try_recv() {
                        self.finish(done);
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Adds the open jobs not yet running here and stops those canceled meanwhile. A record
    /// left `in_progress` (by a previous process) is sent again while retries remain (D-55).
    async fn load(&mut self) -> Result<(), StoreError> {
        let Some(db) = self.store.jobs() else {
            return Ok(());
        };
        let open = db.open_jobs().await?;
        let ids: BTreeSet<&str> = open.iter().map(|j| j.job_id.as_str()).collect();
        for r in self.jobs.values_mut() {
            if !ids.contains(r.job.job_id.as_str()) && !r.ending {
                r.stopped = true;
                r.pending.clear();
                r.offline.clear();
            }
        }
        let now = crate::clock::now_ms();
        for job in open {
            if self.jobs.contains_key(&job.job_id) {
                continue;
            }
            let mut pending = VecDeque::new();
            for mut r in db.open_job_things(&job.job_id).await? {
                if r.status == JobThingState::InProgress {
                    if r.attempts > job.retries {
                        end(
                            &mut r,
                            JobThingState::TimedOut,
                            now,
                            "no answer before the hub restarted",
                        );
                        self.writes.push(r);
                        continue;
                    }
                    r.status = JobThingState::Queued;
                    r.updated_at = now;
                    self.writes.push(r.clone());
                }
                pending.push_back(r);
            }
            tracing::info!(job = %job.job_id, things = pending.len(), "job loaded");
            self.jobs.insert(
                job.job_id.clone(),
                Running {
                    rate: Rate::new(job.max_per_minute),
                    job,
                    pending,
                    offline: Vec::new(),
                    checked: BTreeSet::new(),
                    inflight: 0,
                    stopped: false,
                    ending: false,
                },
            );
        }
        Ok(())
    }

    /// One turn: starts, ends and sends what is due, stores the changes, then starts the
    /// operations whose `in_progress` is durable.
    async fn step(&mut self, now: u64) {
        let mut marks: Vec<JobThingRecord> = Vec::new();
        let mut unchecked: Vec<(String, String)> = Vec::new();
        for (id, r) in &mut self.jobs {
            if r.stopped || r.ending {
                continue;
            }
            if r.job.status == JobStatus::Scheduled {
                if now < r.job.start_at {
                    continue;
                }
                r.job.status = JobStatus::Running;
                self.statuses.push((id.clone(), JobStatus::Running, None));
                tracing::info!(job = %id, "job started");
            }
            if now >= r.job.end_at {
                for mut t in r.pending.drain(..).chain(r.offline.drain(..)) {
                    end(
                        &mut t,
                        JobThingState::TimedOut,
                        now,
                        "not reached before the job's endAt",
                    );
                    self.writes.push(t);
                }
            }
            if !r.offline.is_empty() {
                let mut back = Vec::new();
                let mut still = Vec::new();
                for t in r.offline.drain(..) {
                    if self.exec.is_ready(&r.job.operation, &t.thing_id).await {
                        back.push(t);
                    } else {
                        still.push(t);
                    }
                }
                r.offline = still;
                for t in back.into_iter().rev() {
                    r.pending.push_front(t);
                }
            }
            while self.inflight < MAX_INFLIGHT && r.rate.may_send(now) {
                let Some(mut t) = r.pending.pop_front() else {
                    break;
                };
                if !self.exec.is_ready(&r.job.operation, &t.thing_id).await {
                    if r.checked.insert(t.thing_id.clone()) {
                        unchecked.push((id.clone(), t.thing_id.clone()));
                    }
                    r.offline.push(t);
                    continue;
                }
                r.rate.sent(now);
                t.status = JobThingState::InProgress;
                t.attempts += 1;
                t.started_at.get_or_insert(now);
                t.updated_at = now;
                r.inflight += 1;
                self.inflight += 1;
                marks.push(t);
            }
            if r.pending.is_empty() && r.offline.is_empty() && r.inflight == 0 {
                r.ending = true;
                self.statuses
                    .push((id.clone(), JobStatus::Completed, Some(now)));
            }
        }
        self.jobs.retain(|_, r| !(r.stopped && r.inflight == 0));
        self.check_exist(unchecked, now).await;
        self.flush(marks).await;
    }

    /// Things a method waits for that do not exist end `failed` with 404 (D-51).
    async fn check_exist(&mut self, unchecked: Vec<(String, String)>, now: u64) {
        for (job, thing) in unchecked {
            if !matches!(self.store.get_thing(&thing).await, Ok(None)) {
                continue;
            }
            let Some(r) = self.jobs.get_mut(&job) else {
                continue;
            };
            if let Some(i) = r.offline.iter().position(|t| t.thing_id == thing) {
                let mut t = r.offline.remove(i);
                end(&mut t, JobThingState::Failed, now, "no such thing");
                t.code = Some(iothub_spec::code::ErrorCode::NotFound.as_u16());
                self.writes.push(t);
            }
        }
    }

    /// Stores the pending changes and `marks` in one transaction, then starts `marks`. On a
    /// store failure the marks go back to their queues (their rate slots are spent) and the
    /// other changes are kept for the next turn.
    async fn flush(&mut self, marks: Vec<JobThingRecord>) {
        if self.writes.is_empty() && self.statuses.is_empty() && marks.is_empty() {
            return;
        }
        let Some(db) = self.store.jobs() else {
            return;
        };
        let mut all = std::mem::take(&mut self.writes);
        let first_mark = all.len();
        all.extend(marks.iter().cloned());
        match db.write_job_things(&all, &self.statuses).await {
            Ok(written) => {
                for (id, status, _) in std::mem::take(&mut self.statuses) {
                    if status.is_final() {
                        self.jobs.remove(&id);
                        tracing::info!(job = %id, "job completed");
                    }
                }
                for (t, ok) in marks.into_iter().zip(written.into_iter().skip(first_mark)) {
                    if ok {
                        self.spawn(t);
                    } else {
                        // Canceled meanwhile.
                        self.unmark(&t.job_id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store job progress; retrying");
                all.truncate(first_mark);
                self.writes = all;
                for mut t in marks.into_iter().rev() {
                    self.unmark(&t.job_id);
                    t.status = JobThingState::Queued;
                    t.attempts -= 1;
                    if let Some(r) = self.jobs.get_mut(&t.job_id) {
                        r.pending.push_front(t);
                    }
                }
            }
        }
    }

    fn unmark(&mut self, job: &str) {
        self.inflight = self.inflight.saturating_sub(1);
        if let Some(r) = self.jobs.get_mut(job) {
            r.inflight = r.inflight.saturating_sub(1);
        }
    }

    /// Runs one attempt in a task; its outcome comes back to [`Engine::finish`].
    fn spawn(&self, record: JobThingRecord) {
        let Some(op) = self
            .jobs
            .get(&record.job_id)
            .map(|r| r.job.operation.clone())
        else {
            return;
        };
        let exec = self.exec.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let outcome = exec.run(&op, &record.thing_id).await;
            // The engine gone (shutdown): the record stays in_progress, sent again later.
            let _ = tx.send(Done { record, outcome });
        });
    }

    /// Records an outcome (D-53): final, or queued again for a retry or for the thing to
    /// connect.
    fn finish(&mut self, done: Done) {
        let Done {
            mut record,
            outcome,
        } = done;
        self.unmark(&record.job_id);
        let now = crate::clock::now_ms();
        let job = self.jobs.get_mut(&record.job_id);
        let (retries, stopped) = job
            .as_ref()
            .map_or((0, true), |r| (r.job.retries, r.stopped));
        match outcome {
            Outcome::Succeeded { code, response } => {
                end(&mut record, JobThingState::Succeeded, now, "");
                record.error = None;
                record.code = Some(code);
                record.response = response;
            }
            Outcome::Failed {
                code,
                response,
                error,
            } => {
                end(&mut record, JobThingState::Failed, now, &error);
                record.code = Some(code);
                record.response = response;
            }
            Outcome::Retry { code, error } if stopped || record.attempts > retries => {
                let state = match (stopped, code) {
                    (true, _) => JobThingState::Canceled,
                    (false, None) => JobThingState::TimedOut,
                    (false, Some(_)) => JobThingState::Failed,
                };
                end(&mut record, state, now, &error);
                record.code = code;
            }
            Outcome::Retry { code, error } => {
                record.status = JobThingState::Queued;
                record.updated_at = now;
                record.code = code;
                record.error = Some(error);
                if let Some(r) = job {
                    r.pending.push_back(record.clone());
                }
            }
            Outcome::Offline if stopped => {
                end(&mut record, JobThingState::Canceled, now, "");
            }
            Outcome::Offline => {
                record.status = JobThingState::Queued;
                record.attempts = record.attempts.saturating_sub(1);
                record.updated_at = now;
                if let Some(r) = job {
                    let at = r.offline.partition_point(|t| t.seq < record.seq);
                    r.offline.insert(at, record.clone());
                }
            }
        }
        self.writes.push(record);
    }

    /// How long to sleep: until the next send, start, end or offline check is due.
    fn pause(&self, now: u64) -> Duration {
        if !self.writes.is_empty() || !self.statuses.is_empty() {
            return IDLE.min(Duration::from_millis(200));
        }
        let mut at = now + IDLE.as_millis() as u64;
        for r in self.jobs.values() {
            if r.stopped || r.ending {
                continue;
            }
            if r.job.status == JobStatus::Scheduled {
                at = at.min(r.job.start_at);
                continue;
            }
            at = at.min(r.job.end_at);
            if !r.pending.is_empty() && self.inflight < MAX_INFLIGHT {
                at = at.min(r.rate.next_at(now));
            }
            if !r.offline.is_empty() {
                at = at.min(now + OFFLINE_POLL.as_millis() as u64);
            }
        }
        Duration::from_millis(at.saturating_sub(now))
    }

    /// Counts of the jobs not yet ended, to `/metrics`.
    async fn publish_counts(&self) {
        let Some(db) = self.store.jobs() else {
            return;
        };
        let mut all = BTreeMap::new();
        for id in self.jobs.keys() {
            match db.job_counts(id).await {
                Ok(counts) => {
                    all.insert(id.clone(), counts);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read job counts");
                    return;
                }
            }
        }
        self.metrics.set_job_things(all);
    }

    /// Deletes ended jobs past their retention (D-56).
    async fn retention(&self, now: u64) {
        let Some(db) = self.store.jobs() else {
            return;
        };
        let cut = now.saturating_sub(self.config.retention.as_millis() as u64);
        match db.delete_jobs_ended_before(cut).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "ended jobs past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete old jobs; retrying later"),
        }
    }
}

/// Ends a record in `state` at `now`, with `error` unless empty.
fn end(t: &mut JobThingRecord, state: JobThingState, now: u64, error: &str) {
    t.status = state;
    t.updated_at = now;
    t.ended_at = Some(now);
    if !error.is_empty() {
        t.error = Some(error.to_owned());
    }
}
