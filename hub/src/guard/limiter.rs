//! Counting connections in all and per source address, with permits that give the slot back
//! when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The cap on all connections of this kind is reached.
    #[error("connection cap reached")]
    Total,
    /// The cap on connections from this source address is reached.
    #[error("per-address connection cap reached")]
    PerAddr,
}

impl LimitExceeded {
    /// A short label for logs.
    pub fn label(self) -> &'static str {
        match self {
            LimitExceeded::Total => "cap",
            LimitExceeded::PerAddr => "per-address cap",
        }
    }
}

/// Caps concurrent connections in all and per source address.
///
/// The per-address map only holds addresses with a live permit, so it never has more entries
/// than the total cap.
#[derive(Clone)]
pub struct ConnLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    total_max: usize,
    /// `None`: no per-address cap (and no map to keep).
    per_addr_max: Option<usize>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    per_addr: HashMap<IpAddr, usize>,
}

/// A held connection slot; dropping it frees the slot.
pub struct ConnPermit {
    inner: Arc<Inner>,
    addr: Option<IpAddr>,
}

impl ConnLimiter {
    /// At most `total_max` connections, and `per_addr_max` from one address (`None`: no
    /// per-address cap).
    pub fn new(total_max: usize, per_addr_max: Option<usize>) -> Self {
        ConnLimiter {
            inner: Arc::new(Inner {
                total_max,
                per_addr_max,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Takes a slot for a connection from `addr`, or says which cap is reached.
    pub fn try_acquire(&self, addr: IpAddr) -> Result<ConnPermit, LimitExceeded> {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; count it as a.b.c.d.
        let addr = addr.to_canonical();
        let mut state = self.inner.lock();
        if state.total >= self.inner.total_max {
            return Err(LimitExceeded::Total);
        }
        let tracked = match self.inner.per_addr_max {
            Some(max) => {
                let n = state.per_addr.entry(addr).or_insert(0);
                if *n >= max {
                    return Err(LimitExceeded::PerAddr);
                }
                *n += 1;
                Some(addr)
            }
            None => None,
        };
        state.total += 1;
        Ok(ConnPermit {
            inner: self.inner.clone(),
            addr: tracked,
        })
    }

    /// Whether at least half of the slots are held: the moment to stop spending them on
    /// anything but getting connections through (see the failure backoff in the broker hooks).
    pub fn crowded(&self) -> bool {
        self.in_use().saturating_mul(2) >= self.inner.total_max
    }

    /// Connections holding a slot now.
    pub fn in_use(&self) -> usize {
        self.inner.lock().total
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The counters stay consistent under a panic elsewhere: every update is one step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(addr) = self.addr
            && let Some(n) = state.per_addr.get_mut(&addr)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_addr.remove(&addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn per_address_cap_leaves_other_addresses_alone() {
        let limiter = ConnLimiter::new(10, Some(2));
        let a1 = limiter.try_acquire(ip("10.0.0.1")).expect("first");
        let _a2 = limiter.try_acquire(ip("10.0.0.1")).expect("second");
        assert_eq!(
            limiter.try_acquire(ip("10.0.0.1")).err(),
            Some(LimitExceeded::PerAddr)
        );
        // The same address through an IPv4-mapped IPv6 socket is the same address.
        assert_eq!(
            limiter.try_acquire(ip("::ffff:10.0.0.1")).err(),
            Some(LimitExceeded::PerAddr)
        );
        let _b = limiter.try_acquire(ip("10.0.0.2")).expect("other address");
        drop(a1);
        let _a3 = limiter.try_acquire(ip("10.0.0.1")).expect("slot freed");
        assert_eq!(limiter.in_use(), 3);
    }

    #[test]
    fn total_cap_counts_every_address_and_frees_on_drop() {
        let limiter = ConnLimiter::new(2, None);
        let p1 = limiter.try_acquire(ip("10.0.0.1")).expect("first");
        let _p2 = limiter.try_acquire(ip("10.0.0.2")).expect("second");
        assert_eq!(
            limiter.try_acquire(ip("10.0.0.3")).err(),
            Some(LimitExceeded::Total)
        );
        drop(p1);
        assert_eq!(limiter.in_use(), 1);
        let _p3 = limiter.try_acquire(ip("10.0.0.3")).expect("freed");
        assert!(limiter.inner.lock().per_addr.is_empty());
    }

    #[test]
    fn per_address_map_forgets_addresses_without_connections() {
        let limiter = ConnLimiter::new(100, Some(5));
        let permits: Vec<_> = (0..50)
            .map(|i| {
                limiter
                    .try_acquire(IpAddr::from([10, 0, 0, i]))
                    .expect("slot")
            })
            .collect();
        assert_eq!(limiter.inner.lock().per_addr.len(), 50);
        drop(permits);
        assert!(limiter.inner.lock().per_addr.is_empty());
        assert_eq!(limiter.in_use(), 0);
    }
}
