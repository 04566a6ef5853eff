//! Group commit: many shadow updates, one transaction, one fsync.
//!
//! # Why
//! An update may be acknowledged only once it is durable (S-3.5), and the store syncs every
//! commit to disk (`synchronous=FULL`). One transaction per update would cap the hub at the disk's
//! sync rate (a few hundred to a few thousand per second), whatever the CPU. Instead, updates queue
//! here; a single task takes the first queued write, drains whatever else is already waiting (up
//! to `max_batch`) *without waiting for more*, and commits them all with one
//! [`Store::write_shadows`](super::Store::write_shadows) call. Under light load a batch is one
//! write and latency is one commit; under heavy load batches grow by themselves while a commit is
//! in flight, so throughput scales with the batch size rather than with the sync rate.
//!
//! # Ordering
//! The queue is strictly FIFO and batches are applied in order, so writes submitted in order are
//! applied in order. A pipeline may therefore [`submit`](GroupCommitter::submit) version N+1
//! (expecting N) before N is durable: if N commits, N+1 finds it; if N fails, N+1 fails its CAS
//! too. Each write still gets its own result (a CAS conflict fails only that write).
//!
//! # Back-pressure
//! The queue is bounded: when it is full, `submit`/`write` wait for room, which slows the
//! producers (the shadow pipeline and, through it, MQTT reads) instead of growing memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{ShadowWrite, SharedStore, StoreError};

/// The answer to one queued write.
type Reply = oneshot::Sender<Result<(), StoreError>>;

enum Msg {
    Write(ShadowWrite, Reply),
    /// Commit everything queued, stop accepting writes, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the committer, for tests and metrics.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    failed_batches: AtomicU64,
    largest_batch: AtomicU64,
}

/// A snapshot of the committer's counters (monotonic since [`GroupCommitter::spawn`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Transactions committed (or attempted), one per batch.
    pub batches: u64,
    /// Writes handed to the store, successful or not.
    pub writes: u64,
    /// Batches whose transaction failed as a whole (every write answered `Unavailable`).
    pub failed_batches: u64,
    /// Most writes seen in one batch.
    pub largest_batch: u64,
}

/// Handle to the group-commit task. Clones share the task.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("queued", &self.queued())
            .field("stats", &self.stats())
            .finish()
    }
}

impl GroupCommitter {
    /// Starts the commit task on the current tokio runtime.
    ///
    /// `max_batch` bounds the writes per transaction (e.g. 512); `queue` bounds the writes waiting
    /// for a batch. Both are clamped to at least 1.
    pub fn spawn(store: SharedStore, max_batch: usize, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(store, rx, max_batch.max(1), Arc::clone(&counters)));
        GroupCommitter { tx, counters }
    }

    /// Durable when Ok. Writes are committed in submission order (FIFO), many per transaction.
    ///
    /// Errors: the write's own CAS result ([`StoreError::VersionConflict`],
    /// [`StoreError::NotFound`]), or [`StoreError::Unavailable`] if the transaction failed or the
    /// committer has shut down.
    pub async fn write(&self, w: ShadowWrite) -> Result<(), StoreError> {
        let rx = self.submit(w).await;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Enqueue now, await durability later (keeps submission order when awaited in order).
    ///
    /// Waits only for room in the queue. The receiver yields the write's result; if the committer
    /// has shut down it yields [`StoreError::Unavailable`] (or is closed, which callers should
    /// treat the same way).
    pub async fn submit(&self, w: ShadowWrite) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Msg::Write(_, reply))) =
            self.tx.send(Msg::Write(w, reply)).await
        {
            let _ = reply.send(Err(gone()));
        }
        rx
    }

    /// Drains the queue, commits, returns. Writes submitted afterwards fail with
    /// [`StoreError::Unavailable`]. Safe to call more than once and from several clones.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            // An error means the task is gone, which is what we wait for anyway.
            let _ = done.await;
        }
    }

    /// Counters since start: transactions, writes, failures, largest batch.
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            failed_batches: self.counters.failed_batches.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Writes currently waiting in the queue (a gauge for metrics).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("group committer stopped".into())
}

/// The commit task: one batch at a time, in queue order.
async fn run(
    store: SharedStore,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut acks = Vec::new();
    let mut writes = Vec::with_capacity(max_batch);
    let mut replies: Vec<Reply> = Vec::with_capacity(max_batch);
    // `recv` returns None once every handle is dropped, or after `close` once the queue is empty:
    // either way everything accepted has been committed.
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(w, reply) => {
                    writes.push(w);
                    replies.push(reply);
                }
                Msg::Shutdown(ack) => {
                    // Refuse new writes; those already queued are still drained below.
                    rx.close();
                    acks.push(ack);
                }
            }
            if writes.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if writes.is_empty() {
            continue;
        }
        commit(&*store, &mut writes, &mut replies, &counters).await;
    }
    for ack in acks {
        let _ = ack.send(());
    }
}

async fn commit(
    store: &dyn super::Store,
    writes: &mut Vec<ShadowWrite>,
    replies: &mut Vec<Reply>,
    counters: &Counters,
) {
    let n = writes.len() as u64;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.writes.fetch_add(n, Ordering::Relaxed);
    counters.largest_batch.fetch_max(n, Ordering::Relaxed);
    match store.write_shadows(writes).await {
        Ok(results) => {
            let mut results = results.into_iter();
            for reply in replies.drain(..) {
                let result = results.next().unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "store returned too few results".into(),
                    ))
                });
                // The requester may have given up waiting; the write is durable regardless.
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, writes = n, "shadow batch commit failed");
            for reply in replies.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    writes.clear();
}
