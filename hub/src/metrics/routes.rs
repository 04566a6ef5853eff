//! The routes' counters (S-14.5) and their lines in `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::histogram::{Histogram, ROUTE_DELIVERY_SECONDS};
use super::{escape_label, header};

/// One route's counters (S-14.5), shared by the route's outbox writer and its delivery task,
/// shown by `GET /api/v1/routes/{id}` and in `/metrics`.
#[derive(Debug)]
pub struct RouteCounters {
    /// Messages in the outbox now.
    pub depth: AtomicU64,
    /// Messages committed to the outbox.
    pub accepted: AtomicU64,
    /// Messages the sink confirmed.
    pub delivered: AtomicU64,
    /// Failed delivery attempts (of a batch).
    pub failed: AtomicU64,
    /// Messages deleted by the `drop-oldest` policy of a full outbox.
    pub dropped: AtomicU64,
    /// Messages refused by the `refuse` policy of a full outbox.
    pub refused: AtomicU64,
    /// Messages moved to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Messages refused because the outbox could not be written.
    pub store_failures: AtomicU64,
    /// Dead letters deleted for the route's count or age bound (D-88).
    pub dead_letters_dropped: AtomicU64,
    /// Per delivered message: from its acceptance by the hub (`receivedAt`) to the sink's
    /// confirmation (D-87).
    pub delivery_seconds: Histogram,
}

impl Default for RouteCounters {
    fn default() -> Self {
        RouteCounters {
            depth: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            dead_letters_dropped: AtomicU64::new(0),
            delivery_seconds: Histogram::new(ROUTE_DELIVERY_SECONDS),
        }
    }
}

impl RouteCounters {
    /// Takes `n` from the depth, never below zero.
    pub fn take(&self, n: u64) {
        let _ = self
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
    }
}

pub(super) fn render(routes: &DashMap<String, Arc<RouteCounters>>, out: &mut String) {
    let mut ids: Vec<String> = routes.iter().map(|e| e.key().clone()).collect();
    ids.sort();
    type Get = fn(&RouteCounters) -> &AtomicU64;
    let series: [(&str, &str, &str, Get); 9] = [
        (
            "iothub_route_outbox_messages",
            "Messages waiting in a route's outbox.",
            "gauge",
            |c| &c.depth,
        ),
        (
            "iothub_route_accepted_total",
            "Messages committed to a route's outbox.",
            "counter",
            |c| &c.accepted,
        ),
        (
            "iothub_route_delivered_total",
            "Messages a route's sink confirmed.",
            "counter",
            |c| &c.delivered,
        ),
        (
            "iothub_route_delivery_failures_total",
            "Failed delivery attempts of a route (one per batch).",
            "counter",
            |c| &c.failed,
        ),
        (
            "iothub_route_dropped_total",
            "Messages a full outbox dropped (drop-oldest).",
            "counter",
            |c| &c.dropped,
        ),
        (
            "iothub_route_refused_total",
            "Messages a full outbox refused (refuse; PUBACK 0x97 in MQTT 5).",
            "counter",
            |c| &c.refused,
        ),
        (
            "iothub_route_dead_letters_total",
            "Messages moved to a route's dead letters.",
            "counter",
            |c| &c.dead_lettered,
        ),
        (
            "iothub_route_dead_letters_dropped_total",
            "Dead letters deleted for a route's count or age bound.",
            "counter",
            |c| &c.dead_letters_dropped,
        ),
        (
            "iothub_route_store_failures_total",
            "Messages refused because the outbox could not be written.",
            "counter",
            |c| &c.store_failures,
        ),
    ];
    for (name, help, kind, get) in series {
        header(out, name, help, kind);
        for id in &ids {
            if let Some(c) = routes.get(id) {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\"}} {}",
                    escape_label(id),
                    get(&c).load(Ordering::Relaxed)
                );
            }
        }
    }
    let name = "iothub_route_delivery_seconds";
    header(
        out,
        name,
        "Per delivered message of a route: from the hub's acceptance to the sink's confirmation, in seconds.",
        "histogram",
    );
    for id in &ids {
        if let Some(c) = routes.get(id) {
            let label = format!("route=\"{}\"", escape_label(id));
            c.delivery_seconds.render(out, name, &label);
        }
    }
}
