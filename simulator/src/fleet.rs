//! What every virtual thing shares: the scenario, the hub's address, the run's phase, the
//! statistics and one small slot per thing for the business side (is it connected, which
//! desired change is it converging to).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::scenario::Scenario;
use crate::shard::Shard;
use crate::stats::Stats;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Things are connecting; nothing is measured but connects.
    Ramp,
    /// Behaviours run from `start` to `end`.
    Measure {
        /// Start of the measured period.
        start: Instant,
        /// End of the measured period.
        end: Instant,
    },
    /// Finish what is in flight, disconnect and end.
    Stop,
}

/// The business side's view of one thing.
#[derive(Debug, Default)]
pub struct Slot {
    /// Whether the thing is connected and subscribed.
    pub connected: AtomicBool,
    /// The desired `setpoint` the thing has yet to report (0 = none outstanding).
    pub pending_setpoint: AtomicU64,
    /// When that desired change was sent, µs since [`Fleet::epoch`].
    pub pending_since_us: AtomicU64,
    /// Whether the thing has reported the configuration rollout's value (counted once).
    pub rollout_converged: AtomicBool,
}

/// What every thing of a first-boot run starts with: the enrollment and its claim secret.
#[derive(Clone)]
pub struct ClaimCredential {
    /// The enrollment's id.
    pub enrollment: String,
    /// Its claim secret (shown once by the hub).
    pub secret: String,
}

impl std::fmt::Debug for ClaimCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the claim secret.
        f.debug_struct("ClaimCredential")
            .field("enrollment", &self.enrollment)
            .finish_non_exhaustive()
    }
}

/// Everything the virtual things share.
#[derive(Debug)]
pub struct Fleet {
    /// The run's scenario.
    pub scenario: Scenario,
    /// The hub's MQTT address.
    pub mqtt: SocketAddr,
    /// Counters and histograms.
    pub stats: Stats,
    /// One slot per thing.
    pub slots: Vec<Slot>,
    /// Methods the things answer, as the device core wants them (leaked once per run).
    pub methods: &'static [&'static str],
    /// Origin of the device clocks and of `pending_since_us`.
    pub epoch: Instant,
    /// The run's phase.
    pub phase: watch::Receiver<Phase>,
    /// Each thing's secret, as the hub generated it at creation (S-1.6: shown once); empty until
    /// provisioning. Hub-generated secrets are what a real fleet carries, and the hub hashes them
    /// more cheaply than chosen ones (see the hub's `auth` module), which matters for connect
    /// storms.
    pub secrets: Vec<Box<str>>,
    /// The enrollment's claim credential in a first-boot run (S-10), set before the things start;
    /// `None` when the run created the things over REST.
    pub claim: Option<ClaimCredential>,
    /// The shard this process runs (the whole fleet by default).
    pub shard: Shard,
    /// Index in the whole fleet of this shard's first thing: thing `i` here is thing
    /// `first + i` of the scenario (its id, its seed, its protocol version).
    pub first: usize,
    /// The hub's process when it runs on this machine: the fleet operations report its CPU.
    pub hub_pid: Option<u32>,
    /// When the configuration rollout's configuration was created, µs since [`Fleet::epoch`]
    /// (0: no rollout under way; reports of its value before then are not counted).
    pub rollout_began_us: AtomicU64,
    /// TLS for the things' connections (`--tls`); plain TCP without it.
    pub tls: Option<crate::thing::link::TlsClient>,
}

impl Fleet {
    /// A fleet for `scenario` against `mqtt`, following `phase`.
    pub fn new(scenario: Scenario, mqtt: SocketAddr, phase: watch::Receiver<Phase>) -> Fleet {
        let methods: Vec<&'static str> = scenario
            .profile
            .methods
            .iter()
            .map(|m| &*Box::leak(m.clone().into_boxed_str()))
            .collect();
        let slots = (0..scenario.population.count)
            .map(|_| Slot::default())
            .collect();
        Fleet {
            scenario,
            mqtt,
            stats: Stats::default(),
            slots,
            methods: Box::leak(methods.into_boxed_slice()),
            epoch: Instant::now(),
            phase,
            secrets: Vec::new(),
            claim: None,
            shard: Shard::default(),
            first: 0,
            hub_pid: None,
            rollout_began_us: AtomicU64::new(0),
            tls: None,
        }
    }

