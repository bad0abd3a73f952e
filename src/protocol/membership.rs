//! Membership: which replicas take part, as this replica sees them, and the failure detector.
//!
//! A state machine with time passed in, so every transition is a deterministic unit test.
//! Each known peer is in one of three states:
//!
//! * **Up**: in the view. Writes are replicated to it and data is exchanged with it.
//! * **Down**: not in the view but still probed. It returns to the view only after it has
//!   answered every probe for a whole *stability period* (a reconnected replica is not
//!   trusted until its network has been steady), or at once when it announces a restart.
//! * **Removed**: taken out by `DELETE /view`; not probed, and back only when it announces
//!   itself (restart) or is added again with `PUT /view`.
//!
//! An Up peer goes Down when no probe has succeeded for the *failure timeout*, or at once
//! when a replication to it fails. Replicas exchange data only with peers that are Up on
//! both sides; that rule, with the stability period, is what makes the contract's reconnect
//! timeline hold.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::protocol::causal::{Addr, Clock};
use crate::protocol::time::Time;

/// The detector's tunables.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub failure_timeout: Duration,
    pub stability_period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Up,
    Down,
    Removed,
}

/// Why the view changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The replica announced itself (start or restart).
    Announced,
    /// It answered every probe for the stability period.
    Stable,
    /// A client or another replica added it with `PUT /view`.
    Added,
    /// It answered no probe for the failure timeout.
    Silent,
    /// A write could not be replicated to it.
    ReplicationFailed,
    /// A client or another replica removed it with `DELETE /view`.
    Removed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Announced => "it announced itself",
            Reason::Stable => "it has been reachable for the stability period",
            Reason::Added => "it was added with PUT /view",
            Reason::Silent => "it answered no probe for the failure timeout",
            Reason::ReplicationFailed => "replication to it failed",
            Reason::Removed => "it was removed with DELETE /view",
        })
    }
}

/// A change of this replica's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Joined(Addr, Reason),
    Left(Addr, Reason),
}

#[derive(Debug)]
struct Peer {
    status: Status,
    /// Last successful probe, or when it entered the view.
    last_ok: Option<Time>,
    /// Start of the current run of successful probes.
    reachable_since: Option<Time>,
    /// Its incarnation epoch and clock, as last reported.
    epoch: Option<u64>,
    clock: Option<Clock>,
}

impl Peer {
    fn new(status: Status) -> Self {
        Peer {
            status,
            last_ok: None,
            reachable_since: None,
            epoch: None,
            clock: None,
        }
    }
}

#[derive(Debug)]
pub struct Membership {
    me: Addr,
    timing: Timing,
    peers: BTreeMap<Addr, Peer>,
}

impl Membership {
    /// A membership where every configured peer starts Down: it joins the view when it
    /// answers our announcement, announces itself, or proves stable.
    pub fn new(me: Addr, peers: impl IntoIterator<Item = Addr>, timing: Timing) -> Self {
        let peers = peers
            .into_iter()
            .filter(|p| *p != me)
            .map(|p| (p, Peer::new(Status::Down)))
            .collect();
        Membership { me, timing, peers }
    }

    pub fn me(&self) -> &Addr {
        &self.me
    }

    /// The view: this replica and every Up peer, sorted.
    pub fn view(&self) -> Vec<Addr> {
        let mut view: Vec<Addr> = self.up_peers().collect();
        view.push(self.me.clone());
        view.sort();
        view
    }

