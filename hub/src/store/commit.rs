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
//! too (with other instances writing the store, N+1 also names N's body, so that it fails even
//! when another instance stored a version N of its own: docs/spec.md D-85). Each write still
//! gets its own result (a CAS conflict fails only that write).
//!
//! # Back-pressure
//! The queue is bounded: when it is full, `submit`/`write` wait for room, which slows the
//! producers (the shadow pipeline and, through it, MQTT reads) instead of growing memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

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
        Self::spawn_with_metrics(store, max_batch, queue, None)
    }

    /// [`GroupCommitter::spawn`], also counting every transaction in the hub's `metrics`.
    pub fn spawn_with_metrics(
        store: SharedStore,
        max_batch: usize,
        queue: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(
            store,
            rx,
            max_batch.max(1),
            Arc::clone(&counters),
            metrics,
        ));
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
    metrics: Option<Arc<Metrics>>,
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
        if let Some(m) = &metrics {
            m.inc_group_commit_batch(writes.len());
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewThing, Store};
    use tempfile::TempDir;

    async fn store_with_things(n: usize) -> (TempDir, String, SharedStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/hub.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        let things: Vec<_> = (0..n)
            .map(|i| NewThing {
                thing_id: format!("t{i:04}"),
                password_hash: "x".into(),
                tags: Default::default(),
                enabled: true,
            })
            .collect();
        let created = store.create_things(&things, 1).await.unwrap();
        assert!(created.iter().all(Result::is_ok));
        (dir, url, Arc::new(store))
    }

    fn write(thing: &str, expected: u64) -> ShadowWrite {
        ShadowWrite {
            thing_id: thing.to_owned(),
            name: "default".into(),
            expected_version: expected,
            new_version: expected + 1,
            body: format!(r#"{{"state":{{"reported":{{"v":{}}}}}}}"#, expected + 1),
            updated_at: expected + 1,
            expected_body: None,
        }
    }

    /// 20 shadows × 100 versions, each shadow's versions submitted back to back without waiting
    /// for durability: every CAS succeeds only if the committer keeps FIFO order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_pipelined_writes_are_durable_and_fifo() {
        const THINGS: usize = 20;
        const VERSIONS: u64 = 100;
        let (_dir, url, store) = store_with_things(THINGS).await;
        let committer = GroupCommitter::spawn(Arc::clone(&store), 512, 1024);

        let mut producers = Vec::new();
        for i in 0..THINGS {
            let committer = committer.clone();
            producers.push(tokio::spawn(async move {
                let thing = format!("t{i:04}");
                let mut pending = Vec::new();
                for v in 0..VERSIONS {
                    pending.push(committer.submit(write(&thing, v)).await);
                }
                let mut results = Vec::new();
                for rx in pending {
                    results.push(rx.await.unwrap());
                }
                results
            }));
        }
        for p in producers {
            let results = p.await.unwrap();
            assert_eq!(results.len(), VERSIONS as usize);
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        }

        let stats = committer.stats();
        assert_eq!(stats.writes, THINGS as u64 * VERSIONS);
        assert_eq!(stats.failed_batches, 0);
        assert!(stats.batches < stats.writes, "no batching: {stats:?}");
        assert!(stats.largest_batch > 1, "{stats:?}");
        assert!(stats.largest_batch <= 512);

        committer.shutdown().await;
        store.close().await;
        let reopened = SqliteStore::open(&url).await.unwrap();
        for i in 0..THINGS {
            let s = reopened
                .get_shadow(&format!("t{i:04}"), "default")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(s.version, VERSIONS);
            assert_eq!(
                s.body,
                format!(r#"{{"state":{{"reported":{{"v":{VERSIONS}}}}}}}"#)
            );
        }
        reopened.close().await;
    }

    /// 2,000 independent writers each awaiting its own write: all durable, few transactions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_concurrent_writers_share_transactions() {
        const N: usize = 2000;
        let (_dir, _url, store) = store_with_things(N).await;
        let committer = GroupCommitter::spawn(Arc::clone(&store), 512, 256);
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let committer = committer.clone();
                tokio::spawn(async move { committer.write(write(&format!("t{i:04}"), 0)).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
        let stats = committer.stats();
        assert_eq!(stats.writes, N as u64);
        assert!(stats.batches < N as u64, "{stats:?}");
        for i in (0..N).step_by(97) {
            let s = store
                .get_shadow(&format!("t{i:04}"), "default")
                .await
                .unwrap();
            assert_eq!(s.map(|s| s.version), Some(1));
        }
        committer.shutdown().await;
        store.close().await;
    }

    #[tokio::test]
    async fn per_write_errors_reach_their_writer_only() {
        let (_dir, _url, store) = store_with_things(1).await;
        let committer = GroupCommitter::spawn(Arc::clone(&store), 8, 8);
        let a = committer.submit(write("t0000", 0)).await;
        let b = committer.submit(write("t0000", 0)).await; // exists by now
        let c = committer.submit(write("ghost", 0)).await;
        let d = committer.submit(write("t0000", 1)).await;
        assert_eq!(a.await.unwrap(), Ok(()));
        assert_eq!(b.await.unwrap(), Err(StoreError::VersionConflict));
        assert_eq!(c.await.unwrap(), Err(StoreError::NotFound));
        assert_eq!(d.await.unwrap(), Ok(()));
        assert_eq!(committer.stats().failed_batches, 0);
        committer.shutdown().await;
    }

    #[tokio::test]
    async fn failed_transaction_answers_every_write_unavailable() {
        let (_dir, _url, store) = store_with_things(1).await;
        let committer = GroupCommitter::spawn(Arc::clone(&store), 8, 8);
        store.close().await;
        let err = committer.write(write("t0000", 0)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(committer.stats().failed_batches, 1);
        committer.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_drains_then_refuses() {
        let (_dir, url, store) = store_with_things(1).await;
        let committer = GroupCommitter::spawn(Arc::clone(&store), 4, 64);
        let mut pending = Vec::new();
        for v in 0..50 {
            pending.push(committer.submit(write("t0000", v)).await);
        }
        let other = committer.clone();
        committer.shutdown().await;
        // Everything queued before shutdown was committed and answered.
        for rx in pending {
            assert_eq!(rx.try_recv_result(), Some(Ok(())));
        }
        assert_eq!(committer.stats().writes, 50);
        assert!(matches!(
            other.write(write("t0000", 50)).await,
            Err(StoreError::Unavailable(_))
        ));
        other.shutdown().await; // idempotent
        assert_eq!(committer.queued(), 0);
        store.close().await;
        let reopened = SqliteStore::open(&url).await.unwrap();
        let s = reopened.get_shadow("t0000", "default").await.unwrap();
        assert_eq!(s.map(|s| s.version), Some(50));
        reopened.close().await;
    }

    trait TryRecvResult {
        fn try_recv_result(self) -> Option<Result<(), StoreError>>;
    }

    impl TryRecvResult for oneshot::Receiver<Result<(), StoreError>> {
        fn try_recv_result(mut self) -> Option<Result<(), StoreError>> {
            self.try_recv().ok()
        }
    }
}
