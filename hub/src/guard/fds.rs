//! The process's file descriptor limit, raised at start-up, and the connection caps that fit
//! in it.
//!
//! Every connection is a descriptor. If the caps add up to more than the limit, a flood of
//! idle sockets makes `accept` fail with "too many open files" on *both* listeners and the
//! hub stops answering anyone (issue 14). So the hub raises its soft limit to the hard one
//! and then lowers any cap that does not fit, saying so in the log.

use crate::Config;

/// Descriptors kept for everything but client connections: the database and its journal,
/// the listeners, the runtime's own, blocking-pool threads opening files, logs.
pub const RESERVED_FDS: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force
/// (`None`: unlimited or unknown).
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut raised = before;
    raised.current = before.maximum;
    if raised.current != before.current
        && let Err(e) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(error = %e, soft = ?before.current, hard = ?before.maximum,
            "cannot raise the file descriptor limit");
    }
    let now = getrlimit(Resource::Nofile);
    tracing::info!(
        before = ?before.current,
        now = ?now.current,
        hard = ?now.maximum,
        "file descriptor limit (soft) raised to the hard limit"
    );
    now.current
}

/// Connection caps that fit in the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// MQTT connections in all.
    pub mqtt_connections: usize,
    /// MQTT connections not yet authenticated.
    pub mqtt_pending: usize,
    /// HTTP connections.
    pub http_connections: usize,
}

impl Budget {
    /// The configured caps, lowered to fit `fd_limit`: after [`RESERVED_FDS`], HTTP and the
    /// unauthenticated MQTT connections may each take at most a quarter, and MQTT as a whole
    /// what HTTP leaves. A flood on one listener then cannot starve the other, nor legitimate
    /// MQTT clients, of descriptors.
    pub fn plan(config: &Config, fd_limit: Option<u64>) -> Budget {
        let wanted = Budget {
            mqtt_connections: config.max_connections,
            mqtt_pending: usize::try_from(config.max_pending_connects).unwrap_or(usize::MAX),
            http_connections: usize::try_from(config.max_http_connections).unwrap_or(usize::MAX),
        };
        let budget = wanted.fit(fd_limit);
        if budget != wanted {
            tracing::warn!(
                fd_limit = ?fd_limit,
                mqtt_connections = budget.mqtt_connections,
                mqtt_pending = budget.mqtt_pending,
                http_connections = budget.http_connections,
                "connection caps lowered to fit the file descriptor limit; raise LimitNOFILE \
                 (systemd) or `ulimit -n` for more"
            );
        }
        budget
    }

    fn fit(self, fd_limit: Option<u64>) -> Budget {
        let Some(limit) = fd_limit else { return self };
        let avail = usize::try_from(limit.saturating_sub(RESERVED_FDS))
            .unwrap_or(usize::MAX)
            .max(4);
        let http_connections = self.http_connections.min(avail / 4).max(1);
        let mqtt_pending = self.mqtt_pending.min(avail / 4).max(1);
        let mqtt_connections = self
            .mqtt_connections
            .min(avail - http_connections)
            .max(mqtt_pending);
        Budget {
            mqtt_connections,
            mqtt_pending,
            http_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: Budget = Budget {
        mqtt_connections: 100_000,
        mqtt_pending: 1_000,
        http_connections: 1_024,
    };

    #[test]
    fn a_small_limit_is_shared_out_and_leaves_the_reserve() {
        let b = WANTED.fit(Some(1024));
        assert_eq!(
            b,
            Budget {
                mqtt_connections: 672,
                mqtt_pending: 224,
                http_connections: 224,
            }
        );
        assert!(b.mqtt_connections + b.http_connections + RESERVED_FDS as usize <= 1024);
    }

    #[test]
    fn a_large_or_unknown_limit_keeps_the_configured_caps() {
        assert_eq!(WANTED.fit(Some(1 << 20)), WANTED);
        assert_eq!(WANTED.fit(None), WANTED);
    }

    #[test]
    fn a_tiny_limit_still_leaves_one_slot_each() {
        let b = WANTED.fit(Some(10));
        assert!(b.mqtt_pending >= 1 && b.http_connections >= 1 && b.mqtt_connections >= 1);
    }
}
