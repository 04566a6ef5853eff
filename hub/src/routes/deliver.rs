//! One route's delivery task: reads the outbox in order, hands batches to the sink, removes what
//! the sink confirmed; a failed batch is tried again after a pause (exponential backoff with
//! jitter) and, after `maxAttempts` failures, moved to the dead letters (S-14.3).
//!
//! The head batch blocks the ones behind it until it is delivered or dead-lettered, so a
//! thing's messages reach the sink in the order the hub accepted them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::watch;

use super::Running;
use super::config::Sink;
use crate::cluster::Ownership;
use crate::store::SharedStore;
use crate::store::routes::StoredMessage;

/// Pause after a failed outbox read before reading again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// How often an idle route deletes dead letters past their age.
const DEAD_TRIM_EVERY: Duration = Duration::from_secs(60);
/// How often an idle task looks at its outbox anyway (a missed wake costs at most this).
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// The same when other instances share the outbox (D-92): what they add wakes only them, so
/// this bounds how late the delivering instance sees it.
const SHARED_IDLE_CHECK: Duration = Duration::from_millis(500);
/// How often a task whose route another instance delivers looks whether it is its turn (D-92).
const OWNER_CHECK: Duration = crate::cluster::ROUND;

/// Where a batch goes.
pub(super) enum Target {
    Webhook(super::webhook::Webhook),
    File(super::file::JsonLines),
    History(super::history::HistorySink),
    Mqtt(Box<super::bridge::Bridge>),
}

impl Target {
    fn new(running: &Running, store: &SharedStore) -> Result<Target, String> {
        Ok(match &running.spec.sink {
            Sink::Webhook { .. } => Target::Webhook(super::webhook::Webhook::new(&running.spec)?),
            Sink::File {
                path,
                max_bytes,
                keep,
            } => Target::File(super::file::JsonLines::file(path, *max_bytes, *keep)),
            Sink::Stdout {} => Target::File(super::file::JsonLines::stdout()),
            Sink::Mqtt { .. } => Target::Mqtt(Box::new(super::bridge::Bridge::new(&running.spec)?)),
            Sink::History {
                max_age_s,
                max_per_thing,
            } => Target::History(super::history::HistorySink::new(
                store.clone(),
                *max_age_s,
                *max_per_thing,
            )),
        })
    }

    async fn deliver(&mut self, route: &str, batch: &[StoredMessage]) -> Result<(), String> {
        match self {
            Target::Webhook(w) => w.deliver(route, batch).await,
            Target::File(f) => f.deliver(route, batch).await,
            Target::History(h) => h.deliver(batch).await,
            Target::Mqtt(b) => b.deliver(batch).await,
        }
    }

    /// Housekeeping while the outbox is empty (history retention).
    async fn tidy(&mut self) {
        if let Target::History(h) = self {
            h.tidy().await;
        }
    }
}

