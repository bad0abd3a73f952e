//! The replica and its peers: bootstrap, probes, anti-entropy pulls, retiring dead
//! incarnations, view broadcasts, and the answers to every peer message.
//!
//! * **Bootstrap.** A starting replica announces itself to every configured peer; every
//!   peer that answers joins its view at once. When all have answered or failed, it copies
//!   the store and causal state from the first ready one that answered (chunk by chunk,
//!   trying the next on failure), then picks a fresh incarnation and starts serving.
//! * **Probes.** Every heartbeat interval, each peer that is not removed and has no probe
//!   in flight is probed. Answers feed the failure detector (`membership`); a peer whose
//!   last report is ahead of this replica's clock is pulled from.
//! * **Anti-entropy.** A pull asks a peer in the view for what this replica's clock misses
//!   and merges it (entries chunk by chunk, the first chunk's clock after the last; see
//!   `replica::Delta`). One pull per peer at a time, at most one per
//!   `anti_entropy_interval` unless forced (a parked request, a re-admission, refused
//!   writes).
//! * Probes and announcements are always answered; data (`replicate`, `sync`) only for a
//!   peer in this replica's view.

use std::collections::BTreeMap;

use super::{Answer, CallError, Event, Machine, Message, NodeError, Output};
use crate::protocol::causal::{Addr, Clock, Incarnation};
use crate::protocol::membership::Status;
use crate::protocol::store::Key;
use crate::protocol::time::Now;
use crate::protocol::wire::{self, Announce, Heartbeat, SyncRequest, ViewChange, ViewOp};

/// About how many bytes of keys and values one catch-up chunk carries, each entry counted
/// with `store::ENTRY_OVERHEAD_BYTES` more (so ~430 entries of 32-byte values, or two of
/// 64 KiB). The sender builds a chunk, and the puller merges it, each in one hold of the
/// machine's lock, so the chunk is sized for that hold rather than for the network: on a
/// 1M-key store a chunk this size is served in ~0.15 ms and merged in ~0.4 ms (medians;
/// 4 MiB took ~4-6 ms and ~16-21 ms). `Replica` tests, `chunk_holds`, measure it.
pub const SYNC_CHUNK_BYTES: usize = 128 * 1024;
/// How many records the sender looks at for one catch-up chunk, sent or not. A puller that
/// misses a few keys of a large store gets chunks with few or no entries, each a bounded
/// step of the scan (~0.2 ms for this many records; the whole 1M-key store in one hold
/// took ~40-60 ms), instead of one hold that visits every record.
pub const SYNC_CHUNK_SCAN: usize = 4 * 1024;
/// Longest wait for one chunk of a catch-up transfer.
pub const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A call in flight, and what its outcome is for.
#[derive(Debug)]
pub(super) enum Call {
    Announce { peer: Addr },
    Probe { peer: Addr },
    ViewChange { peer: Addr },
    Replicate { peer: Addr, generation: u64 },
    Sync(Pull),
}

/// A pull in progress: from whom, the clock it asks against, the first chunk's clock.
#[derive(Debug)]
pub(super) struct Pull {
    peer: Addr,
    clock: Clock,
    /// The key the chunk in flight starts after.
    after: Option<Key>,
    their_clock: Option<Clock>,
    /// The peer's horizon, from its latest chunk.
    their_horizon: Clock,
    changed: usize,
    /// True for the bootstrap copy.
    bootstrap: bool,
}

/// Where a start-up is.
#[derive(Debug, Default)]
pub(super) struct Bootstrap {
    /// Announcements not yet answered.
    awaiting: usize,
    /// Ready peers that answered, in answer order: the sources to copy from.
    sources: Vec<Addr>,
}

