//! The simulated world: replicas (protocol machines), the network between them, client
//! sessions, and one event queue ordered by simulated time, all driven by one seed.
//!
//! Nothing here reads a clock or a socket, and every choice comes from the world's
//! [`SplitMix64`]; events at the same instant run in the order they were scheduled. So a
//! seed replays exactly.
//!
//! The network model: every message (a peer call, its answer, a client request or reply)
//! takes a latency drawn from the seed's profile, may be duplicated, and is reordered by
//! the latencies themselves. A message may be lost the way a TCP connection loses one: the
//! connection breaks and the caller sees it (before or after the peer acted on it). A
//! call to a crashed replica fails as unreachable; a call whose answer never comes (a
//! partition) fails with its timeout. Partitions drop messages
//! between two sets of replicas, in one direction or both. Clients are never cut off
//! from a live replica.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::protocol::causal::{Addr, Clock, Incarnation};
use crate::protocol::journal::{Record, Seq};
use crate::protocol::machine::{
    Answer, CallError, CallId, Event as MachineEvent, Machine, Message, Output, Reply, Request,
    Settings,
};
use crate::protocol::store::{Read, value_from_json};
use crate::protocol::time::{Now, Time};
use crate::tools::check::history::{Op, OpKind, Status};
use crate::tools::check::workload::SplitMix64;

/// Which session's which request a reply is for.
pub type Waiter = (u32, u32);

/// The wall clock every replica starts from: 2026-12-01 in µs since the Unix epoch.
const WALL_ORIGIN_US: u64 = 1_796_083_200_000_000;
/// How long after a disturbance the cluster counts as calm again.
const CALM: Duration = Duration::from_secs(5);
/// How long a client waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The seed's network: latency, loss and duplication.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    /// Every message takes at least this long.
    pub min_latency: Duration,
    /// Plus a random extra of up to this much.
    pub jitter: Duration,
    /// Probability (per million) that a message is lost.
    pub loss_ppm: u64,
    /// Probability (per million) that a message is delivered twice.
    pub dup_ppm: u64,
}

/// Something that happens at an instant.
#[derive(Debug)]
enum Event {
    /// A call's message reaches replica `to`.
    Request {
        from: usize,
        life: u64,
        to: usize,
        call: CallId,
        message: Message,
    },
    /// A call's outcome reaches replica `to` (in life `life`).
    Outcome {
        to: usize,
        life: u64,
        call: CallId,
        outcome: Result<Answer, CallError>,
    },
    /// A call's timeout expires.
    CallTimeout {
        to: usize,
        life: u64,
        call: CallId,
    },
    Tick {
        replica: usize,
        life: u64,
    },
    /// An fsync of a replica's disk up to `len` records (journal position `upto`) returns.
    Synced {
        replica: usize,
        life: u64,
        len: usize,
        upto: Seq,
    },
    Flush {
        replica: usize,
        life: u64,
    },
    /// A client's request reaches a replica.
    ClientRequest {
        replica: usize,
        waiter: Waiter,
        request: ClientRequest,
    },
    /// A replica's answer reaches the client.
    ClientReply {
        waiter: Waiter,
        status: Status,
        reply: Option<Reply>,
    },
    ClientTimeout {
        waiter: Waiter,
    },
    /// A session's next request is due.
    SessionNext {
        session: u32,
    },
    /// Something the scenario or fault plan asked for.
    Action(super::Action),
}

/// A request as the client sent it (the machine's request is rebuilt on arrival, the way
/// a server parses a body).
#[derive(Clone, Debug)]
pub struct ClientRequest {
    pub kind: OpKind,
    pub key: String,
    pub value: Option<Json>,
    pub deps: Clock,
}

/// One replica slot: its machine while it is up, how many lives it has had, and (for a
/// durable cluster) its disk.
struct Slot {
    addr: Addr,
    machine: Option<Machine<Waiter>>,
    life: u64,
    /// Journal records handed to the "OS", in order; the first `synced` are durable.
    disk: Vec<Record>,
    synced: usize,
    /// This life's journal position of the last record handed over.
    handed: Seq,
    /// A sync is in flight.
    syncing: bool,
    /// Wall clock offset, changed by clock jumps.
    wall_offset_us: i64,
    /// The tick scheduled for the machine, if any (later ones replace it).
    tick_at: Option<Time>,
}

