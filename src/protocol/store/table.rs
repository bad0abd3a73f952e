//! The store's records in key order: immutable segments, plus a small sorted buffer of
//! recent writes that is merged into them in batches.
//!
//! # Why this shape
//!
//! Rewriting a packed block on every write churns the allocator, whose free fragments
//! then cost as much as the per-key headers we packed away. So writes go to `pending` (a
//! `BTreeMap`, one small allocation per key) and are merged into the segments in one
//! pass when `pending` reaches a fraction of the store, or when the store is idle
//! ([`Table::maintain`]). A merge rewrites only the segments whose key range received
//! writes, one at a time, so memory never holds the store twice. At rest, the store is its
//! segments' bytes, exactly allocated, and large values in the [`Slab`].
//!
//! # Invariants
//!
//! * Segments are in key order and do not overlap: every key of one is below the first
//!   key of the next. A key below every segment belongs to the first.
//! * A key in `pending` is newer than its record in the segments, if any: reads and
//!   scans look in `pending` first, and a merge drops the segment's record (freeing its
//!   slab slot).
//! * A removal ([`Table::remove`], the collection of a tombstone) is a pending entry too:
//!   it hides the segment's record until a merge drops both.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use super::record::{Raw, Stored, Text, Version};
use super::segment::{Builder, Segment};
use super::slab::{LARGE_VALUE_BYTES, Slab};

/// The most bytes a record takes beyond its key and inline value (six varints).
const MAX_RECORD_HEADER: usize = 6 * 10;

/// The sizes that shape a table (fixed in production; tests shrink them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// A segment holds at most this many bytes (unless a single record is larger).
    segment_bytes: usize,
    /// `pending` is merged when it holds this many keys, or a sixteenth of the store if
    /// that is more...
    min_pending_keys: usize,
    /// ... or this many bytes of values.
    max_pending_bytes: usize,
    /// Values of at least this many bytes are kept in the slab.
    large_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            segment_bytes: 64 * 1024,
            min_pending_keys: 4096,
            max_pending_bytes: 8 * 1024 * 1024,
            large_value_bytes: LARGE_VALUE_BYTES,
        }
    }
}

/// A record read in place, its value resolved.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub version: Version,
    /// Empty for a tombstone.
    pub value: Text<'a>,
}

/// A recent change of a key: a record to store, or the removal of the key's record.
#[derive(Debug)]
enum Pending {
    Write { version: Version, value: Box<[u8]> },
    Removed,
}

