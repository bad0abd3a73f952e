//! The replica's own initiatives: bootstrap at start-up, probing peers, anti-entropy pulls
//! and retiring the clock entries of dead incarnations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::Node;
use crate::protocol::causal::{Addr, Clock, Incarnation};
use crate::protocol::membership::Status;
use crate::protocol::replica::Delta;
use crate::protocol::wire::{self, ANNOUNCE, Announce, HEARTBEAT, Heartbeat, SYNC, SyncRequest};
use crate::server::peer::PeerError;
use crate::server::wallclock::now_micros;

/// Longest wait for one chunk of a catch-up transfer.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts bootstrap and the probe loop.
pub fn start(node: &Arc<Node>) {
    tokio::spawn(bootstrap(node.clone()));
    tokio::spawn(probe_loop(node.clone()));
}

/// Announces this replica to every configured peer, copies the store and causal state from
/// the first ready one that answers, then picks a fresh incarnation and starts serving.
async fn bootstrap(node: Arc<Node>) {
    let ready_peers = announce(&node).await;
    let mut source = None;
    for peer in ready_peers {
        match node.pull_now(&peer).await {
            Ok(keys) => {
                source = Some((peer, keys));
                break;
            }
            Err(error) => tracing::warn!(%peer, %error, "could not copy the store"),
        }
    }
    let (inc, keys) = {
        let mut state = node.lock();
        let inc = state.replica.start_incarnation(now_micros()).clone();
        (inc, state.replica.store().live_keys())
    };
    match source {
        Some((peer, _)) => {
            tracing::info!(incarnation = %inc, keys, %peer, "bootstrap complete: copied the store")
        }
        None => tracing::info!(
            incarnation = %inc,
            "bootstrap complete: no ready peer answered, starting empty"
        ),
    }
    node.clock_advanced();
}

/// Announces this replica to every configured peer; returns the ready ones that answered.
async fn announce(node: &Arc<Node>) -> Vec<Addr> {
    let message = Arc::new(Announce {
        from: node.me.clone(),
    });
    let mut calls = JoinSet::new();
    for peer in node.config.view.iter().filter(|p| **p != node.me).cloned() {
        let (client, message) = (node.client_for(&peer).0, message.clone());
        let timeout = node.config.replication_timeout;
        calls.spawn(async move {
            let answer = client
                .post_checked::<_, wire::Status>(&peer, ANNOUNCE, &*message, timeout)
                .await;
            (peer, answer)
        });
    }
    let mut ready = Vec::new();
    while let Some(Ok((peer, answer))) = calls.join_next().await {
        match answer {
            Ok(status) => {
                let change = node
                    .lock()
                    .members
                    .announced(&peer, Instant::now().into_std());
                node.apply_changes(change);
                if status.epoch.is_some() {
                    ready.push(peer);
                }
            }
            Err(error) => tracing::info!(%peer, %error, "peer not reachable at start-up"),
        }
    }
    ready
}

/// Probes every peer each heartbeat interval, expires silent ones, retires dead
/// incarnations, and lets the store pack recent writes when it has been idle.
async fn probe_loop(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(node.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let (targets, message) = {
            let mut state = node.lock();
            // A peer whose last probe is still out (silent) is not probed twice at once.
            let targets: Vec<Addr> = state
                .members
                .probe_targets()
                .into_iter()
                .filter(|p| state.probing.insert(p.clone()))
                .collect();
            let message = Heartbeat {
                from: node.me.clone(),
                epoch: state.replica.incarnation().map(|i| i.epoch),
                clock: state.replica.clock().clone(),
            };
            (targets, Arc::new(message))
        };
        for peer in targets {
            tokio::spawn(probe(node.clone(), peer, message.clone()));
        }
        let changes = node.lock().members.tick(Instant::now().into_std());
        node.apply_changes(changes);
        node.retire_dead_incarnations();
        let packed = node.lock().replica.maintain();
        if packed {
            crate::server::alloc::release_free_memory();
        }
    }
}

async fn probe(node: Arc<Node>, peer: Addr, message: Arc<Heartbeat>) {
    let timeout = node.config.failure_timeout / 3;
    let answer = node
        .client_for(&peer)
        .0
        .post_checked::<_, wire::Status>(&peer, HEARTBEAT, &*message, timeout)
        .await;
    let now = Instant::now().into_std();
    let (change, lagging) = {
        let mut state = node.lock();
        state.probing.remove(&peer);
        match answer {
            Ok(status) => {
                // Behind what the peer had one probe ago: replication did not bring it.
                let lagging = state
                    .members
                    .reported_clock(&peer)
                    .is_some_and(|theirs| !state.replica.clock().covers_clock(theirs));
                let change = state
                    .members
                    .probe_succeeded(&peer, now, status.epoch, status.clock);
                (change, lagging)
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "probe failed");
                (state.members.probe_failed(&peer, now), false)
            }
        }
    };
    node.apply_changes(change);
    if lagging {
        node.pull(peer, false);
    }
}

