//! Time as the protocol sees it: instants on a monotonic clock that the driver reads (the
//! server from the OS, the simulator from its seed), passed into every step.
//!
//! Nothing in the protocol layer reads a clock. An instant is a duration since an origin
//! the driver picks; only differences between instants of one driver mean anything.

use std::ops::Add;
use std::time::Duration;

use crate::protocol::causal::Limits;

/// An instant: time since the driver's origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    pub const ZERO: Time = Time(Duration::ZERO);

    pub fn from_duration(since_origin: Duration) -> Time {
        Time(since_origin)
    }

    pub fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }

    /// Time since the origin.
    pub fn since_origin(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn duration_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

/// What a step knows of the present: the monotonic instant, and the wall clock in
/// microseconds since the Unix epoch (which names incarnations and bounds the counters
/// peers may send; it may jump, the monotonic instant never does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub at: Time,
    pub wall_us: u64,
}

impl Now {
    /// The bounds on counters in force now (see `causal::limits`).
    pub fn limits(&self) -> Limits {
        Limits::at(self.wall_us)
    }
}
