//! The running replica: the causal core and the membership behind one lock, plus the tasks
//! and links that connect them to clients and peers.
//!
//! # Locking
//!
//! All state lives in one `std::sync::Mutex<State>`, held only for short sections that
//! never cross an `.await` (the pattern of mini-redis's `db.rs`): a core operation, a
//! membership update, queueing writes on links. The per-peer HTTP clients sit under a
//! second mutex that is never held together with the first. Network I/O always happens
//! after the guards are dropped. A request waiting for its causal dependencies waits on a `Notify` that is
//! signalled whenever the clock advances, never by polling.

mod background;
mod health;
mod inbound;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::protocol::causal::{Addr, Clock, Dot, parse_addr};
use crate::protocol::delivery::Write;
use crate::protocol::membership::{Change, Membership, Timing};
use crate::protocol::replica::{CoreError, Replica};
use crate::protocol::store::{Key, Read, Value};
use crate::protocol::wire::{VIEW_CHANGE, ViewChange, ViewOp};
use crate::server::config::Config;
use crate::server::metrics::{FailureReason, Metrics};
use crate::server::peer::{
    LinkOwner, LinkSender, Outgoing, PeerClient, PeerError, PeerSettings, spawn_link,
};
use crate::server::tls::TlsError;
use crate::server::trust::Trust;
use crate::server::wallclock::limits;

pub use background::start;
pub use health::{Health, PeerHealth};

/// Errors of the node layer (the API maps each to a status).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("Causal dependencies not satisfied; try again later")]
    CausalTimeout,
    #[error("sender {0} is not in this replica's view")]
    NotInView(Addr),
    #[error("{0}")]
    ClockAhead(CoreError),
}

/// The answer to a read or delete of a key that holds no value.
#[derive(Debug)]
pub struct Missing {
    pub metadata: Clock,
}

/// A successful read.
#[derive(Debug)]
pub struct Found {
    /// JSON text.
    pub value: Box<str>,
    pub metadata: Clock,
}

/// A successful put or delete.
#[derive(Debug)]
pub struct Written {
    pub existed: bool,
    pub metadata: Clock,
}

pub(crate) struct State {
    pub replica: Replica,
    pub members: Membership,
    links: HashMap<Addr, LinkSender>,
    pulling: HashSet<Addr>,
    probing: HashSet<Addr>,
    last_pull: HashMap<Addr, Instant>,
}

pub struct Node {
    pub config: Config,
    state: Mutex<State>,
    /// Signalled whenever the clock advances or the replica becomes ready.
    applied: Notify,
    /// How peers are reached and what this replica trusts (see `trust`).
    pub trust: Arc<Trust>,
    pub metrics: Metrics,
    peer_settings: Arc<PeerSettings>,
    /// One client (connection pool) per peer, replaced when the peer restarts so that no
    /// request goes out on a connection to its previous life.
    clients: Mutex<HashMap<Addr, (PeerClient, u64)>>,
    me: Addr,
    /// When this process started serving.
    started: std::time::Instant,
    this: std::sync::Weak<Node>,
}

