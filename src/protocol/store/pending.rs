//! A table's recent changes, not yet merged into its segments, split by the merge cursor.
//!
//! A merge pass walks the segments in key order, a few at a time (see `table`); the
//! cursor is where it has got to. A change at or above the cursor is *ahead*: the pass
//! merges it when it gets there. A change below it was made after the pass went by: it
//! is *behind*, and waits for the next pass. Without a pass, every change is ahead.
//!
//! # Invariants
//!
//! * Every key ahead is at or above the cursor, every key behind is below it. So a key
//!   has at most one change here, and the changes behind, then those ahead, are in key
//!   order. The cursor only moves up, and only to the first key ahead: changes are taken
//!   from the front of `ahead`.
//! * Without a pass (no cursor), nothing is behind.
//! * `key_bytes` and `value_bytes` are the sums over both maps.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::record::{Text, Version};
use super::table::RecordRef;

/// A recent change of a key: a record to store, or the removal of the key's record.
#[derive(Debug)]
pub enum Change {
    Write { version: Version, value: Box<[u8]> },
    Removed,
}

impl Change {
    /// The record this change leaves; `None` for a removal.
    pub fn as_ref(&self) -> Option<RecordRef<'_>> {
        match self {
            Change::Write { version, value } => Some(RecordRef {
                version: *version,
                value: Text::json(value),
            }),
            Change::Removed => None,
        }
    }

    pub fn value_len(&self) -> usize {
        match self {
            Change::Write { value, .. } => value.len(),
            Change::Removed => 0,
        }
    }
}

type Changes = BTreeMap<Box<[u8]>, Change>;

#[derive(Debug, Default)]
pub struct Pending {
    /// Changes the pass under way merges (all of them when no pass is).
    ahead: Changes,
    /// Changes made below the cursor: the next pass merges them.
    behind: Changes,
    /// Where the pass under way has got to; `None`: no pass.
    cursor: Option<Box<[u8]>>,
    key_bytes: usize,
    value_bytes: usize,
}

impl Pending {
    /// Keys with a change.
    pub fn len(&self) -> usize {
        self.ahead.len() + self.behind.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the keys with a change.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Bytes of the values written.
    pub fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    fn is_behind(&self, key: &[u8]) -> bool {
        self.cursor.as_deref().is_some_and(|cursor| key < cursor)
    }

    pub fn get(&self, key: &[u8]) -> Option<&Change> {
        match self.is_behind(key) {
            true => self.behind.get(key),
            false => self.ahead.get(key),
        }
    }

    /// Records `change` of `key`, replacing the change it had.
    pub fn insert(&mut self, key: &[u8], change: Change) {
        self.value_bytes += change.value_len();
        let side = match self.is_behind(key) {
            true => &mut self.behind,
            false => &mut self.ahead,
        };
        match side.insert(key.into(), change) {
            Some(old) => self.value_bytes -= old.value_len(),
            None => self.key_bytes += key.len(),
        }
    }

    /// The changes of keys above `after` (all for `None`), in key order.
    pub fn after<'a>(
        &'a self,
        after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Change)> + 'a {
        let range = (
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        );
        let behind = self.behind.range::<[u8], _>(range);
        let ahead = self.ahead.range::<[u8], _>(range);
        behind.chain(ahead).map(|(key, change)| (&**key, change))
    }

    pub fn in_pass(&self) -> bool {
        self.cursor.is_some()
    }

    /// Starts a pass at the lowest key: every change is ahead.
    pub fn start_pass(&mut self) {
        if self.cursor.is_none() {
            self.cursor = Some(Box::default());
        }
    }

    /// The lowest key ahead.
    pub fn first_ahead(&self) -> Option<&[u8]> {
        self.ahead.first_key_value().map(|(key, _)| &**key)
    }

    /// Takes the first change ahead if its key is within `upper`.
    pub fn take_first(&mut self, upper: Bound<&[u8]>) -> Option<(Box<[u8]>, Change)> {
        let first = self.first_ahead()?;
        let within = match upper {
            Bound::Included(upper) => first <= upper,
            Bound::Excluded(upper) => first < upper,
            Bound::Unbounded => true,
        };
        if !within {
            return None;
        }
        let (key, change) = self.ahead.pop_first()?;
        self.key_bytes -= key.len();
        self.value_bytes -= change.value_len();
        Some((key, change))
    }

    /// Moves the cursor up to the first key ahead; with nothing ahead, ends the pass: the
    /// changes behind are ahead of the next one.
    pub fn advance(&mut self) {
        let first = self.first_ahead().map(Box::from);
        if first.is_none() {
            self.ahead = std::mem::take(&mut self.behind);
        }
        self.cursor = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(seq: u64) -> Change {
        let version = Version {
            lamport: seq,
            incarnation: 0,
            seq,
        };
        let value = b"1".to_vec().into();
        Change::Write { version, value }
    }

    fn keys(pending: &Pending, after: Option<&[u8]>) -> Vec<Vec<u8>> {
        pending.after(after).map(|(key, _)| key.to_vec()).collect()
    }

    #[test]
    fn changes_behind_the_cursor_wait_for_the_next_pass() {
        let mut pending = Pending::default();
        for key in [b"b", b"d", b"f"] {
            pending.insert(key, write(1));
        }
        pending.start_pass();
        assert_eq!(
            pending.take_first(Bound::Excluded(b"c")).unwrap().0[..],
            *b"b"
        );
        assert!(pending.take_first(Bound::Excluded(b"c")).is_none());
        pending.advance();
        pending.insert(b"a", write(2));
        pending.insert(b"e", write(2));
        assert_eq!(keys(&pending, None), [b"a", b"d", b"e", b"f"]);
        assert_eq!(keys(&pending, Some(b"a")), [b"d", b"e", b"f"]);
        assert!(pending.get(b"a").is_some() && pending.get(b"b").is_none());
        while pending.take_first(Bound::Unbounded).is_some() {}
        pending.advance();
        assert!(!pending.in_pass(), "nothing ahead: the pass is over");
        assert_eq!(pending.first_ahead(), Some(&b"a"[..]), "behind, now ahead");
        assert_eq!(
            (pending.len(), pending.key_bytes(), pending.value_bytes()),
            (1, 1, 1)
        );
    }
}
