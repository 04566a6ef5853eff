//! Which things this hub instance handles when several share one broker and one database
//! (D-73).
//!
//! Every instance receives every device request from the broker (Mosquitto 2.0 cannot deliver
//! `$iothub/...` to shared subscriptions, D-60), so the instances split the work by thing
//! instead: thing ids fall into [`PARTITIONS`] partitions ([`partition_of`]), each leased to one
//! instance through the store ([`crate::store::lease`]), and an instance handles a request only
//! when it holds the partition of the request's thing. The instance holding partition 0 is the
//! *leader* and runs the fleet engines (configurations, jobs, OTA rollouts), which must run once.
//!
//! An instance acts on a lease only until `round start + TTL - MARGIN` by its own monotonic
//! clock, while the database lets another instance take it only after `renewal + TTL` by the
//! database's clock; the renewal happens after the round started, so the two never overlap as
//! long as the clocks run at the same rate. A killed instance's partitions are taken by the
//! others within `TTL + ROUND`; requests meanwhile go unanswered and the devices send them again
//! (S-4).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

use crate::store::SharedStore;
pub use crate::store::lease::PARTITIONS;

/// Lease time to live.
pub const TTL: Duration = Duration::from_secs(5);
/// How long before its lease can expire an instance stops acting on it.
const MARGIN: Duration = Duration::from_secs(1);
/// Time between lease rounds (plus up to a fifth of it at random).
pub const ROUND: Duration = Duration::from_secs(1);
/// Longest wait for one round's transaction.
const ROUND_DEADLINE: Duration = Duration::from_secs(2);

/// The partition of `thing` (FNV-1a of its bytes, folded, modulo [`PARTITIONS`]; the same in
/// every instance and every version, since instances must agree on it).
pub fn partition_of(thing: &str) -> u16 {
    crate::shard::shard_of(thing, usize::from(PARTITIONS)) as u16
}

/// Milliseconds on this process's monotonic clock.
fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The partitions this instance may act on, read on every request (lock-free).
#[derive(Debug)]
pub struct Ownership {
    /// Bit `p` set: partition `p` is this instance's.
    mask: AtomicU64,
    /// [`mono_ms`] until which `mask` may be acted on.
    valid_until: AtomicU64,
    /// Changes whenever partitions are taken: anything cached before about their things may
    /// have been changed by another instance since.
    epoch: AtomicU64,
    /// Other instances may write the same store (leased partitions); `false` for
    /// [`Ownership::everything`].
    shared: bool,
}

impl Ownership {
    /// One instance that handles every thing (the embedded broker, or a store without leases).
    pub fn everything() -> Arc<Ownership> {
        Arc::new(Ownership {
            mask: AtomicU64::new(u64::MAX),
            valid_until: AtomicU64::new(u64::MAX),
            epoch: AtomicU64::new(0),
            shared: false,
        })
    }

    /// Every thing, as [`Ownership::everything`], but for a store that other writers share
    /// (tests of what a cluster's instance does when another one writes a thing's shadow).
    #[cfg(test)]
    pub(crate) fn everything_shared() -> Arc<Ownership> {
        Arc::new(Ownership {
            mask: AtomicU64::new(u64::MAX),
            valid_until: AtomicU64::new(u64::MAX),
            epoch: AtomicU64::new(0),
            shared: true,
        })
    }

    /// An instance that holds nothing until its first lease round.
    fn nothing() -> Arc<Ownership> {
        Arc::new(Ownership {
            mask: AtomicU64::new(0),
            valid_until: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            shared: true,
        })
    }

    /// Whether this instance handles `thing` now.
    pub fn owns(&self, thing: &str) -> bool {
        self.owns_partition(partition_of(thing))
    }

    /// Whether this instance holds partition `p` now.
    pub fn owns_partition(&self, p: u16) -> bool {
        mono_ms() < self.valid_until.load(Ordering::Acquire)
            && self.mask.load(Ordering::Acquire) & (1u64 << (p % PARTITIONS)) != 0
    }

    /// Whether this instance runs the fleet engines (it holds partition 0).
    pub fn is_leader(&self) -> bool {
        self.owns_partition(0)
    }

    /// See [`Ownership::epoch`]'s field: compare a value read when something was cached.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether other hub instances may write the same store (D-73): then even the shadows of
    /// this instance's own things can change under it.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// How many partitions this instance holds now.
    pub fn held(&self) -> u32 {
        if mono_ms() < self.valid_until.load(Ordering::Acquire) {
            self.mask.load(Ordering::Acquire).count_ones()
        } else {
            0
        }
    }

    fn set(&self, partitions: &[u16], valid_until: u64, taken: bool) {
        if taken {
            // Before the mask: a reader that sees the new partitions also sees the new epoch.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        let mask = partitions
            .iter()
            .fold(0u64, |m, p| m | (1u64 << (p % PARTITIONS)));
        self.mask.store(mask, Ordering::Release);
        self.valid_until.store(valid_until, Ordering::Release);
    }

    fn clear(&self) {
        self.mask.store(0, Ordering::Release);
    }
}

/// This instance's membership: its id and the lease rounds that keep its partitions.
pub struct Member {
    store: SharedStore,
    instance: String,
    ownership: Arc<Ownership>,
    /// Partitions no longer acted on, to give back at the next round.
    give_back: Vec<u16>,
    /// Instances alive at the last round, this one included.
    live: u32,
}

impl Member {
    /// Joins with one lease round, so the instance holds its first partitions before it takes
    /// requests. `None` when the store has no leases: the instance then handles everything.
    pub async fn join(store: SharedStore, instance: String) -> anyhow::Result<Option<Member>> {
        if store.leases().is_none() {
            return Ok(None);
        }
        let mut member = Member {
            store,
            instance,
            ownership: Ownership::nothing(),
            give_back: Vec::new(),
            live: 0,
        };
        member
            .round()
            .await
            .map_err(|e| anyhow::anyhow!("cannot take partition leases: {e}"))?;
        Ok(Some(member))
    }

