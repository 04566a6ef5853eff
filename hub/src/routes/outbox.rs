//! The outbox writer: every message offered to the routes goes through one task that commits
//! many offers in one transaction (one fsync for all of them, as the shadow group committer
//! does), applies each route's full-outbox policy, and answers each offer only after its
//! transaction committed (D-78).
//!
//! One task decides every route's depth, so two concurrent offers never both take the last
//! place of an outbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::Running;
use super::config::FullPolicy;
use crate::edge::Acceptance;
use crate::store::SharedStore;
use crate::store::routes::{Append, NewMessage};

/// Offers waiting for the writer; a full queue makes publishers wait (backpressure).
const QUEUE: usize = 4096;
/// Most offers committed in one transaction.
const BATCH: usize = 256;

/// One message for the routes it matched.
pub(super) struct Offer {
    pub routes: Vec<Arc<Running>>,
    pub message: NewMessage,
    pub answer: oneshot::Sender<Acceptance>,
}

/// The writer's queue.
#[derive(Clone)]
pub(super) struct Writer(mpsc::Sender<Offer>);

impl Writer {
    /// Starts the writer task over `store`.
    pub(super) fn spawn(store: SharedStore) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, store));
        Writer(tx)
    }

    /// Hands `offer` to the writer and waits for its answer; a writer that is gone (shutting
    /// down) answers [`Acceptance::Unavailable`].
    pub(super) async fn offer(
        &self,
        offer: Offer,
        answer: oneshot::Receiver<Acceptance>,
    ) -> Acceptance {
        if self.0.send(offer).await.is_err() {
            return Acceptance::Unavailable;
        }
        answer.await.unwrap_or(Acceptance::Unavailable)
    }
}

async fn run(mut rx: mpsc::Receiver<Offer>, store: SharedStore) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        commit(&store, std::mem::take(&mut batch)).await;
    }
}

/// Decides and commits one batch of offers.
async fn commit(store: &SharedStore, offers: Vec<Offer>) {
    let Some(routes_store) = store.routes() else {
        for offer in offers {
            let _ = offer.answer.send(Acceptance::Unavailable);
        }
        return;
    };
    // Per route: messages taken in this batch so far, and how many of its oldest to drop.
    let mut taken: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut accepted = Vec::with_capacity(offers.len());
    let mut appends: BTreeMap<String, Append> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for mut offer in offers {
        // A route deleted since the offer matched it takes nothing (an insert would fail the
        // whole transaction on its missing route).
        offer
            .routes
            .retain(|route| !route.deleted.load(Ordering::Relaxed));
        if offer.routes.is_empty() {
            let _ = offer.answer.send(Acceptance::Accepted);
            continue;
        }
        // A route whose outbox is full and refuses makes the whole message refused: it is in
        // no outbox, and the device is told so (all or nothing, so a retry adds no duplicate
        // to the other routes).
        let refused_by = offer.routes.iter().find(|route| {
            let (pending, _) = taken.get(&route.spec.id).copied().unwrap_or_default();
            route.spec.when_full == FullPolicy::Refuse
                && route.counters.depth.load(Ordering::Relaxed) + pending >= route.spec.outbox_max
        });
        if let Some(route) = refused_by {
            route.counters.refused.fetch_add(1, Ordering::Relaxed);
            let _ = offer.answer.send(Acceptance::QuotaExceeded);
            continue;
        }
        for route in &offer.routes {
            let entry = taken.entry(route.spec.id.clone()).or_default();
            let depth = route.counters.depth.load(Ordering::Relaxed) + entry.0;
            if depth >= route.spec.outbox_max {
                // drop-oldest: one out for this one in (counted when committed).
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
            let append = appends.entry(route.spec.id.clone()).or_insert_with(|| {
                order.push(route.spec.id.clone());
                Append {
                    route_id: route.spec.id.clone(),
                    drop_oldest: 0,
                    messages: Vec::new(),
                }
            });
            append.messages.push(offer.message.clone());
        }
        accepted.push(offer);
    }
    if accepted.is_empty() {
        return;
    }
    let list: Vec<Append> = order
        .iter()
        .filter_map(|id| {
            let mut append = appends.remove(id)?;
            append.drop_oldest = taken.get(id).map_or(0, |t| t.1);
            Some(append)
        })
        .collect();
    match routes_store.enqueue(&list).await {
        Ok(dropped) => {
            let mut woken = BTreeMap::new();
            for offer in &accepted {
                for route in &offer.routes {
                    woken
                        .entry(route.spec.id.clone())
                        .or_insert_with(|| route.clone());
                }
            }
            for (append, dropped) in list.iter().zip(dropped) {
                if let Some(route) = woken.get(&append.route_id) {
                    let added = append.messages.len() as u64;
                    route.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                    route.counters.accepted.fetch_add(added, Ordering::Relaxed);
                    route.counters.depth.fetch_add(added, Ordering::Relaxed);
                    route.counters.take(dropped);
                    if dropped > 0 {
                        tracing::warn!(route = %append.route_id, dropped, "route outbox full: oldest messages dropped");
                    }
                }
            }
            for route in woken.values() {
                route.wake.notify_one();
            }
            for offer in accepted {
                let _ = offer.answer.send(Acceptance::Accepted);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, messages = accepted.len(), "route outbox write failed; the messages are refused");
            for offer in accepted {
                for route in &offer.routes {
                    route
                        .counters
                        .store_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                let _ = offer.answer.send(Acceptance::Unavailable);
            }
        }
    }
}
