//! One key's winning write, packed as bytes inside a [segment](super::segment).
//!
//! A store of many small values pays more for bookkeeping than for data when each key
//! holds a string, a shared value, an address and several counters on the heap. A record
//! is a few bytes of header around the key's suffix and the value's JSON text:
//!
//! ```text
//! shared | suffix length | suffix | Lamport time | incarnation id | sequence number | value
//! ```
//!
//! All numbers are LEB128 varints. Keys are prefix-compressed: a record stores only what
//! its key does not share with the previous record's (`shared` is 0 at a segment's restart
//! points, whose keys are whole). The value is `len << 1` followed by `len` bytes of JSON
//! text (an empty text is a tombstone), or `slot << 1 | 1` for a large value kept out of
//! line in the store's [slab](super::slab). The incarnation is an id from the store's
//! [`Incarnations`](super::incarnations) table.
//!
//! Records are written only by [`encode`], so decoding never meets malformed bytes; a
//! [`Cursor`] stops (returns `None`) at the end of its bytes.

use crate::varint::{self, Reader};

/// The version of a write, with its incarnation interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub lamport: u64,
    pub incarnation: u32,
    pub seq: u64,
}

/// Where a record's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored<'a> {
    /// JSON text; empty for a tombstone.
    Inline(&'a [u8]),
    /// A large value, in the slab.
    Slot(u32),
}

/// A record as encoded: its version and where its value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw<'a> {
    pub version: Version,
    pub value: Stored<'a>,
}

fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Appends the record of `key` after a record of `prev_key` (empty at a restart point).
pub fn encode(out: &mut Vec<u8>, prev_key: &[u8], key: &[u8], raw: &Raw<'_>) {
    let shared = shared_prefix(prev_key, key);
    let suffix = &key[shared..];
    varint::put(out, shared as u64);
    varint::put(out, suffix.len() as u64);
    out.extend_from_slice(suffix);
    varint::put(out, raw.version.lamport);
    varint::put(out, u64::from(raw.version.incarnation));
    varint::put(out, raw.version.seq);
    match raw.value {
        Stored::Inline(text) => {
            varint::put(out, (text.len() as u64) << 1);
            out.extend_from_slice(text);
        }
        Stored::Slot(slot) => varint::put(out, (u64::from(slot) << 1) | 1),
    }
}

/// The key of the record at the front of `bytes`, which must be a restart point (its key
/// is whole); empty if there is none.
pub fn restart_key(bytes: &[u8]) -> &[u8] {
    let mut reader = Reader::new(bytes);
    let whole = reader.varint() == Some(0);
    let len = reader.varint().and_then(|len| usize::try_from(len).ok());
    match (whole, len) {
        (true, Some(len)) => reader.take(len).unwrap_or_default(),
        _ => &[],
    }
}

/// Reads records one after another, rebuilding each key from its predecessor's.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    reader: Reader<'a>,
    key: Vec<u8>,
}

impl<'a> Cursor<'a> {
    /// A cursor at a restart point.
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor {
            reader: Reader::new(bytes),
            key: Vec::with_capacity(64),
        }
    }

    /// The key of the record last returned by [`Cursor::next`].
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The next record; `None` at the end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Raw<'a>> {
        let r = &mut self.reader;
        let shared = usize::try_from(r.varint()?).ok()?;
        let suffix_len = usize::try_from(r.varint()?).ok()?;
        let suffix = r.take(suffix_len)?;
        self.key.truncate(shared);
        self.key.extend_from_slice(suffix);
        let version = Version {
            lamport: r.varint()?,
            incarnation: u32::try_from(r.varint()?).ok()?,
            seq: r.varint()?,
        };
        let tag = r.varint()?;
        let value = match tag & 1 {
            0 => Stored::Inline(r.take(usize::try_from(tag >> 1).ok()?)?),
            _ => Stored::Slot(u32::try_from(tag >> 1).ok()?),
        };
        Some(Raw { version, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_raw() -> impl Strategy<Value = (Version, Option<u32>, String)> {
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(any::<u32>()),
            "\\PC{0,40}",
        )
            .prop_map(|(lamport, incarnation, seq, slot, text)| {
                (
                    Version {
                        lamport,
                        incarnation,
                        seq,
                    },
                    slot,
                    text,
                )
            })
    }

    proptest! {
        #[test]
        fn round_trips_a_run_of_records(
            mut keys in prop::collection::vec("[a-c]{0,6}", 1..20),
            raws in prop::collection::vec(arb_raw(), 20),
        ) {
            keys.sort();
            keys.dedup();
            let mut bytes = Vec::new();
            let mut prev: &[u8] = &[];
            let written: Vec<Raw<'_>> = keys
                .iter()
                .zip(&raws)
                .map(|(_, (version, slot, text))| {
                    let value = slot.map_or(Stored::Inline(text.as_bytes()), Stored::Slot);
                    Raw { version: *version, value }
                })
                .collect();
            for (key, raw) in keys.iter().zip(&written) {
                encode(&mut bytes, prev, key.as_bytes(), raw);
                prev = key.as_bytes();
            }
            prop_assert_eq!(restart_key(&bytes), keys[0].as_bytes());
            let mut cursor = Cursor::new(&bytes);
            for (key, raw) in keys.iter().zip(&written) {
                prop_assert_eq!(cursor.next(), Some(*raw));
                prop_assert_eq!(cursor.key(), key.as_bytes());
            }
            prop_assert_eq!(cursor.next(), None);
        }
    }

    #[test]
    fn neighbouring_keys_cost_their_differences() {
        let raw = Raw {
            version: Version {
                lamport: 1_000_000,
                incarnation: 2,
                seq: 999_999,
            },
            value: Stored::Inline(b"\"0123456789abcdef0123456789abcdef\""),
        };
        let mut bytes = Vec::new();
        encode(&mut bytes, b"", b"k123456", &raw);
        let first = bytes.len();
        encode(&mut bytes, b"k123456", b"k123457", &raw);
        assert_eq!(first, 1 + 1 + 7 + 3 + 1 + 3 + 1 + 34);
        assert_eq!(bytes.len() - first, 1 + 1 + 1 + 3 + 1 + 3 + 1 + 34);
    }
}
