//! The causal core's vocabulary: write identities, vector clocks and the metadata codec.
//!
//! Nothing here does I/O; the store, delivery buffer and replica state machine build on it.

pub mod clock;
pub mod limits;
pub mod metadata;

pub use clock::{Addr, Causality, Clock, Dot, Incarnation, addr_of, is_canonical_addr, parse_addr};
pub use limits::Limits;