impl<W> Machine<W> {
    pub(super) fn begin_bootstrap(&mut self, now: Now) {
        let peers: Vec<Addr> = (self.settings.view.iter())
            .filter(|p| **p != self.settings.me)
            .cloned()
            .collect();
        self.bootstrap = Some(Bootstrap {
            awaiting: peers.len(),
            sources: Vec::new(),
        });
        for peer in peers {
            let message = Message::Announce(Announce {
                from: self.settings.me.clone(),
            });
            let timeout = self.settings.replication_timeout;
            self.send(
                &peer,
                message,
                timeout,
                Call::Announce { peer: peer.clone() },
            );
        }
        self.continue_bootstrap(now);
    }

    fn announce_answered(&mut self, peer: Addr, outcome: Result<Answer, CallError>, now: Now) {
        match outcome {
            Ok(Answer::Status(status)) => {
                let change = self.members.announced(&peer, now.at);
                self.apply_changes(change, now);
                if status.epoch.is_some()
                    && let Some(bootstrap) = &mut self.bootstrap
                {
                    bootstrap.sources.push(peer);
                }
            }
            Ok(other) => tracing::warn!(%peer, ?other, "unexpected answer to an announcement"),
            Err(error) => tracing::info!(%peer, %error, "peer not reachable at start-up"),
        }
        if let Some(bootstrap) = &mut self.bootstrap {
            bootstrap.awaiting = bootstrap.awaiting.saturating_sub(1);
        }
        self.continue_bootstrap(now);
    }

    /// Once every announcement is answered: copies from the next source, or finishes.
    fn continue_bootstrap(&mut self, now: Now) {
        let Some(bootstrap) = &mut self.bootstrap else {
            return;
        };
        if bootstrap.awaiting > 0 || self.calls.values().any(is_bootstrap_pull) {
            return;
        }
        if bootstrap.sources.is_empty() {
            return self.finish_bootstrap(None, now);
        }
        let peer = bootstrap.sources.remove(0);
        self.start_pull(peer, true);
    }

    fn finish_bootstrap(&mut self, source: Option<(&Addr, usize)>, now: Now) {
        self.bootstrap = None;
        #[cfg(test)]
        if self.bugs.reuse_identity {
            // The planted mistake: every life takes the same epoch, whatever the peers
            // remember of earlier ones.
            let addr = self.settings.me.clone();
            self.replica.force_incarnation(Incarnation::new(addr, 1));
        }
        if !self.replica.is_ready() {
            self.replica.start_incarnation(now.wall_us);
        }
        let Some(inc) = self.replica.incarnation().cloned() else {
            return;
        };
        let keys = self.replica.store().live_keys();
        match source {
            Some((peer, entries)) => tracing::info!(
                incarnation = %inc,
                keys,
                entries,
                %peer,
                "bootstrap complete: fetched what this replica's clock missed"
            ),
            None if keys > 0 => tracing::info!(
                incarnation = %inc,
                keys,
                "bootstrap complete: no ready peer answered, starting from the data directory"
            ),
            None => tracing::info!(
                incarnation = %inc,
                "bootstrap complete: no ready peer answered, starting empty"
            ),
        }
        self.wake_parked(now);
    }

    /// Probes every peer due, expires silent ones, retires dead incarnations, collects
    /// tombstones (see `tombstones`) and lets the store pack recent writes.
    pub(super) fn probe_round(&mut self, now: Now) {
        let targets: Vec<Addr> = self.members.probe_targets();
        let timeout = self.settings.failure_timeout / 3;
        for peer in targets {
            if !self.probing.insert(peer.clone()) {
                continue;
            }
            let message = Message::Heartbeat(Heartbeat {
                from: self.settings.me.clone(),
                epoch: self.replica.incarnation().map(|i| i.epoch),
                clock: self.replica.clock().clone(),
            });
            self.send(&peer, message, timeout, Call::Probe { peer: peer.clone() });
        }
        let changes = self.members.tick(now.at);
        self.apply_changes(changes, now);
        self.retire_dead_incarnations();
        self.collect_tombstones(now.at);
        if self.replica.maintain() {
            self.event(Event::StorePacked);
        }
    }

