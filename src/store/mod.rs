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
//! Tombstones are not collected yet (see docs/ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::causal::{Clock, Dot};

/// A key, at most 50 characters (checked by the API).
pub type Key = Arc<str>;

/// A JSON value other than `null`, kept as its serialized text.
pub type Value = Arc<RawValue>;

/// What a key holds: the winning write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// `None` is a tombstone.
    pub value: Option<Value>,
    pub lamport: u64,
    pub dot: Dot,
}

impl Entry {
    /// Why an entry received from a peer is malformed, if it is.
    pub fn validate(&self) -> Result<(), String> {
        let max = crate::delivery::MAX_COUNTER;
        if self.lamport > max || self.dot.seq > max || self.dot.seq == 0 {
            return Err(format!(
                "entry with Lamport time {} and sequence number {} is out of range",
                self.lamport, self.dot.seq
            ));
        }
        Ok(())
    }

    /// True when this entry's version, `(Lamport time, incarnation)`, is above `other`'s.
    fn beats(&self, other: &Entry) -> bool {
        (self.lamport, &self.dot.inc) > (other.lamport, &other.dot.inc)
    }
}

/// The result of a read.
#[derive(Clone, Debug)]
pub enum Read<'a> {
    Found {
        value: &'a Value,
        dot: &'a Dot,
    },
    /// The key was deleted by the write `dot`.
    Deleted {
        dot: &'a Dot,
    },
    Missing,
}

#[derive(Debug, Default)]
pub struct Store {
    /// Ordered by key, so that catch-up can be sent in chunks with a key as cursor.
    entries: BTreeMap<Key, Entry>,
    live: usize,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys holding a value (tombstones excluded).
    pub fn live_keys(&self) -> usize {
        self.live
    }

    pub fn read(&self, key: &str) -> Read<'_> {
        match self.entries.get(key) {
            Some(Entry {
                value: Some(value),
                dot,
                ..
            }) => Read::Found { value, dot },
            Some(Entry {
                value: None, dot, ..
            }) => Read::Deleted { dot },
            None => Read::Missing,
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        matches!(self.read(key), Read::Found { .. })
    }

    /// Keeps `entry` for `key` if it beats what is there. Returns whether it was kept.
    pub fn apply(&mut self, key: Key, entry: Entry) -> bool {
        let incoming_live = entry.value.is_some();
        match self.entries.get_mut(&key) {
            Some(current) if !entry.beats(current) => false,
            Some(current) => {
                let was_live = current.value.is_some();
                *current = entry;
                self.live = self.live + usize::from(incoming_live) - usize::from(was_live);
                true
            }
            None => {
                self.live += usize::from(incoming_live);
                self.entries.insert(key, entry);
                true
            }
        }
    }

    /// The entries whose write `clock` does not include (what a replica at `clock` misses;
    /// the entries it does include it already holds, or something that beats them), in key
    /// order after `after`, until their keys and values reach `max_bytes`. Returns them and
    /// the key to continue after, `None` when the scan is complete.
    pub fn missing_from(
        &self,
        clock: &Clock,
        after: Option<&str>,
        max_bytes: usize,
    ) -> (Vec<(Key, Entry)>, Option<Key>) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut found = Vec::new();
        let mut bytes = 0;
        let missing = self
            .entries
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|(_, entry)| !clock.covers(&entry.dot));
        for (key, entry) in missing {
            if bytes >= max_bytes {
                let next = found.last().map(|(k, _): &(Key, Entry)| k.clone());
                return (found, next);
            }
            bytes += key.len() + entry.value.as_ref().map_or(0, |v| v.get().len());
            found.push((key.clone(), entry.clone()));
        }
        (found, None)
    }

    /// All entries, for comparing replicas in tests and tools.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
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
    use crate::causal::Clock;
    use crate::causal::clock::tests::dot;

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
            assert!(matches!(store.read("k"), Read::Found { value, .. } if value.get() == "2"));
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
            Read::Found { value, .. } => value.get().to_string(),
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
        let (first, next) = store.missing_from(&clock, None, 10);
        assert_eq!(keys(&first), ["c", "d"]);
        assert_eq!(next.as_deref(), Some("d"));
        let (rest, next) = store.missing_from(&clock, Some("d"), 10);
        assert_eq!(keys(&rest), ["e"]);
        assert_eq!(next, None);
    }

    #[test]
    fn null_is_no_value() {
        assert!(value_from_json("null").unwrap().is_none());
        assert!(value_from_json(" [1, {\"a\": null}] ").unwrap().is_some());
        assert!(value_from_json("{").is_err());
    }
}