/// A client session.
pub struct Session {
    pub metadata: Clock,
    pub replica: usize,
    pub next_index: u32,
    /// The request in flight: its index, start and what it was.
    pub in_flight: Option<(u32, u64, ClientRequest, usize)>,
    /// When set, the session stops issuing requests.
    pub stopped: bool,
}

pub struct World {
    pub now: Time,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_seq: u64,
    next_event: usize,
    pub rng: SplitMix64,
    pub network: Network,
    slots: Vec<Slot>,
    settings: Settings,
    /// Directed links that drop everything: (from, to).
    pub cut: BTreeSet<(usize, usize)>,
    /// Calls not yet resolved, per (replica, life, call).
    open_calls: BTreeSet<(usize, u64, CallId)>,
    pub sessions: Vec<Session>,
    pub history: Vec<Op>,
    /// Write-once keys written so far.
    pub once_keys: Vec<String>,
    /// Broken timing rules of the contract.
    pub timing: Vec<String>,
    /// Per key, the highest version of an acknowledged write of it (Lamport time, then
    /// incarnation), and the operation's name.
    pub acknowledged: BTreeMap<String, ((u64, Incarnation), String)>,
    /// A one-line story of what happened, for failure reports.
    pub trace: Vec<String>,
    /// Print every event as it happens.
    pub verbose: bool,
    /// The last instant the cluster was disturbed: a fault, or a view change anywhere.
    pub disturbed: Time,
    /// Check that an acknowledged write is applied at every peer (on calm seeds).
    pub check_acks: bool,
    /// Replicas keep a journal on a simulated disk, and crashes keep what was synced.
    pub durable: bool,
    /// Cut the power everywhere when the next write is acknowledged.
    pub crash_after_ack: bool,
    #[cfg(test)]
    bugs: crate::protocol::machine::Bugs,
    /// Bounds of the catch-up chunks replicas serve (bytes, records scanned), when not
    /// the product's.
    #[cfg(test)]
    pub sync_chunk: Option<(usize, usize)>,
}

impl World {
    pub fn new(seed: u64, replicas: usize, settings: Settings, network: Network) -> World {
        let slots = (0..replicas)
            .map(|i| Slot {
                addr: replica_addr(i),
                machine: None,
                life: 0,
                disk: Vec::new(),
                synced: 0,
                handed: 0,
                syncing: false,
                wall_offset_us: 0,
                tick_at: None,
            })
            .collect();
        World {
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            next_event: 0,
            rng: SplitMix64::new(seed),
            network,
            slots,
            settings,
            cut: BTreeSet::new(),
            open_calls: BTreeSet::new(),
            sessions: Vec::new(),
            history: Vec::new(),
            once_keys: Vec::new(),
            timing: Vec::new(),
            acknowledged: BTreeMap::new(),
            trace: Vec::new(),
            verbose: false,
            disturbed: Time::ZERO,
            check_acks: false,
            durable: false,
            crash_after_ack: false,
            #[cfg(test)]
            bugs: Default::default(),
            #[cfg(test)]
            sync_chunk: None,
        }
    }

    #[cfg(test)]
    pub fn plant(&mut self, bugs: crate::protocol::machine::Bugs) {
        self.bugs = bugs;
    }

    pub fn replicas(&self) -> usize {
        self.slots.len()
    }

    pub fn addr(&self, replica: usize) -> &Addr {
        &self.slots[replica].addr
    }

    pub fn is_up(&self, replica: usize) -> bool {
        self.slots[replica].machine.is_some()
    }

    pub fn machine(&self, replica: usize) -> Option<&Machine<Waiter>> {
        self.slots[replica].machine.as_ref()
    }

    fn schedule(&mut self, at: Time, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue
            .push(Reverse((at.max(self.now), self.next_seq, id)));
        self.next_seq += 1;
    }

    pub fn schedule_action(&mut self, at: Time, action: super::Action) {
        self.schedule(at, Event::Action(action));
    }

    pub fn note(&mut self, text: String) {
        if self.verbose {
            println!("{:>10.3}s  {text}", self.now.since_origin().as_secs_f64());
        }
        self.trace.push(format!(
            "{:.3}s {text}",
            self.now.since_origin().as_secs_f64()
        ));
    }

    fn chance(&mut self, ppm: u64) -> bool {
        ppm > 0 && self.rng.next_u64() % 1_000_000 < ppm
    }

    fn latency(&mut self) -> Duration {
        let jitter = self.network.jitter.as_micros() as u64;
        let extra = match jitter {
            0 => 0,
            j => self.rng.next_u64() % (j + 1),
        };
        self.network.min_latency + Duration::from_micros(extra)
    }

