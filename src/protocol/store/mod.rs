//! The replicated key-value state: one last-writer-wins register per key.
//!
//! # Convergence rule
//!
//! Every write carries a version: its Lamport time, then its incarnation as a tie-break.
//! A replica keeps, per key, the write with the highest version it has applied, deletes
//! included (as tombstones). Applying is therefore a join: commutative, associative and
//! idempotent, so replicas that applied the same set of writes, in any order, hold the
//! same store. A write that causally follows another was made at a replica that had
//! applied the other, and its Lamport time is above every time that replica has seen, so
//! it always wins.
//!
//! # Tombstones
//!
//! A delete is kept as a tombstone so that a late, older write cannot bring the key back.
//! The store knows its tombstones; [`Store::collect`] removes those whose delete a given
//! clock covers. *When* that is safe is the replica's and the machine's business (the
//! stable cut and the horizon, see `replica` and docs/ARCHITECTURE.md, "Tombstones").

mod incarnations;
mod pending;
mod record;
mod segment;
mod slab;
mod table;

use std::collections::BTreeSet;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::causal::limits::MAX_COUNTER;
use crate::protocol::causal::{Clock, Dot, Incarnation, Limits};
use incarnations::Incarnations;
pub use record::Text;
use record::Version;
use table::{RecordRef, Table};

/// What an entry is counted as in a catch-up chunk beyond its key and value: its version
/// and framing, and the allocations it takes on both sides while in flight. It keeps a
/// chunk of many small entries as light as one of a few large values.
pub const ENTRY_OVERHEAD_BYTES: usize = 256;

/// A key, at most 50 characters (checked by the API).
pub type Key = Arc<str>;

/// A JSON value other than `null`, kept as its serialized text.
pub type Value = Arc<RawValue>;

/// A write as replicas exchange it: the value it wrote and its version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// `None` is a tombstone.
    pub value: Option<Value>,
    pub lamport: u64,
    pub dot: Dot,
}

impl Entry {
    /// Why an entry received from a peer is malformed under `limits`, if it is.
    pub fn validate(&self, limits: &Limits) -> Result<(), String> {
        if self.lamport > limits.max_lamport {
            return Err(format!(
                "Lamport time {} is above this replica's ceiling {}",
                self.lamport, limits.max_lamport
            ));
        }
        if self.dot.seq == 0 || self.dot.seq > MAX_COUNTER {
            return Err(format!("sequence number {} is out of range", self.dot.seq));
        }
        if self.dot.inc.epoch > limits.max_epoch {
            return Err(format!(
                "epoch {} is too far ahead of this replica's clock",
                self.dot.inc.epoch
            ));
        }
        Ok(())
    }
}

/// The result of a read.
#[derive(Clone, Debug)]
pub enum Read<'a> {
    Found {
        value: Text<'a>,
        dot: Dot,
    },
    /// The key was deleted by the write `dot`.
    Deleted {
        dot: Dot,
    },
    Missing,
}

/// Every key's winning write, as compact records in key order.
///
/// Ordered so that catch-up can be sent in chunks with a key as cursor. At rest a key
/// costs its record: the key's bytes beyond the previous key's, the value's JSON text and
/// about ten bytes of version, packed in segments (see `table` and docs/ARCHITECTURE.md,
/// "Memory").
#[derive(Debug, Default)]
pub struct Store {
    records: Table,
    incarnations: Incarnations,
    live: usize,
    /// The keys whose record is a tombstone.
    tombstones: BTreeSet<Box<[u8]>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys holding a value (tombstones excluded).
    pub fn live_keys(&self) -> usize {
        self.live
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Bytes of keys and values as the store holds them (see `Table::bytes`).
    pub fn bytes(&self) -> usize {
        self.records.bytes()
    }

    pub fn read(&self, key: &str) -> Read<'_> {
        let Some(record) = self.records.get(key.as_bytes()) else {
            return Read::Missing;
        };
        let dot = self.dot(&record.version);
        match record.value.is_empty() {
            false => Read::Found {
                value: record.value,
                dot,
            },
            true => Read::Deleted { dot },
        }
    }

    /// Housekeeping for an idle moment: packs recent writes, a bounded step per call (see
    /// `table`); returns whether the store is now packed. Cheap when there is nothing to
    /// do.
    pub fn maintain(&mut self) -> bool {
        self.records.maintain()
    }

    /// Ends a step of the protocol machine: bounds the merge work of the next one (see
    /// `table`).
    pub fn end_step(&mut self) {
        self.records.end_step();
    }

