//! An immutable run of records in key order, in one exact-size allocation.
//!
//! Records are prefix-compressed against their predecessor, except every
//! [`RESTART_INTERVAL`]th one (a restart point), whose offset is kept in a small index. A
//! lookup binary-searches the restart points, then decodes at most one interval.
//! Segments are only ever built whole by a [`Builder`], never edited: the store rewrites
//! the segments a merge step's changes fall in, a few at a time (see `table`), so memory holds their bytes and
//! next to nothing else.

use super::record::{self, Cursor, Raw};

/// Records between two restart points.
pub const RESTART_INTERVAL: usize = 16;

#[derive(Debug, Default)]
pub struct Segment {
    bytes: Box<[u8]>,
    /// Offsets of the restart points; the first is 0.
    restarts: Box<[u32]>,
    records: usize,
}

impl Segment {
    /// The lowest key; empty only for an empty segment.
    pub fn first_key(&self) -> &[u8] {
        record::restart_key(&self.bytes)
    }

    /// Bytes of its packed records.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Number of records.
    pub fn records(&self) -> usize {
        self.records
    }

    fn restart(&self, index: usize) -> &[u8] {
        let start = self.restarts.get(index).map_or(0, |&at| at as usize);
        self.bytes.get(start..).unwrap_or_default()
    }

    /// A cursor at the restart point at or before `key`: every record from `key` on is
    /// ahead of it.
    pub fn cursor_near(&self, key: &[u8]) -> Cursor<'_> {
        let index = self
            .restarts
            .partition_point(|&at| record::restart_key(&self.bytes[at as usize..]) <= key)
            .saturating_sub(1);
        Cursor::new(self.restart(index))
    }

    /// A cursor at the first record.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor::new(&self.bytes)
    }

    pub fn get(&self, key: &[u8]) -> Option<Raw<'_>> {
        let mut cursor = self.cursor_near(key);
        for _ in 0..RESTART_INTERVAL {
            let raw = cursor.next()?;
            match cursor.key().cmp(key) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Some(raw),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
}

/// Builds segments from records pushed in strictly increasing key order.
#[derive(Debug, Default)]
pub struct Builder {
    bytes: Vec<u8>,
    restarts: Vec<u32>,
    prev_key: Vec<u8>,
    records: usize,
}

impl Builder {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn push(&mut self, key: &[u8], raw: &Raw<'_>) {
        if self.records % RESTART_INTERVAL == 0 {
            self.restarts.push(self.bytes.len() as u32);
            self.prev_key.clear();
        }
        record::encode(&mut self.bytes, &self.prev_key, key, raw);
        self.prev_key.clear();
        self.prev_key.extend_from_slice(key);
        self.records += 1;
    }

    /// The segment built so far (`None` if empty); the builder starts afresh.
    ///
    /// The segment is copied into allocations of exactly its size: a grown `Vec` shrunk
    /// in place would keep its doubled capacity.
    pub fn finish(&mut self) -> Option<Segment> {
        if self.is_empty() {
            return None;
        }
        let segment = Segment {
            bytes: Box::from(self.bytes.as_slice()),
            restarts: Box::from(self.restarts.as_slice()),
            records: self.records,
        };
        self.bytes.clear();
        self.restarts.clear();
        self.prev_key.clear();
        self.records = 0;
        Some(segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::store::record::{Stored, Version};

    fn raw(seq: u64) -> Raw<'static> {
        Raw {
            version: Version {
                lamport: seq,
                incarnation: 0,
                seq,
            },
            value: Stored::Inline(b"1"),
        }
    }

    #[test]
    fn finds_every_record_and_nothing_else() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{:03}", i * 2)).collect();
        let mut builder = Builder::default();
        for (i, key) in keys.iter().enumerate() {
            builder.push(key.as_bytes(), &raw(i as u64 + 1));
        }
        let segment = builder.finish().unwrap();
        assert!(builder.finish().is_none());
        assert_eq!(segment.records(), 100);
        assert_eq!(segment.first_key(), b"k000");
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(
                segment.get(key.as_bytes()),
                Some(raw(i as u64 + 1)),
                "{key}"
            );
        }
        for absent in ["a", "k001", "k099", "k197", "k199", "z"] {
            assert_eq!(segment.get(absent.as_bytes()), None, "{absent}");
        }
        let mut cursor = segment.cursor_near(b"k101");
        let mut seen = Vec::new();
        while cursor.next().is_some() {
            seen.push(String::from_utf8(cursor.key().to_vec()).unwrap());
        }
        assert!(seen.first().unwrap().as_str() <= "k101");
        assert_eq!(seen.last().unwrap(), "k198");
    }
}
