//! What a replica does with its peers' messages.
//!
//! Probes and announcements are always answered. Data (`replicate`, `sync`) is exchanged
//! only with a peer that is in this replica's view: a replica that was cut off stays out of
//! the data flow until it has been re-admitted (see `membership`).

use std::sync::Arc;

use tokio::time::Instant;

use super::{Node, NodeError};
use crate::protocol::replica::{Delta, Received};
use crate::protocol::wire::{
    self, Announce, Heartbeat, Replicate, SyncRequest, ViewChange, ViewOp,
};

/// About how many bytes of keys and values one catch-up chunk carries.
const SYNC_CHUNK_BYTES: usize = 4 * 1024 * 1024;

impl Node {
    fn status(&self) -> wire::Status {
        let state = self.lock();
        wire::Status {
            epoch: state.replica.incarnation().map(|i| i.epoch),
            clock: state.replica.clock().clone(),
        }
    }

    pub fn on_heartbeat(&self, _probe: Heartbeat) -> wire::Status {
        self.status()
    }

    /// A replica (re)started: it is in the view at once, reached over new connections.
    pub fn on_announce(&self, announce: Announce) -> wire::Status {
        self.reset_client(&announce.from);
        let change = self
            .lock()
            .members
            .announced(&announce.from, Instant::now().into_std());
        self.apply_changes(change);
        self.status()
    }

    /// A view change made at another replica.
    pub fn on_view_change(&self, message: ViewChange) {
        if message.addr == self.me {
            return;
        }
        let now = Instant::now().into_std();
        let change = {
            let mut state = self.lock();
            match message.op {
                ViewOp::Add => state.members.add(&message.addr, now),
                ViewOp::Remove => state.members.remove(&message.addr, now),
            }
        };
        if change.is_some() {
            tracing::info!(from = %message.from, addr = %message.addr, op = ?message.op, "view change passed on");
        }
        self.apply_changes(change);
    }

    /// Replicated writes from a peer in the view.
    pub fn on_replicate(&self, message: Replicate) -> Result<Received, NodeError> {
        let received = {
            let mut state = self.lock();
            if !state.members.in_view(&message.from) {
                return Err(NodeError::NotInView(message.from));
            }
            let writes = message.writes.into_iter().map(Arc::unwrap_or_clone);
            state.replica.receive(writes)
        };
        if received.refused > 0 {
            tracing::warn!(
                from = %message.from,
                refused = received.refused,
                "refused replicated writes (delivery buffer full); pulling them by anti-entropy"
            );
            self.pull(message.from.clone(), true);
        }
        if received.applied > 0 {
            self.clock_advanced();
        }
        Ok(received)
    }

    /// A peer in the view asks for what its clock misses.
    pub fn on_sync(&self, request: SyncRequest) -> Result<Delta, NodeError> {
        let state = self.lock();
        if !state.members.in_view(&request.from) {
            return Err(NodeError::NotInView(request.from));
        }
        let after = request.after.as_deref();
        Ok(state
            .replica
            .delta_chunk(&request.clock, after, SYNC_CHUNK_BYTES))
    }
}