impl Pending {
    fn as_ref(&self) -> Option<RecordRef<'_>> {
        match self {
            Pending::Write { version, value } => Some(RecordRef {
                version: *version,
                value: Text::json(value),
            }),
            Pending::Removed => None,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            Pending::Write { value, .. } => value.len(),
            Pending::Removed => 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct Table {
    segments: Vec<Segment>,
    /// Records in the segments.
    stored: usize,
    pending: BTreeMap<Box<[u8]>, Pending>,
    pending_bytes: usize,
    /// Bytes of the keys of pending writes (for [`Table::bytes`]).
    pending_key_bytes: usize,
    /// Writes since the last [`Table::maintain`].
    recent_writes: usize,
    large: Slab,
    limits: Limits,
}

impl Table {
    fn segment_for(&self, key: &[u8]) -> usize {
        self.segments
            .partition_point(|segment| segment.first_key() <= key)
            .saturating_sub(1)
    }

    fn resolve<'a>(&'a self, raw: Raw<'a>) -> RecordRef<'a> {
        let value = match raw.value {
            Stored::Inline(text) => Text::json(text),
            Stored::String(text) => Text::unquoted(text),
            Stored::Slot(slot) => Text::json(self.large.get(slot)),
        };
        RecordRef {
            version: raw.version,
            value,
        }
    }

    /// Bytes the records take: packed segments, values of pending writes, large values.
    pub fn bytes(&self) -> usize {
        let segments: usize = self.segments.iter().map(Segment::bytes).sum();
        segments + self.pending_key_bytes + self.pending_bytes + self.large.bytes()
    }

    pub fn get(&self, key: &[u8]) -> Option<RecordRef<'_>> {
        if let Some(pending) = self.pending.get(key) {
            return pending.as_ref();
        }
        let segment = self.segments.get(self.segment_for(key))?;
        segment.get(key).map(|raw| self.resolve(raw))
    }

    /// Stores the record of `key`, replacing the one it had.
    pub fn upsert(&mut self, key: &[u8], version: Version, value: &[u8]) {
        let value = value.into();
        self.change(key, Pending::Write { version, value });
    }

    /// Removes the record of `key`, if it has one.
    pub fn remove(&mut self, key: &[u8]) {
        if self.get(key).is_some() {
            self.change(key, Pending::Removed);
        }
    }

    fn change(&mut self, key: &[u8], pending: Pending) {
        self.pending_bytes += pending.value_len();
        match self.pending.insert(key.into(), pending) {
            Some(old) => self.pending_bytes -= old.value_len(),
            None => self.pending_key_bytes += key.len(),
        }
        self.recent_writes += 1;
        let limits = self.limits;
        let full_keys = self.pending.len() >= limits.min_pending_keys.max(self.stored / 16);
        if full_keys || self.pending_bytes >= limits.max_pending_bytes {
            self.merge();
        }
    }

    /// Merges pending writes if the store has been idle since the last call; returns
    /// whether it did. Meant to be called periodically (the replica's background loop
    /// does, every probe interval).
    pub fn maintain(&mut self) -> bool {
        let idle = self.recent_writes == 0 && !self.pending.is_empty();
        if idle {
            self.merge();
        }
        self.recent_writes = 0;
        idle
    }

    /// Calls `visit` with every record whose key is above `after` (all for `None`), in key
    /// order, until it breaks.
    pub fn visit_after(
        &self,
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], RecordRef<'_>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut pending = self
            .pending
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        let first = after.map_or(0, |key| self.segment_for(key));
        for (index, segment) in self.segments.iter().enumerate().skip(first) {
            let mut cursor = match after {
                Some(key) if index == first => segment.cursor_near(key),
                _ => segment.cursor(),
            };
            while let Some(raw) = cursor.next() {
                let key = cursor.key();
                if after.is_some_and(|after| key <= after) {
                    continue;
                }
                while let Some((pending_key, change)) = pending.next_if(|(k, _)| &***k < key) {
                    visit_change(pending_key, change, &mut visit)?;
                }
                if let Some((pending_key, change)) = pending.next_if(|(k, _)| &***k == key) {
                    visit_change(pending_key, change, &mut visit)?;
                    continue;
                }
                visit(key, self.resolve(raw))?;
            }
        }
        for (key, change) in pending {
            visit_change(key, change, &mut visit)?;
        }
        ControlFlow::Continue(())
    }

    /// Merges `pending` into the segments.
    fn merge(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending).into_iter().peekable();
        self.pending_bytes = 0;
        self.pending_key_bytes = 0;
        let mut old = std::mem::take(&mut self.segments);
        let mut merged = Merged::new(self.limits);
        for index in 0..old.len() {
            let segment = std::mem::take(&mut old[index]);
            let upper = old.get(index + 1).map(Segment::first_key);
            let touched = pending.peek().is_some_and(|(key, _)| below(key, upper));
            let small = merged.builder.byte_len() < self.limits.segment_bytes / 2;
            if !touched && small && !merged.builder.is_empty() {
                // Too small to stand alone: absorb the next segment into it.
                merged.copy(&segment);
            } else if !touched {
                merged.close();
                merged.segments.push(segment);
            } else {
                merged.merge(&segment, &mut pending, upper, &mut self.large);
            }
        }
        for (k, p) in pending {
            merged.push_pending(&k, p, &mut self.large);
        }
        merged.close();
        self.stored = merged.segments.iter().map(Segment::records).sum();
        self.segments = merged.segments;
    }
}

/// Visits a pending change unless it is a removal.
fn visit_change(
    key: &[u8],
    change: &Pending,
    visit: &mut impl FnMut(&[u8], RecordRef<'_>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    match change.as_ref() {
        Some(record) => visit(key, record),
        None => ControlFlow::Continue(()),
    }
}

/// The writes waiting to be merged, in key order.
type PendingWrites = std::iter::Peekable<std::collections::btree_map::IntoIter<Box<[u8]>, Pending>>;

/// True when `key` is below `upper` (a segment's first key; `None`: no segment follows).
fn below(key: &[u8], upper: Option<&[u8]>) -> bool {
    upper.is_none_or(|upper| key < upper)
}

/// The output of a merge: closed segments and the one being built.
struct Merged {
    segments: Vec<Segment>,
    builder: Builder,
    limits: Limits,
}

impl Merged {
    fn new(limits: Limits) -> Self {
        Merged {
            segments: Vec::new(),
            builder: Builder::default(),
            limits,
        }
    }