    /// The version of the record `key` holds, value or tombstone: its Lamport time and
    /// the incarnation that wrote it (the order that decides which write wins).
    pub fn version_of(&self, key: &str) -> Option<(u64, Incarnation)> {
        let record = self.records.get(key.as_bytes())?;
        let inc = self.incarnations.get(record.version.incarnation).clone();
        Some((record.version.lamport, inc))
    }

    pub fn contains(&self, key: &str) -> bool {
        matches!(self.read(key), Read::Found { .. })
    }

    fn dot(&self, version: &Version) -> Dot {
        Dot {
            inc: self.incarnations.get(version.incarnation).clone(),
            seq: version.seq,
        }
    }

    /// True when `entry`'s version, `(Lamport time, incarnation)`, is above `held`.
    fn beats(&self, entry: &Entry, held: &Version) -> bool {
        let held_inc: &Incarnation = self.incarnations.get(held.incarnation);
        (entry.lamport, &entry.dot.inc) > (held.lamport, held_inc)
    }

    /// Keeps `entry` for `key` if it beats what is there. Returns whether it was kept.
    pub fn apply(&mut self, key: Key, entry: Entry) -> bool {
        let was_live = match self.records.get(key.as_bytes()) {
            Some(held) if !self.beats(&entry, &held.version) => return false,
            Some(held) => !held.value.is_empty(),
            None => false,
        };
        let version = Version {
            lamport: entry.lamport,
            incarnation: self.incarnations.intern(&entry.dot.inc),
            seq: entry.dot.seq,
        };
        let text = entry.value.as_deref().map_or("", RawValue::get);
        self.records
            .upsert(key.as_bytes(), version, text.as_bytes());
        let is_live = entry.value.is_some();
        self.live = self.live + usize::from(is_live) - usize::from(was_live);
        match is_live {
            true => self.tombstones.remove(key.as_bytes()),
            false => self.tombstones.insert(key.as_bytes().into()),
        };
        true
    }

    /// Removes the record of `key`, whatever it is.
    pub fn remove(&mut self, key: &[u8]) {
        let Some(record) = self.records.get(key) else {
            return;
        };
        if !record.value.is_empty() {
            self.live -= 1;
        }
        self.tombstones.remove(key);
        self.records.remove(key);
    }

    /// Removes the tombstones whose delete `stable` covers, looking at up to `max`
    /// tombstones with keys after `after`. Returns how many it removed and the key to
    /// continue after (`None`: every tombstone was looked at).
    pub fn collect(
        &mut self,
        stable: &Clock,
        after: Option<&[u8]>,
        max: usize,
    ) -> (usize, Option<Box<[u8]>>) {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut batch: Vec<Box<[u8]>> =
            (self.tombstones.range::<[u8], _>((lower, Bound::Unbounded)))
                .take(max.saturating_add(1))
                .cloned()
                .collect();
        let more = batch.len() > max;
        batch.truncate(max);
        let next = more.then(|| batch.last().cloned()).flatten();
        let mut collected = 0;
        for key in batch {
            let covered = (self.records.get(&key))
                .is_some_and(|record| stable.covers(&self.dot(&record.version)));
            if covered {
                self.remove(&key);
                collected += 1;
            }
        }
        (collected, next)
    }

    /// The keys in `(after, upto]` (to the end for `None`) and the writes their records
    /// hold, in key order.
    pub fn between(&self, after: Option<&str>, upto: Option<&str>) -> Vec<(Key, Dot)> {
        let mut found = Vec::new();
        let _ = self
            .records
            .visit_after(after.map(str::as_bytes), |key, record| {
                if upto.is_some_and(|upto| key > upto.as_bytes()) {
                    return ControlFlow::Break(());
                }
                let key = Key::from(String::from_utf8_lossy(key));
                found.push((key, self.dot(&record.version)));
                ControlFlow::Continue(())
            });
        found
    }