    fn wall(&self, replica: usize) -> u64 {
        let base = WALL_ORIGIN_US + self.now.since_origin().as_micros() as u64;
        base.saturating_add_signed(self.slots[replica].wall_offset_us)
    }

    fn now_for(&self, replica: usize) -> Now {
        Now {
            at: self.now,
            wall_us: self.wall(replica),
        }
    }

    /// Starts (or restarts) replica `r` with empty state.
    pub fn start(&mut self, r: usize) {
        let mut settings = self.settings.clone();
        settings.me = self.slots[r].addr.clone();
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut machine = match self.durable {
            true => Machine::durable(settings, self.slots[r].disk.clone()),
            false => Machine::new(settings),
        };
        #[cfg(test)]
        machine.plant(self.bugs);
        #[cfg(test)]
        if let Some((max_bytes, max_scanned)) = self.sync_chunk {
            machine.bound_sync_chunks(max_bytes, max_scanned);
        }
        let slot = &mut self.slots[r];
        slot.life += 1;
        slot.tick_at = None;
        slot.synced = slot.disk.len();
        slot.handed = 0;
        slot.syncing = false;
        slot.machine = Some(machine);
        let now = self.now_for(r);
        self.step(r, |m| m.start(now));
    }

    /// Crashes replica `r`: its state and everything it was waiting for are gone.
    pub fn crash(&mut self, r: usize) {
        self.slots[r].machine = None;
        self.slots[r].tick_at = None;
    }

    /// Replica `r` loses power: what its disk had not synced is gone too.
    pub fn power_loss(&mut self, r: usize) {
        self.crash(r);
        let slot = &mut self.slots[r];
        slot.disk.truncate(slot.synced);
    }

    pub fn jump_clock(&mut self, r: usize, by_us: i64) {
        self.slots[r].wall_offset_us += by_us;
    }

    /// Runs `f` on replica `r`'s machine, then carries out its outputs.
    fn step<T>(&mut self, r: usize, f: impl FnOnce(&mut Machine<Waiter>) -> T) -> Option<T> {
        let machine = self.slots[r].machine.as_mut()?;
        // Logs of the machine name the replica (and the simulated time, in `--verbose`).
        let span = tracing::info_span!("", r, t = self.now.since_origin().as_secs_f64());
        let result = span.in_scope(|| f(machine));
        let outputs = machine.take_outputs();
        let flush = machine.take_flush_wanted();
        let deadline = machine.next_deadline();
        let life = self.slots[r].life;
        if flush {
            self.schedule(self.now, Event::Flush { replica: r, life });
        }
        if self.slots[r].tick_at.is_none_or(|at| deadline < at) {
            self.slots[r].tick_at = Some(deadline);
            self.schedule(deadline, Event::Tick { replica: r, life });
        }
        for output in outputs {
            self.perform(r, life, output);
        }
        Some(result)
    }

    fn perform(&mut self, r: usize, life: u64, output: Output<Waiter>) {
        match output {
            Output::Reply(waiter, reply) => {
                if let Reply::Written {
                    metadata,
                    lamport,
                    dot,
                    ..
                } = &reply
                {
                    self.note_version(waiter, *lamport, &dot.inc);
                    self.check_replicated(r, waiter, metadata);
                }
                let status = status_of(&reply, self.request_kind(waiter));
                let at = self.now + self.latency();
                self.schedule(
                    at,
                    Event::ClientReply {
                        waiter,
                        status,
                        reply: Some(reply),
                    },
                );
            }
            Output::Send {
                call,
                to,
                message,
                timeout,
            } => {
                self.open_calls.insert((r, life, call));
                self.schedule(self.now + timeout, Event::CallTimeout { to: r, life, call });
                let Some(dest) = self.slots.iter().position(|s| s.addr == to) else {
                    return;
                };
                self.transmit(r, life, dest, call, message);
            }
            Output::Event(MachineEvent::ViewChanged { .. }) => self.disturbed = self.now,
            Output::Persist { upto, records } => {
                let slot = &mut self.slots[r];
                slot.disk.extend(records);
                slot.handed = upto;
                self.start_sync(r, life);
            }
            Output::ResetPeer(_) | Output::Event(_) => {}
        }
    }