impl Node {
    pub fn new(config: Config) -> Result<Arc<Node>, TlsError> {
        let tls = match &config.tls {
            Some(files) => Some(crate::server::tls::client_config(
                &files.ca,
                Some((&files.cert, &files.key)),
            )?),
            None => None,
        };
        let trust = Arc::new(Trust::new(config.secret.as_ref(), tls.is_some()));
        let peer_settings = Arc::new(PeerSettings {
            me: config.me.clone(),
            trust: trust.clone(),
            tls,
            local_ip: own_ip(&config.me),
        });
        let timing = Timing {
            failure_timeout: config.failure_timeout,
            stability_period: config.stability_period,
        };
        let state = State {
            replica: Replica::new(config.me.clone(), config.delivery_buffer),
            members: Membership::new(config.me.clone(), config.view.iter().cloned(), timing),
            links: HashMap::new(),
            pulling: HashSet::new(),
            probing: HashSet::new(),
            last_pull: HashMap::new(),
        };
        Ok(Arc::new_cyclic(|this| Node {
            me: config.me.clone(),
            config,
            state: Mutex::new(state),
            applied: Notify::new(),
            trust,
            metrics: Metrics::new(),
            peer_settings,
            clients: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
            this: this.clone(),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state it guards is still the best
        // this replica has, so keep serving rather than poisoning every later request.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn arc(&self) -> Option<Arc<Node>> {
        self.this.upgrade()
    }

    /// The HTTP client for `peer` and its generation (see [`Node::reset_client`]).
    pub(crate) fn client_for(&self, peer: &Addr) -> (PeerClient, u64) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(peer.clone())
            .or_insert_with(|| (self.new_client(), 0))
            .clone()
    }

    /// Drops `peer`'s pooled connections: it restarted, and they lead to its old life.
    /// Failures of requests sent on them no longer count against it.
    pub(crate) fn reset_client(&self, peer: &Addr) {
        let fresh = self.new_client();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let generation = clients.get(peer).map_or(0, |(_, g)| g.wrapping_add(1));
        clients.insert(peer.clone(), (fresh, generation));
    }

    fn client_generation(&self, peer: &Addr) -> u64 {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get(peer).map_or(0, |(_, g)| *g)
    }

    fn new_client(&self) -> PeerClient {
        PeerClient::new(self.peer_settings.clone())
    }

    /// The current view, sorted.
    pub fn view(&self) -> Vec<Addr> {
        self.lock().members.view()
    }

    /// True when `ip` is the IP of a member (in the view, or down), this replica aside.
    pub fn is_member_ip(&self, ip: IpAddr) -> bool {
        let state = self.lock();
        state
            .members
            .members()
            .any(|(addr, ..)| parse_addr(addr).is_some_and(|a| a.ip() == ip))
    }

    pub fn is_ready(&self) -> bool {
        self.lock().replica.is_ready()
    }

    /// Waits, at most the configured causal wait, until every write in `deps` is applied,
    /// then runs `f` under the same lock acquisition that saw them applied. Missing writes
    /// are pulled from the replicas in the view meanwhile.
    async fn when_applied<T>(
        &self,
        deps: &Clock,
        f: impl FnOnce(&mut State) -> T,
    ) -> Result<T, NodeError> {
        let started = Instant::now();
        let deadline = started + self.config.causal_wait;
        let mut pulled = false;
        loop {
            let notified = self.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.replica.satisfies(deps) {
                    if pulled {
                        self.metrics.causal_wait(started.elapsed(), false);
                    }
                    return Ok(f(&mut state));
                }
            }
            if !pulled {
                pulled = true;
                self.pull_from_view(true);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.metrics.causal_wait(started.elapsed(), true);
                return Err(NodeError::CausalTimeout);
            }
        }
    }

    pub(crate) fn clock_advanced(&self) {
        self.applied.notify_waiters();
    }

    /// `GET /kvs/<key>`.
    pub async fn get(&self, key: &str, deps: &Clock) -> Result<Result<Found, Missing>, NodeError> {
        self.when_applied(deps, |state| {
            let replica = &state.replica;
            match replica.read(key) {
                Read::Found { value, dot } => Ok(Found {
                    value: value.to_json().into(),
                    metadata: replica.metadata_with(deps, Some(&dot)),
                }),
                read => Err(Missing {
                    metadata: replica.metadata_with(deps, deleted_by(&read)),
                }),
            }
        })
        .await
    }

    /// `PUT /kvs/<key>`.
    pub async fn put(&self, key: Key, value: Value, deps: &Clock) -> Result<Written, NodeError> {
        let pending = self
            .when_applied(deps, |state| {
                state.write(key, Some(value), deps, &self.metrics)
            })
            .await??;
        Ok(self.replicated(pending).await)
    }

    /// `DELETE /kvs/<key>`: the existence check and the tombstone happen under one lock.
    pub async fn delete(
        &self,
        key: Key,
        deps: &Clock,
    ) -> Result<Result<Written, Missing>, NodeError> {
        let pending = self
            .when_applied(deps, |state| {
                let read = state.replica.read(&key);
                if matches!(read, Read::Found { .. }) {
                    return state.write(key, None, deps, &self.metrics).map(Ok);
                }
                let metadata = state.replica.metadata_with(deps, deleted_by(&read));
                Ok(Err(Missing { metadata }))
            })
            .await??;
        Ok(match pending {
            Ok(pending) => Ok(self.replicated(pending).await),
            Err(missing) => Err(missing),
        })
    }

    /// Waits (bounded) for the peers' acknowledgements of a local write.
    async fn replicated(&self, pending: PendingWrite) -> Written {
        self.clock_advanced();
        let deadline = Instant::now() + self.config.replication_timeout + ACK_SLACK;
        for ack in pending.acks {
            let _ = tokio::time::timeout_at(deadline, ack).await;
        }
        pending.written
    }

    /// `PUT /view`: returns true when `addr` was added.
    pub fn add_to_view(&self, addr: &Addr) -> bool {
        let change = self.lock().members.add(addr, Instant::now().into_std());
        let added = change.is_some();
        self.apply_changes(change);
        if added {
            self.broadcast_view_change(ViewOp::Add, addr);
        }
        added
    }

    /// `DELETE /view`: returns false when `addr` was not in the view.
    pub fn remove_from_view(&self, addr: &Addr) -> bool {
        let (was_in_view, change) = {
            let mut state = self.lock();
            let was = state.members.in_view(addr);
            (was, state.members.remove(addr, Instant::now().into_std()))
        };
        self.apply_changes(change);
        if was_in_view {
            self.broadcast_view_change(ViewOp::Remove, addr);
        }
        was_in_view
    }

    fn broadcast_view_change(&self, op: ViewOp, addr: &Addr) {
        let targets: Vec<Addr> = self
            .lock()
            .members
            .probe_targets()
            .into_iter()
            .filter(|p| p != addr)
            .collect();
        let message = Arc::new(ViewChange {
            from: self.me.clone(),
            op,
            addr: addr.clone(),
        });
        for peer in targets {
            let (client, _) = self.client_for(&peer);
            let message = message.clone();
            let timeout = self.config.replication_timeout;
            tokio::spawn(async move {
                let result: Result<serde_json::Value, _> =
                    client.post(&peer, VIEW_CHANGE, &*message, timeout).await;
                if let Err(error) = result {
                    tracing::warn!(%peer, %error, "could not pass a view change on");
                }
            });
        }
    }

    /// Logs view changes and starts links and catch-up for replicas that joined.
    pub(crate) fn apply_changes(&self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match change {
                Change::Joined(peer, reason) => {
                    self.metrics.view_changed(true);
                    tracing::info!(%peer, "replica joined the view: {reason}");
                    self.ensure_link(&peer);
                    self.pull(peer, true);
                }
                Change::Left(peer, reason) => {
                    self.metrics.view_changed(false);
                    tracing::warn!(%peer, "replica left the view: {reason}");
                }
            }
        }
    }