    fn probe_answered(&mut self, peer: Addr, outcome: Result<Answer, CallError>, now: Now) {
        self.probing.remove(&peer);
        let (change, lagging) = match outcome {
            Ok(Answer::Status(status)) => {
                // Behind what the peer had one probe ago: replication did not bring it.
                let lagging = self
                    .members
                    .reported_clock(&peer)
                    .is_some_and(|theirs| !self.replica.clock().covers_clock(theirs));
                #[cfg(test)]
                if self.bugs.skip_stability && self.members.status(&peer) == Some(Status::Down) {
                    let change = self.members.announced(&peer, now.at);
                    self.apply_changes(change, now);
                }
                let change =
                    self.members
                        .probe_succeeded(&peer, now.at, status.epoch, status.clock);
                (change, lagging)
            }
            Ok(other) => {
                tracing::debug!(%peer, ?other, "unexpected answer to a probe");
                (self.members.probe_failed(&peer, now.at), false)
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "probe failed");
                // The pull in flight from it may be lost the same way; a later one asks
                // again rather than wait out the sync timeout.
                self.abandon_pull(&peer, now);
                (self.members.probe_failed(&peer, now.at), false)
            }
        };
        self.apply_changes(change, now);
        if lagging {
            self.pull(&peer, false, now);
        }
    }

    /// Starts an anti-entropy pull from `peer` unless one is running, `peer` is out of the
    /// view, this replica is still bootstrapping, or (`force` unset) the last pull is recent.
    pub(super) fn pull(&mut self, peer: &Addr, force: bool, now: Now) {
        let recent = self
            .last_pull
            .get(peer)
            .is_some_and(|at| now.at.duration_since(*at) < self.settings.anti_entropy_interval);
        if !self.replica.is_ready()
            || !self.members.in_view(peer)
            || *peer == self.settings.me
            || self.pulling.contains(peer)
            || (recent && !force)
        {
            return;
        }
        self.last_pull.insert(peer.clone(), now.at);
        self.start_pull(peer.clone(), false);
    }

    /// Pulls from every peer in the view.
    pub(super) fn pull_from_view(&mut self, force: bool, now: Now) {
        let peers: Vec<Addr> = self.members.up_peers().collect();
        for peer in peers {
            self.pull(&peer, force, now);
        }
    }

    fn start_pull(&mut self, peer: Addr, bootstrap: bool) {
        self.pulling.insert(peer.clone());
        let pull = Pull {
            peer,
            clock: self.replica.clock().clone(),
            after: None,
            their_clock: None,
            their_horizon: Clock::new(),
            changed: 0,
            bootstrap,
        };
        self.request_chunk(pull, None);
    }

    fn request_chunk(&mut self, mut pull: Pull, after: Option<Key>) {
        pull.after = after.clone();
        let message = Message::Sync(SyncRequest {
            from: self.settings.me.clone(),
            clock: pull.clock.clone(),
            after,
        });
        let peer = pull.peer.clone();
        self.send(&peer, message, SYNC_TIMEOUT, Call::Sync(pull));
    }

    fn chunk_answered(&mut self, mut pull: Pull, outcome: Result<Answer, CallError>, now: Now) {
        let mut delta = match outcome {
            Ok(Answer::Delta(delta)) => delta,
            Ok(other) => {
                let error = format!("unexpected answer to a sync request: {other:?}");
                return self.pull_failed(pull, &error, now);
            }
            Err(error) => return self.pull_failed(pull, &error.to_string(), now),
        };
        if !self.members.in_view(&pull.peer) {
            return self.pull_ended(pull, now);
        }
        if !moves_on(pull.after.as_deref(), delta.next.as_deref()) {
            // A chunk that ends where it began would be asked for again and again.
            return self.pull_failed(pull, "the chunk does not move past its start", now);
        }
        pull.their_clock.get_or_insert_with(|| delta.clock.clone());
        pull.their_horizon = std::mem::take(&mut delta.horizon);
        self.event(Event::AntiEntropyEntries(delta.entries.len()));
        #[cfg(test)]
        if self.bugs.drop_last_chunk && delta.next.is_none() {
            delta.entries.clear();
        }
        let next = delta.next.clone();
        pull.changed += self.replica.merge_chunk(pull.after.as_deref(), delta);
        // A chunk may carry no entry and still not be the last: only `next` ends a pull.
        if let Some(after) = next {
            return self.request_chunk(pull, Some(after));
        }
        if let Some(their_clock) = &pull.their_clock {
            pull.changed += self.replica.merge_clock(their_clock);
        }
        self.replica.adopt_horizon(&pull.their_horizon);
        if pull.changed > 0 && !pull.bootstrap {
            tracing::info!(peer = %pull.peer, changed = pull.changed, "caught up from peer");
        }
        self.pull_ended(pull, now);
    }

    /// Gives up the pull in flight from `peer`: it left the view (its answer would be
    /// dropped anyway), or a probe to it failed. A call lost in a partition would otherwise
    /// block every later pull from that peer until the sync timeout (found by the
    /// simulator: a replica that missed writes during a flapping link was not caught up
    /// until 30 s after the link healed).
    pub(super) fn abandon_pull(&mut self, peer: &Addr, now: Now) {
        let abandoned: Vec<super::CallId> = (self.calls.iter())
            .filter(|(_, call)| matches!(call, Call::Sync(pull) if pull.peer == *peer))
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            if let Some(Call::Sync(pull)) = self.calls.remove(&id) {
                self.pull_failed(pull, "the peer left the view", now);
            }
        }
    }

    fn pull_failed(&mut self, pull: Pull, error: &str, now: Now) {
        match pull.bootstrap {
            true => tracing::warn!(peer = %pull.peer, %error, "could not copy the store"),
            false => tracing::debug!(peer = %pull.peer, %error, "anti-entropy pull failed"),
        }
        self.pulling.remove(&pull.peer);
        if pull.bootstrap {
            self.continue_bootstrap(now);
        }
    }

    fn pull_ended(&mut self, pull: Pull, now: Now) {
        self.pulling.remove(&pull.peer);
        if pull.bootstrap {
            self.finish_bootstrap(Some((&pull.peer, pull.changed)), now);
        } else {
            self.wake_parked(now);
        }
    }

    pub(super) fn broadcast_view_change(&mut self, op: ViewOp, addr: &Addr) {
        let targets: Vec<Addr> = (self.members.probe_targets().into_iter())
            .filter(|p| p != addr)
            .collect();
        for peer in targets {
            let message = Message::ViewChange(ViewChange {
                from: self.settings.me.clone(),
                op,
                addr: addr.clone(),
            });
            let timeout = self.settings.replication_timeout;
            self.send(
                &peer,
                message,
                timeout,
                Call::ViewChange { peer: peer.clone() },
            );
        }
    }

    /// The outcome of a call this machine asked for. Outcomes of unknown calls (answered
    /// twice, or after a restart of this machine) are ignored.
    pub fn answered(&mut self, call: super::CallId, outcome: Result<Answer, CallError>, now: Now) {
        let Some(call) = self.calls.remove(&call) else {
            return;
        };
        match call {
            Call::Announce { peer } => self.announce_answered(peer, outcome, now),
            Call::Probe { peer } => self.probe_answered(peer, outcome, now),
            Call::ViewChange { peer } => {
                if let Err(error) = outcome {
                    tracing::warn!(%peer, %error, "could not pass a view change on");
                }
            }
            Call::Replicate { peer, generation } => {
                self.batch_answered(peer, generation, outcome, now)
            }
            Call::Sync(pull) => self.chunk_answered(pull, outcome, now),
        }
    }

    /// A message from a peer, answered at once. The driver has authenticated the sender
    /// and validated the message.
    pub fn message(&mut self, message: Message, now: Now) -> Result<Answer, NodeError> {
        match message {
            Message::Heartbeat(_) => Ok(Answer::Status(self.status())),
            Message::Announce(announce) => Ok(self.on_announce(announce, now)),
            Message::ViewChange(change) => {
                self.on_view_change(change, now);
                Ok(Answer::Done)
            }
            Message::Replicate(replicate) => self.on_replicate(replicate, now),
            Message::Sync(request) => self.on_sync(&request),
        }
    }

    fn status(&self) -> wire::Status {
        wire::Status {
            epoch: self.replica.incarnation().map(|i| i.epoch),
            clock: self.replica.clock().clone(),
        }
    }

    /// A replica (re)started: it is in the view at once, reached over new connections.
    fn on_announce(&mut self, announce: Announce, now: Now) -> Answer {
        let generation = self.generations.entry(announce.from.clone()).or_insert(0);
        *generation += 1;
        self.outputs.push(Output::ResetPeer(announce.from.clone()));
        let change = self.members.announced(&announce.from, now.at);
        self.apply_changes(change, now);
        Answer::Status(self.status())
    }

    /// A view change made at another replica.
    fn on_view_change(&mut self, message: ViewChange, now: Now) {
        if message.addr == self.settings.me {
            return;
        }
        let change = match message.op {
            ViewOp::Add => self.members.add(&message.addr, now.at),
            ViewOp::Remove => self.members.remove(&message.addr, now.at),
        };
        if change.is_some() {
            tracing::info!(from = %message.from, addr = %message.addr, op = ?message.op, "view change passed on");
        }
        self.apply_changes(change, now);
    }

    /// Replicated writes from a peer in the view.
    fn on_replicate(&mut self, message: wire::Replicate, now: Now) -> Result<Answer, NodeError> {
        if !self.members.in_view(&message.from) {
            return Err(NodeError::NotInView(message.from));
        }
        let writes = message
            .writes
            .into_iter()
            .map(std::sync::Arc::unwrap_or_clone);
        #[cfg(test)]
        if self.bugs.apply_before_deps {
            let entries = writes.map(|w| (w.key, w.entry)).collect();
            let applied = self.replica.merge_entries(entries);
            let taken = crate::protocol::replica::Received {
                applied,
                ..Default::default()
            };
            return Ok(Answer::Taken(taken));
        }
        let received = self.replica.receive(writes);
        if received.refused > 0 {
            tracing::warn!(
                from = %message.from,
                refused = received.refused,
                "refused replicated writes (delivery buffer full); pulling them by anti-entropy"
            );
            self.pull(&message.from, true, now);
        }
        if received.applied > 0 {
            self.wake_parked(now);
        }
        Ok(Answer::Taken(received))
    }

    /// A peer in the view asks for what its clock misses.
    fn on_sync(&self, request: &SyncRequest) -> Result<Answer, NodeError> {
        if !self.members.in_view(&request.from) {
            return Err(NodeError::NotInView(request.from.clone()));
        }
        let after = request.after.as_deref();
        let (max_bytes, max_scanned) = self.sync_chunk;
        let delta = (self.replica).delta_chunk(&request.clock, after, max_bytes, max_scanned);
        Ok(Answer::Delta(delta))
    }

    /// Retires the clock entries of incarnations that have been succeeded by a newer one
    /// of their address and that every member has applied identically. Runs only while
    /// every member is in the view and has reported, so no replica can hold more of them.
    fn retire_dead_incarnations(&mut self) {
        let Some(me) = self.replica.incarnation().cloned() else {
            return;
        };
        let mut current: BTreeMap<Addr, u64> = BTreeMap::from([(me.addr, me.epoch)]);
        let mut clocks: Vec<&Clock> = Vec::new();
        for (addr, status, epoch, clock) in self.members.members() {
            match (status, epoch, clock) {
                (Status::Up, Some(epoch), Some(clock)) => {
                    current.insert(addr.clone(), epoch);
                    clocks.push(clock);
                }
                _ => return,
            }
        }
        let floors = retirable_floors(self.replica.clock(), &current, &clocks);
        for (addr, floor) in floors {
            tracing::info!(%addr, floor, "retiring clock entries of dead incarnations");
            self.replica.retire(&addr, floor);
        }
    }
}

