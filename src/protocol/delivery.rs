//! The delivery buffer: replicated writes wait here until they may be applied.
//!
//! # When a write may be applied
//!
//! A write `w` with dot `(i, n)` and dependencies `D` may be applied at a replica whose
//! clock is `C` exactly when `C[i] = n - 1` (every earlier write of its incarnation is
//! applied) and `C` covers `D` (every write its client had seen is applied). Writes that
//! arrive early wait, indexed by incarnation and sequence number, and are released as soon
//! as the clock allows; a write already covered by `C` is a duplicate and is dropped.
//!
//! The buffer is bounded: when full, new writes are refused and the caller relies on
//! anti-entropy to bring them later.

use std::collections::{BTreeMap, btree_map};

use serde::{Deserialize, Serialize};

use crate::protocol::causal::{Clock, Incarnation};
use crate::protocol::store::{Entry, Key};

/// A write as it travels between replicas.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Write {
    pub key: Key,
    pub entry: Entry,
    /// What the writing client's session had seen (the origin's own previous writes are
    /// implied by the sequence number).
    pub deps: Clock,
}

impl Write {
    /// Approximate size in bytes of the key and value, for batching.
    pub fn size(&self) -> usize {
        self.key.len() + self.entry.value.as_ref().map_or(0, |v| v.get().len())
    }

    /// True when this write may be applied on a replica at `clock`.
    pub fn is_deliverable(&self, clock: &Clock) -> bool {
        let dot = &self.entry.dot;
        clock.get(&dot.inc).checked_add(1) == Some(dot.seq) && clock.covers_clock(&self.deps)
    }
}

/// What became of a write offered to the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Already applied here.
    Duplicate,
    Buffered,
    /// The buffer is full; the write was dropped (anti-entropy will bring it).
    Full,
}

#[derive(Debug)]
pub struct DeliveryBuffer {
    pending: BTreeMap<Incarnation, BTreeMap<u64, Write>>,
    len: usize,
    capacity: usize,
}

impl DeliveryBuffer {
    pub fn new(capacity: usize) -> Self {
        DeliveryBuffer {
            pending: BTreeMap::new(),
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn offer(&mut self, write: Write, clock: &Clock) -> Offer {
        if clock.covers(&write.entry.dot) {
            return Offer::Duplicate;
        }
        let queue = self.pending.entry(write.entry.dot.inc.clone()).or_default();
        match queue.entry(write.entry.dot.seq) {
            btree_map::Entry::Occupied(_) => Offer::Duplicate,
            btree_map::Entry::Vacant(_) if self.len >= self.capacity => Offer::Full,
            btree_map::Entry::Vacant(slot) => {
                slot.insert(write);
                self.len += 1;
                Offer::Buffered
            }
        }
    }

    /// Removes and returns, in a causal order, every write that may now be applied,
    /// advancing `clock` past each; drops writes that `clock` already covers.
    pub fn release(&mut self, clock: &mut Clock) -> Vec<Write> {
        let mut released = Vec::new();
        loop {
            let before = released.len();
            for queue in self.pending.values_mut() {
                self.len -= drop_covered(queue, clock);
                while let Some(entry) = queue.first_entry() {
                    if !entry.get().is_deliverable(clock) {
                        break;
                    }
                    let write = entry.remove();
                    self.len -= 1;
                    clock.advance(&write.entry.dot);
                    released.push(write);
                }
            }
            if released.len() == before {
                break;
            }
        }
        self.pending.retain(|_, queue| !queue.is_empty());
        released
    }
}

/// Drops the writes at the front of `queue` that `clock` covers; returns how many.
fn drop_covered(queue: &mut BTreeMap<u64, Write>, clock: &Clock) -> usize {
    let mut dropped = 0;
    while let Some(entry) = queue.first_entry() {
        if !clock.covers(&entry.get().entry.dot) {
            break;
        }
        entry.remove();
        dropped += 1;
    }
    dropped
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::causal::clock::tests::dot;
    use crate::protocol::store::tests::value;

    pub fn write(key: &str, origin: &str, seq: u64, lamport: u64, deps: &[(&str, u64)]) -> Write {
        Write {
            key: key.into(),
            entry: Entry {
                value: Some(value(&lamport.to_string())),
                lamport,
                dot: dot(origin, 1, seq),
            },
            deps: Clock::from_entries(deps.iter().map(|(a, s)| (dot(a, 1, *s).inc, *s))),
        }
    }

    fn seqs(writes: &[Write]) -> Vec<(String, u64)> {
        writes
            .iter()
            .map(|w| (w.entry.dot.inc.addr.to_string(), w.entry.dot.seq))
            .collect()
    }

    #[test]
    fn in_order_writes_are_released_at_once() {
        let mut buffer = DeliveryBuffer::new(10);
        let mut clock = Clock::new();
        assert_eq!(
            buffer.offer(write("x", "a", 1, 1, &[]), &clock),
            Offer::Buffered
        );
        assert_eq!(seqs(&buffer.release(&mut clock)), [("a".into(), 1)]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn out_of_order_writes_wait_for_their_predecessor() {
        let mut buffer = DeliveryBuffer::new(10);
        let mut clock = Clock::new();
        buffer.offer(write("x", "a", 3, 3, &[]), &clock);
        buffer.offer(write("x", "a", 2, 2, &[]), &clock);
        assert!(buffer.release(&mut clock).is_empty());
        buffer.offer(write("x", "a", 1, 1, &[]), &clock);
        let released = buffer.release(&mut clock);
        assert_eq!(
            seqs(&released),
            [("a".into(), 1), ("a".into(), 2), ("a".into(), 3)]
        );
    }

    #[test]
    fn writes_wait_for_dependencies_on_other_origins() {
        let mut buffer = DeliveryBuffer::new(10);
        let mut clock = Clock::new();
        buffer.offer(write("y", "b", 1, 2, &[("a", 1)]), &clock);
        assert!(buffer.release(&mut clock).is_empty());
        buffer.offer(write("x", "a", 1, 1, &[]), &clock);
        assert_eq!(
            seqs(&buffer.release(&mut clock)),
            [("a".into(), 1), ("b".into(), 1)]
        );
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut buffer = DeliveryBuffer::new(10);
        let mut clock = Clock::new();
        buffer.offer(write("x", "a", 2, 2, &[]), &clock);
        assert_eq!(
            buffer.offer(write("x", "a", 2, 2, &[]), &clock),
            Offer::Duplicate
        );
        buffer.offer(write("x", "a", 1, 1, &[]), &clock);
        buffer.release(&mut clock);
        assert_eq!(
            buffer.offer(write("x", "a", 1, 1, &[]), &clock),
            Offer::Duplicate
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn writes_covered_by_a_merged_clock_are_dropped() {
        let mut buffer = DeliveryBuffer::new(10);
        let mut clock = Clock::new();
        buffer.offer(write("x", "a", 2, 2, &[]), &clock);
        buffer.offer(write("x", "a", 4, 4, &[]), &clock);
        clock.advance(&dot("a", 1, 3));
        assert_eq!(seqs(&buffer.release(&mut clock)), [("a".into(), 4)]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_full_buffer_refuses() {
        let mut buffer = DeliveryBuffer::new(1);
        let clock = Clock::new();
        buffer.offer(write("x", "a", 2, 2, &[]), &clock);
        assert_eq!(
            buffer.offer(write("x", "a", 3, 3, &[]), &clock),
            Offer::Full
        );
        assert_eq!(buffer.len(), 1);
    }
}
