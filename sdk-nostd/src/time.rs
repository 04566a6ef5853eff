//! Time as data: the device never reads a clock, every input carries `now`.

/// A point on the caller's monotonic clock, in milliseconds since an arbitrary origin (boot).
///
/// The device compares and adds these only; it never reads a clock. Drivers build one from their
/// timer (`Instant::from_millis(embassy_time::Instant::now().as_millis())`, or milliseconds since
/// a `std::time::Instant` taken at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin of the clock.
    pub const ZERO: Instant = Instant(0);

    /// The instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The instant `ms` milliseconds later, saturating at the end of time.
    pub const fn add_millis(self, ms: u64) -> Self {
        Instant(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, 0 when `earlier` is later.
    pub const fn millis_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
