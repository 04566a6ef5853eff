//! Which dispatch shard owns a thing.
//!
//! Device requests are dispatched on several shards so that they use every core (issue 23), and
//! each thing belongs to exactly one shard: its requests are handled in the order it sent them
//! (S-3.4's version order) and its in-flight count (S-3.9) lives in one place. The router and the
//! shadow service both use [`shard_of`], so a router shard always feeds the same shadow shard.

/// The shard of `thing` among `shards` (at least 1).
///
/// FNV-1a: stable for the life of the process (unlike `RandomState`), cheap for short ids, and
/// spreads sequential names (`d1-0001`, `d1-0002`, …) evenly.
pub fn shard_of(thing: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in thing.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Fold the high bits in: the low bits of FNV alone spread poorly over small moduli.
    let folded = hash ^ (hash >> 32);
    (folded % shards as u64) as usize
}

/// The default number of shards: one per core the process may run on.
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_takes_everything() {
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0);
    }

    #[test]
    fn a_thing_always_maps_to_the_same_shard() {
        for shards in 2..9 {
            let first = shard_of("thermostat-42", shards);
            assert!(first < shards);
            assert_eq!(shard_of("thermostat-42", shards), first);
        }
    }

    #[test]
    fn sequential_names_spread_over_every_shard() {
        for shards in [2usize, 3, 4, 8] {
            let mut counts = vec![0usize; shards];
            for i in 0..1000 {
                counts[shard_of(&format!("d1-{i:05}"), shards)] += 1;
            }
            let fair = 1000 / shards;
            for (shard, count) in counts.iter().enumerate() {
                // Within 30% of a fair share: no shard idles while another does all the work.
                assert!(
                    *count * 10 >= fair * 7 && *count * 10 <= fair * 13,
                    "{shards} shards: shard {shard} got {count} of 1000"
                );
            }
        }
    }
}
