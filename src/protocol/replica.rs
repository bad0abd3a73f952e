//! The replica state machine: clock, store and delivery buffer behind one small API.
//!
//! This is the causal core. It does no I/O and knows no time: the server calls it under a
//! short-lived lock and moves its outputs (writes to replicate, deltas to send) over the
//! network. Its invariants:
//!
//! * **Causally closed state.** `clock` covers exactly the writes whose effects `store`
//!   holds (a write overwritten by a later one counts as held). Local writes, delivered
//!   writes and merged deltas all preserve this.
//! * **Causal delivery.** A replicated write is applied only when the buffer says it is
//!   deliverable (see `delivery`).
//! * **Fresh identities.** A replica writes only after [`Replica::start_incarnation`], which
//!   picks an epoch above every epoch of its address that it has heard of, so no write of
//!   an earlier life of the same address is ever named again.
//! * **Lamport times.** `lamport` is at least the time of every write applied here, so a
//!   local write is stamped above everything in its causal past.
//! * **Horizon.** `horizon` covers every delete whose tombstone this replica may have
//!   collected, and every write whose record it dropped because a peer had collected the
//!   tombstone beating it. A replica whose clock does not cover a peer's horizon may hold
//!   records that those tombstones should have beaten, so the peer sends it a *full*
//!   delta (every record, not only what its clock misses), and it drops what the peer no
//!   longer holds although the peer's clock covers it ([`Replica::merge_chunk`]).

use serde::{Deserialize, Serialize};

use crate::protocol::causal::limits::MAX_COUNTER;
use crate::protocol::causal::{Addr, Clock, Dot, Incarnation, Limits};
use crate::protocol::delivery::{DeliveryBuffer, Offer, Write};
use crate::protocol::journal::Record;
use crate::protocol::store::{Entry, Key, Read, Store, Value};

/// Errors of the causal core.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("this replica has not finished bootstrapping")]
    NotReady,
    #[error("this replica's Lamport time is at the ceiling its peers accept; try again later")]
    ClockAhead,
}

/// A write made at this replica, ready to be answered and replicated.
#[derive(Debug)]
pub struct LocalWrite {
    /// Whether the key held a value before (`replaced` rather than `created`).
    pub existed: bool,
    pub write: Write,
    /// The metadata to return to the client.
    pub metadata: Clock,
}

/// What became of a batch of replicated writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub applied: usize,
    pub duplicates: usize,
    pub buffered: usize,
    pub refused: usize,
}

/// What one replica sends another so that it catches up: the sender's clock and the
/// entries the receiver's clock misses, in key order, possibly one chunk of them.
///
/// A catch-up in chunks keeps the clock of the *first* chunk and merges it after the last:
/// every write that clock covers was applied at the sender when the first chunk was made,
/// so every later chunk still holds it or something that beats it. Entries applied before
/// the clock is merged are ahead of the receiver's clock, which is safe: a read returns
/// metadata naming the write it read, so anything causally after it waits for the clock.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Delta {
    pub clock: Clock,
    pub entries: Vec<(Key, Entry)>,
    /// The key to continue after, when more chunks follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Key>,
    /// The sender's horizon (see the module documentation).
    #[serde(default, skip_serializing_if = "Clock::is_empty")]
    pub horizon: Clock,
    /// True when the chunk holds every record of its key range, because the receiver's
    /// clock does not cover the sender's horizon.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

#[derive(Debug)]
pub struct Replica {
    addr: Addr,
    me: Option<Incarnation>,
    lamport: u64,
    clock: Clock,
    store: Store,
    buffer: DeliveryBuffer,
    /// Changes not yet taken by the driver, when this replica keeps a journal.
    journal: Option<Vec<Record>>,
    /// The highest epoch of an earlier life of this process, from its journal.
    past_epoch: Option<u64>,
    /// See the module documentation.
    horizon: Clock,
}

impl Replica {
    pub fn new(addr: Addr, buffer_capacity: usize) -> Self {
        Replica {
            addr,
            me: None,
            lamport: 0,
            clock: Clock::new(),
            store: Store::new(),
            buffer: DeliveryBuffer::new(buffer_capacity),
            journal: None,
            past_epoch: None,
            horizon: Clock::new(),
        }
    }

    /// A replica that records every change of its state (see `journal`), rebuilt from the
    /// records a previous life left (none for a new replica). It has no incarnation yet.
    pub fn with_journal(
        addr: Addr,
        buffer_capacity: usize,
        records: impl IntoIterator<Item = Record>,
    ) -> Self {
        let mut replica = Replica::new(addr, buffer_capacity);
        let mut life: Option<Incarnation> = None;
        for record in records {
            match record {
                Record::Applied {
                    key,
                    entry,
                    advance,
                } => {
                    if advance {
                        replica.clock.advance(&entry.dot);
                    }
                    replica.apply_entry(key, entry);
                }
                Record::ClockMerged { clock } => match &life {
                    Some(me) => replica.clock.merge_except(&clock, me),
                    None => replica.clock.merge(&clock),
                },
                Record::Retired { addr, floor } => replica.clock.raise_floor(&addr, floor),
                Record::Started { incarnation } => {
                    // The next life's epoch goes above it, writes or not.
                    replica.past_epoch = replica.past_epoch.max(Some(incarnation.epoch));
                    life = Some(incarnation);
                }
                Record::Horizon { horizon } => replica.horizon.merge(&horizon),
                Record::Dropped { key } => replica.store.remove(key.as_bytes()),
            }
            // Replay holds no lock: it merges as it goes, a step's worth per record.
            replica.store.end_step();
        }
        replica.journal = Some(Vec::new());
        replica
    }