    /// The entries whose write `clock` does not include (what a replica at `clock` misses;
    /// the entries it does include it already holds, or something that beats them), in key
    /// order after `after`: one chunk of a catch-up.
    ///
    /// The chunk ends before the next record once its entries' [sizes](ENTRY_OVERHEAD_BYTES)
    /// reach `max_bytes` or `max_scanned` records were visited, covered ones included, so
    /// that a chunk costs little even when the asker misses few keys of a large store. At
    /// least one record is visited, so a scan always moves on. Returns the entries and the
    /// last key visited, to continue after (`None` when the scan is complete); the chunk
    /// answers for exactly the records in `(after, next]`, and may hold no entry at all.
    pub fn missing_from(
        &self,
        clock: &Clock,
        after: Option<&str>,
        max_bytes: usize,
        max_scanned: usize,
    ) -> (Vec<(Key, Entry)>, Option<Key>) {
        let covered = self.covered_by(clock);
        let mut found = Vec::new();
        let (mut bytes, mut scanned) = (0, 0);
        let mut last: Vec<u8> = Vec::new();
        let complete = self
            .records
            .visit_after(after.map(str::as_bytes), |key, record| {
                if scanned > 0 && (bytes >= max_bytes || scanned >= max_scanned) {
                    return ControlFlow::Break(());
                }
                scanned += 1;
                last.clear();
                last.extend_from_slice(key);
                let version = record.version;
                if version.seq > covered[version.incarnation as usize] {
                    bytes += key.len() + record.value.len() + ENTRY_OVERHEAD_BYTES;
                    found.push(self.entry_of(key, &record));
                }
                ControlFlow::Continue(())
            })
            .is_continue();
        let next = (!complete).then(|| Key::from(String::from_utf8_lossy(&last)));
        (found, next)
    }

    /// Per incarnation id, the highest sequence number `clock` covers.
    fn covered_by(&self, clock: &Clock) -> Vec<u64> {
        (0..self.incarnations.len() as u32)
            .map(|id| {
                let inc = self.incarnations.get(id);
                match clock.is_retired(inc) {
                    true => u64::MAX,
                    false => clock.get(inc),
                }
            })
            .collect()
    }

    /// A record as replicas exchange it.
    fn entry_of(&self, key: &[u8], record: &RecordRef<'_>) -> (Key, Entry) {
        let entry = Entry {
            // Stored text was valid JSON when it was stored; it cannot fail to parse.
            value: (!record.value.is_empty())
                .then(|| RawValue::from_string(record.value.to_json()).ok())
                .flatten()
                .map(Value::from),
            lamport: record.version.lamport,
            dot: self.dot(&record.version),
        };
        (Key::from(String::from_utf8_lossy(key)), entry)
    }

    /// All entries, for comparing replicas in tests and tools.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Entry)> + '_ {
        let mut all = Vec::new();
        let _ = self.records.visit_after(None, |key, record| {
            all.push(self.entry_of(key, &record));
            ControlFlow::Continue(())
        });
        all.into_iter()
    }
}

