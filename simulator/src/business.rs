//! The business side: desired-state changes and method calls through the hub's REST API at
//! fixed rates, with bounded concurrency.
//!
//! A desired change writes `{"setpoint":N}` (N unique in the run) to a connected thing that has
//! no change outstanding and is measured until that thing's reported `setpoint` equals N and its
//! update is accepted (desired → delta → reported convergence, S-3.6); the thing side records the
//! sample. A method call is measured from the REST request to the REST reply (S-9.5). An OTA job
//! is measured from its creation until every task has ended (S-9.6). The fleet operations, a
//! configuration rollout and a method job over the whole fleet, run once ([`fleet_ops`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::fleet::Fleet;
use crate::fleet_ops;
use crate::provision::Api;

/// Picks tried to find a thing that is free for a new request.
const PICKS: usize = 8;

#[derive(Serialize)]
struct Desired {
    setpoint: u64,
}

/// Runs the business load from `start` until `end`, then waits for its calls (and fleet
/// operations) to finish.
pub async fn run(fleet: Arc<Fleet>, api: Arc<Api>, start: Instant, end: Instant) {
    let b = &fleet.scenario.business;
    let permits = Arc::new(Semaphore::new(b.concurrency));
    let mut tasks = JoinSet::new();
    if b.desired_per_s > 0.0 {
        tasks.spawn(desired_loop(
            fleet.clone(),
            api.clone(),
            permits.clone(),
            start,
            end,
        ));
    }
    if b.methods_per_s > 0.0 {
        tasks.spawn(method_loop(
            fleet.clone(),
            api.clone(),
            permits.clone(),
            start,
            end,
        ));
    }
    if b.ota_job_interval_s > 0.0 {
        tasks.spawn(ota_loop(fleet.clone(), api.clone(), start, end));
    }
    if b.configuration_rollout {
        tasks.spawn(fleet_ops::rollout(fleet.clone(), api.clone(), start));
    }
    if b.method_job {
        tasks.spawn(fleet_ops::method_job(fleet.clone(), api.clone(), start));
    }
    while tasks.join_next().await.is_some() {}
}

/// A connected thing, picked at random, for which `free` holds.
fn pick(fleet: &Fleet, rng: &mut SmallRng, free: impl Fn(usize) -> bool) -> Option<usize> {
    let n = fleet.slots.len();
    (0..PICKS)
        .map(|_| rng.gen_range(0..n))
        .find(|&i| fleet.slots[i].connected.load(Ordering::Relaxed) && free(i))
}

fn ticker(start: Instant, per_s: f64) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / per_s));
    t.set_missed_tick_behavior(MissedTickBehavior::Burst);
    t
}

/// The next tick before `end`, or `None` once `end` has come (without waiting for a tick that
/// falls after it: a job every 1,000 s must not hold a 60 s run open).
async fn next_tick(tick: &mut tokio::time::Interval, end: Instant) -> Option<Instant> {
    tokio::select! {
        at = tick.tick() => (at < end).then_some(at),
        () = tokio::time::sleep_until(end) => None,
    }
}