    /// Records that rebuild this replica's whole durable state (a snapshot): its clock,
    /// its lives (so that the next one goes above them), then every store entry.
    pub fn snapshot_records(&self) -> Vec<Record> {
        let mut records = self.snapshot_head();
        let mut after = None;
        loop {
            let (mut chunk, next) = self.snapshot_chunk(after.as_deref(), usize::MAX);
            records.append(&mut chunk);
            match next {
                Some(key) => after = Some(key),
                None => return records,
            }
        }
    }

    /// The first records of a snapshot: the clock and the lives. A snapshot may be taken
    /// in pieces (the head, then chunks of entries taken at later moments) as long as the
    /// journal from the head's moment on is replayed after it: every record is a join, so
    /// an entry that a chunk already holds is applied again harmlessly, and an entry a
    /// chunk holds ahead of the head's clock is one "applied ahead of its clock", as in a
    /// catch-up (see `journal`).
    pub fn snapshot_head(&self) -> Vec<Record> {
        let mut records = vec![Record::ClockMerged {
            clock: self.clock.clone(),
        }];
        let lives = self
            .past_epoch
            .map(|e| Incarnation::new(self.addr.clone(), e));
        for incarnation in lives.into_iter().chain(self.me.clone()) {
            records.push(Record::Started { incarnation });
        }
        records.extend(self.horizon_record());
        records
    }

    fn horizon_record(&self) -> Option<Record> {
        (!self.horizon.is_empty()).then(|| Record::Horizon {
            horizon: self.horizon.clone(),
        })
    }

    /// The store's entries after key `after`, in key order, until their sizes reach
    /// about `max_bytes`, as snapshot records; and the key to continue after (`None`
    /// when the store is done).
    pub fn snapshot_chunk(
        &self,
        after: Option<&str>,
        max_bytes: usize,
    ) -> (Vec<Record>, Option<Key>) {
        // Against an empty clock every record visited is sent: the bytes bound the scan.
        let (entries, next) =
            (self.store).missing_from(&Clock::new(), after, max_bytes, usize::MAX);
        // The horizon as of this chunk, which may lack tombstones collected since the head.
        let horizon = self.horizon_record();
        let entries = entries.into_iter().map(|(key, entry)| Record::Applied {
            key,
            entry,
            advance: false,
        });
        (horizon.into_iter().chain(entries).collect(), next)
    }

    /// True when this replica records its changes.
    pub fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// How many changes are recorded and not yet taken.
    pub fn journal_len(&self) -> usize {
        self.journal.as_ref().map_or(0, Vec::len)
    }

