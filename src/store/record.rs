//! One key's winning write, packed into a single allocation.
//!
//! A store of many small values pays more for bookkeeping than for data when each key
//! holds a string, a shared value, an address and several counters on the heap. A record
//! is one boxed byte string instead:
//!
//! ```text
//! key length (varint) | key | Lamport time (varint) | incarnation id (varint)
//!                     | sequence number (varint) | value (JSON text; empty = tombstone)
//! ```
//!
//! The incarnation is an id from the store's [`Incarnations`](super::incarnations) table,
//! so a record holds no pointer but its own. Records order and compare by key alone
//! (byte order, which is `str` order), and borrow as their key, so a `BTreeSet<Record>` is
//! a map from key to record that can be searched with a `&[u8]`.
//!
//! Records are made only by [`Record::new`] from a `&str` key and JSON text, so decoding
//! never meets malformed bytes; its fallbacks exist only to keep it total.

use std::borrow::Borrow;
use std::cmp::Ordering;

use crate::varint::{self, Reader};

/// The version and value of a record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields<'a> {
    pub lamport: u64,
    pub incarnation: u32,
    pub seq: u64,
    /// JSON text; `None` is a tombstone.
    pub value: Option<&'a str>,
}

#[derive(Debug)]
pub struct Record(Box<[u8]>);

impl Record {
    pub fn new(key: &str, fields: Fields<'_>) -> Record {
        let value = fields.value.unwrap_or("");
        let mut bytes = Vec::with_capacity(key.len() + value.len() + 16);
        varint::put(&mut bytes, key.len() as u64);
        bytes.extend_from_slice(key.as_bytes());
        varint::put(&mut bytes, fields.lamport);
        varint::put(&mut bytes, u64::from(fields.incarnation));
        varint::put(&mut bytes, fields.seq);
        bytes.extend_from_slice(value.as_bytes());
        Record(bytes.into_boxed_slice())
    }

    /// The key and a reader positioned after it.
    fn split(&self) -> (&[u8], Reader<'_>) {
        let mut reader = Reader::new(&self.0);
        let len = reader.varint().map_or(0, |len| len as usize);
        let key = reader.take(len).unwrap_or_default();
        (key, reader)
    }

    pub fn key(&self) -> &[u8] {
        self.split().0
    }

    pub fn key_str(&self) -> &str {
        std::str::from_utf8(self.key()).unwrap_or_default()
    }

    pub fn fields(&self) -> Fields<'_> {
        let (_, mut reader) = self.split();
        let lamport = reader.varint().unwrap_or_default();
        let incarnation = reader.varint().unwrap_or_default() as u32;
        let seq = reader.varint().unwrap_or_default();
        let value = std::str::from_utf8(reader.rest()).unwrap_or_default();
        Fields {
            lamport,
            incarnation,
            seq,
            value: (!value.is_empty()).then_some(value),
        }
    }

    pub fn is_live(&self) -> bool {
        self.fields().value.is_some()
    }

    /// Bytes of key and value, the measure of a catch-up chunk.
    pub fn payload_len(&self) -> usize {
        let fields = self.fields();
        self.key().len() + fields.value.map_or(0, str::len)
    }
}

impl Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Record {}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Record) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Record {
    fn cmp(&self, other: &Record) -> Ordering {
        self.key().cmp(other.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(
            key in "\\PC{1,50}",
            lamport in any::<u64>(),
            incarnation in any::<u32>(),
            seq in any::<u64>(),
            value in proptest::option::of("\\PC{1,64}"),
        ) {
            let fields = Fields { lamport, incarnation, seq, value: value.as_deref() };
            let record = Record::new(&key, fields);
            prop_assert_eq!(record.key_str(), key.as_str());
            prop_assert_eq!(record.fields(), fields);
        }

        #[test]
        fn orders_as_keys_do(a in "\\PC{0,8}", b in "\\PC{0,8}") {
            let fields = Fields { lamport: 1, incarnation: 0, seq: 1, value: Some("1") };
            let (ra, rb) = (Record::new(&a, fields), Record::new(&b, fields));
            prop_assert_eq!(ra.cmp(&rb), a.cmp(&b));
        }
    }

    #[test]
    fn a_small_entry_is_small() {
        let fields = Fields {
            lamport: 1_000_000,
            incarnation: 2,
            seq: 999_999,
            value: Some("\"0123456789abcdef0123456789abcdef\""),
        };
        let record = Record::new("key123456", fields);
        assert_eq!(record.0.len(), 1 + 9 + 3 + 1 + 3 + 34);
    }
}