    /// The partitions this instance may act on.
    pub fn ownership(&self) -> Arc<Ownership> {
        self.ownership.clone()
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether no other instance was alive at the last round.
    pub fn alone(&self) -> bool {
        self.live <= 1
    }

    /// Renews and rebalances every [`ROUND`] until `shutdown`, then gives everything back.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let jitter = rand::thread_rng().gen_range(0..=ROUND.as_millis() as u64 / 5);
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(ROUND + Duration::from_millis(jitter)) => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, held = self.ownership.held(), "partition lease round failed; leases lapse unless the next one succeeds");
            }
        }
        self.ownership.clear();
        let Some(leases) = self.store.leases() else {
            return;
        };
        match tokio::time::timeout(ROUND_DEADLINE, leases.leave(&self.instance)).await {
            Ok(Ok(())) => tracing::info!(instance = %self.instance, "partitions given back"),
            _ => {
                tracing::warn!(instance = %self.instance, "could not give the partitions back; the other instances take them when the leases expire")
            }
        }
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        let leases = self
            .store
            .leases()
            .ok_or_else(|| anyhow::anyhow!("the store has no leases"))?;
        let started = mono_ms();
        let round = tokio::time::timeout(
            ROUND_DEADLINE,
            leases.lease_round(&self.instance, TTL.as_millis() as u64, &self.give_back),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {ROUND_DEADLINE:?}"))??;
        self.give_back.clear();
        self.live = round.live;
        let mut keep = round.held.clone();
        if keep.len() > usize::from(round.share) {
            // The highest go back first, so the oldest instance keeps partition 0 (the leader).
            self.give_back = keep.split_off(usize::from(round.share));
        }
        let before = self.ownership.held();
        self.ownership.set(
            &keep,
            started + (TTL - MARGIN).as_millis() as u64,
            !round.taken.is_empty(),
        );
        if !round.taken.is_empty() || !self.give_back.is_empty() || before as usize != keep.len() {
            tracing::info!(
                instance = %self.instance,
                live = round.live,
                held = keep.len(),
                taken = round.taken.len(),
                giving_back = self.give_back.len(),
                leader = keep.first() == Some(&0),
                "partitions changed"
            );
        }
        Ok(())
    }
}

/// How often a running fleet engine checks that this instance is still the leader.
const LEADER_CHECK: Duration = Duration::from_millis(250);

/// Runs fleet engines once among the instances: while this instance is the leader, runs the
/// engine `run` makes, giving it a stop future that completes when `stop` turns true or the
/// leadership is lost; a new engine (which loads its state from the store) each time this
/// instance becomes the leader again. Returns when `stop` turns true (or its sender is gone).
pub async fn while_leader<R>(
    ownership: Arc<Ownership>,
    stop: watch::Receiver<bool>,
    mut run: impl FnMut(Pin<Box<dyn Future<Output = ()> + Send>>) -> R,
) where
    R: Future<Output = ()>,
{
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    loop {
        while !ownership.is_leader() {
            tokio::select! {
                () = stopped(stop.clone()) => return,
                () = tokio::time::sleep(LEADER_CHECK) => {}
            }
        }
        if *stop.borrow() {
            return;
        }
        let leader = ownership.clone();
        let stop_rx = stop.clone();
        run(Box::pin(async move {
            tokio::select! {
                () = stopped(stop_rx) => {}
                () = async {
                    while leader.is_leader() {
                        tokio::time::sleep(LEADER_CHECK).await;
                    }
                } => tracing::info!("no longer the leader instance: fleet engine stopped"),
            }
        }))
        .await;
        if *stop.borrow() || stop.has_changed().is_err() {
            return;
        }
    }
}

/// A default instance id: the process id and random letters, unique enough among the instances
/// of one deployment. Operators give a stable one (`--instance-id`) so that the broker keeps
/// the instance's session across restarts.
pub fn default_instance_id() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    format!("hub-{}-{}", std::process::id(), suffix.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_owns_every_partition_and_leads() {
        let all = Ownership::everything();
        assert!(all.owns("t1") && all.owns("another") && all.is_leader());
        assert_eq!(all.held(), 64);
    }

    #[test]
    fn ownership_follows_the_mask_until_it_lapses() {
        let o = Ownership::nothing();
        assert!(!o.is_leader());
        let p = partition_of("t1");
        o.set(&[p], mono_ms() + 60_000, true);
        assert!(o.owns("t1"));
        assert_eq!(o.epoch(), 1);
        assert_eq!(o.is_leader(), p == 0);
        o.set(&[p], mono_ms().saturating_sub(1), false);
        assert!(!o.owns("t1"), "a lapsed lease is not acted on");
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Instances of different builds must agree: these values follow from D-73's formula
        // (computed independently of this code).
        assert_eq!(partition_of("t1"), 17);
        assert_eq!(partition_of("sensor-00001"), 20);
        assert_eq!(partition_of("a"), 0);
        let mut counts = [0u32; PARTITIONS as usize];
        for i in 0..6400 {
            counts[usize::from(partition_of(&format!("sensor-{i:05}")))] += 1;
        }
        assert!(counts.iter().all(|c| (50..=150).contains(c)), "{counts:?}");
    }
}