    /// Puts a call's message on the wire from `from` to `to`.
    fn transmit(&mut self, from: usize, life: u64, to: usize, call: CallId, message: Message) {
        if !self.is_up(to) {
            // Connection refused: the caller learns at once (one round trip).
            return self.answer(from, life, call, Err(unreachable("connection refused")));
        }
        if self.cut.contains(&(from, to)) {
            return;
        }
        if self.chance(self.network.loss_ppm) {
            return self.reset(from, life, call);
        }
        let copies = if self.chance(self.network.dup_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.latency();
            let message = message.clone();
            self.schedule(
                at,
                Event::Request {
                    from,
                    life,
                    to,
                    call,
                    message,
                },
            );
        }
    }

    /// Delivers a call's outcome to its caller, one network latency from now.
    fn answer(
        &mut self,
        caller: usize,
        life: u64,
        call: CallId,
        outcome: Result<Answer, CallError>,
    ) {
        let at = self.now + self.latency();
        self.schedule(
            at,
            Event::Outcome {
                to: caller,
                life,
                call,
                outcome,
            },
        );
    }

    /// Group commit: one fsync covers every record handed over before it starts; records
    /// that come during it wait for the next one.
    fn start_sync(&mut self, r: usize, life: u64) {
        let slot = &self.slots[r];
        if slot.syncing || slot.synced == slot.disk.len() {
            return;
        }
        let (len, upto) = (slot.disk.len(), slot.handed);
        self.slots[r].syncing = true;
        // An fsync takes 1 to 20 ms (a commodity SSD under a journaling file system).
        let at = self.now + Duration::from_micros(1_000 + self.rng.next_u64() % 19_000);
        self.schedule(
            at,
            Event::Synced {
                replica: r,
                life,
                len,
                upto,
            },
        );
    }

    /// What an acknowledgement promises: when nothing disturbed the cluster while the
    /// write was made (no fault, no view change, every replica up), every peer has
    /// applied it (and its dependencies) by the time its writer is answered.
    fn check_replicated(&mut self, r: usize, (session, index): Waiter, metadata: &Clock) {
        let started = match self
            .sessions
            .get(session as usize)
            .and_then(|s| s.in_flight.as_ref())
        {
            Some((i, start_us, ..)) if *i == index => {
                Time::from_duration(Duration::from_micros(*start_us))
            }
            _ => return,
        };
        let calm = self.check_acks
            && self.cut.is_empty()
            && self.slots.iter().all(|s| s.machine.is_some())
            && self.disturbed + CALM < started;
        if !calm {
            return;
        }
        for o in (0..self.slots.len()).filter(|&o| o != r) {
            let applied = self.slots[o]
                .machine
                .as_ref()
                .is_some_and(|m| m.replica().clock().covers_clock(metadata));
            if !applied {
                let rule = format!(
                    "s{session}#{index}, a write at r{r}, was acknowledged before r{o} applied it"
                );
                self.note(format!("PROMISE: {rule}"));
                self.timing.push(rule);
            }
        }
    }

    /// The connection of a call broke (before or after the peer acted on it): the caller
    /// learns at once, the way TCP reports a reset. Silence comes only from partitions.
    fn reset(&mut self, caller: usize, life: u64, call: CallId) {
        self.answer(caller, life, call, Err(unreachable("connection reset")));
    }

    fn request_kind(&self, (session, index): Waiter) -> OpKind {
        match &self
            .sessions
            .get(session as usize)
            .and_then(|s| s.in_flight.as_ref())
        {
            Some((i, _, request, _)) if *i == index => request.kind,
            _ => OpKind::Get,
        }
    }

