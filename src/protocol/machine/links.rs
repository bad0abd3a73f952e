//! Replication links: one ordered, bounded queue of writes per peer, sent as batches with
//! one batch in flight per peer.
//!
//! A write that cannot be queued (queue full) or sent (the peer left the view, the call
//! failed, the peer refused it) is not acknowledged; the peer's anti-entropy brings it
//! later. Its writer is released at once rather than left to time out. A call that fails
//! for want of an answer takes the peer out of the view, unless it went to a previous life
//! of a peer that has since restarted.

use std::collections::VecDeque;

use super::{Answer, CallError, Event, Machine, Message, Now, SharedWrite, peers::Call};
use crate::protocol::causal::Addr;
use crate::protocol::wire::Replicate;

/// Most writes in one replication batch.
pub const MAX_BATCH: usize = 512;
/// A batch stops growing once its keys and values reach this many bytes.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Why replication to a peer did not happen or was not acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    Timeout,
    Unreachable,
    /// The peer answered with an error or refused writes.
    Refused,
    /// The peer's answer did not verify (cluster secret).
    Unauthenticated,
    /// The peer's queue was full; it catches up by anti-entropy.
    QueueFull,
}

impl FailureReason {
    pub const ALL: [FailureReason; 5] = [
        FailureReason::Timeout,
        FailureReason::Unreachable,
        FailureReason::Refused,
        FailureReason::Unauthenticated,
        FailureReason::QueueFull,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Unreachable => "unreachable",
            FailureReason::Refused => "refused",
            FailureReason::Unauthenticated => "unauthenticated",
            FailureReason::QueueFull => "queue_full",
        }
    }
}

/// One write queued for a peer, with the pending write whose reply waits for it.
#[derive(Debug)]
pub(super) struct Queued {
    pub write: SharedWrite,
    pub pending: u64,
}

#[derive(Debug, Default)]
pub(super) struct Link {
    pub queue: VecDeque<Queued>,
    /// The batch in flight: its call and the pending writes it will acknowledge.
    pub in_flight: Option<(super::CallId, Vec<u64>)>,
}

impl<W> Machine<W> {
    /// Queues `write` on the link of every peer in the view; returns on how many, each an
    /// acknowledgement the pending write `id` waits for.
    pub(super) fn queue_on_links(&mut self, write: SharedWrite, id: u64) -> usize {
        #[cfg(test)]
        if self.bugs.ack_without_queueing {
            return 0;
        }
        let capacity = self.settings.peer_queue;
        let mut queued = 0;
        let mut full = Vec::new();
        for peer in self.members.up_peers() {
            let Some(link) = self.links.get_mut(&peer) else {
                continue;
            };
            if link.queue.len() >= capacity {
                full.push(peer);
                continue;
            }
            link.queue.push_back(Queued {
                write: write.clone(),
                pending: id,
            });
            queued += 1;
        }
        for peer in full {
            tracing::debug!(%peer, "replication queue full; peer will catch up by anti-entropy");
            self.event(Event::ReplicationFailed {
                peer,
                reason: FailureReason::QueueFull,
            });
        }
        if queued > 0 {
            self.flush_wanted = true;
        }
        queued
    }

    /// Sends what is queued on every idle link, one batch each.
    pub fn flush(&mut self, now: Now) {
        let peers: Vec<Addr> = self
            .links
            .iter()
            .filter(|(_, link)| link.in_flight.is_none() && !link.queue.is_empty())
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in peers {
            self.send_batch(&peer, now);
        }
    }

    /// Sends the next batch queued for `peer`, or drops it when `peer` is out of the view.
    fn send_batch(&mut self, peer: &Addr, _now: Now) {
        let in_view = self.members.in_view(peer);
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        let mut writes = Vec::new();
        let mut acks = Vec::new();
        let mut bytes = 0;
        while writes.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Some(queued) = link.queue.pop_front() else {
                break;
            };
            bytes += queued.write.size();
            writes.push(queued.write);
            acks.push(queued.pending);
        }
        if !in_view {
            for id in acks {
                self.resolve(id);
            }
            return;
        }
        let message = Message::Replicate(Replicate {
            from: self.settings.me.clone(),
            writes,
        });
        let generation = self.generation(peer);
        let call = self.next_call;
        if let Some(link) = self.links.get_mut(peer) {
            link.in_flight = Some((call, acks));
        }
        let timeout = self.settings.replication_timeout;
        self.send(
            peer,
            message,
            timeout,
            Call::Replicate {
                peer: peer.clone(),
                generation,
            },
        );
    }

    /// The outcome of a batch sent to `peer`.
    pub(super) fn batch_answered(
        &mut self,
        peer: Addr,
        generation: u64,
        outcome: Result<Answer, CallError>,
        now: Now,
    ) {
        let acks = self
            .links
            .get_mut(&peer)
            .and_then(|link| link.in_flight.take())
            .map(|(_, acks)| acks)
            .unwrap_or_default();
        let total = acks.len();
        match outcome {
            Ok(Answer::Taken(taken)) if taken.refused == 0 => {}
            Ok(Answer::Taken(taken)) => {
                let why = format!("the peer refused {} of {total} writes", taken.refused);
                self.replication_refused(&peer, FailureReason::Refused, &why);
            }
            Ok(other) => {
                let why = format!("unexpected answer to replicated writes: {other:?}");
                self.replication_refused(&peer, FailureReason::Refused, &why);
            }
            Err(CallError::NotInView) => {
                tracing::debug!(%peer, "peer does not list us yet; anti-entropy will catch it up");
            }
            Err(error @ (CallError::Timeout | CallError::Unreachable(_))) => {
                self.replication_failed(&peer, generation, &error, now);
            }
            Err(error @ CallError::Unauthenticated(_)) => {
                self.replication_refused(&peer, FailureReason::Unauthenticated, &error.to_string());
            }
            Err(error @ CallError::Refused(_)) => {
                self.replication_refused(&peer, FailureReason::Refused, &error.to_string());
            }
        }
        // Acknowledged or not, the writers need not wait for this peer any longer.
        for id in acks {
            self.resolve(id);
        }
        if self
            .links
            .get(&peer)
            .is_some_and(|link| !link.queue.is_empty())
        {
            self.send_batch(&peer, now);
        }
    }

    /// `peer` answered but did not take the writes: not an acknowledgement. The peer's
    /// probes find the gap and pull it (its clock does not cover what this replica
    /// reports).
    fn replication_refused(&mut self, peer: &Addr, reason: FailureReason, why: &str) {
        self.event(Event::ReplicationFailed {
            peer: peer.clone(),
            reason,
        });
        tracing::error!(%peer, why, "peer refused replicated writes; the pair is out of sync until anti-entropy repairs it");
    }

    fn replication_failed(&mut self, peer: &Addr, generation: u64, error: &CallError, now: Now) {
        if generation != self.generation(peer) {
            tracing::debug!(%peer, %error, "replication to a previous life failed");
            return;
        }
        let reason = match error {
            CallError::Timeout => FailureReason::Timeout,
            _ => FailureReason::Unreachable,
        };
        self.event(Event::ReplicationFailed {
            peer: peer.clone(),
            reason,
        });
        tracing::warn!(%peer, %error, "replication failed");
        let change = self.members.replication_failed(peer, now.at);
        self.apply_changes(change, now);
    }

    pub(super) fn generation(&self, peer: &str) -> u64 {
        self.generations.get(peer).copied().unwrap_or(0)
    }
}