    fn ensure_link(&self, peer: &Addr) {
        let Some(node) = self.arc() else { return };
        let mut state = self.lock();
        if !state.links.contains_key(peer) {
            let link = spawn_link(node, peer.clone(), self.config.peer_queue);
            state.links.insert(peer.clone(), link);
        }
    }
}

/// This replica's own IP, when it can bind it: outgoing connections to peers start from
/// it, so that a peer checking source addresses sees the address this replica claims.
fn own_ip(me: &str) -> Option<IpAddr> {
    let ip = parse_addr(me)?.ip();
    std::net::TcpListener::bind((ip, 0)).ok().map(|_| ip)
}

/// Extra time a writer waits past the replication timeout, for the link to report.
const ACK_SLACK: Duration = Duration::from_millis(100);

fn deleted_by<'a>(read: &'a Read<'_>) -> Option<&'a Dot> {
    match read {
        Read::Deleted { dot } => Some(dot),
        _ => None,
    }
}

/// A local write made and queued on the links, not yet acknowledged.
struct PendingWrite {
    written: Written,
    acks: Vec<oneshot::Receiver<()>>,
}

impl State {
    /// Applies a local write and queues it on every link in the view.
    fn write(
        &mut self,
        key: Key,
        value: Option<Value>,
        deps: &Clock,
        metrics: &Metrics,
    ) -> Result<PendingWrite, NodeError> {
        // Callers run under `when_applied`, so the replica is ready.
        let local =
            self.replica
                .write(key, value, deps, &limits())
                .map_err(|error| match error {
                    CoreError::NotReady => NodeError::CausalTimeout,
                    CoreError::ClockAhead => NodeError::ClockAhead(error),
                })?;
        let acks = self.queue_on_links(&Arc::new(local.write), metrics);
        let written = Written {
            existed: local.existed,
            metadata: local.metadata,
        };
        Ok(PendingWrite { written, acks })
    }

    /// Queues `write` on the link of every peer in the view; returns the acknowledgements
    /// to wait for. A full queue is skipped: that peer catches up by anti-entropy.
    fn queue_on_links(
        &mut self,
        write: &Arc<Write>,
        metrics: &Metrics,
    ) -> Vec<oneshot::Receiver<()>> {
        let mut acks = Vec::new();
        for peer in self.members.up_peers() {
            let Some(link) = self.links.get(&peer) else {
                continue;
            };
            let (ack, done) = oneshot::channel();
            let outgoing = Outgoing {
                write: write.clone(),
                ack: Some(ack),
            };
            if link.try_send(outgoing).is_ok() {
                acks.push(done);
            } else {
                metrics.replication_failed(&peer, FailureReason::QueueFull);
                tracing::debug!(%peer, "replication queue full; peer will catch up by anti-entropy");
            }
        }
        acks
    }
}

impl LinkOwner for Node {
    fn me(&self) -> &Addr {
        &self.me
    }

    fn client_for(&self, peer: &Addr) -> (PeerClient, u64) {
        Node::client_for(self, peer)
    }

    fn replication_timeout(&self) -> Duration {
        self.config.replication_timeout
    }

    fn may_send_to(&self, peer: &Addr) -> bool {
        self.lock().members.in_view(peer)
    }

    fn replication_refused(&self, peer: &Addr, reason: FailureReason, why: &str) {
        self.metrics.replication_failed(peer, reason);
        // Not an acknowledgement: the writes stay unacknowledged, and the peer's probes
        // find the gap and pull it (its clock does not cover what this replica reports).
        tracing::error!(%peer, why, "peer refused replicated writes; the pair is out of sync until anti-entropy repairs it");
    }

    fn replication_failed(&self, peer: &Addr, generation: u64, error: &PeerError) {
        if generation != self.client_generation(peer) {
            tracing::debug!(%peer, %error, "replication to a previous life failed");
            return;
        }
        let reason = match error {
            PeerError::Timeout(_) => FailureReason::Timeout,
            _ => FailureReason::Unreachable,
        };
        self.metrics.replication_failed(peer, reason);
        tracing::warn!(%peer, %error, "replication failed");
        let change = self
            .lock()
            .members
            .replication_failed(peer, Instant::now().into_std());
        self.apply_changes(change);
    }
}