    /// Runs events until `until`; returns false if the queue ran dry.
    pub fn run_until(&mut self, until: Time) {
        while let Some(Reverse((at, _, id))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            if let Some(event) = self.events.remove(&id) {
                self.handle(event);
            }
        }
        self.now = until;
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Request {
                from,
                life,
                to,
                call,
                message,
            } => {
                let now = self.now_for(to);
                let Some(answer) = self.step(to, |m| m.message(message, now)) else {
                    return self.reset(from, life, call);
                };
                let outcome = answer.map_err(|e| match e {
                    crate::protocol::machine::NodeError::NotInView(_) => CallError::NotInView,
                    other => CallError::Refused(other.to_string()),
                });
                if self.cut.contains(&(to, from)) {
                    return;
                }
                if self.chance(self.network.loss_ppm) {
                    return self.reset(from, life, call);
                }
                self.answer(from, life, call, outcome);
            }
            Event::Outcome {
                to,
                life,
                call,
                outcome,
            } => self.resolve_call(to, life, call, outcome),
            Event::CallTimeout { to, life, call } => {
                self.resolve_call(to, life, call, Err(CallError::Timeout))
            }
            Event::Tick { replica, life } => {
                let slot = &self.slots[replica];
                if slot.life != life || slot.tick_at.is_none_or(|at| at > self.now) {
                    return;
                }
                self.slots[replica].tick_at = None;
                let now = self.now_for(replica);
                self.step(replica, |m| m.tick(now));
            }
            Event::Synced {
                replica,
                life,
                len,
                upto,
            } => {
                if self.slots[replica].life != life {
                    return;
                }
                let slot = &mut self.slots[replica];
                slot.synced = slot.synced.max(len);
                slot.syncing = false;
                self.step(replica, |m| m.persisted(upto));
                self.start_sync(replica, life);
            }
            Event::Flush { replica, life } => {
                if self.slots[replica].life == life {
                    let now = self.now_for(replica);
                    self.step(replica, |m| m.flush(now));
                }
            }
            Event::ClientRequest {
                replica,
                waiter,
                request,
            } => self.client_request(replica, waiter, request),
            Event::ClientReply {
                waiter,
                status,
                reply,
            } => self.finish_op(waiter, status, reply),
            Event::ClientTimeout { waiter } => self.finish_op(waiter, Status::Timeout, None),
            Event::SessionNext { session } => super::workload::next_request(self, session),
            Event::Action(action) => super::act(self, action),
        }
    }

    fn resolve_call(
        &mut self,
        r: usize,
        life: u64,
        call: CallId,
        outcome: Result<Answer, CallError>,
    ) {
        if !self.open_calls.remove(&(r, life, call)) || self.slots[r].life != life {
            return;
        }
        let now = self.now_for(r);
        self.step(r, |m| m.answered(call, outcome, now));
    }

    /// Sends a session's request to `replica`.
    pub fn send_client_request(&mut self, session: u32, replica: usize, request: ClientRequest) {
        let s = &mut self.sessions[session as usize];
        let index = s.next_index;
        s.next_index += 1;
        let start_us = self.now.since_origin().as_micros() as u64;
        s.in_flight = Some((index, start_us, request.clone(), replica));
        let waiter = (session, index);
        self.schedule(self.now + CLIENT_TIMEOUT, Event::ClientTimeout { waiter });
        let at = self.now + self.latency();
        self.schedule(
            at,
            Event::ClientRequest {
                replica,
                waiter,
                request,
            },
        );
    }

    fn client_request(&mut self, replica: usize, waiter: Waiter, request: ClientRequest) {
        if !self.is_up(replica) {
            let at = self.now + self.latency();
            let (status, reply) = (Status::Unreachable, None);
            return self.schedule(
                at,
                Event::ClientReply {
                    waiter,
                    status,
                    reply,
                },
            );
        }
        let key = request.key.clone().into_boxed_str();
        let deps = request.deps.clone();
        let machine_request = match (request.kind, &request.value) {
            (OpKind::Put, Some(value)) => {
                let text = value.to_string();
                let Ok(Some(value)) = value_from_json(&text) else {
                    return;
                };
                Request::Put {
                    key: key.into(),
                    value,
                    deps,
                }
            }
            (OpKind::Delete, _) => Request::Delete {
                key: key.into(),
                deps,
            },
            _ => Request::Get {
                key: key.into(),
                deps,
            },
        };
        let now = self.now_for(replica);
        self.step(replica, |m| m.request(waiter, machine_request, now));
    }

    /// Records the end of a session's request (the first of its reply and its timeout).
    fn finish_op(&mut self, (session, index): Waiter, status: Status, reply: Option<Reply>) {
        let end_us = self.now.since_origin().as_micros() as u64;
        let Some(s) = self.sessions.get_mut(session as usize) else {
            return;
        };
        let Some((i, start_us, request, replica)) = s.in_flight.take() else {
            return;
        };
        if i != index {
            s.in_flight = Some((i, start_us, request, replica));
            return;
        }
        let mut read = None;
        match reply {
            Some(Reply::Found { value, metadata }) => {
                read = serde_json::from_str::<Json>(&value).ok();
                s.metadata = metadata;
            }
            Some(Reply::Missing { metadata } | Reply::Written { metadata, .. }) => {
                s.metadata = metadata;
            }
            Some(Reply::Failed(_)) | None => {}
        }
        let write_once = request.key_is_once();
        let op = Op {
            session,
            index,
            replica: self.slots[replica].addr.to_string(),
            kind: request.kind,
            key: request.key,
            write_once,
            value: request.value,
            start_us,
            end_us,
            status,
            read,
            error: None,
        };
        let acknowledged = op.is_acknowledged_write();
        self.history.push(op);
        super::workload::schedule_next(self, session);
        if acknowledged && std::mem::take(&mut self.crash_after_ack) {
            self.note(format!("s{session}#{index} acknowledged"));
            self.schedule_action(self.now, super::Action::CrashAll);
        }
    }

    pub fn schedule_session(&mut self, session: u32, at: Time) {
        self.schedule(at, Event::SessionNext { session });
    }

    /// Keeps the version of an acknowledged write if it is the highest of its key.
    fn note_version(&mut self, (session, index): Waiter, lamport: u64, inc: &Incarnation) {
        let Some((_, _, request, _)) = (self.sessions.get(session as usize))
            .and_then(|s| s.in_flight.as_ref())
            .filter(|(i, ..)| *i == index)
        else {
            return;
        };
        let version = (lamport, inc.clone());
        let name = format!("s{session}#{index} ({:?} {})", request.kind, request.key);
        let held = self.acknowledged.entry(request.key.clone());
        let held = held.or_insert_with(|| (version.clone(), name.clone()));
        if version > held.0 {
            *held = (version, name);
        }
    }

    /// The version of what replica `r` holds for `key` (value or tombstone).
    pub fn version_directly(&self, r: usize, key: &str) -> Option<(u64, Incarnation)> {
        self.machine(r)?.replica().store().version_of(key)
    }

    /// What replica `r` holds for `key`, read directly from its state.
    pub fn read_directly(&self, r: usize, key: &str) -> Option<Option<Json>> {
        let machine = self.machine(r)?;
        Some(match machine.replica().read(key) {
            Read::Found { value, .. } => serde_json::from_str(&value.to_json()).ok(),
            _ => None,
        })
    }
}