    pub fn up_peers(&self) -> impl Iterator<Item = Addr> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.status == Status::Up)
            .map(|(a, _)| a.clone())
    }

    /// True for this replica and Up peers.
    pub fn in_view(&self, addr: &str) -> bool {
        addr == &*self.me || self.status(addr) == Some(Status::Up)
    }

    pub fn status(&self, addr: &str) -> Option<Status> {
        self.peers.get(addr).map(|p| p.status)
    }

    /// Peers to probe: all but the removed ones.
    pub fn probe_targets(&self) -> Vec<Addr> {
        self.peers
            .iter()
            .filter(|(_, p)| p.status != Status::Removed)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Every peer that is not removed, with its last reported epoch and clock.
    pub fn members(&self) -> impl Iterator<Item = (&Addr, Status, Option<u64>, Option<&Clock>)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.status != Status::Removed)
            .map(|(a, p)| (a, p.status, p.epoch, p.clock.as_ref()))
    }

    /// The clock `addr` reported with its last answered probe.
    pub fn reported_clock(&self, addr: &str) -> Option<&Clock> {
        self.peers.get(addr)?.clock.as_ref()
    }

    /// A probe was answered; records what the peer reported.
    pub fn probe_succeeded(
        &mut self,
        addr: &str,
        now: Time,
        epoch: Option<u64>,
        clock: Clock,
    ) -> Option<Change> {
        let stability = self.timing.stability_period;
        let peer = self.peers.get_mut(addr)?;
        peer.epoch = epoch.or(peer.epoch);
        peer.clock = Some(clock);
        peer.last_ok = Some(now);
        let since = *peer.reachable_since.get_or_insert(now);
        if peer.status == Status::Down && now.duration_since(since) >= stability {
            return self.set(addr, Status::Up, now, Reason::Stable);
        }
        None
    }

    /// A probe failed (error or timeout).
    pub fn probe_failed(&mut self, addr: &str, now: Time) -> Option<Change> {
        let peer = self.peers.get_mut(addr)?;
        peer.reachable_since = None;
        self.expire(addr, now)
    }

    /// Drops Up peers that have been silent for the failure timeout.
    pub fn tick(&mut self, now: Time) -> Vec<Change> {
        let addrs: Vec<Addr> = self.up_peers().collect();
        addrs
            .iter()
            .filter_map(|addr| self.expire(addr, now))
            .collect()
    }

    fn expire(&mut self, addr: &str, now: Time) -> Option<Change> {
        let timeout = self.timing.failure_timeout;
        let peer = self.peers.get(addr)?;
        let silent = peer
            .last_ok
            .is_none_or(|ok| now.duration_since(ok) >= timeout);
        if peer.status == Status::Up && silent {
            return self.set(addr, Status::Down, now, Reason::Silent);
        }
        None
    }

    /// A replication to `addr` failed: out of the view at once.
    pub fn replication_failed(&mut self, addr: &str, now: Time) -> Option<Change> {
        if self.status(addr) != Some(Status::Up) {
            return None;
        }
        let change = self.set(addr, Status::Down, now, Reason::ReplicationFailed);
        if let Some(peer) = self.peers.get_mut(addr) {
            peer.reachable_since = None;
        }
        change
    }

    /// `addr` announced itself (it started) or answered our announcement: into the view.
    pub fn announced(&mut self, addr: &str, now: Time) -> Option<Change> {
        self.admit(addr, now, Reason::Announced)
    }

    /// `PUT /view`: into the view. Returns the change, `None` when it was already there.
    pub fn add(&mut self, addr: &str, now: Time) -> Option<Change> {
        self.admit(addr, now, Reason::Added)
    }

    fn admit(&mut self, addr: &str, now: Time, reason: Reason) -> Option<Change> {
        if addr == &*self.me {
            return None;
        }
        self.peers
            .entry(addr.into())
            .or_insert_with(|| Peer::new(Status::Down));
        self.set(addr, Status::Up, now, reason)
    }

    /// `DELETE /view`: out of the view until it announces itself or is added again.
    pub fn remove(&mut self, addr: &str, now: Time) -> Option<Change> {
        if !self.peers.contains_key(addr) {
            return None;
        }
        self.set(addr, Status::Removed, now, Reason::Removed)
    }

    fn set(&mut self, addr: &str, status: Status, now: Time, reason: Reason) -> Option<Change> {
        let peer = self.peers.get_mut(addr)?;
        let was_up = peer.status == Status::Up;
        peer.status = status;
        if status == Status::Up {
            peer.last_ok = Some(now);
        }
        let addr: Addr = addr.into();
        match (was_up, status == Status::Up) {
            (false, true) => Some(Change::Joined(addr, reason)),
            (true, false) => Some(Change::Left(addr, reason)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Duration = Duration::from_millis(1500);
    const STABLE: Duration = Duration::from_millis(2500);
    const TICK: Duration = Duration::from_millis(250);

    fn membership() -> Membership {
        let timing = Timing {
            failure_timeout: FAIL,
            stability_period: STABLE,
        };
        Membership::new("a".into(), ["a".into(), "b".into(), "c".into()], timing)
    }

    fn ok(m: &mut Membership, addr: &str, now: Time) -> Option<Change> {
        m.probe_succeeded(addr, now, Some(1), Clock::new())
    }

    fn joined(addr: &str, reason: Reason) -> Option<Change> {
        Some(Change::Joined(addr.into(), reason))
    }

    fn left(addr: &str, reason: Reason) -> Option<Change> {
        Some(Change::Left(addr.into(), reason))
    }

    #[test]
    fn starts_with_only_itself_in_view() {
        let m = membership();
        assert_eq!(m.view(), vec![Addr::from("a")]);
        assert_eq!(m.probe_targets().len(), 2);
    }

    #[test]
    fn an_announcement_admits_at_once() {
        let mut m = membership();
        let t = Time::from_millis(1_000);
        assert_eq!(m.announced("b", t), joined("b", Reason::Announced));
        assert_eq!(m.announced("b", t), None);
        assert!(m.in_view("b"));
    }

    #[test]
    fn a_silent_peer_leaves_after_the_failure_timeout() {
        let mut m = membership();
        let t0 = Time::from_millis(1_000);
        m.announced("b", t0);
        assert!(m.tick(t0 + (FAIL - TICK)).is_empty());
        assert_eq!(m.probe_failed("b", t0 + (FAIL - TICK)), None);
        assert_eq!(
            m.tick(t0 + FAIL),
            vec![Change::Left("b".into(), Reason::Silent)]
        );
        assert!(!m.in_view("b"));
    }

    #[test]
    fn probes_keep_a_peer_in_view() {
        let mut m = membership();
        let t0 = Time::from_millis(1_000);
        m.announced("b", t0);
        for i in 1..40 {
            let now = t0 + TICK * i;
            ok(&mut m, "b", now);
            assert!(m.tick(now).is_empty());
        }
    }

    #[test]
    fn a_reconnected_peer_returns_only_after_the_stability_period() {
        let mut m = membership();
        let t0 = Time::from_millis(1_000);
        m.announced("b", t0);
        m.replication_failed("b", t0);
        let back = t0 + Duration::from_secs(3);
        assert_eq!(ok(&mut m, "b", back), None);
        assert_eq!(ok(&mut m, "b", back + (STABLE - TICK)), None);
        assert_eq!(ok(&mut m, "b", back + STABLE), joined("b", Reason::Stable));
    }

    #[test]
    fn a_failed_probe_restarts_the_stability_period() {
        let mut m = membership();
        let t0 = Time::from_millis(1_000);
        ok(&mut m, "b", t0);
        m.probe_failed("b", t0 + STABLE / 2);
        assert_eq!(ok(&mut m, "b", t0 + STABLE), None);
        assert_eq!(
            ok(&mut m, "b", t0 + STABLE + STABLE),
            joined("b", Reason::Stable)
        );
    }

    #[test]
    fn a_failed_replication_drops_at_once() {
        let mut m = membership();
        let t0 = Time::from_millis(1_000);
        m.announced("b", t0);
        assert_eq!(
            m.replication_failed("b", t0),
            left("b", Reason::ReplicationFailed)
        );
        assert_eq!(m.replication_failed("b", t0), None);
    }

    #[test]
    fn a_removed_peer_stays_out_until_it_announces_itself() {
        let mut m = membership();
        let t0 = Time::from_millis(1_000);
        m.announced("b", t0);
        assert_eq!(m.remove("b", t0), left("b", Reason::Removed));
        assert!(!m.probe_targets().contains(&Addr::from("b")));
        for i in 0..20 {
            assert_eq!(ok(&mut m, "b", t0 + TICK * i), None);
        }
        assert_eq!(
            m.announced("b", t0 + STABLE * 3),
            joined("b", Reason::Announced)
        );
    }

    #[test]
    fn add_and_remove_report_whether_anything_changed() {
        let mut m = membership();
        let t0 = Time::from_millis(1_000);
        assert_eq!(m.add("d", t0), joined("d", Reason::Added));
        assert_eq!(m.add("d", t0), None);
        assert_eq!(m.remove("zz", t0), None);
        assert_eq!(m.add("a", t0), None, "a replica is always in its own view");
        assert_eq!(m.view().len(), 2);
    }
}