    /// Adds a record, closing the segment first if the record might not fit: segments
    /// stay within `segment_bytes`, a size the allocator has a class for.
    fn push(&mut self, key: &[u8], raw: &Raw<'_>) {
        let inline = match raw.value {
            Stored::Inline(text) | Stored::String(text) => text.len(),
            Stored::Slot(_) => 0,
        };
        let most = key.len() + inline + MAX_RECORD_HEADER;
        if self.builder.byte_len() + most > self.limits.segment_bytes {
            self.close();
        }
        self.builder.push(key, raw);
    }

    fn push_pending(&mut self, key: &[u8], pending: Pending, large: &mut Slab) {
        let Pending::Write { version, value } = pending else {
            return;
        };
        let value = match value.len() >= self.limits.large_value_bytes {
            true => Stored::Slot(large.insert(value)),
            false => Stored::inline(&value),
        };
        self.push(key, &Raw { version, value });
    }

    /// Merges `segment` with the pending writes below `upper`: a pending write replaces
    /// the segment's record of its key (freeing its slab slot).
    fn merge(
        &mut self,
        segment: &Segment,
        pending: &mut PendingWrites,
        upper: Option<&[u8]>,
        large: &mut Slab,
    ) {
        let mut cursor = segment.cursor();
        while let Some(raw) = cursor.next() {
            let key = cursor.key();
            while let Some((k, p)) = pending.next_if(|(k, _)| **k < *key) {
                self.push_pending(&k, p, large);
            }
            match pending.next_if(|(k, _)| **k == *key) {
                Some((k, p)) => {
                    if let Stored::Slot(slot) = raw.value {
                        large.remove(slot);
                    }
                    self.push_pending(&k, p, large);
                }
                None => self.push(key, &raw),
            }
        }
        while let Some((k, p)) = pending.next_if(|(k, _)| below(k, upper)) {
            self.push_pending(&k, p, large);
        }
    }

    fn copy(&mut self, segment: &Segment) {
        let mut cursor = segment.cursor();
        while let Some(raw) = cursor.next() {
            self.push(cursor.key(), &raw);
        }
    }

