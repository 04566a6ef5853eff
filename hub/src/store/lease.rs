//! Partition leases: how several hub instances on one database share the things (D-73).
//!
//! Thing ids fall into [`PARTITIONS`] fixed partitions; each partition is leased to at most one
//! live instance at a time, for a time to live measured on the database's clock (so the hosts'
//! clocks never have to agree). An instance renews its leases in rounds, takes free or expired
//! partitions up to its fair share (`ceil(PARTITIONS / live instances)`) and gives back what it
//! holds beyond that share, so the partitions spread out as instances come and go. What an
//! instance does with its partitions, and how it stops acting on a lease before it can expire,
//! is [`crate::cluster`]'s concern.
//!
//! Only the PostgreSQL store offers leases: several instances need a database they all reach. A
//! store without them ([`super::Store::leases`] = `None`) makes the hub a single instance that
//! handles every thing.

use super::StoreError;

/// Number of partitions; the migration creates exactly these rows.
pub const PARTITIONS: u16 = 64;

/// What one round of [`LeaseStore::lease_round`] left this instance with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRound {
    /// Every partition the instance holds after the round (renewed and newly taken), ascending.
    pub held: Vec<u16>,
    /// The partitions among `held` that were taken in this round.
    pub taken: Vec<u16>,
    /// Instances alive (this one included).
    pub live: u32,
    /// This instance's fair share: `ceil(PARTITIONS / live)`.
    pub share: u16,
}

/// Leases of partitions of things to hub instances.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync {
    /// In one transaction: marks `instance` alive for `ttl_ms`, gives back the partitions in
    /// `give_back`, renews the others it holds for `ttl_ms`, and takes free or expired
    /// partitions up to its fair share.
    async fn lease_round(
        &self,
        instance: &str,
        ttl_ms: u64,
        give_back: &[u16],
    ) -> Result<LeaseRound, StoreError>;

    /// Gives back every partition of `instance` and marks it gone (a clean stop), so the others
    /// take its partitions at their next round instead of after the time to live.
    async fn leave(&self, instance: &str) -> Result<(), StoreError>;
}

/// The fair share of one of `live` instances.
pub fn share(live: u32) -> u16 {
    let live = u16::try_from(live.max(1)).unwrap_or(u16::MAX);
    PARTITIONS.div_ceil(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition() {
        assert_eq!(share(0), 64);
        assert_eq!(share(1), 64);
        assert_eq!(share(2), 32);
        assert_eq!(share(3), 22);
        assert_eq!(share(100), 1);
        for live in 1..=70u32 {
            assert!(u32::from(share(live)) * live >= u32::from(PARTITIONS));
        }
    }
}
