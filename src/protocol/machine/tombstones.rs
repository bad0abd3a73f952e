//! Tombstone collection: when the tombstone of a delete may go, and the rounds that
//! collect tombstones a few hundred per step (one step per millisecond until the round is
//! done, so that no step holds the driver's lock for long).
//!
//! # The rule
//!
//! A tombstone exists to beat writes of its key that arrive after it with a lower
//! version: writes made concurrently with the delete, at a replica that had not applied it
//! yet (a write made after applying it has a higher Lamport time and wins anyway). Such a
//! write may be collected-against only once none of them can still arrive here. A round:
//!
//! 1. While every member is in the view and has reported its clock (probe answers), take
//!    the *stable cut* `stable` = the meet of this replica's clock and every reported
//!    clock (the writes every member had applied), and `need` = their join.
//! 2. Wait until this replica's clock covers `need`. A write concurrent with a delete in
//!    `stable` was made at some member `m` before `m` applied the delete, so before `m`
//!    reported a clock covering it: `m`'s report, hence `need`, covers the write; once
//!    this clock covers `need`, it has arrived here. Later arrivals are duplicates.
//! 3. Widen the horizon to `stable` (recorded before any tombstone goes), then collect the
//!    tombstones whose delete `stable` covers.
//!
//! Members that are down block collection (they may hold such writes). A replica that
//! lost writes it had reported (a crash under `--fsync interval|never`), or that was
//! removed from the views meanwhile, is behind the horizon when it comes back, and pulls a
//! full copy that drops what the tombstones beat (`Replica::merge_chunk`).

use std::time::Duration;

use crate::protocol::causal::Clock;
use crate::protocol::membership::Status;
use crate::protocol::time::Time;

use super::{Event, Machine};

/// Tombstones looked at per step, so that one step stays short on a large store.
const PER_STEP: usize = 512;
/// The pause between two steps of a round.
const STEP_PAUSE: Duration = Duration::from_millis(1);

/// A round of collection in progress.
#[derive(Debug)]
pub(super) struct Collection {
    stable: Clock,
    need: Clock,
    /// The tombstone key to continue after.
    cursor: Option<Box<[u8]>>,
    /// When the next step is due, while the round has more to do.
    pub(super) next_step: Option<Time>,
}

impl Collection {
    fn new(stable: Clock, need: Clock) -> Self {
        Collection {
            stable,
            need,
            cursor: None,
            next_step: None,
        }
    }
}

impl<W> Machine<W> {
    /// Runs a step of the round in progress, or starts one.
    pub(super) fn collect_tombstones(&mut self, now: Time) {
        if self.collection.is_none() && self.replica.store().tombstones() > 0 {
            self.collection = self.stable_cut();
        }
        let Some(round) = &mut self.collection else {
            return;
        };
        if !self.replica.clock().covers_clock(&round.need) {
            return;
        }
        // Recorded once: the horizon covers `stable` from the first step on.
        self.replica.begin_collection(&round.stable);
        let (collected, next) =
            (self.replica).collect_tombstones(&round.stable, round.cursor.as_deref(), PER_STEP);
        match next {
            Some(key) => {
                round.cursor = Some(key);
                round.next_step = Some(now + STEP_PAUSE);
            }
            None => self.collection = None,
        }
        if collected > 0 {
            tracing::debug!(collected, "collected tombstones");
            self.event(Event::TombstonesCollected(collected));
        }
    }

    /// A new round, when every member is in the view and has reported its clock.
    fn stable_cut(&self) -> Option<Collection> {
        self.replica.incarnation()?;
        let mut stable = self.replica.clock().clone();
        let mut need = Clock::new();
        #[cfg(test)]
        if self.bugs.collect_unstable {
            return Some(Collection::new(stable, need));
        }
        for (_, status, _, clock) in self.members.members() {
            let (Status::Up, Some(clock)) = (status, clock) else {
                return None;
            };
            stable = stable.meet(clock);
            need.merge(clock);
        }
        Some(Collection::new(stable, need))
    }

    /// When the round in progress wants its next step.
    pub(super) fn next_collection_step(&self) -> Option<Time> {
        self.collection.as_ref()?.next_step
    }
}