    fn close(&mut self) {
        self.segments.extend(self.builder.finish());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiny() -> Table {
        Table {
            limits: Limits {
                segment_bytes: 64,
                min_pending_keys: 3,
                max_pending_bytes: 200,
                large_value_bytes: 12,
            },
            ..Table::default()
        }
    }

    fn version(seq: u64) -> Version {
        Version {
            lamport: seq,
            incarnation: 0,
            seq,
        }
    }

    fn contents(table: &Table, after: Option<&str>) -> Vec<(String, String, u64)> {
        let mut all = Vec::new();
        let _ = table.visit_after(after.map(str::as_bytes), |key, record| {
            let key = String::from_utf8(key.to_vec()).unwrap();
            let value = record.value.to_json();
            all.push((key, value, record.version.seq));
            ControlFlow::Continue(())
        });
        all
    }

    /// A change of the model test: a write of key and value (empty: tombstone), the
    /// removal of a key (`None` value), or an idle moment.
    fn arb_op() -> impl Strategy<Value = Option<(String, Option<String>)>> {
        let value = proptest::option::weighted(0.85, "\"?[0-9]{0,20}\"?");
        proptest::option::weighted(0.9, ("[a-d]{1,3}", value))
    }

    proptest! {
        /// Whatever the writes and idle moments, the table reads and scans like a map.
        #[test]
        fn behaves_as_an_ordered_map(ops in prop::collection::vec(arb_op(), 0..120)) {
            let mut table = tiny();
            let mut model: BTreeMap<String, (String, u64)> = BTreeMap::new();
            for (seq, op) in ops.into_iter().enumerate() {
                let seq = seq as u64 + 1;
                match op {
                    Some((key, Some(value))) => {
                        table.upsert(key.as_bytes(), version(seq), value.as_bytes());
                        model.insert(key, (value, seq));
                    }
                    Some((key, None)) => {
                        table.remove(key.as_bytes());
                        model.remove(&key);
                    }
                    None => {
                        table.maintain();
                        table.maintain();
                    }
                }
            }
            for (key, (value, seq)) in &model {
                let record = table.get(key.as_bytes()).unwrap();
                prop_assert_eq!(record.value.to_json(), value.clone());
                prop_assert_eq!(record.version, version(*seq));
            }
            prop_assert!(table.get(b"e").is_none());
            for key in ["a", "b", "c", "d", "aa", "ab", "ba", "dd"] {
                prop_assert_eq!(table.get(key.as_bytes()).is_some(), model.contains_key(key));
            }
            let want: Vec<(String, String, u64)> =
                model.iter().map(|(k, (v, s))| (k.clone(), v.clone(), *s)).collect();
            prop_assert_eq!(contents(&table, None), want.clone());
            for (i, key) in model.keys().enumerate() {
                prop_assert_eq!(contents(&table, Some(key)), want[i + 1..].to_vec());
            }
            for pair in table.segments.windows(2) {
                prop_assert!(pair[0].first_key() < pair[1].first_key());
            }
        }
    }

    #[test]
    fn idle_tables_hold_no_pending_writes() {
        let mut table = Table::default();
        for i in 0..100_000u64 {
            table.upsert(
                format!("k{i}").as_bytes(),
                version(i + 1),
                b"\"0123456789abcdef\"",
            );
        }
        assert!(table.pending.len() < 100_000 / 16 + 1);
        table.maintain();
        assert!(
            !table.pending.is_empty(),
            "written to since the last call: not idle yet"
        );
        table.maintain();
        assert!(table.pending.is_empty());
        assert_eq!(table.stored, 100_000);
        assert_eq!(
            table.get(b"k99999").map(|r| r.version),
            Some(version(100_000))
        );
    }

    /// The longest calls on a store of 1,000,000 keys of 32-byte values: loads it in a
    /// random order, then overwrites 200,000 random keys, timing every call, and prints
    /// the maximum and the 99.9th percentile of each phase, the write rate and the bytes
    /// per key. A measurement, not a check (run it with `--release --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement: slow in debug builds"]
    fn call_durations_at_a_million_keys() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        const KEYS: u64 = 1_000_000;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let value = b"\"0123456789abcdef0123456789abcd\"";
        let mut keys: Vec<u64> = (0..KEYS).collect();
        keys.shuffle(&mut rng);
        let mut table = Table::default();
        let mut seq = 0;
        let mut timed = |table: &mut Table, key: u64| {
            seq += 1;
            let key = format!("k{key}");
            let start = std::time::Instant::now();
            table.upsert(key.as_bytes(), version(seq), value);
            start.elapsed()
        };
        let load: Vec<_> = keys.iter().map(|&key| timed(&mut table, key)).collect();
        report("load, 1M upserts", load);
        let idle: Vec<_> = (0..10_000)
            .map(|_| timed_call(|| table.maintain()))
            .collect();
        report("maintain x 10,000", idle);
        let raw: usize = (0..KEYS)
            .map(|key| format!("k{key}").len() + value.len())
            .sum();
        println!(
            "at rest: {} segments, {:.1} bytes per key, {:.2}x raw",
            table.segments.len(),
            table.bytes() as f64 / KEYS as f64,
            table.bytes() as f64 / raw as f64
        );
        let writes: Vec<_> = (0..200_000)
            .map(|_| timed(&mut table, rng.random_range(0..KEYS)))
            .collect();
        report("200k random overwrites", writes);
        let reads: Vec<_> = (0..200_000)
            .map(|_| {
                let key = format!("k{}", rng.random_range(0..KEYS));
                timed_call(|| table.get(key.as_bytes()).is_some())
            })
            .collect();
        report("200k random reads", reads);
        println!(
            "after the overwrites: {:.1} bytes per key",
            table.bytes() as f64 / KEYS as f64
        );
    }

    fn timed_call<T>(call: impl FnOnce() -> T) -> std::time::Duration {
        let start = std::time::Instant::now();
        std::hint::black_box(call());
        start.elapsed()
    }

    /// Prints the maximum, 99.9th percentile and total of `durations`.
    fn report(what: &str, mut durations: Vec<std::time::Duration>) {
        let total: std::time::Duration = durations.iter().sum();
        durations.sort();
        let at = |q: f64| durations[((durations.len() - 1) as f64 * q) as usize];
        println!(
            "{what}: max {:?}, p99.9 {:?}, p99 {:?}, {:.0} calls/s",
            at(1.0),
            at(0.999),
            at(0.99),
            durations.len() as f64 / total.as_secs_f64()
        );
    }

    #[test]
    fn overwritten_large_values_free_their_slots() {
        let mut table = tiny();
        let big = [b'x'; 40];
        for round in 0..10u64 {
            for key in ["a", "b", "c", "d"] {
                table.upsert(key.as_bytes(), version(round + 1), &big);
            }
        }
        table.maintain();
        table.maintain();
        let used = table.large.live();
        assert_eq!(used, 4);
        table.remove(b"a");
        table.maintain();
        table.maintain();
        assert_eq!(table.large.live(), 3, "a removed record frees its slot");
        assert!(table.get(b"a").is_none());
    }
}
