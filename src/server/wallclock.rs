//! The wall clock, read in one place: the time a signed request carries, and the bounds
//! it sets on the counters peers may send (see `causal::limits`).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::causal::Limits;

/// Microseconds since the Unix epoch (0 before it).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch, the time a signed request carries.
pub fn now_ms() -> u64 {
    now_micros() / 1000
}

/// The bounds on what peers may send, now.
pub fn limits() -> Limits {
    Limits::at(now_micros())
}
