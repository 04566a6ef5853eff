//! Running one scenario as several processes or machines: shard `I/N` runs a deterministic slice
//! of the fleet, like k6's execution segments.
//!
//! Shard `I` of `N` owns the things `[I·count/N, (I+1)·count/N)` by their index in the whole
//! fleet, so the shards' thing ids are disjoint and together are exactly the unsharded fleet's.
//! Each thing's behaviour is seeded by the scenario seed and its index in the whole fleet (the
//! union of the shards is the same fleet, thing by thing); the business side's choices are
//! seeded per shard. Fleet-wide rates (connect ramp, churn, desired changes, method calls, OTA
//! jobs) are split in proportion to the slice, so the shards together load the hub as the whole
//! scenario would; per-thing rates stay as they are.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// Shard `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// Shards in all.
    pub count: usize,
}

/// Why a `--shard` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// Not `I/N` with numbers.
    #[error("shard {0:?}: expected I/N, e.g. 0/3 (I from 0 to N-1)")]
    Syntax(String),
    /// `I` not below `N`, or `N` zero.
    #[error("shard {0:?}: I must be below N and N at least 1")]
    Range(String),
    /// More shards than things: some shard would run nothing.
    #[error("{shards} shards for {things} things: every shard needs at least one thing")]
    TooMany {
        /// Shards asked for.
        shards: usize,
        /// Things in the scenario.
        things: usize,
    },
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| ShardError::Syntax(s.to_owned()))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| ShardError::Syntax(s.to_owned()))
        };
        let shard = Shard {
            index: parse(i)?,
            count: parse(n)?,
        };
        if shard.count == 0 || shard.index >= shard.count {
            return Err(ShardError::Range(s.to_owned()));
        }
        Ok(shard)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Default for Shard {
    /// The whole fleet.
    fn default() -> Shard {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// The indices (in the whole fleet of `things`) this shard runs.
    pub fn range(&self, things: usize) -> Range<usize> {
        let at = |i: usize| (i as u128 * things as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// This shard's share of `scenario`: the slice's thing count, the fleet-wide rates scaled
    /// to it, and the index of its first thing in the whole fleet.
    pub fn apply(&self, scenario: &Scenario) -> Result<(Scenario, usize), ShardError> {
        let total = scenario.population.count;
        if self.count > total {
            return Err(ShardError::TooMany {
                shards: self.count,
                things: total,
            });
        }
        let range = self.range(total);
        let share = range.len() as f64 / total as f64;
        let mut s = scenario.clone();
        s.population.count = range.len();
        s.ramp.connects_per_s *= share;
        s.profile.churn_per_s *= share;
        s.business.desired_per_s *= share;
        s.business.methods_per_s *= share;
        // One shard's jobs are `share` of the whole's: as often, each for its share of things.
        s.business.ota_job_things =
            ((s.business.ota_job_things as f64 * share).round() as usize).clamp(1, range.len());
        s.business.concurrency = ((s.business.concurrency as f64 * share).ceil() as usize).max(1);
        // Each shard runs its own method job over its own things, at its share of the rate.
        s.business.method_job_per_minute =
            ((f64::from(s.business.method_job_per_minute) * share).round() as u32).max(1);
        Ok((s, range.start))
    }

    /// A seed for this shard's own choices (the business side), from the scenario's `seed`.
    pub fn seed(&self, seed: u64) -> u64 {
        seed ^ (self.index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
    }

    /// Whether this is the whole fleet.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!("1/3".parse(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!("3/3".parse::<Shard>(), Err(ShardError::Range("3/3".into())));
        assert_eq!("0/0".parse::<Shard>(), Err(ShardError::Range("0/0".into())));
        assert_eq!(
            "1-3".parse::<Shard>(),
            Err(ShardError::Syntax("1-3".into()))
        );
        assert_eq!(
            "a/3".parse::<Shard>(),
            Err(ShardError::Syntax("a/3".into()))
        );
        assert_eq!(Shard { index: 2, count: 5 }.to_string(), "2/5");
    }

    #[test]
    fn slices_cover_the_fleet_exactly_once() {
        for (things, n) in [(18_000, 3), (10, 3), (7, 7), (1000, 6), (5, 1)] {
            let mut next = 0;
            for index in 0..n {
                let r = Shard { index, count: n }.range(things);
                assert_eq!(r.start, next, "{things}/{n}");
                assert!(!r.is_empty());
                next = r.end;
            }
            assert_eq!(next, things);
        }
    }

    #[test]
    fn rates_split_in_proportion() {
        let mut s = Scenario::default();
        s.population.count = 9;
        s.ramp.connects_per_s = 900.0;
        s.business.methods_per_s = 90.0;
        s.profile.reported_changes_per_s = 5.0;
        let parts: Vec<_> = (0..3)
            .map(|index| Shard { index, count: 3 }.apply(&s).expect("fits"))
            .collect();
        assert_eq!(
            parts.iter().map(|(p, _)| p.population.count).sum::<usize>(),
            9
        );
        assert_eq!(parts.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [0, 3, 6]);
        let ramp: f64 = parts.iter().map(|(p, _)| p.ramp.connects_per_s).sum();
        assert!((ramp - 900.0).abs() < 1e-9);
        let methods: f64 = parts.iter().map(|(p, _)| p.business.methods_per_s).sum();
        assert!((methods - 90.0).abs() < 1e-9);
        assert!(
            parts
                .iter()
                .all(|(p, _)| p.profile.reported_changes_per_s == 5.0)
        );
        assert_eq!(
            Shard {
                index: 0,
                count: 10
            }
            .apply(&s),
            Err(ShardError::TooMany {
                shards: 10,
                things: 9
            })
        );
    }
}
