//! Messages between replicas, on the internal `/internal/...` endpoints.
//!
//! All are JSON. A replica trusts no field: malformed messages get `400`, and data messages
//! (`replicate`, `sync`) from a replica outside the receiver's view get `409`, so that data
//! flows only between replicas that have each other in view.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::causal::limits::MAX_COUNTER;
use crate::protocol::causal::{Addr, Clock, Limits, is_canonical_addr};
use crate::protocol::delivery::Write;

pub const HEARTBEAT: &str = "/internal/heartbeat";
pub const ANNOUNCE: &str = "/internal/announce";
pub const VIEW_CHANGE: &str = "/internal/view";
pub const REPLICATE: &str = "/internal/replicate";
pub const SYNC: &str = "/internal/sync";

/// A probe. Both sides learn each other's epoch and clock from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: Addr,
    pub epoch: Option<u64>,
    pub clock: Clock,
}

/// The answer to a probe or an announcement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// `None` while the replica is still bootstrapping.
    pub epoch: Option<u64>,
    pub clock: Clock,
}

/// "I have (re)started": sent at start-up to every replica of the configured view.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Announce {
    pub from: Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewOp {
    Add,
    Remove,
}

/// A `PUT /view` or `DELETE /view` made at one replica, passed on to the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViewChange {
    pub from: Addr,
    pub op: ViewOp,
    pub addr: Addr,
}

/// A batch of writes, in the order their origin made them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Replicate {
    pub from: Addr,
    pub writes: Vec<Arc<Write>>,
}

/// "Send me what my clock misses", one chunk at a time: keys after `after`. Answered
/// with a `replica::Delta` whose `next` is the `after` of the following request; a chunk
/// may hold no entry, and only a `next` of `None` ends the transfer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    pub from: Addr,
    pub clock: Clock,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<crate::protocol::store::Key>,
}

/// A peer message whose fields must be checked beyond their types.
pub trait Validate {
    /// Why the message is malformed under the receiver's `limits`, if it is.
    fn validate(&self, limits: &Limits) -> Result<(), String>;
}

/// Why a clock from a peer is malformed: an epoch too far ahead, a counter out of range.
pub fn check_clock(clock: &Clock, limits: &Limits) -> Result<(), String> {
    if clock.max_epoch() > limits.max_epoch {
        return Err(format!(
            "clock names epoch {}, too far ahead of this replica's clock",
            clock.max_epoch()
        ));
    }
    if clock.max_seq() > MAX_COUNTER {
        return Err(format!("clock names sequence number {}", clock.max_seq()));
    }
    Ok(())
}

fn check_epoch(epoch: Option<u64>, limits: &Limits) -> Result<(), String> {
    match epoch {
        Some(epoch) if epoch > limits.max_epoch => Err(format!(
            "epoch {epoch} is too far ahead of this replica's clock"
        )),
        _ => Ok(()),
    }
}

/// Replicas are named by canonical `IP:PORT` strings; anything else is refused, so that
/// nothing but a socket address ever enters a view.
pub fn check_addr(addr: &str) -> Result<(), String> {
    match is_canonical_addr(addr) {
        true => Ok(()),
        false => Err(format!(
            "{addr:?} is not a canonical IP:PORT socket address"
        )),
    }
}

impl Validate for Heartbeat {
    fn validate(&self, limits: &Limits) -> Result<(), String> {
        check_addr(&self.from)?;
        check_epoch(self.epoch, limits)?;
        check_clock(&self.clock, limits)
    }
}

impl Validate for Status {
    fn validate(&self, limits: &Limits) -> Result<(), String> {
        check_epoch(self.epoch, limits)?;
        check_clock(&self.clock, limits)
    }
}

impl Validate for Announce {
    fn validate(&self, _: &Limits) -> Result<(), String> {
        check_addr(&self.from)
    }
}

impl Validate for ViewChange {
    fn validate(&self, _: &Limits) -> Result<(), String> {
        check_addr(&self.from)?;
        check_addr(&self.addr)
    }
}

impl Validate for Replicate {
    fn validate(&self, limits: &Limits) -> Result<(), String> {
        check_addr(&self.from)?;
        self.writes.iter().try_for_each(|w| {
            w.entry.validate(limits)?;
            check_clock(&w.deps, limits)
        })
    }
}

impl Validate for crate::protocol::replica::Delta {
    fn validate(&self, limits: &Limits) -> Result<(), String> {
        check_clock(&self.clock, limits)?;
        self.entries
            .iter()
            .try_for_each(|(_, e)| e.validate(limits))
    }
}

impl Validate for SyncRequest {
    fn validate(&self, _: &Limits) -> Result<(), String> {
        check_addr(&self.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_socket_addresses_pass() {
        assert!(check_addr("10.10.0.2:8090").is_ok());
        assert!(check_addr("[::1]:8090").is_ok());
        for bad in [
            "garbage",
            "",
            " 10.10.0.2:8090",
            "10.10.0.2",
            "010.10.0.2:8090",
            "ກ",
        ] {
            assert!(check_addr(bad).is_err(), "{bad:?} passed");
        }
    }
}
