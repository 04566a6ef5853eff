//! The engine's side of one thing's task: results from the device, the thing becoming ready,
//! timeouts, paced sending, and retrying or closing a task when it ends; every state change goes
//! through [`transition`] so the turn records it.

use std::cmp::Reverse;

use iothub_spec::code::OtaTaskState;
use iothub_spec::payload::OtaResult;
use iothub_spec::topic::Topic;

use super::{Engine, Turn};
use crate::ota::machine::{self, Rejection, Step};
use crate::ota::wire::{split_err_msg, task_payload};
use crate::ota::{client_token, task_id};
use crate::store::ota::{OtaJobStatus, OtaTaskRecord, OtaTaskWrite, OtaTransition};

/// Moves `rec` to `to` at `now` and returns the write that records it.
pub(super) fn transition(rec: &mut OtaTaskRecord, to: OtaTaskState, now: u64) -> OtaTaskWrite {
    let t = OtaTransition {
        attempt: rec.attempt,
        from: Some(rec.status),
        to,
        at: now,
        err_code: if to == OtaTaskState::Failed {
            rec.err_code
        } else {
            None
        },
    };
    rec.status = to;
    rec.transitions = rec.transitions.saturating_add(1);
    rec.updated_at = now;
    if to.is_final() || to == OtaTaskState::Queued {
        rec.deadline = None;
    }
    OtaTaskWrite {
        record: rec.clone(),
        transition: Some(t),
    }
}

impl Engine {
    /// A task reached a final state: retry it, or close it (and the job when it was the last).
    pub(super) fn ended(&mut self, job_id: &str, thing: &str, now: u64, turn: &mut Turn) {
        let connected = self.bus.is_connected(thing);
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(rec) = job.tasks.get_mut(thing) else {
            return;
        };
        if machine::retries(rec.status, rec.attempt, job.settings.retries) {
            rec.attempt += 1;
            rec.task_id = task_id(job_id, rec.attempt);
            rec.client_token = client_token();
            rec.progress = None;
            rec.err_code = None;
            rec.err_msg = None;
            turn.writes.push(transition(rec, OtaTaskState::Queued, now));
            if connected {
                job.ready.push_back(thing.to_owned());
            } else {
                job.waiting.insert(thing.to_owned());
            }
            return;
        }
        // The ended task stays findable until its job ends, so later results for it are refused
        // as coming after a final state.
        job.open = job.open.saturating_sub(1);
        if job.open == 0 {
            self.finish(job_id, OtaJobStatus::Completed, now, turn);
        }
    }

    fn reject(thing: &str, task: Option<&str>, why: Rejection) {
        tracing::warn!(%thing, task = task.unwrap_or(""), reason = %why, "ota result rejected");
    }

    pub(super) fn result(&mut self, thing: &str, payload: &[u8], now: u64, turn: &mut Turn) {
        let Some((err_msg, rest)) = split_err_msg(payload) else {
            return Self::reject(thing, None, Rejection::Malformed);
        };
        let Ok(r) = serde_json::from_slice::<OtaResult>(&rest) else {
            return Self::reject(thing, None, Rejection::Malformed);
        };
        let found = self.by_thing.get(thing).and_then(|jobs| {
            jobs.iter().find(|j| {
                self.jobs
                    .get(*j)
                    .and_then(|job| job.tasks.get(thing))
                    .is_some_and(|t| t.task_id == r.task_id)
            })
        });
        let Some(job_id) = found.cloned() else {
            return Self::reject(thing, Some(r.task_id), Rejection::NoSuchTask);
        };
        let Some(rec) = self
            .jobs
            .get_mut(&job_id)
            .and_then(|job| job.tasks.get_mut(thing))
        else {
            return;
        };
        if rec.client_token != r.client_token {
            return Self::reject(thing, Some(r.task_id), Rejection::WrongToken);
        }
        match machine::on_result(rec.status, rec.progress, r.status, r.progress) {
            Err(why) => Self::reject(thing, Some(r.task_id), why),
            Ok(Step::Progress(p)) => {
                rec.progress = p;
                rec.updated_at = now;
                turn.writes.push(OtaTaskWrite {
                    record: rec.clone(),
                    transition: None,
                });
            }
            Ok(Step::Move(to, p)) => {
                rec.progress = p;
                if to == OtaTaskState::Failed {
                    rec.err_code = r.err_code;
                    rec.err_msg = err_msg;
                }
                turn.writes.push(transition(rec, to, now));
                if to.is_final() {
                    self.ended(&job_id, thing, now, turn);
                }
            }
        }
    }

    /// The thing can receive tasks: queued ones join the rollout, sent ones go again.
    pub(super) fn ready(&mut self, thing: &str, turn: &mut Turn) {
        let Some(jobs) = self.by_thing.get(thing) else {
            return;
        };
        for job_id in jobs {
            let Some(job) = self.jobs.get_mut(job_id) else {
                continue;
            };
            let Some(rec) = job.tasks.get(thing) else {
                continue;
            };
            match rec.status {
                OtaTaskState::Queued if job.waiting.remove(thing) => {
                    job.ready.push_back(thing.to_owned());
                }
                OtaTaskState::Sent => {
                    if let Some(p) = task_payload(&job.template, rec) {
                        tracing::debug!(%thing, job = %job_id, "ota task sent again");
                        turn.publish.push((Topic::OtaTask { thing }.to_string(), p));
                    }
                }
                _ => {}
            }
        }
    }

    /// Times out overdue tasks.
    pub(super) fn expire(&mut self, now: u64, turn: &mut Turn) {
        while let Some(Reverse((at, _, _, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, job_id, thing, attempt))) = self.deadlines.pop() else {
                break;
            };
            let Some(rec) = self
                .jobs
                .get_mut(&job_id)
                .and_then(|job| job.tasks.get_mut(&thing))
            else {
                continue;
            };
            if rec.attempt != attempt || rec.deadline != Some(at) || !machine::times_out(rec.status)
            {
                continue;
            }
            tracing::info!(%thing, job = %job_id, "ota task timed out");
            turn.writes
                .push(transition(rec, OtaTaskState::TimedOut, now));
            self.ended(&job_id, &thing, now, turn);
        }
    }

    /// Sends what each job's rate allows.
    pub(super) fn pace(&mut self, now: u64, turn: &mut Turn) {
        for (job_id, job) in &mut self.jobs {
            while !job.ready.is_empty() && job.rate.may_send(now) {
                let Some(thing) = job.ready.pop_front() else {
                    break;
                };
                let Some(rec) = job.tasks.get_mut(&thing) else {
                    continue;
                };
                if rec.status != OtaTaskState::Queued {
                    continue;
                }
                if !self.bus.is_connected(&thing) {
                    job.waiting.insert(thing);
                    continue;
                }
                let deadline = now.saturating_add(job.settings.timeout_ms);
                rec.deadline = Some(deadline);
                turn.writes.push(transition(rec, OtaTaskState::Sent, now));
                if let Some(p) = task_payload(&job.template, rec) {
                    turn.publish
                        .push((Topic::OtaTask { thing: &thing }.to_string(), p));
                }
                self.deadlines
                    .push(Reverse((deadline, job_id.clone(), thing, rec.attempt)));
                job.rate.sent(now);
            }
        }
    }

    /// When the engine must next look at its timers, ms.
    pub(super) fn next_wake(&self, now: u64) -> Option<u64> {
        let mut wake = self.deadlines.peek().map(|Reverse((at, ..))| *at);
        for job in self.jobs.values() {
            if job.ready.is_empty() {
                continue;
            }
            let at = job.rate.next_at(now);
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        wake
    }
}
