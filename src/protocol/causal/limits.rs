//! Bounds on the counters a replica accepts from a peer, so that no accepted message can
//! push a counter to where it stops advancing.
//!
//! Lamport times and sequence numbers grow by one per write, and epochs are wall-clock
//! microseconds. Honest values therefore stay far below the wall clock in microseconds
//! (2^50 µs is 35 years of writes at a million a second), and epochs stay near it. A
//! receiver refuses a Lamport time above its own wall clock in microseconds, and an epoch
//! more than [`EPOCH_SKEW_US`] ahead of it. Since the ceiling moves with the clock, a
//! replica whose Lamport time was pushed to the ceiling by an accepted message can still
//! stamp a write per microsecond, and its peers accept those writes (their clocks move
//! too; a peer whose clock lags refuses them only for as long as it lags, and anti-entropy
//! repairs the pair). A replica checks its own writes against the same ceiling.
//!
//! A replica's own entry is never raised, and never retired, by what a peer sends (see
//! `Clock::merge_except`): only its own process writes under its incarnation.

/// The largest counter value a replica ever accepts or makes; also the ceiling when the
/// wall clock is absurdly far ahead.
pub const MAX_COUNTER: u64 = 1 << 62;
/// The ceiling never drops below this, so that a replica whose clock reads 1970 still
/// accepts every honest Lamport time.
const MIN_CEILING: u64 = 1 << 50;
/// How far ahead of the receiver's clock a peer's epoch may be (clock skew).
pub const EPOCH_SKEW_US: u64 = 24 * 3600 * 1_000_000;

/// The bounds in force at one instant of the receiver's wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_lamport: u64,
    pub max_epoch: u64,
}

impl Limits {
    /// The bounds at `now_us`, the wall clock in microseconds since the Unix epoch.
    pub fn at(now_us: u64) -> Limits {
        let base = now_us.max(MIN_CEILING);
        Limits {
            max_lamport: base.min(MAX_COUNTER),
            max_epoch: base.saturating_add(EPOCH_SKEW_US).min(MAX_COUNTER),
        }
    }

    /// No bounds but the absolute ones (tests and tools).
    pub fn loose() -> Limits {
        Limits {
            max_lamport: MAX_COUNTER,
            max_epoch: MAX_COUNTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_follows_the_clock_within_fixed_bounds() {
        let now = 1_800_000_000_000_000;
        assert_eq!(Limits::at(now).max_lamport, now);
        assert_eq!(Limits::at(now).max_epoch, now + EPOCH_SKEW_US);
        assert_eq!(Limits::at(0).max_lamport, MIN_CEILING);
        assert_eq!(Limits::at(u64::MAX).max_lamport, MAX_COUNTER);
        assert_eq!(Limits::at(u64::MAX).max_epoch, MAX_COUNTER);
        assert!(Limits::at(now + 1).max_lamport > Limits::at(now).max_lamport);
    }
}