impl World {
    /// True when every write replica `r` applied is applied at some other live replica.
    pub fn held_elsewhere(&self, r: usize) -> bool {
        let Some(mine) = self.machine(r).map(|m| m.replica().clock()) else {
            return true;
        };
        let mut others = Clock::new();
        for (o, slot) in self.slots.iter().enumerate() {
            if let (true, Some(machine)) = (o != r, &slot.machine) {
                others.merge(machine.replica().clock());
            }
        }
        others.covers_clock(mine)
    }

    /// What every replica holds for `key`, and whether its clock covers the write it
    /// holds: the end of a `--verbose` story.
    pub fn explain_key(&self, key: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for (r, slot) in self.slots.iter().enumerate() {
            let Some(machine) = &slot.machine else {
                lines.push(format!("r{r}: down"));
                continue;
            };
            let replica = machine.replica();
            let held = match replica.read(key) {
                Read::Found { value, dot } => format!("{} by {dot:?}", value.to_json()),
                Read::Deleted { dot } => format!("deleted by {dot:?}"),
                Read::Missing => "missing".into(),
            };
            lines.push(format!(
                "r{r} ({:?}): {key} = {held}; clock {:?}; view {:?}",
                replica.incarnation().map(|i| i.epoch),
                replica.clock(),
                machine.members().view()
            ));
        }
        lines
    }
}

impl ClientRequest {
    /// Write-once keys are named `once-...` by the workload.
    fn key_is_once(&self) -> bool {
        self.kind == OpKind::Put && self.key.starts_with("once-")
    }
}

/// The HTTP status a client would see for `reply` to a request of `kind`.
fn status_of(reply: &Reply, kind: OpKind) -> Status {
    Status::Http(match reply {
        Reply::Found { .. } => 200,
        Reply::Missing { .. } => 404,
        Reply::Written { existed: false, .. } if kind == OpKind::Put => 201,
        Reply::Written { .. } => 200,
        Reply::Failed(_) => 503,
    })
}

pub fn replica_addr(i: usize) -> Addr {
    format!("10.0.0.{}:8090", i + 1).into()
}

fn unreachable(why: &str) -> CallError {
    CallError::Unreachable(why.into())
}

/// A value as the sim writes it.
pub fn value_json(session: u32, index: u32) -> Json {
    json!(format!("s{session}-{index}"))
}