impl Node {
    /// Starts an anti-entropy pull from `peer` unless one is running, `peer` is out of the
    /// view, this replica is still bootstrapping, or (`force` unset) the last pull is recent.
    pub(crate) fn pull(&self, peer: Addr, force: bool) {
        let Some(node) = self.arc() else { return };
        {
            let mut state = self.lock();
            let recent = state
                .last_pull
                .get(&peer)
                .is_some_and(|at| at.elapsed() < self.config.anti_entropy_interval);
            if !state.replica.is_ready()
                || !state.members.in_view(&peer)
                || state.pulling.contains(&peer)
                || (recent && !force)
            {
                return;
            }
            state.pulling.insert(peer.clone());
            state.last_pull.insert(peer.clone(), Instant::now());
        }
        tokio::spawn(async move {
            if let Err(error) = node.pull_now(&peer).await {
                tracing::debug!(%peer, %error, "anti-entropy pull failed");
            }
            node.lock().pulling.remove(&peer);
        });
    }

    /// Pulls from every peer in the view.
    pub(crate) fn pull_from_view(&self, force: bool) {
        let peers: Vec<Addr> = self.lock().members.up_peers().collect();
        for peer in peers {
            self.pull(peer, force);
        }
    }

    /// Asks `peer` for everything this replica's clock misses, chunk by chunk, and merges
    /// it (see `replica::Delta`). Returns how many entries changed the store.
    pub(crate) async fn pull_now(&self, peer: &Addr) -> Result<usize, PeerError> {
        let clock = self.lock().replica.clock().clone();
        let (client, _) = self.client_for(peer);
        let mut after = None;
        let mut their_clock = None;
        let mut changed = 0;
        loop {
            let request = SyncRequest {
                from: self.me.clone(),
                clock: clock.clone(),
                after: after.take(),
            };
            let delta: Delta = client
                .post_checked(peer, SYNC, &request, SYNC_TIMEOUT)
                .await?;
            let Delta {
                clock: chunk_clock,
                entries,
                next,
            } = delta;
            their_clock.get_or_insert(chunk_clock);
            self.metrics.anti_entropy_entries(entries.len());
            {
                let mut state = self.lock();
                if !state.members.in_view(peer) {
                    return Ok(changed);
                }
                changed += state.replica.merge_entries(entries);
            }
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        {
            let mut state = self.lock();
            if !state.members.in_view(peer) {
                return Ok(changed);
            }
            if let Some(their_clock) = &their_clock {
                changed += state.replica.merge_clock(their_clock);
            }
        }
        if changed > 0 {
            tracing::info!(%peer, changed, "caught up from peer");
        }
        self.clock_advanced();
        Ok(changed)
    }

    /// Retires the clock entries of incarnations that have been succeeded by a newer one
    /// of their address and that every member has applied identically. Runs only while
    /// every member is in the view and has reported, so no replica can hold more of them.
    fn retire_dead_incarnations(&self) {
        let mut state = self.lock();
        let Some(me) = state.replica.incarnation().cloned() else {
            return;
        };
        let mut current: HashMap<Addr, u64> = HashMap::from([(me.addr, me.epoch)]);
        let mut clocks: Vec<&Clock> = Vec::new();
        for (addr, status, epoch, clock) in state.members.members() {
            match (status, epoch, clock) {
                (Status::Up, Some(epoch), Some(clock)) => {
                    current.insert(addr.clone(), epoch);
                    clocks.push(clock);
                }
                _ => return,
            }
        }
        let floors = retirable_floors(state.replica.clock(), &current, &clocks);
        for (addr, floor) in floors {
            tracing::info!(%addr, floor, "retiring clock entries of dead incarnations");
            state.replica.retire(&addr, floor);
        }
    }
}

/// For each address, the highest floor such that every entry of `mine` below it belongs to
/// an incarnation older than the address's `current` one and equals every `other` clock's.
fn retirable_floors(
    mine: &Clock,
    current: &HashMap<Addr, u64>,
    others: &[&Clock],
) -> Vec<(Addr, u64)> {
    // Per address: the floor so far, and whether an unsettled entry has frozen it
    // (entries are ordered by epoch: nothing above an unsettled one may retire).
    let mut floors: HashMap<Addr, (u64, bool)> = HashMap::new();
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

    fn current(list: &[(&str, u64)]) -> HashMap<Addr, u64> {
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
