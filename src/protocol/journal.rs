//! The journal: every change of a replica's durable state, as records, in the order the
//! changes happened, and the replay that rebuilds the state from them.
//!
//! A replica with a journal (`Replica::with_journal`) records each change as it makes it;
//! its driver writes the records somewhere durable and reports how far they are durable
//! (`Machine::persisted`). Replaying any prefix of the records gives a *causally closed*
//! state: the clock covers exactly what the store holds (an entry that arrived ahead of
//! its clock, in a catch-up, is recorded without advancing the clock, as it was applied).
//! So a replica recovered from a prefix never claims a write it lost, never brings back a
//! key whose delete it kept, and starts a new life with an epoch above every epoch of its
//! address that the prefix names (see `Replica::start_incarnation`).
//!
//! What is not recorded: the delivery buffer (writes waiting for their dependencies come
//! again by anti-entropy) and the Lamport time (rebuilt from the entries).

use serde::{Deserialize, Serialize};

use crate::protocol::causal::{Addr, Clock, Incarnation};
use crate::protocol::store::{Entry, Key};

/// One change of a replica's durable state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Record {
    /// An entry applied to the store. `advance`: the clock covers its write from now on
    /// (local writes and delivered ones); unset for catch-up entries, whose clock follows
    /// in a `ClockMerged` record.
    Applied {
        key: Key,
        entry: Entry,
        advance: bool,
    },
    /// The clock merged with a peer's (the end of a catch-up).
    ClockMerged { clock: Clock },
    /// Every incarnation of `addr` below `floor` retired.
    Retired { addr: Addr, floor: u64 },
    /// A life of this replica began.
    Started { incarnation: Incarnation },
    /// The horizon widened to cover `horizon`: tombstones it covers may be collected (a
    /// collected tombstone is not recorded: replaying it back is harmless).
    Horizon { horizon: Clock },
    /// The record of `key` was dropped: a peer had collected the tombstone that beat it.
    Dropped { key: Key },
}

/// Position of a record in a replica's journal: 1 for the first one it ever made.
pub type Seq = u64;
