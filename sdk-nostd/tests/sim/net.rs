//! The simulated network and MQTT broker: seeded randomness, latency, loss, duplicates, one
//! connection at a time, and topic-filter matching for the device's subscriptions.

use std::collections::BinaryHeap;

/// splitmix64: deterministic, seeded by proptest.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    pub(crate) fn permille(&mut self, p: u32) -> bool {
        self.below(1000) < u64::from(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    ToHub,
    ToDevice,
}

#[derive(Debug)]
pub(crate) struct Msg {
    pub(crate) at: u64,
    seq: u64,
    pub(crate) epoch: u64,
    pub(crate) dir: Dir,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
}

impl PartialEq for Msg {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Msg {}
impl PartialOrd for Msg {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Msg {
    // Min-heap on (at, seq).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The network and the broker: one connection at a time (`epoch`), the device's subscriptions.
pub(crate) struct Net {
    pub(crate) heap: BinaryHeap<Msg>,
    pub(crate) seq: u64,
    pub(crate) epoch: u64,
    pub(crate) up: bool,
    pub(crate) subs: Vec<String>,
    /// Chaos knobs in force (zeroed in the calm phase).
    pub(crate) loss: u32,
    pub(crate) dup: u32,
    pub(crate) latency: (u64, u64),
}

pub(crate) fn mqtt_match(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Net {
    pub(crate) fn send(&mut self, rng: &mut Rng, now: u64, dir: Dir, topic: &str, payload: &[u8]) {
        if !self.up || rng.permille(self.loss) {
            return;
        }
        if dir == Dir::ToDevice && !self.subs.iter().any(|f| mqtt_match(f, topic)) {
            return;
        }
        let copies = if rng.permille(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            self.seq += 1;
            let at = now + rng.range(self.latency.0, self.latency.1);
            self.heap.push(Msg {
                at,
                seq: self.seq,
                epoch: self.epoch,
                dir,
                topic: topic.to_owned(),
                payload: payload.to_vec(),
            });
        }
    }
}
