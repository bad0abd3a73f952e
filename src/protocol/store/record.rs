//! One key's winning write, packed as bytes inside a [segment](super::segment).
//!
//! A store of many small values pays more for bookkeeping than for data when each key
//! holds a string, a shared value, an address and several counters on the heap. A record
//! is a few bytes of header around the key's suffix and the value's JSON text:
//!
//! ```text
//! shared | suffix length | suffix | Lamport time | incarnation id + kind | sequence number | value
//! ```
//!
//! All numbers are LEB128 varints. Keys are prefix-compressed: a record stores only what
//! its key does not share with the previous record's (`shared` is 0 at a segment's restart
//! points, whose keys are whole). The incarnation is an id from the store's
//! [`Incarnations`](super::incarnations) table, shifted left by two bits that say what
//! `value` is: a length and that many bytes of JSON text (an empty text is a tombstone);
//! a length and the characters of a JSON string without escapes, its quotes left out; or
//! the slot of a large value kept out of line in the store's [slab](super::slab).
//!
//! Records are written only by [`encode`], so decoding never meets malformed bytes; a
//! [`Cursor`] stops (returns `None`) at the end of its bytes.

use crate::protocol::varint::{self, Reader};

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
    /// A JSON string without escapes, its quotes left out.
    String(&'a [u8]),
    /// A large value, in the slab.
    Slot(u32),
}

impl<'a> Stored<'a> {
    /// How `json` (JSON text, or empty for a tombstone) is best stored inline.
    pub fn inline(json: &'a [u8]) -> Self {
        match json {
            [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => Stored::String(inner),
            _ => Stored::Inline(json),
        }
    }
}

/// A value as the store hands it out: JSON text, perhaps stored without its quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Text<'a> {
    bytes: &'a [u8],
    unquoted: bool,
}

impl<'a> Text<'a> {
    pub fn json(bytes: &'a [u8]) -> Self {
        Text {
            bytes,
            unquoted: false,
        }
    }

    /// A JSON string's characters, stored without its quotes.
    pub fn unquoted(bytes: &'a [u8]) -> Self {
        Text {
            bytes,
            unquoted: true,
        }
    }

    /// True for a tombstone's empty text.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.unquoted
    }

    /// Length of the JSON text.
    pub fn len(&self) -> usize {
        self.bytes.len() + if self.unquoted { 2 } else { 0 }
    }

    /// The JSON text (empty for a tombstone).
    pub fn to_json(&self) -> String {
        let body = std::str::from_utf8(self.bytes).unwrap_or_default();
        match self.unquoted {
            true => format!("\"{body}\""),
            false => body.to_string(),
        }
    }
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
    let (kind, text) = match raw.value {
        Stored::Inline(text) => (INLINE, text),
        Stored::String(text) => (STRING, text),
        Stored::Slot(_) => (SLOT, &[][..]),
    };
    varint::put(out, raw.version.lamport);
    varint::put(out, u64::from(raw.version.incarnation) << 2 | kind);
    varint::put(out, raw.version.seq);
    match raw.value {
        Stored::Slot(slot) => varint::put(out, u64::from(slot)),
        _ => {
            varint::put(out, text.len() as u64);
            out.extend_from_slice(text);
        }
    }
}

/// The kinds of value, in the low two bits of the incarnation id's varint.
const INLINE: u64 = 0;
const SLOT: u64 = 1;
const STRING: u64 = 2;

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
        let lamport = r.varint()?;
        let tagged = r.varint()?;
        let version = Version {
            lamport,
            incarnation: u32::try_from(tagged >> 2).ok()?,
            seq: r.varint()?,
        };
        let len = r.varint()?;
        let value = match tagged & 3 {
            SLOT => Stored::Slot(u32::try_from(len).ok()?),
            kind => {
                let text = r.take(usize::try_from(len).ok()?)?;
                match kind {
                    STRING => Stored::String(text),
                    _ => Stored::Inline(text),
                }
            }
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
            "\"?\\PC{0,40}\"?",
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
                    let value = slot.map_or(Stored::inline(text.as_bytes()), Stored::Slot);
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
            value: Stored::inline(b"\"0123456789abcdef0123456789abcdef\""),
        };
        let mut bytes = Vec::new();
        encode(&mut bytes, b"", b"k123456", &raw);
        let first = bytes.len();
        encode(&mut bytes, b"k123456", b"k123457", &raw);
        assert_eq!(first, 1 + 1 + 7 + 3 + 1 + 3 + 1 + 32);
        assert_eq!(bytes.len() - first, 1 + 1 + 1 + 3 + 1 + 3 + 1 + 32);
    }

    #[test]
    fn only_plain_strings_lose_their_quotes() {
        let text = |stored: Stored<'_>| match stored {
            Stored::String(t) => Text::unquoted(t).to_json(),
            Stored::Inline(t) => Text::json(t).to_json(),
            Stored::Slot(_) => unreachable!(),
        };
        for json in [
            "\"abc\"",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "12",
            "[\"a\"]",
            "",
        ] {
            assert_eq!(text(Stored::inline(json.as_bytes())), json);
        }
        assert!(matches!(Stored::inline(b"\"abc\""), Stored::String(b"abc")));
        assert!(matches!(Stored::inline(b"\"a\\nb\""), Stored::Inline(_)));
        assert!(Text::json(b"").is_empty());
        assert!(!Text::unquoted(b"").is_empty());
    }
}