/// True unless a chunk asked for after `after` claims to end at or before it.
fn moves_on(after: Option<&str>, next: Option<&str>) -> bool {
    match (after, next) {
        (Some(after), Some(next)) => next > after,
        _ => true,
    }
}

fn is_bootstrap_pull(call: &Call) -> bool {
    matches!(call, Call::Sync(pull) if pull.bootstrap)
}

/// For each address, the highest floor such that every entry of `mine` below it belongs to
/// an incarnation older than the address's `current` one and equals every `other` clock's.
fn retirable_floors(
    mine: &Clock,
    current: &BTreeMap<Addr, u64>,
    others: &[&Clock],
) -> Vec<(Addr, u64)> {
    // Per address: the floor so far, and whether an unsettled entry has frozen it
    // (entries are ordered by epoch: nothing above an unsettled one may retire).
    let mut floors: BTreeMap<Addr, (u64, bool)> = BTreeMap::new();
    for (inc, seq) in mine.entries() {
        let Some(&live_epoch) = current.get(&inc.addr) else {
            continue;
        };
        let (floor, frozen) = floors.entry(inc.addr.clone()).or_insert((0, false));
        if *frozen {
            continue;
        }
        if inc.epoch < live_epoch && settled(inc, seq, others) {
            *floor = inc.epoch.saturating_add(1);
        } else {
            *frozen = true;
        }
    }
    floors
        .into_iter()
        .filter(|(addr, (floor, _))| *floor > mine.floor(addr))
        .map(|(addr, (floor, _))| (addr, floor))
        .collect()
}