async fn desired_loop(
    fleet: Arc<Fleet>,
    api: Arc<Api>,
    permits: Arc<Semaphore>,
    start: Instant,
    end: Instant,
) {
    let mut rng = SmallRng::seed_from_u64(fleet.business_seed(0xD351_43D0));
    let mut tick = ticker(start, fleet.scenario.business.desired_per_s);
    let next = AtomicU64::new(1);
    let mut calls = JoinSet::new();
    loop {
        if next_tick(&mut tick, end).await.is_none() {
            break;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            fleet.stats.business_skipped.inc();
            continue;
        };
        let Some(i) = pick(&fleet, &mut rng, |i| {
            fleet.slots[i].pending_setpoint.load(Ordering::Relaxed) == 0
        }) else {
            fleet.stats.business_skipped.inc();
            continue;
        };
        let setpoint = next.fetch_add(1, Ordering::Relaxed);
        let slot = &fleet.slots[i];
        slot.pending_since_us
            .store(fleet.now_us(), Ordering::Release);
        slot.pending_setpoint.store(setpoint, Ordering::Release);
        fleet.stats.desired_sent.inc();
        let (fleet, api) = (fleet.clone(), api.clone());
        calls.spawn(async move {
            let id = fleet.thing_id(i);
            if let Err(e) = api.put_desired(&id, &Desired { setpoint }).await {
                fleet.stats.desired_errors.add(e.to_string());
                let _ = fleet.slots[i].pending_setpoint.compare_exchange(
                    setpoint,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            drop(permit);
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

async fn method_loop(
    fleet: Arc<Fleet>,
    api: Arc<Api>,
    permits: Arc<Semaphore>,
    start: Instant,
    end: Instant,
) {
    let mut rng = SmallRng::seed_from_u64(fleet.business_seed(0x3E7_40D5));
    let b = &fleet.scenario.business;
    let mut tick = ticker(start, b.methods_per_s);
    let mut calls = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        if next_tick(&mut tick, end).await.is_none() {
            break;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            fleet.stats.business_skipped.inc();
            continue;
        };
        let Some(i) = pick(&fleet, &mut rng, |_| true) else {
            fleet.stats.business_skipped.inc();
            continue;
        };
        n += 1;
        fleet.stats.rest_calls.inc();
        let (fleet, api) = (fleet.clone(), api.clone());
        calls.spawn(async move {
            let b = &fleet.scenario.business;
            let id = fleet.thing_id(i);
            let began = Instant::now();
            let r = api
                .call_method(&id, &b.method, json!({ "n": n }), b.method_timeout_s)
                .await;
            match r {
                Ok(code) => {
                    fleet.stats.method_rtt.record(began.elapsed());
                    if code == iothub_spec::code::method_code::OK {
                        fleet.stats.rest_call_ok.inc();
                    } else {
                        fleet.stats.rest_call_device_codes.add(code.to_string());
                    }
                }
                Err(e) => fleet.stats.rest_call_errors.add(e.to_string()),
            }
            drop(permit);
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

/// Longest an OTA job may take to end before it counts as an error.
const OTA_JOB_LIMIT: Duration = Duration::from_secs(600);
/// How often a running OTA job is polled.
const OTA_POLL: Duration = Duration::from_millis(100);

async fn ota_loop(fleet: Arc<Fleet>, api: Arc<Api>, start: Instant, end: Instant) {
    let mut rng = SmallRng::seed_from_u64(fleet.business_seed(0x07A_0B5));
    let b = &fleet.scenario.business;
    let mut tick = ticker(start, 1.0 / b.ota_job_interval_s);
    let mut jobs = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        if next_tick(&mut tick, end).await.is_none() {
            break;
        }
        n += 1;
        let mut chosen: Vec<usize> = Vec::with_capacity(b.ota_job_things);
        if b.ota_job_things >= fleet.slots.len() {
            // The whole fleet: every connected thing (random picks would miss some, slowly).
            chosen.extend(
                (0..fleet.slots.len())
                    .filter(|&i| fleet.slots[i].connected.load(Ordering::Relaxed)),
            );
        } else {
            for _ in 0..b.ota_job_things.saturating_mul(4) {
                if chosen.len() == b.ota_job_things {
                    break;
                }
                if let Some(i) = pick(&fleet, &mut rng, |i| !chosen.contains(&i)) {
                    chosen.push(i);
                }
            }
        }
        if chosen.is_empty() {
            fleet.stats.business_skipped.inc();
            continue;
        }
        let ids: Vec<String> = chosen.iter().map(|&i| fleet.thing_id(i)).collect();
        let (fleet, api) = (fleet.clone(), api.clone());
        jobs.spawn(async move {
            let began = Instant::now();
            let version = format!("1.0.{n}");
            let max = fleet.scenario.business.ota_max_per_minute;
            let job = match api.create_ota_job(&ids, &version, max).await {
                Ok(job) => job,
                Err(e) => {
                    fleet.stats.ota_job_errors.add(format!("create: {e}"));
                    return;
                }
            };
            fleet.stats.ota_jobs.inc();
            loop {
                tokio::time::sleep(OTA_POLL).await;
                match api.ota_job_counts(&job).await {
                    Ok(Some(counts)) => {
                        fleet.stats.ota_job.record(began.elapsed());
                        fleet.stats.ota_jobs_ended.inc();
                        for (state, k) in counts {
                            fleet.stats.ota_task_states.add_n(state, k);
                        }
                        return;
                    }
                    Ok(None) if began.elapsed() < OTA_JOB_LIMIT => {}
                    Ok(None) => {
                        fleet.stats.ota_job_errors.add("not ended in time");
                        return;
                    }
                    Err(e) => {
                        fleet.stats.ota_job_errors.add(format!("poll: {e}"));
                        return;
                    }
                }
            }
        });
        while jobs.try_join_next().is_some() {}
    }
    while jobs.join_next().await.is_some() {}
}