    /// The id of thing `i`.
    pub fn thing_id(&self, i: usize) -> String {
        self.scenario.thing_id(self.global(i))
    }

    /// The serial thing `i` provisions with on first boot.
    pub fn serial(&self, i: usize) -> String {
        self.scenario.serial(self.global(i))
    }

    /// The index in the whole fleet of this shard's thing `i`.
    pub fn global(&self, i: usize) -> usize {
        self.first + i
    }

    /// The seed of the business side's choices (one per shard).
    pub fn business_seed(&self, salt: u64) -> u64 {
        self.shard.seed(self.scenario.seed) ^ salt
    }

    /// The value of the `simulator` tag on this shard's things (see
    /// [`crate::scenario::Population::tag`]); a first-boot run's is its enrollment's id.
    pub fn tag(&self) -> String {
        if self.scenario.population.first_boot {
            crate::run::enrollment_id(&self.scenario, self.shard)
        } else {
            self.shard_name(&self.scenario.population.tag)
        }
    }

    /// `base` for a whole run, `base-{I}` for shard I of a split one: the names of what each
    /// shard creates on the one hub.
    pub fn shard_name(&self, base: &str) -> String {
        if self.shard.is_whole() {
            base.to_owned()
        } else {
            format!("{base}-{}", self.shard.index)
        }
    }

    /// The secret of thing `i` (empty before provisioning).
    pub fn secret(&self, i: usize) -> String {
        self.secrets
            .get(i)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Microseconds since [`Fleet::epoch`].
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether thing `i` speaks MQTT 5 (the first `mqtt5_share` of every 1,000 things).
    pub fn uses_mqtt5(&self, i: usize) -> bool {
        let share = self.scenario.population.mqtt5_share;
        ((self.global(i) % 1000) as f64) < share * 1000.0
    }

    /// The local address thing `i` binds before connecting: several loopback addresses when the
    /// hub is on loopback and the fleet is larger than one address's share, else none.
    pub fn source_address(&self, i: usize) -> Option<SocketAddr> {
        let per = self.scenario.population.things_per_source_address;
        if !self.mqtt.ip().is_loopback() || self.scenario.population.count <= per {
            return None;
        }
        let n = u8::try_from(1 + (i / per) % 254).unwrap_or(1);
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0))
    }

    /// When thing `i` first connects, from the start of the run.
    pub fn connect_offset(&self, i: usize) -> Duration {
        Duration::from_secs_f64(i as f64 / self.scenario.ramp.connects_per_s)
    }

    /// Marks the desired change `setpoint` of thing `i` converged if it is the one outstanding;
    /// returns the time since it was sent.
    pub fn converge(&self, i: usize, setpoint: u64) -> Option<Duration> {
        let slot = self.slots.get(i)?;
        if setpoint == 0 || slot.pending_setpoint.load(Ordering::Acquire) != setpoint {
            return None;
        }
        let since = slot.pending_since_us.load(Ordering::Acquire);
        slot.pending_setpoint
            .compare_exchange(setpoint, 0, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(Duration::from_micros(self.now_us().saturating_sub(since)))
    }

    /// Marks thing `i` converged to the configuration rollout if `value` is the rollout's, a
    /// rollout is under way and the thing had not converged yet; returns the time since the
    /// configuration was created.
    pub fn rollout_converge(&self, i: usize, value: u64) -> Option<Duration> {
        let began = self.rollout_began_us.load(Ordering::Acquire);
        if began == 0 || value != self.scenario.business.configuration_value {
            return None;
        }
        let slot = self.slots.get(i)?;
        if slot.rollout_converged.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Duration::from_micros(self.now_us().saturating_sub(began)))
    }
}