fn settled(inc: &Incarnation, seq: u64, others: &[&Clock]) -> bool {
    others
        .iter()
        .all(|clock| clock.is_retired(inc) || clock.get(inc) == seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::causal::clock::tests::inc;

    fn clock(entries: &[(&str, u64, u64)]) -> Clock {
        Clock::from_entries(entries.iter().map(|(a, e, s)| (inc(a, *e), *s)))
    }

    fn current(list: &[(&str, u64)]) -> BTreeMap<Addr, u64> {
        list.iter().map(|(a, e)| (Addr::from(*a), *e)).collect()
    }

    #[test]
    fn a_dead_incarnation_retires_once_everyone_agrees() {
        let mine = clock(&[("a", 1, 5), ("a", 2, 1), ("b", 1, 3)]);
        let live = current(&[("a", 2), ("b", 1)]);
        let floors = retirable_floors(&mine, &live, &[&mine]);
        assert_eq!(floors, vec![(Addr::from("a"), 2)]);
    }

    #[test]
    fn a_member_that_differs_blocks_retirement() {
        let mine = clock(&[("a", 1, 5), ("a", 2, 1)]);
        let behind = clock(&[("a", 1, 4), ("a", 2, 1)]);
        let live = current(&[("a", 2)]);
        assert!(retirable_floors(&mine, &live, &[&behind]).is_empty());
    }

    #[test]
    fn live_incarnations_never_retire() {
        let mine = clock(&[("a", 1, 5), ("b", 1, 3)]);
        let live = current(&[("a", 1), ("b", 1)]);
        assert!(retirable_floors(&mine, &live, &[&mine]).is_empty());
    }

    #[test]
    fn retirement_stops_at_the_first_unsettled_epoch() {
        let mine = clock(&[("a", 1, 5), ("a", 2, 7), ("a", 3, 1)]);
        let other = clock(&[("a", 1, 5), ("a", 2, 6), ("a", 3, 1)]);
        let live = current(&[("a", 3)]);
        assert_eq!(
            retirable_floors(&mine, &live, &[&other]),
            vec![(Addr::from("a"), 2)]
        );
    }
}