/// The pause before attempt `failures + 1`: a random time between half and all of
/// `initial * 2^(failures-1)`, capped at `max` (jitter, so that routes failing together do not
/// retry in step, with a floor, so that a down receiver is not hammered).
pub(super) fn backoff(initial: u64, max: u64, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let ceiling = initial.saturating_mul(1u64 << exp).min(max).max(1);
    Duration::from_millis(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
}

/// Runs until `stop` turns true. Delivers only while this instance holds the partition of the
/// route's id (D-92); with one instance, always.
pub(super) async fn run(
    route: Arc<Running>,
    store: SharedStore,
    ownership: Arc<Ownership>,
    mut stop: watch::Receiver<bool>,
) {
    let id = route.spec.id.clone();
    let mut target = match Target::new(&route, &store) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(route = %id, error = %e, "route sink cannot start");
            route.set_error(Some(e));
            return;
        }
    };
    let Some(rs) = store.routes() else { return };
    // What an earlier run left beyond the bounds (they may have been lowered since).
    trim_dead_letters(&route, rs).await;
    let mut failures: u32 = 0;
    let mut last_trim = std::time::Instant::now();
    let idle_check = if ownership.shared() {
        SHARED_IDLE_CHECK
    } else {
        IDLE_CHECK
    };
    loop {
        if *stop.borrow() {
            return;
        }
        if route.paused.load(Ordering::Relaxed) {
            if wait(&route, &mut stop, IDLE_CHECK).await {
                return;
            }
            continue;
        }
        if !ownership.owns(&id) {
            if pause(&mut stop, OWNER_CHECK).await {
                return;
            }
            continue;
        }
        let Some(rs) = store.routes() else { return };
        let batch = match rs.outbox(&id, route.spec.batch_max).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(route = %id, error = %e, "route outbox unreadable");
                if pause(&mut stop, STORE_RETRY).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            target.tidy().await;
            if last_trim.elapsed() >= DEAD_TRIM_EVERY {
                last_trim = std::time::Instant::now();
                trim_dead_letters(&route, rs).await;
            }
            if wait(&route, &mut stop, idle_check).await {
                return;
            }
            continue;
        }
        // A partial batch waits a little for more (fewer, larger POSTs under load).
        if failures == 0
            && batch.len() < route.spec.batch_max as usize
            && route.spec.batch_delay_ms > 0
        {
            let young = batch.first().is_some_and(|m| {
                crate::clock::now_ms().saturating_sub(m.message.received_at)
                    < route.spec.batch_delay_ms
            });
            if young {
                if pause(&mut stop, Duration::from_millis(route.spec.batch_delay_ms)).await {
                    return;
                }
                continue;
            }
        }
        let Some(last) = batch.last().map(|m| m.seq) else {
            continue;
        };
        match target.deliver(&id, &batch).await {
            Ok(()) => {
                let confirmed = crate::clock::now_ms();
                failures = 0;
                route.set_error(None);
                match rs.delivered(&id, last).await {
                    Ok(removed) => {
                        for m in &batch {
                            let waited = confirmed.saturating_sub(m.message.received_at);
                            route
                                .counters
                                .delivery_seconds
                                .observe(Duration::from_millis(waited));
                        }
                        route
                            .counters
                            .delivered
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        route.counters.take(removed);
                    }
                    // Delivered but still in the outbox: it goes again (at least once).
                    Err(e) => {
                        tracing::warn!(route = %id, error = %e, "delivered batch not removed from the outbox; it will be sent again")
                    }
                }
            }
            Err(e) => {
                failures += 1;
                route.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(route = %id, error = %e, failures, "route delivery failed");
                route.set_error(Some(e.clone()));
                if failures >= route.spec.max_attempts {
                    match rs
                        .dead_letter(&id, last, failures, &e, crate::clock::now_ms())
                        .await
                    {
                        Ok(moved) => {
                            tracing::warn!(route = %id, messages = moved, error = %e, "route batch moved to the dead letters");
                            route
                                .counters
                                .dead_lettered
                                .fetch_add(moved, Ordering::Relaxed);
                            route.counters.take(moved);
                            failures = 0;
                            trim_dead_letters(&route, rs).await;
                        }
                        Err(se) => {
                            tracing::warn!(route = %id, error = %se, "cannot move a failed batch to the dead letters")
                        }
                    }
                    continue;
                }
                let delay = backoff(
                    route.spec.retry_initial_ms,
                    route.spec.retry_max_ms,
                    failures,
                );
                if pause(&mut stop, delay).await {
                    return;
                }
            }
        }
    }
}

/// Deletes the route's dead letters beyond its count and age bounds (D-88), counted; a store
/// error is logged and tried again at the next occasion.
async fn trim_dead_letters(route: &Running, rs: &dyn crate::store::routes::RouteStore) {
    let max_age_ms = route.spec.dead_letter_max_age_s.saturating_mul(1000);
    let failed_before = crate::clock::now_ms().saturating_sub(max_age_ms);
    match rs
        .trim_dead_letters(&route.spec.id, route.spec.dead_letters_max, failed_before)
        .await
    {
        Ok(0) => {}
        Ok(n) => {
            route
                .counters
                .dead_letters_dropped
                .fetch_add(n, Ordering::Relaxed);
            tracing::warn!(route = %route.spec.id, deleted = n, "dead letters beyond the route's bounds deleted");
        }
        Err(e) => {
            tracing::warn!(route = %route.spec.id, error = %e, "cannot trim the dead letters")
        }
    }
}

/// Sleeps `d` unless stopped first; `true` when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Waits for a wake-up, `d`, or the stop; `true` when stopped.
async fn wait(route: &Running, stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = route.wake.notified() => false,
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for _ in 0..100 {
            let first = backoff(100, 10_000, 1);
            assert!((50..=100).contains(&(first.as_millis() as u64)));
            let fourth = backoff(100, 10_000, 4);
            assert!((400..=800).contains(&(fourth.as_millis() as u64)));
            let capped = backoff(100, 1_000, 30);
            assert!((500..=1_000).contains(&(capped.as_millis() as u64)));
        }
    }
}
