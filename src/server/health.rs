//! What a replica reports about itself: `/health` (liveness, with a snapshot for
//! `causalkv status`) and `/ready` (bootstrapped and in its own view), and the gauges the
//! metrics read at scrape time. A snapshot is taken from the protocol machine in one
//! acquisition of the driver's lock.

use serde::Serialize;

use crate::protocol::causal::{Addr, Clock};
use crate::protocol::machine::Machine;
use crate::protocol::membership::Status;

/// A replica at one instant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    pub replica: Addr,
    /// This life's incarnation (`address#epoch`), once bootstrapped.
    pub incarnation: Option<String>,
    pub uptime_seconds: f64,
    pub ready: bool,
    pub view: Vec<Addr>,
    /// Keys holding a value.
    pub keys: usize,
    /// Bytes of keys and values as the store holds them.
    pub store_bytes: usize,
    /// Deleted keys whose tombstone is still held.
    pub tombstones: usize,
    /// Replicated writes waiting for their dependencies.
    pub delivery_buffer: usize,
    /// Every known peer but the removed ones.
    pub peers: Vec<PeerHealth>,
}

/// One peer as this replica sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerHealth {
    pub addr: Addr,
    /// `up` (in the view) or `down`.
    pub status: &'static str,
    /// Writes queued for it, not yet sent.
    pub queue_depth: usize,
    /// Writes applied here that it had not applied at its last answered probe.
    pub lag_writes: u64,
}

impl Health {
    /// The snapshot of `machine`, a replica up for `uptime_seconds`.
    pub fn of<W>(machine: &Machine<W>, uptime_seconds: f64) -> Health {
        let (replica, members) = (machine.replica(), machine.members());
        let me = &machine.settings().me;
        let clock = replica.clock();
        let peers = members
            .members()
            .map(|(addr, status, _, reported)| PeerHealth {
                addr: addr.clone(),
                status: match status {
                    Status::Up => "up",
                    Status::Down | Status::Removed => "down",
                },
                queue_depth: machine.queue_depth(addr),
                lag_writes: lag(clock, reported),
            })
            .collect();
        Health {
            replica: me.clone(),
            incarnation: replica.incarnation().map(ToString::to_string),
            uptime_seconds,
            ready: replica.is_ready() && members.in_view(me),
            view: members.view(),
            keys: replica.store().live_keys(),
            store_bytes: replica.store().bytes(),
            tombstones: replica.store().tombstones(),
            delivery_buffer: replica.buffered(),
            peers,
        }
    }
}

/// Writes that `mine` includes and `theirs` (a peer's last report) does not; all of them
/// when the peer never reported.
fn lag(mine: &Clock, theirs: Option<&Clock>) -> u64 {
    mine.entries()
        .map(|(inc, seq)| match theirs {
            Some(theirs) if theirs.is_retired(inc) => 0,
            Some(theirs) => seq.saturating_sub(theirs.get(inc)),
            None => seq,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::causal::clock::tests::inc;

    #[test]
    fn lag_counts_what_the_peer_has_not_applied() {
        let mine = Clock::from_entries([(inc("a", 1), 10), (inc("b", 1), 4)]);
        let theirs = Clock::from_entries([(inc("a", 1), 7), (inc("b", 1), 6)]);
        assert_eq!(lag(&mine, Some(&theirs)), 3);
        assert_eq!(lag(&mine, Some(&mine)), 0);
        assert_eq!(lag(&mine, None), 14);
        let mut retired = Clock::new();
        retired.raise_floor(&"a".into(), 2);
        assert_eq!(lag(&mine, Some(&retired)), 4);
    }
}
