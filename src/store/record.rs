//! One key's winning write, packed as bytes.
//!
//! A store of many small values pays more for bookkeeping than for data when each key
//! holds a string, a shared value, an address and several counters on the heap. A record
//! is a few bytes of header around the key and the value's JSON text:
//!
//! ```text
//! key length | key | Lamport time | incarnation id | sequence number | value length | value
//! ```
//!
//! Numbers are LEB128 varints; an empty value is a tombstone (JSON text is never empty).
//! The incarnation is an id from the store's [`Incarnations`](super::incarnations) table.
//! Records are concatenated in key order into [`Blocks`](super::blocks).
//!
//! Records are written only by [`encode`] from a `&str` key and JSON text, so decoding
//! never meets malformed bytes; `decode` returns `None` only at the end of a block.

use crate::varint::{self, Reader};

/// The version and value of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields<'a> {
    pub lamport: u64,
    pub incarnation: u32,
    pub seq: u64,
    /// JSON text; `None` is a tombstone.
    pub value: Option<&'a str>,
}

/// A record read in place.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub key: &'a [u8],
    pub lamport: u64,
    pub incarnation: u32,
    pub seq: u64,
    value: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// The key as text (it was a `&str` when encoded).
    pub fn key_str(&self) -> &'a str {
        std::str::from_utf8(self.key).unwrap_or_default()
    }

    /// The value's JSON text; `None` for a tombstone.
    pub fn value(&self) -> Option<&'a str> {
        let text = std::str::from_utf8(self.value).unwrap_or_default();
        (!text.is_empty()).then_some(text)
    }

    pub fn is_live(&self) -> bool {
        !self.value.is_empty()
    }

    /// Bytes of key and value.
    pub fn payload_len(&self) -> usize {
        self.key.len() + self.value.len()
    }

    #[cfg(test)]
    pub fn fields(&self) -> Fields<'a> {
        Fields {
            lamport: self.lamport,
            incarnation: self.incarnation,
            seq: self.seq,
            value: self.value(),
        }
    }
}

/// Appends the record of `key` and `fields` to `out`.
pub fn encode(out: &mut Vec<u8>, key: &str, fields: Fields<'_>) {
    let value = fields.value.unwrap_or("");
    varint::put(out, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
    varint::put(out, fields.lamport);
    varint::put(out, u64::from(fields.incarnation));
    varint::put(out, fields.seq);
    varint::put(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// The record at the front of `bytes` and the bytes after it; `None` when none is left.
pub fn decode(bytes: &[u8]) -> Option<(RecordRef<'_>, &[u8])> {
    let mut reader = Reader::new(bytes);
    let key_len = usize::try_from(reader.varint()?).ok()?;
    let key = reader.take(key_len)?;
    let lamport = reader.varint()?;
    let incarnation = u32::try_from(reader.varint()?).ok()?;
    let seq = reader.varint()?;
    let value_len = usize::try_from(reader.varint()?).ok()?;
    let value = reader.take(value_len)?;
    let record = RecordRef {
        key,
        lamport,
        incarnation,
        seq,
        value,
    };
    Some((record, reader.rest()))
}

/// The records of a block, in order, each with its encoded length.
pub fn records(mut bytes: &[u8]) -> impl Iterator<Item = (RecordRef<'_>, usize)> {
    std::iter::from_fn(move || {
        let (record, rest) = decode(bytes)?;
        let len = bytes.len() - rest.len();
        bytes = rest;
        Some((record, len))
    })
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
            let mut bytes = Vec::new();
            encode(&mut bytes, &key, fields);
            encode(&mut bytes, "next", fields);
            let (record, rest) = decode(&bytes).unwrap();
            prop_assert_eq!(record.key_str(), key.as_str());
            prop_assert_eq!(record.fields(), fields);
            let (next, rest) = decode(rest).unwrap();
            prop_assert_eq!(next.key, b"next");
            prop_assert!(rest.is_empty());
            prop_assert!(decode(rest).is_none());
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
        let mut bytes = Vec::new();
        encode(&mut bytes, "key123456", fields);
        assert_eq!(bytes.len(), 1 + 9 + 3 + 1 + 3 + 1 + 34);
    }
}
