//! Deliveries dropped because a session's message queue is full (D-84): counted and logged,
//! never silent.
//!
//! rmqtt queues a session's messages beyond its inflight window in a bounded queue
//! (`max_mqueue_len`) and drops what does not fit, telling only its `MessageDropped` hook. A
//! thing's queue is small (what an offline device gets on reconnect); a service user's is
//! [`SERVICE_MQUEUE_LEN`], because one back end takes the messages of a whole fleet and a
//! burst must not be lost while it catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::Reason;

use crate::clock::now_ms;
use crate::metrics::Metrics;

/// Messages a service user's session may have queued beyond its inflight window.
pub const SERVICE_MQUEUE_LEN: usize = 100_000;

/// At most one warning per this many milliseconds; the counter has every drop.
const WARN_EVERY_MS: u64 = 10_000;

/// Counts and logs deliveries dropped for a full queue.
pub(super) struct CountQueueFull {
    metrics: Arc<Metrics>,
    last_warned_ms: AtomicU64,
}

impl CountQueueFull {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        CountQueueFull {
            metrics,
            last_warned_ms: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Handler for CountQueueFull {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessageDropped(to, _, publish, Reason::MessageQueueFull) = param else {
            return (true, acc);
        };
        let total = self.metrics.inc_mqtt_queue_full_dropped();
        let now = now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                client = to.as_ref().map(|id| id.client_id.to_string()).unwrap_or_default(),
                topic = %publish.topic,
                dropped_total = total,
                "message queue full: deliveries dropped (iothub_mqtt_queue_full_dropped_total)"
            );
        }
        (true, acc)
    }
}