/// Parses JSON text into a stored value; `None` for `null`.
pub fn value_from_json(text: &str) -> Result<Option<Value>, serde_json::Error> {
    let raw: Box<RawValue> = serde_json::from_str(text)?;
    Ok((raw.get().trim() != "null").then(|| Value::from(raw)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::causal::Clock;
    use crate::protocol::causal::clock::tests::dot;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    pub fn value(text: &str) -> Value {
        value_from_json(text).unwrap().unwrap()
    }

    pub fn entry(text: Option<&str>, lamport: u64, origin: &str, seq: u64) -> Entry {
        Entry {
            value: text.map(value),
            lamport,
            dot: dot(origin, 1, seq),
        }
    }

    #[test]
    fn higher_lamport_wins_in_any_order() {
        let older = entry(Some("1"), 1, "a", 1);
        let newer = entry(Some("2"), 2, "b", 1);
        for order in [[&older, &newer], [&newer, &older]] {
            let mut store = Store::new();
            for e in order {
                store.apply("k".into(), e.clone());
            }
            assert!(matches!(store.read("k"), Read::Found { value, .. } if value.to_json() == "2"));
        }
    }

    #[test]
    fn equal_lamport_ties_break_by_incarnation() {
        let from_a = entry(Some("\"a\""), 5, "a", 1);
        let from_b = entry(Some("\"b\""), 5, "b", 1);
        let mut one = Store::new();
        one.apply("k".into(), from_a.clone());
        one.apply("k".into(), from_b.clone());
        let mut two = Store::new();
        two.apply("k".into(), from_b);
        two.apply("k".into(), from_a);
        let winner = |s: &Store| match s.read("k") {
            Read::Found { value, .. } => value.to_json(),
            other => panic!("{other:?}"),
        };
        assert_eq!(winner(&one), "\"b\"");
        assert_eq!(winner(&two), "\"b\"");
    }

    #[test]
    fn tombstones_keep_older_writes_out() {
        let mut store = Store::new();
        store.apply("k".into(), entry(None, 3, "a", 2));
        assert!(!store.apply("k".into(), entry(Some("1"), 2, "b", 1)));
        assert!(matches!(store.read("k"), Read::Deleted { .. }));
        assert_eq!(store.live_keys(), 0);
    }

    #[test]
    fn live_key_count_follows_puts_and_deletes() {
        let mut store = Store::new();
        store.apply("x".into(), entry(Some("1"), 1, "a", 1));
        store.apply("y".into(), entry(Some("1"), 2, "a", 2));
        assert_eq!(store.live_keys(), 2);
        store.apply("x".into(), entry(None, 3, "a", 3));
        assert_eq!(store.live_keys(), 1);
        store.apply("x".into(), entry(Some("2"), 4, "a", 4));
        assert_eq!(store.live_keys(), 2);
    }

    #[test]
    fn only_tombstones_the_stable_clock_covers_are_collected() {
        let mut store = Store::new();
        store.apply("live".into(), entry(Some("1"), 1, "a", 1));
        store.apply("old".into(), entry(None, 2, "a", 2));
        store.apply("new".into(), entry(None, 3, "a", 3));
        store.apply("other".into(), entry(None, 4, "b", 1));
        assert_eq!(store.tombstones(), 3);
        let mut stable = Clock::new();
        stable.advance(&dot("a", 1, 2));
        // One tombstone at a time: "new" (not covered), then "old" (covered).
        let (collected, next) = store.collect(&stable, None, 1);
        assert_eq!((collected, next.as_deref()), (0, Some(&b"new"[..])));
        let (collected, next) = store.collect(&stable, next.as_deref(), 1);
        assert_eq!((collected, next.as_deref()), (1, Some(&b"old"[..])));
        let (collected, next) = store.collect(&stable, next.as_deref(), 1);
        assert_eq!((collected, next), (0, None), "other is b's: not covered");
        assert!(matches!(store.read("old"), Read::Missing));
        assert!(matches!(store.read("new"), Read::Deleted { .. }));
        assert_eq!((store.tombstones(), store.live_keys()), (2, 1));
        assert_eq!(store.iter().count(), 3);
        // A later write to a collected key is an ordinary first write.
        assert!(store.apply("old".into(), entry(Some("2"), 5, "b", 2)));
        assert_eq!(store.live_keys(), 2);
        store.remove(b"old");
        store.remove(b"new");
        assert_eq!((store.tombstones(), store.live_keys()), (1, 1));
        let keys: Vec<String> = (store.between(Some("live"), None).iter())
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(keys, ["other"]);
        assert_eq!(store.between(None, Some("live")).len(), 1);
    }

    #[test]
    fn missing_entries_come_in_chunks_in_key_order() {
        let mut store = Store::new();
        for (i, key) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            store.apply((*key).into(), entry(Some("12345"), 1, "x", i as u64 + 1));
        }
        let mut clock = Clock::new();
        clock.advance(&dot("x", 1, 2)); // covers a and b
        let keys = |entries: &[(Key, Entry)]| {
            entries
                .iter()
                .map(|(k, _)| k.to_string())
                .collect::<Vec<_>>()
        };
        let (first, next) = store.missing_from(&clock, None, 2 * ENTRY_OVERHEAD_BYTES, usize::MAX);
        assert_eq!(keys(&first), ["c", "d"]);
        assert_eq!(next.as_deref(), Some("d"));
        let (rest, next) =
            store.missing_from(&clock, Some("d"), 2 * ENTRY_OVERHEAD_BYTES, usize::MAX);
        assert_eq!(keys(&rest), ["e"]);
        assert_eq!(next, None);
    }

    /// Every chunk of what `clock` misses after `after`, in order, until the scan ends.
    fn chunks(
        store: &Store,
        clock: &Clock,
        max_bytes: usize,
        max_scanned: usize,
    ) -> Vec<(Vec<String>, Option<Key>)> {
        let mut all = Vec::new();
        let mut after: Option<Key> = None;
        loop {
            let (found, next) = store.missing_from(clock, after.as_deref(), max_bytes, max_scanned);
            let keys = found.into_iter().map(|(k, _)| k.to_string()).collect();
            all.push((keys, next.clone()));
            match next {
                Some(key) => after = Some(key),
                None => return all,
            }
        }
    }

    #[test]
    fn a_scan_limit_ends_chunks_without_entries_and_resumes() {
        let mut store = Store::new();
        for i in 0..10u64 {
            store.apply(format!("k{i}").into(), entry(Some("1"), 1, "x", i + 1));
        }
        let mut all = Clock::new();
        all.advance(&dot("x", 1, 10));
        let (found, next) = store.missing_from(&all, None, usize::MAX, 4);
        assert!(found.is_empty(), "the asker holds everything");
        assert_eq!(next.as_deref(), Some("k3"), "the last key visited");
        let (found, next) = store.missing_from(&all, next.as_deref(), usize::MAX, 4);
        assert_eq!((found.len(), next.as_deref()), (0, Some("k7")));
        let (found, next) = store.missing_from(&all, next.as_deref(), usize::MAX, 4);
        assert_eq!((found.len(), next), (0, None), "the scan is complete");
        // An asker at x:5 misses k5..k9: chunks of 3 visits collect exactly those.
        let mut some = Clock::new();
        some.advance(&dot("x", 1, 5));
        let got = chunks(&store, &some, usize::MAX, 3);
        let nexts: Vec<Option<&str>> = got.iter().map(|(_, n)| n.as_deref()).collect();
        assert_eq!(nexts, [Some("k2"), Some("k5"), Some("k8"), None]);
        let keys: Vec<String> = got.into_iter().flat_map(|(keys, _)| keys).collect();
        assert_eq!(keys, ["k5", "k6", "k7", "k8", "k9"]);
    }

    #[test]
    fn a_chunk_visits_at_least_one_record() {
        let mut store = Store::new();
        for i in 0..3u64 {
            store.apply(format!("k{i}").into(), entry(Some("1"), 1, "x", i + 1));
        }
        for (max_bytes, max_scanned) in [(0, 0), (0, usize::MAX), (usize::MAX, 0)] {
            let got = chunks(&store, &Clock::new(), max_bytes, max_scanned);
            let keys: Vec<Vec<String>> = got.into_iter().map(|(keys, _)| keys).collect();
            assert_eq!(keys, [["k0"], ["k1"], ["k2"]]);
        }
        let empty = Store::new();
        assert_eq!(empty.missing_from(&Clock::new(), None, 0, 0).1, None);
    }

    #[test]
    fn null_is_no_value() {
        assert!(value_from_json("null").unwrap().is_none());
        assert!(value_from_json(" [1, {\"a\": null}] ").unwrap().is_some());
        assert!(value_from_json("{").is_err());
    }

    /// A write for the model test: key index, Lamport time, writer, value (None deletes).
    fn arb_write() -> impl Strategy<Value = (u8, u64, u8, Option<u8>)> {
        (0u8..6, 1u64..20, 0u8..3, proptest::option::of(0u8..4))
    }

    proptest! {
        /// The store holds, per key, the write with the highest version, as a plain map
        /// of entries would; catch-up in chunks yields exactly the uncovered entries.
        #[test]
        fn agrees_with_a_map_of_entries(
            writes in prop::collection::vec(arb_write(), 0..40),
            max_bytes in 0..4 * ENTRY_OVERHEAD_BYTES,
            max_scanned in 0usize..8,
        ) {
            let mut store = Store::new();
            let mut model: BTreeMap<String, Entry> = BTreeMap::new();
            for (i, (k, lamport, writer, v)) in writes.into_iter().enumerate() {
                let key = format!("k{k}");
                let text = v.map(|v| format!("[{v}]"));
                let e = entry(text.as_deref(), lamport, ["a", "b", "c"][writer as usize], i as u64 + 1);
                let wins = model.get(&key).is_none_or(|held| {
                    (e.lamport, &e.dot.inc) > (held.lamport, &held.dot.inc)
                });
                prop_assert_eq!(store.apply(key.as_str().into(), e.clone()), wins);
                if wins {
                    model.insert(key, e);
                }
            }
            let got: Vec<(String, Option<String>, u64, Dot)> = store
                .iter()
                .map(|(k, e)| (k.to_string(), e.value.map(|v| v.get().to_string()), e.lamport, e.dot))
                .collect();
            let want: Vec<(String, Option<String>, u64, Dot)> = model
                .iter()
                .map(|(k, e)| (k.clone(), e.value.as_ref().map(|v| v.get().to_string()), e.lamport, e.dot.clone()))
                .collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(store.live_keys(), model.values().filter(|e| e.value.is_some()).count());

            let mut clock = Clock::new();
            clock.advance(&dot("a", 1, 10));
            let chunked: Vec<String> = chunks(&store, &clock, max_bytes, max_scanned)
                .into_iter()
                .flat_map(|(keys, _)| keys)
                .collect();
            let uncovered: Vec<String> = model
                .iter()
                .filter(|(_, e)| !clock.covers(&e.dot))
                .map(|(k, _)| k.clone())
                .collect();
            prop_assert_eq!(chunked, uncovered);
        }
    }
}