    /// The changes recorded since the last call (empty without a journal).
    pub fn take_journal(&mut self) -> Vec<Record> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&mut self, record: impl FnOnce() -> Record) {
        if let Some(journal) = &mut self.journal {
            journal.push(record());
        }
    }

    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// This life's identity, once bootstrapped.
    pub fn incarnation(&self) -> Option<&Incarnation> {
        self.me.as_ref()
    }

    pub fn is_ready(&self) -> bool {
        self.me.is_some()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Housekeeping for an idle moment (see [`Store::maintain`]); returns whether the
    /// store finished packing recent writes.
    pub fn maintain(&mut self) -> bool {
        self.store.maintain()
    }

    /// Ends a step of the protocol machine (see [`Store::end_step`]).
    pub fn end_step(&mut self) {
        self.store.end_step();
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Ends bootstrap: picks this life's epoch, above `not_before` (the wall clock in
    /// microseconds, which orders lives even when no peer remembers the last one) and above
    /// every epoch of this address in the clock.
    pub fn start_incarnation(&mut self, not_before: u64) -> &Incarnation {
        let known = (self.clock.max_epoch_of(&self.addr))
            .max(self.past_epoch)
            .map_or(0, |e| e.saturating_add(1));
        let inc = Incarnation::new(self.addr.clone(), not_before.max(known));
        self.record(|| Record::Started {
            incarnation: inc.clone(),
        });
        self.me.insert(inc)
    }

    /// Takes `inc` as this life's identity and forgets what the clock says of it, so that
    /// its counter starts again at 1 (a planted bug: identities of an earlier life are
    /// named again).
    #[cfg(test)]
    pub fn force_incarnation(&mut self, inc: Incarnation) {
        let entries = (self.clock.entries())
            .filter(|(i, _)| **i != inc)
            .map(|(i, seq)| (i.clone(), seq));
        let mut clock = Clock::from_entries(entries);
        for (addr, floor) in self.clock.floors() {
            clock.raise_floor(addr, floor);
        }
        self.clock = clock;
        self.me = Some(inc);
    }

    /// True when every write that `deps` names is applied here.
    pub fn satisfies(&self, deps: &Clock) -> bool {
        self.is_ready() && self.clock.covers_clock(deps)
    }

    pub fn read(&self, key: &str) -> Read<'_> {
        self.store.read(key)
    }

    /// Makes a local write (`value: None` deletes). The caller has checked `satisfies(deps)`.
    /// The write is checked against `limits` as the peers will check it, so that this
    /// replica never makes a write they refuse.
    pub fn write(
        &mut self,
        key: Key,
        value: Option<Value>,
        deps: &Clock,
        limits: &Limits,
    ) -> Result<LocalWrite, CoreError> {
        let inc = self.me.clone().ok_or(CoreError::NotReady)?;
        let dot = Dot {
            seq: self.clock.get(&inc).saturating_add(1),
            inc,
        };
        let lamport = self.lamport.saturating_add(1);
        if lamport > limits.max_lamport || dot.seq > MAX_COUNTER {
            return Err(CoreError::ClockAhead);
        }
        self.lamport = lamport;
        let entry = Entry {
            value,
            lamport: self.lamport,
            dot: dot.clone(),
        };
        let existed = self.store.contains(&key);
        self.store.apply(key.clone(), entry.clone());
        self.clock.advance(&dot);
        self.record(|| Record::Applied {
            key: key.clone(),
            entry: entry.clone(),
            advance: true,
        });
        let deps = deps.without_retired(&self.clock);
        let mut metadata = deps.clone();
        metadata.advance(&dot);
        Ok(LocalWrite {
            existed,
            write: Write { key, entry, deps },
            metadata,
        })
    }

    /// The metadata answering a request that carried `deps` and saw the write `dot`:
    /// covers both, without entries that every member already has retired.
    pub fn metadata_with(&self, deps: &Clock, dot: Option<&Dot>) -> Clock {
        let mut metadata = deps.without_retired(&self.clock);
        if let Some(dot) = dot {
            metadata.advance(dot);
        }
        metadata
    }

    /// Takes writes replicated from a peer, applying each as soon as it is deliverable.
    pub fn receive(&mut self, writes: impl IntoIterator<Item = Write>) -> Received {
        let mut received = Received::default();
        for write in writes {
            if self.me.as_ref() == Some(&write.entry.dot.inc) {
                // Only this process makes writes of its own incarnation; a peer cannot.
                received.refused += 1;
                continue;
            }
            match self.buffer.offer(write, &self.clock) {
                Offer::Duplicate => received.duplicates += 1,
                Offer::Buffered => received.buffered += 1,
                Offer::Full => received.refused += 1,
            }
        }
        let applied = self.release_deliverable();
        received.buffered -= applied.min(received.buffered);
        received.applied = applied;
        received
    }

    fn release_deliverable(&mut self) -> usize {
        let released = self.buffer.release(&mut self.clock);
        let count = released.len();
        for write in released {
            self.record(|| Record::Applied {
                key: write.key.clone(),
                entry: write.entry.clone(),
                advance: true,
            });
            self.apply_entry(write.key, write.entry);
        }
        count
    }

    fn apply_entry(&mut self, key: Key, entry: Entry) {
        self.lamport = self.lamport.max(entry.lamport);
        self.store.apply(key, entry);
    }

    /// What a replica at `their` clock misses from this one: all of it.
    pub fn delta_for(&self, their: &Clock) -> Delta {
        self.delta_chunk(their, None, usize::MAX, usize::MAX)
    }

    /// One chunk of what a replica at `their` clock misses, keys after `after`, values up
    /// to about `max_bytes`, looking at up to `max_scanned` records (see
    /// `Store::missing_from`): a chunk may hold no entry and still have a `next`.
    /// A full chunk (every record) when `their` does not cover this replica's horizon.
    pub fn delta_chunk(
        &self,
        their: &Clock,
        after: Option<&str>,
        max_bytes: usize,
        max_scanned: usize,
    ) -> Delta {
        let full = !their.covers_clock(&self.horizon);
        let missing_from = match full {
            true => &Clock::new(),
            false => their,
        };
        let (entries, next) =
            (self.store).missing_from(missing_from, after, max_bytes, max_scanned);
        Delta {
            clock: self.clock.clone(),
            entries,
            next,
            horizon: self.horizon.clone(),
            full,
        }
    }

    /// Applies one chunk of a pull that asked for keys after `after` (see `Delta`). A full
    /// chunk also drops the records of its key range, `(after, next]` (the range the
    /// sender scanned for it), that the sender does not hold although its clock covers
    /// their writes: the sender collected the tombstones that beat them. The clock follows with `merge_clock`, the horizon with `adopt_horizon`.
    pub fn merge_chunk(&mut self, after: Option<&str>, chunk: Delta) -> usize {
        let dropped = match chunk.full {
            true => self.drop_collected(after, &chunk),
            false => 0,
        };
        dropped + self.merge_entries(chunk.entries)
    }

    fn drop_collected(&mut self, after: Option<&str>, chunk: &Delta) -> usize {
        let held: std::collections::BTreeSet<&str> =
            chunk.entries.iter().map(|(key, _)| &**key).collect();
        let mut dropped = 0;
        for (key, dot) in self.store.between(after, chunk.next.as_deref()) {
            if !held.contains(&*key) && chunk.clock.covers(&dot) {
                self.record(|| Record::Dropped { key: key.clone() });
                self.store.remove(key.as_bytes());
                dropped += 1;
            }
        }
        dropped
    }

    /// Takes a peer's horizon once this replica's clock covers it (after a whole pull
    /// from that peer): this replica may now lack what that peer collected.
    pub fn adopt_horizon(&mut self, horizon: &Clock) {
        if self.clock.covers_clock(horizon) {
            self.widen_horizon(horizon);
        }
    }

    /// Widens the horizon to cover `horizon`, recording it, unless it already does.
    fn widen_horizon(&mut self, horizon: &Clock) {
        if self.horizon.covers_clock(horizon) {
            return;
        }
        self.horizon.merge(horizon);
        self.record(|| Record::Horizon {
            horizon: horizon.clone(),
        });
    }

    pub fn horizon(&self) -> &Clock {
        &self.horizon
    }

    /// Starts collecting the tombstones whose delete `stable` covers: widens the horizon
    /// (so that it is recorded before any tombstone goes). The caller must know that no
    /// write that such a delete beats can still arrive here (see `machine::peers`).
    pub fn begin_collection(&mut self, stable: &Clock) {
        self.widen_horizon(stable);
    }

    /// Collects up to `max` tombstones after `after` whose delete `stable` covers;
    /// returns how many and where to continue (see `Store::collect`). `stable` must be
    /// within the horizon ([`Replica::begin_collection`]).
    pub fn collect_tombstones(
        &mut self,
        stable: &Clock,
        after: Option<&[u8]>,
        max: usize,
    ) -> (usize, Option<Box<[u8]>>) {
        self.store.collect(stable, after, max)
    }

    /// Merges a whole delta (entries, then clock). Returns how many entries changed.
    pub fn merge(&mut self, delta: Delta) -> usize {
        self.merge_entries(delta.entries) + self.merge_clock(&delta.clock)
    }

    /// Applies the entries of a delta chunk; the clock follows with `merge_clock`.
    /// Entries claiming writes of this incarnation that it never made are dropped.
    pub fn merge_entries(&mut self, entries: Vec<(Key, Entry)>) -> usize {
        let mut changed = 0;
        for (key, entry) in entries {
            if self.me.as_ref() == Some(&entry.dot.inc) && !self.clock.covers(&entry.dot) {
                continue;
            }
            self.lamport = self.lamport.max(entry.lamport);
            if let Some(journal) = &mut self.journal {
                journal.push(Record::Applied {
                    key: key.clone(),
                    entry: entry.clone(),
                    advance: false,
                });
            }
            changed += usize::from(self.store.apply(key, entry));
        }
        changed
    }

    /// Merges the clock of a delta whose entries are all applied, then applies whatever
    /// buffered writes that unblocked; returns how many.
    /// A peer's clock never advances or retires this replica's own entry.
    pub fn merge_clock(&mut self, clock: &Clock) -> usize {
        self.record(|| Record::ClockMerged {
            clock: clock.clone(),
        });
        match &self.me {
            Some(me) => self.clock.merge_except(clock, me),
            None => self.clock.merge(clock),
        }
        self.release_deliverable()
    }

    /// Retires every incarnation of `addr` below `floor` (see `Clock::raise_floor`).
    pub fn retire(&mut self, addr: &Addr, floor: u64) {
        self.record(|| Record::Retired {
            addr: addr.clone(),
            floor,
        });
        self.clock.raise_floor(addr, floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::store::tests::value;
    use proptest::prelude::*;

    fn ready(addr: &str, epoch: u64) -> Replica {
        let mut r = Replica::new(addr.into(), 1000);
        r.start_incarnation(epoch);
        r
    }

    fn put(r: &mut Replica, key: &str, v: &str, deps: &Clock) -> LocalWrite {
        r.write(key.into(), Some(value(v)), deps, &Limits::loose())
            .unwrap()
    }

    fn value_of(r: &Replica, key: &str) -> Option<String> {
        match r.read(key) {
            Read::Found { value, .. } => Some(value.to_json()),
            _ => None,
        }
    }

    #[test]
    fn a_replica_cannot_write_before_bootstrap() {
        let mut r = Replica::new("a".into(), 10);
        assert_eq!(
            r.write(
                "k".into(),
                Some(value("1")),
                &Clock::new(),
                &Limits::loose()
            )
            .unwrap_err(),
            CoreError::NotReady
        );
        assert!(!r.satisfies(&Clock::new()));
    }

    #[test]
    fn local_writes_report_created_then_replaced() {
        let mut r = ready("a", 1);
        assert!(!put(&mut r, "k", "1", &Clock::new()).existed);
        assert!(put(&mut r, "k", "2", &Clock::new()).existed);
        assert_eq!(value_of(&r, "k").as_deref(), Some("2"));
    }

    #[test]
    fn metadata_covers_request_and_write() {
        let mut a = ready("a", 1);
        let m1 = put(&mut a, "x", "1", &Clock::new()).metadata;
        let b = ready("b", 1);
        let m2 = b.metadata_with(&m1, None);
        assert!(m2.covers_clock(&m1));
        assert!(!b.satisfies(&m1), "b has not applied a's write");
    }

    #[test]
    fn a_dependent_write_waits_for_its_dependency() {
        let mut a = ready("a", 1);
        let mut b = ready("b", 1);
        let mut c = ready("c", 1);
        let wx = put(&mut a, "x", "1", &Clock::new());
        b.receive([wx.write.clone()]);
        let wy = put(&mut b, "y", "2", &wx.metadata);
        let got = c.receive([wy.write]);
        assert_eq!(got.buffered, 1);
        assert_eq!(value_of(&c, "y"), None, "y must wait for x");
        let got = c.receive([wx.write]);
        assert_eq!(got.applied, 2);
        assert_eq!(value_of(&c, "y").as_deref(), Some("2"));
    }

    #[test]
    fn a_causally_later_write_wins_even_from_a_smaller_incarnation() {
        let mut z = ready("z", 1);
        let mut a = ready("a", 1);
        let first = put(&mut z, "k", "\"z\"", &Clock::new());
        a.receive([first.write]);
        let second = put(&mut a, "k", "\"a\"", &first.metadata);
        z.receive([second.write]);
        assert_eq!(value_of(&z, "k").as_deref(), Some("\"a\""));
    }

    #[test]
    fn a_restarted_replica_never_reuses_an_old_identity() {
        let mut old = ready("a", 100);
        let mut b = ready("b", 1);
        let w = put(&mut old, "k", "1", &Clock::new());
        b.receive([w.write.clone()]);
        // Restarted with a wall clock that went backwards: the peer's clock wins.
        let mut new = Replica::new("a".into(), 10);
        new.merge(b.delta_for(new.clock()));
        let inc = new.start_incarnation(5).clone();
        assert!(inc.epoch > 100);
        let w2 = put(&mut new, "k2", "2", &w.metadata);
        assert_ne!(w2.write.entry.dot, w.write.entry.dot);
        assert!(!b.clock().covers(&w2.write.entry.dot));
    }

    #[test]
    fn a_lamport_time_at_the_ceiling_leaves_writes_possible() {
        let now = 1_800_000_000_000_000;
        let mut a = ready("a", 1);
        let mut peer = ready("p", 1);
        let mut w = put(&mut peer, "k", "1", &Clock::new()).write;
        w.entry.lamport = now;
        assert!(w.entry.validate(&Limits::at(now)).is_ok());
        assert!(w.entry.validate(&Limits::at(now - 1)).is_err());
        assert_eq!(a.receive([w]).applied, 1);
        // At the same instant the next write would be above what peers accept: refused
        // here rather than made and then refused by every peer.
        let at_now = a.write(
            "x".into(),
            Some(value("2")),
            &Clock::new(),
            &Limits::at(now),
        );
        assert_eq!(at_now.unwrap_err(), CoreError::ClockAhead);
        // A microsecond later it passes the peers' check.
        let later = Limits::at(now + 1);
        let mine = a
            .write("after".into(), Some(value("2")), &Clock::new(), &later)
            .unwrap();
        assert_eq!(mine.write.entry.lamport, now + 1);
        assert!(mine.write.entry.validate(&later).is_ok());
    }

    #[test]
    fn a_peer_cannot_raise_or_retire_this_replicas_own_entry() {
        let mut a = ready("a", 5);
        let first = put(&mut a, "k", "1", &Clock::new());
        let me = first.write.entry.dot.inc.clone();
        let mut forged = Clock::from_entries([(me.clone(), 1 << 40)]);
        forged.raise_floor(&me.addr, me.epoch + 10);
        a.merge_clock(&forged);
        assert_eq!(a.clock().get(&me), 1, "own entry untouched");
        let forged_entry = Entry {
            value: Some(value("3")),
            lamport: 3,
            dot: Dot {
                inc: me.clone(),
                seq: 7,
            },
        };
        assert_eq!(a.merge_entries(vec![("forged".into(), forged_entry)]), 0);
        let second = put(&mut a, "k", "2", &first.metadata);
        assert_eq!(second.write.entry.dot.seq, 2, "the counter keeps advancing");
        assert_eq!(value_of(&a, "forged"), None);
    }

    #[test]
    fn a_peer_cannot_forge_writes_of_this_incarnation() {
        let mut a = ready("a", 1);
        let mut twin = ready("a", 1);
        let forged = put(&mut twin, "k", "1", &Clock::new()).write;
        assert_eq!(a.receive([forged]).refused, 1);
        assert!(matches!(a.read("k"), Read::Missing));
    }

    #[test]
    fn a_delta_brings_a_replica_up_to_date() {
        let mut a = ready("a", 1);
        put(&mut a, "x", "1", &Clock::new());
        put(&mut a, "x", "2", &Clock::new());
        a.write("gone".into(), None, &Clock::new(), &Limits::loose())
            .unwrap();
        let mut fresh = Replica::new("b".into(), 10);
        let delta = a.delta_for(fresh.clock());
        assert_eq!(delta.entries.len(), 2, "one entry per key, not per write");
        fresh.merge(delta);
        assert_eq!(value_of(&fresh, "x").as_deref(), Some("2"));
        assert!(matches!(fresh.read("gone"), Read::Deleted { .. }));
        assert_eq!(fresh.clock(), a.clock());
        assert!(a.delta_for(fresh.clock()).entries.is_empty());
    }

    /// Pulls everything `from` has for `to`, chunk by chunk, as a catch-up does.
    fn pull(to: &mut Replica, from: &Replica, max_bytes: usize, max_scanned: usize) {
        let start = to.clock().clone();
        let mut after: Option<Key> = None;
        let mut first_clock = None;
        loop {
            let chunk = from.delta_chunk(&start, after.as_deref(), max_bytes, max_scanned);
            first_clock.get_or_insert_with(|| chunk.clock.clone());
            let next = chunk.next.clone();
            let horizon = chunk.horizon.clone();
            to.merge_chunk(after.as_deref(), chunk);
            after = next;
            if after.is_none() {
                to.merge_clock(first_clock.as_ref().unwrap());
                to.adopt_horizon(&horizon);
                return;
            }
        }
    }

    #[test]
    fn a_replica_behind_the_horizon_drops_what_collected_tombstones_beat() {
        let mut a = ready("a", 1);
        for key in ["k1", "k2", "k3", "k4"] {
            put(&mut a, key, "1", &Clock::new());
        }
        let mut b = Replica::new("b".into(), 10);
        b.merge(a.delta_for(b.clock()));
        let b_before = b.clock().clone();
        // a deletes k2 and k4 and collects both tombstones (every member applied them).
        for key in ["k2", "k4"] {
            a.write(key.into(), None, &Clock::new(), &Limits::loose())
                .unwrap();
        }
        let stable = a.clock().clone();
        a.begin_collection(&stable);
        assert_eq!(a.collect_tombstones(&stable, None, 10), (2, None));
        assert_eq!(a.store().iter().count(), 2);
        // b lost the deletes (it never applied them): a sends it full chunks.
        assert!(a.delta_chunk(&b_before, None, usize::MAX, usize::MAX).full);
        pull(
            &mut b,
            &a,
            2 * crate::protocol::store::ENTRY_OVERHEAD_BYTES,
            usize::MAX,
        );
        let keys: Vec<String> = b.store().iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["k1", "k3"], "k2 and k4 are dropped, not resurrected");
        assert_eq!(b.clock(), a.clock());
        assert_eq!(b.horizon(), a.horizon(), "b now lacks what a collected");
        // Once b covers the horizon, chunks are deltas again.
        assert!(!a.delta_chunk(b.clock(), None, usize::MAX, usize::MAX).full);
        // A write a has not seen survives a full chunk.
        let mut c = ready("c", 1);
        put(&mut c, "k2", "\"c\"", &Clock::new());
        pull(&mut c, &a, usize::MAX, usize::MAX);
        assert_eq!(value_of(&c, "k2").as_deref(), Some("\"c\""));
    }

    /// `a` holds k1..k8 and has deleted, then collected, k2, k5, k7 and k8; `b` copied `a`
    /// before the deletes, and keeps a journal (emptied here).
    fn behind_the_horizon() -> (Replica, Replica) {
        let mut a = ready("a", 1);
        for i in 1..=8 {
            put(&mut a, &format!("k{i}"), "1", &Clock::new());
        }
        let mut b = Replica::with_journal("b".into(), 10, []);
        b.merge(a.delta_for(b.clock()));
        b.take_journal();
        for key in ["k2", "k5", "k7", "k8"] {
            a.write(key.into(), None, &Clock::new(), &Limits::loose())
                .unwrap();
        }
        let stable = a.clock().clone();
        a.begin_collection(&stable);
        assert_eq!(a.collect_tombstones(&stable, None, 10), (4, None));
        (a, b)
    }

    #[test]
    fn full_chunks_with_any_limits_drop_exactly_the_collected_records() {
        let entry = crate::protocol::store::ENTRY_OVERHEAD_BYTES;
        let limits = [(usize::MAX, usize::MAX), (0, usize::MAX), (2 * entry, 3)];
        let scans = (0..=5).map(|scan| (usize::MAX, scan));
        for (max_bytes, max_scanned) in limits.into_iter().chain(scans) {
            let (a, mut b) = behind_the_horizon();
            pull(&mut b, &a, max_bytes, max_scanned);
            let keys: Vec<String> = b.store().iter().map(|(k, _)| k.to_string()).collect();
            assert_eq!(keys, ["k1", "k3", "k4", "k6"], "{max_bytes} {max_scanned}");
            let dropped: Vec<String> = (b.take_journal().into_iter())
                .filter_map(|record| match record {
                    Record::Dropped { key } => Some(key.to_string()),
                    _ => None,
                })
                .collect();
            assert_eq!(dropped, ["k2", "k5", "k7", "k8"], "each once, nothing else");
            assert_eq!(b.clock(), a.clock());
            assert_eq!(b.horizon(), a.horizon());
        }
    }

    /// Times the holds of a catch-up (one `delta_chunk` at the sender, one `merge_chunk`
    /// at the receiver) on a large store, for the chunk bounds in `machine::peers`. Run
    /// with `cargo test --release --lib chunk_holds -- --ignored --nocapture`; the numbers
    /// behind the constants are in docs/ARCHITECTURE.md ("Locking").
    #[test]
    #[ignore = "a measurement: slow, and meaningful only in release"]
    fn chunk_holds() {
        let small = format!("\"{}\"", "v".repeat(30));
        let large = format!("\"{}\"", "v".repeat(64 * 1024 - 2));
        for (keys, text) in [(1_000_000, &small), (4_000, &large)] {
            let mut a = ready("a", 1);
            for i in 0..keys {
                put(&mut a, &format!("key{i:07}"), text, &Clock::new());
            }
            println!("{keys} keys x {} B values", text.len());
            // A bootstrap: every record is sent, the bytes bound the chunk.
            for max_bytes in [4 << 20, 1 << 20, 256 << 10, 128 << 10, 64 << 10] {
                time_pull(&a, &Clock::new(), max_bytes, usize::MAX);
            }
            // A puller that misses nothing: the scan bounds the chunk.
            for max_scanned in [usize::MAX, 16 << 10, 8 << 10, 4 << 10] {
                time_pull(&a, a.clock(), usize::MAX, max_scanned);
            }
        }
    }

    /// Pulls everything `from` has for a receiver at `their` and prints the slowest and
    /// the median serve and merge of a chunk.
    fn time_pull(from: &Replica, their: &Clock, max_bytes: usize, max_scanned: usize) {
        use std::time::{Duration, Instant};
        let mut to = Replica::with_journal("b".into(), 10, []);
        to.merge_clock(their);
        // The thread's CPU time tells work from the machine preempting the test.
        let cpu = || {
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID);
            now.map_or(Duration::ZERO, Duration::from)
        };
        let (mut serve, mut merge): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
        let mut merge_cpu: Vec<Duration> = Vec::new();
        let mut after: Option<Key> = None;
        loop {
            let started = Instant::now();
            let chunk = from.delta_chunk(their, after.as_deref(), max_bytes, max_scanned);
            serve.push(started.elapsed());
            let next = chunk.next.clone();
            let (started, cpu_started) = (Instant::now(), cpu());
            to.merge_chunk(after.as_deref(), chunk);
            merge.push(started.elapsed());
            merge_cpu.push(cpu().saturating_sub(cpu_started));
            to.take_journal();
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        let stats = |mut all: Vec<Duration>| {
            all.sort();
            let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
            let over = all.iter().filter(|d| d.as_micros() > 1000).count();
            let (median, p99, max) = (at(0.5), at(0.99), at(1.0));
            format!("median {median:5.0} p99 {p99:5.0} max {max:6.0} us, {over:4} > 1 ms")
        };
        let limit = |n: usize| match n {
            usize::MAX => "none".to_string(),
            n => n.to_string(),
        };
        println!(
            "  bytes {:>8} scan {:>6} chunks {:>5}: serve {}; merge {}; merge CPU {}",
            limit(max_bytes),
            limit(max_scanned),
            serve.len(),
            stats(serve),
            stats(merge),
            stats(merge_cpu),
        );
    }

    #[test]
    fn horizon_and_drops_survive_a_replay() {
        let mut a = Replica::with_journal("a".into(), 10, []);
        a.start_incarnation(1);
        put(&mut a, "k", "1", &Clock::new());
        let stable = a.clock().clone();
        a.begin_collection(&stable);
        a.store.remove(b"k");
        a.record(|| Record::Dropped { key: "k".into() });
        let records = a.take_journal();
        let back = Replica::with_journal("a".into(), 10, records);
        assert_eq!(back.horizon(), &stable);
        assert!(matches!(back.read("k"), Read::Missing));
        let snapshot = Replica::with_journal("a".into(), 10, a.snapshot_records());
        assert_eq!(snapshot.horizon(), &stable);
    }

    #[test]
    fn a_delta_in_chunks_equals_a_whole_delta() {
        let mut a = ready("a", 1);
        for i in 0..20 {
            put(&mut a, &format!("k{i:02}"), &i.to_string(), &Clock::new());
        }
        let mut chunked = Replica::new("b".into(), 10);
        let start = chunked.clock().clone();
        let first = a.delta_chunk(&start, None, 8, usize::MAX);
        let first_clock = first.clock.clone();
        let mut next = first.next.clone();
        chunked.merge_entries(first.entries);
        // A write in the middle of the transfer, to a key already sent.
        put(&mut a, "k00", "\"late\"", &Clock::new());
        while let Some(after) = next {
            let chunk = a.delta_chunk(&start, Some(&after), 8, usize::MAX);
            next = chunk.next.clone();
            chunked.merge_entries(chunk.entries);
        }
        chunked.merge_clock(&first_clock);
        assert_eq!(chunked.store().live_keys(), 20);
        assert!(
            !chunked
                .clock()
                .covers(&crate::protocol::causal::clock::tests::dot("a", 1, 21))
        );
        chunked.merge(a.delta_for(chunked.clock()));
        assert_eq!(value_of(&chunked, "k00").as_deref(), Some("\"late\""));
        assert_eq!(chunked.clock(), a.clock());
    }

    #[test]
    fn a_merge_releases_buffered_writes() {
        let mut a = ready("a", 1);
        let mut b = ready("b", 1);
        let w1 = put(&mut a, "x", "1", &Clock::new());
        let w2 = put(&mut a, "x", "2", &w1.metadata);
        let w3 = put(&mut a, "x", "3", &w2.metadata);
        b.receive([w3.write]);
        assert_eq!(b.buffered(), 1);
        let mut c = ready("c", 1);
        c.receive([w1.write, w2.write]);
        b.merge(c.delta_for(b.clock()));
        assert_eq!(b.buffered(), 0);
        assert_eq!(value_of(&b, "x").as_deref(), Some("3"));
    }

    /// One step of a random three-replica history.
    #[derive(Clone, Debug)]
    enum Step {
        /// Replica `r` writes `key` as a client that last talked to replica `seen`.
        Write {
            r: usize,
            key: u8,
            delete: bool,
            seen: usize,
        },
        /// Replica `to` receives everything `from` made so far.
        Deliver { from: usize, to: usize },
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 0..4u8, any::<bool>(), 0..3usize).prop_map(|(r, key, delete, seen)| {
                Step::Write {
                    r,
                    key,
                    delete,
                    seen,
                }
            }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Deliver { from, to }),
        ]
    }

    /// Runs a history; returns the replicas and every write made.
    fn run(steps: &[Step]) -> (Vec<Replica>, Vec<Write>) {
        let replicas: Vec<Replica> = ["a", "b", "c"].iter().map(|n| ready(n, 1)).collect();
        run_on(replicas, steps)
    }

    fn run_on(mut replicas: Vec<Replica>, steps: &[Step]) -> (Vec<Replica>, Vec<Write>) {
        let mut sessions = vec![Clock::new(); 3];
        let mut made: Vec<Vec<Write>> = vec![Vec::new(); 3];
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Step::Write {
                    r,
                    key,
                    delete,
                    seen,
                } => {
                    let deps = sessions[seen].clone();
                    if !replicas[r].satisfies(&deps) {
                        continue;
                    }
                    let v = (!delete).then(|| value(&i.to_string()));
                    let w = replicas[r]
                        .write(key.to_string().into(), v, &deps, &Limits::loose())
                        .unwrap();
                    sessions[seen] = w.metadata;
                    made[r].push(w.write);
                }
                Step::Deliver { from, to } if from != to => {
                    let writes = made[from].clone();
                    replicas[to].receive(writes);
                }
                Step::Deliver { .. } => {}
            }
        }
        (replicas, made.into_iter().flatten().collect())
    }

    fn snapshot(r: &Replica) -> Vec<(String, Option<String>, u64)> {
        let mut all: Vec<_> = r
            .store()
            .iter()
            .map(|(k, e)| {
                (
                    k.to_string(),
                    e.value.as_ref().map(|v| v.get().to_string()),
                    e.lamport,
                )
            })
            .collect();
        all.sort();
        all
    }

    proptest! {
        /// A replica rebuilt from its whole journal is the replica; rebuilt from any
        /// prefix (a crash), it is causally closed: its clock covers only writes whose
        /// effect its store holds.
        #[test]
        fn replaying_the_journal_rebuilds_the_replica(
            steps in prop::collection::vec(arb_step(), 1..40),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut a = Replica::with_journal("a".into(), 1000, Vec::new());
            a.start_incarnation(1);
            let replicas = vec![a, ready("b", 1), ready("c", 1)];
            let (mut replicas, _) = run_on(replicas, &steps);
            let (b, c) = (replicas[1].delta_for(replicas[0].clock()), replicas[2].delta_for(&Clock::new()));
            replicas[0].merge(b);
            replicas[0].merge(c);
            let a = &mut replicas[0];
            let records = a.take_journal();
            let rebuilt = Replica::with_journal("a".into(), 1000, records.clone());
            prop_assert_eq!(snapshot(&rebuilt), snapshot(a));
            prop_assert_eq!(rebuilt.clock(), a.clock());
            let prefix = cut.index(records.len() + 1);
            let partial = Replica::with_journal("a".into(), 1000, records[..prefix].to_vec());
            for (key, entry) in a.store().iter() {
                if partial.clock().covers(&entry.dot) {
                    let held = partial.store().iter().find(|(k, _)| *k == key);
                    prop_assert!(
                        held.is_some_and(|(_, e)| e.lamport >= entry.lamport),
                        "the clock covers {:?} but the store lacks {}", entry.dot, key
                    );
                }
            }
            if prefix > 0 {
                // The first record is the life's start: a new life goes above it.
                let mut again = Replica::with_journal("a".into(), 1000, records[..prefix].to_vec());
                let next = again.start_incarnation(0).clone();
                prop_assert!(next.epoch > 1, "a new life never reuses the epoch of the last");
            }
        }

        /// A pull in chunks of any size and scan length, full or not, brings what one
        /// whole delta brings: the same entries, in the same order, and the same replica.
        #[test]
        fn a_delta_in_chunks_of_any_limits_equals_the_whole_delta(
            steps in prop::collection::vec(arb_step(), 1..40),
            max_bytes in 0..4 * crate::protocol::store::ENTRY_OVERHEAD_BYTES,
            max_scanned in 0usize..6,
            collect in any::<bool>(),
        ) {
            // The same history twice: one receiver pulls in chunks, the other at once.
            let (mut chunked, _) = run(&steps);
            let (mut whole, _) = run(&steps);
            for replicas in [&mut chunked, &mut whole] {
                if collect {
                    let stable = replicas[0].clock().clone();
                    replicas[0].begin_collection(&stable);
                    replicas[0].collect_tombstones(&stable, None, usize::MAX);
                }
            }
            let their = chunked[1].clock().clone();
            let delta = whole[0].delta_for(&their);
            let mut entries = Vec::new();
            let mut after: Option<Key> = None;
            loop {
                let chunk = chunked[0].delta_chunk(&their, after.as_deref(), max_bytes, max_scanned);
                prop_assert_eq!(chunk.full, delta.full);
                entries.extend(chunk.entries.iter().map(|(k, e)| (k.to_string(), e.lamport, e.dot.clone())));
                match chunk.next {
                    Some(key) => after = Some(key),
                    None => break,
                }
            }
            let want: Vec<_> = delta.entries.iter().map(|(k, e)| (k.to_string(), e.lamport, e.dot.clone())).collect();
            prop_assert_eq!(entries, want);

            let (from, to) = chunked.split_at_mut(1);
            pull(&mut to[0], &from[0], max_bytes, max_scanned);
            let horizon = delta.horizon.clone();
            let clock = delta.clock.clone();
            whole[1].merge_chunk(None, delta);
            whole[1].merge_clock(&clock);
            whole[1].adopt_horizon(&horizon);
            prop_assert_eq!(snapshot(&chunked[1]), snapshot(&whole[1]));
            prop_assert_eq!(chunked[1].clock(), whole[1].clock());
            prop_assert_eq!(chunked[1].horizon(), whole[1].horizon());
        }

        #[test]
        fn any_delivery_order_gives_the_same_store(
            steps in prop::collection::vec(arb_step(), 1..40),
            seed in any::<u64>(),
        ) {
            let (replicas, mut writes) = run(&steps);
            // Full exchange by replication: every replica receives every write.
            let mut by_replication: Vec<Replica> = ["x", "y"].iter().map(|n| ready(n, 1)).collect();
            by_replication[0].receive(writes.clone());
            // Another order: a seeded shuffle.
            let mut state = seed | 1;
            for i in (1..writes.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                writes.swap(i, (state % (i as u64 + 1)) as usize);
            }
            by_replication[1].receive(writes);
            prop_assert_eq!(by_replication[0].buffered(), 0);
            prop_assert_eq!(snapshot(&by_replication[0]), snapshot(&by_replication[1]));
            // Full exchange by anti-entropy deltas gives the same store again.
            let mut merged = ready("z", 1);
            for r in &replicas {
                merged.merge(r.delta_for(merged.clock()));
            }
            prop_assert_eq!(snapshot(&merged), snapshot(&by_replication[0]));
            prop_assert_eq!(merged.clock(), by_replication[0].clock());
        }
    }
}
