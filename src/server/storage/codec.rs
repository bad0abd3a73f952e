//! The binary encoding of journal records: the payload of a frame (see `frame`).
//!
//! # Format
//!
//! Integers are LEB128 varints (`protocol::varint`); a string is its length as a varint,
//! then its UTF-8 bytes. A record is one tag byte, then its fields in order:
//!
//! | tag | record         | fields                                   |
//! |-----|----------------|------------------------------------------|
//! | 1   | `Applied`      | key string, entry, advance byte (0 or 1) |
//! | 2   | `ClockMerged`  | clock                                    |
//! | 3   | `Retired`      | addr string, floor varint                |
//! | 4   | `Started`      | incarnation                              |
//! | 5   | `Horizon`      | clock                                    |
//! | 6   | `Dropped`      | key string                               |
//!
//! * entry: value (varint 0 for a tombstone, else the JSON text's length + 1, then the
//!   text), Lamport time varint, dot.
//! * dot: incarnation, sequence number varint.
//! * incarnation: addr string, epoch varint.
//! * clock: entry count varint, then per entry an incarnation and a sequence number; floor
//!   count varint, then per floor an addr string and the floor varint.
//!
//! # Invariants
//!
//! * `decode(encode(r))` gives back `r`; the encoding of a record is the whole payload:
//!   trailing bytes are an error.
//! * Decoding never panics, whatever the bytes, and allocates in proportion to them: a short field, a bad tag, invalid UTF-8 or JSON, and a `null` value (a stored
//!   value is never `null`; a delete is a tombstone) are [`CodecError`]s.
//! * There is no version byte: the data directory has only ever held this format.

use serde_json::value::RawValue;

use crate::protocol::causal::{Addr, Clock, Dot, Incarnation};
use crate::protocol::journal::Record;
use crate::protocol::store::{Entry, Key, Value};
use crate::protocol::varint::{self, Reader};

const APPLIED: u8 = 1;
const CLOCK_MERGED: u8 = 2;
const RETIRED: u8 = 3;
const STARTED: u8 = 4;
const HORIZON: u8 = 5;
const DROPPED: u8 = 6;

/// Why a payload is not a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("the record ends early")]
    Short,
    #[error("unknown record tag {0}")]
    Tag(u8),
    #[error("a flag byte is {0}, not 0 or 1")]
    Flag(u8),
    #[error("a string is not UTF-8")]
    Utf8,
    #[error("a value is not JSON: {0}")]
    Json(String),
    #[error("a value is null")]
    Null,
    #[error("{0} bytes follow the record")]
    Trailing(usize),
}

/// Appends the encoding of `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Applied {
            key,
            entry,
            advance,
        } => {
            out.push(APPLIED);
            put_str(out, key);
            put_entry(out, entry);
            out.push(u8::from(*advance));
        }
        Record::ClockMerged { clock } => {
            out.push(CLOCK_MERGED);
            put_clock(out, clock);
        }
        Record::Retired { addr, floor } => {
            out.push(RETIRED);
            put_str(out, addr);
            varint::put(out, *floor);
        }
        Record::Started { incarnation } => {
            out.push(STARTED);
            put_incarnation(out, incarnation);
        }
        Record::Horizon { horizon } => {
            out.push(HORIZON);
            put_clock(out, horizon);
        }
        Record::Dropped { key } => {
            out.push(DROPPED);
            put_str(out, key);
        }
    }
}

/// Decodes a record that is exactly `payload`.
pub fn decode(payload: &[u8]) -> Result<Record, CodecError> {
    let mut reader = Reader::new(payload);
    let record = record(&mut reader)?;
    match reader.rest().len() {
        0 => Ok(record),
        trailing => Err(CodecError::Trailing(trailing)),
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    varint::put(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn put_entry(out: &mut Vec<u8>, entry: &Entry) {
    match &entry.value {
        None => varint::put(out, 0),
        Some(value) => {
            let text = value.get();
            varint::put(out, text.len() as u64 + 1);
            out.extend_from_slice(text.as_bytes());
        }
    }
    varint::put(out, entry.lamport);
    put_incarnation(out, &entry.dot.inc);
    varint::put(out, entry.dot.seq);
}

fn put_incarnation(out: &mut Vec<u8>, inc: &Incarnation) {
    put_str(out, &inc.addr);
    varint::put(out, inc.epoch);
}

fn put_clock(out: &mut Vec<u8>, clock: &Clock) {
    varint::put(out, clock.len() as u64);
    for (inc, seq) in clock.entries() {
        put_incarnation(out, inc);
        varint::put(out, seq);
    }
    varint::put(out, clock.floors().count() as u64);
    for (addr, floor) in clock.floors() {
        put_str(out, addr);
        varint::put(out, floor);
    }
}

fn record(reader: &mut Reader<'_>) -> Result<Record, CodecError> {
    Ok(match byte(reader)? {
        APPLIED => Record::Applied {
            key: Key::from(string(reader)?),
            entry: entry(reader)?,
            advance: flag(reader)?,
        },
        CLOCK_MERGED => Record::ClockMerged {
            clock: clock(reader)?,
        },
        RETIRED => Record::Retired {
            addr: Addr::from(string(reader)?),
            floor: number(reader)?,
        },
        STARTED => Record::Started {
            incarnation: incarnation(reader)?,
        },
        HORIZON => Record::Horizon {
            horizon: clock(reader)?,
        },
        DROPPED => Record::Dropped {
            key: Key::from(string(reader)?),
        },
        tag => return Err(CodecError::Tag(tag)),
    })
}

fn byte(reader: &mut Reader<'_>) -> Result<u8, CodecError> {
    reader.byte().ok_or(CodecError::Short)
}

fn number(reader: &mut Reader<'_>) -> Result<u64, CodecError> {
    reader.varint().ok_or(CodecError::Short)
}

fn flag(reader: &mut Reader<'_>) -> Result<bool, CodecError> {
    match byte(reader)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(CodecError::Flag(other)),
    }
}

/// `len` bytes; a length beyond the input (or beyond `usize`) is a short record.
fn bytes<'a>(reader: &mut Reader<'a>, len: u64) -> Result<&'a [u8], CodecError> {
    let len = usize::try_from(len).map_err(|_| CodecError::Short)?;
    reader.take(len).ok_or(CodecError::Short)
}

fn string<'a>(reader: &mut Reader<'a>) -> Result<&'a str, CodecError> {
    let len = number(reader)?;
    std::str::from_utf8(bytes(reader, len)?).map_err(|_| CodecError::Utf8)
}

fn entry(reader: &mut Reader<'_>) -> Result<Entry, CodecError> {
    Ok(Entry {
        value: value(reader)?,
        lamport: number(reader)?,
        dot: Dot {
            inc: incarnation(reader)?,
            seq: number(reader)?,
        },
    })
}

/// A value, `None` for a tombstone; the text is checked to be JSON other than `null`.
fn value(reader: &mut Reader<'_>) -> Result<Option<Value>, CodecError> {
    let Some(len) = number(reader)?.checked_sub(1) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(bytes(reader, len)?).map_err(|_| CodecError::Utf8)?;
    let raw = RawValue::from_string(text.to_owned())
        .map_err(|error| CodecError::Json(error.to_string()))?;
    match raw.get() {
        "null" => Err(CodecError::Null),
        _ => Ok(Some(Value::from(raw))),
    }
}

fn incarnation(reader: &mut Reader<'_>) -> Result<Incarnation, CodecError> {
    let addr = string(reader)?;
    Ok(Incarnation::new(addr, number(reader)?))
}

/// A clock; every entry and floor takes at least two bytes, so the counts cannot make
/// decoding loop past the input's end.
fn clock(reader: &mut Reader<'_>) -> Result<Clock, CodecError> {
    let mut entries = Vec::new();
    for _ in 0..number(reader)? {
        entries.push((incarnation(reader)?, number(reader)?));
    }
    let mut clock = Clock::from_entries(entries);
    for _ in 0..number(reader)? {
        let addr = Addr::from(string(reader)?);
        clock.raise_floor(&addr, number(reader)?);
    }
    Ok(clock)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::store::value_from_json;
    use proptest::prelude::*;
    use std::time::Instant;

    /// Records have no equality (raw JSON values have none): they are compared by their
    /// JSON form.
    pub fn same(a: &[Record], b: &[Record]) -> bool {
        serde_json::to_string(a).ok() == serde_json::to_string(b).ok()
    }

    fn round_trip(record: &Record) -> Result<Record, CodecError> {
        let mut bytes = Vec::new();
        encode(record, &mut bytes);
        decode(&bytes)
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "(?s).{0,50}"
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as Json;
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            any::<f64>().prop_map(Json::from),
            arb_text().prop_map(Json::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
                prop::collection::btree_map(arb_text(), inner, 0..4)
                    .prop_map(|map| Json::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A stored value or a tombstone (a top-level `null` is a tombstone), compact or
    /// pretty-printed.
    fn arb_value() -> impl Strategy<Value = Option<Value>> {
        (arb_json(), any::<bool>()).prop_map(|(json, pretty)| {
            let text = match pretty {
                true => serde_json::to_string_pretty(&json),
                false => serde_json::to_string(&json),
            };
            value_from_json(&text.unwrap()).unwrap()
        })
    }

    fn arb_incarnation() -> impl Strategy<Value = Incarnation> {
        (arb_text(), any::<u64>()).prop_map(|(addr, epoch)| Incarnation::new(addr, epoch))
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (arb_value(), any::<u64>(), arb_incarnation(), any::<u64>()).prop_map(
            |(value, lamport, inc, seq)| Entry {
                value,
                lamport,
                dot: Dot { inc, seq },
            },
        )
    }

    /// Clocks over a few addresses, so that floors retire some of the entries.
    fn arb_clock() -> impl Strategy<Value = Clock> {
        let addr = || prop::sample::select(vec!["10.0.0.1:1", "10.0.0.2:1", "é:3", ""]);
        let entry = (addr(), 0u64..6, any::<u64>());
        let floor = (addr(), prop_oneof![0u64..6, Just(u64::MAX)]);
        (
            prop::collection::vec(entry, 0..8),
            prop::collection::vec(floor, 0..3),
        )
            .prop_map(|(entries, floors)| {
                let entries = entries.into_iter();
                let mut clock = Clock::from_entries(
                    entries.map(|(addr, epoch, seq)| (Incarnation::new(addr, epoch), seq)),
                );
                for (addr, floor) in floors {
                    clock.raise_floor(&Addr::from(addr), floor);
                }
                clock
            })
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (arb_text(), arb_entry(), any::<bool>()).prop_map(|(key, entry, advance)| {
                Record::Applied {
                    key: key.into(),
                    entry,
                    advance,
                }
            }),
            arb_clock().prop_map(|clock| Record::ClockMerged { clock }),
            (arb_text(), any::<u64>()).prop_map(|(addr, floor)| Record::Retired {
                addr: addr.into(),
                floor,
            }),
            arb_incarnation().prop_map(|incarnation| Record::Started { incarnation }),
            arb_clock().prop_map(|horizon| Record::Horizon { horizon }),
            arb_text().prop_map(|key| Record::Dropped { key: key.into() }),
        ]
    }

    proptest! {
        #[test]
        fn every_record_round_trips(record in arb_record()) {
            let back = round_trip(&record);
            prop_assert!(back.is_ok(), "{back:?}");
            prop_assert!(same(&[record], &back.into_iter().collect::<Vec<_>>()));
        }

        /// Every proper prefix of an encoding is an error, never another record.
        #[test]
        fn a_truncated_record_is_an_error(
            record in arb_record(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn trailing_bytes_are_an_error(record in arb_record(), extra in 1usize..4) {
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            bytes.resize(bytes.len() + extra, 0);
            prop_assert_eq!(decode(&bytes).err(), Some(CodecError::Trailing(extra)));
        }

        #[test]
        fn decoding_any_bytes_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = decode(&bytes);
        }

        /// Bytes that start like a record go deeper into the decoder than random ones.
        #[test]
        fn decoding_a_damaged_record_never_panics(
            record in arb_record(),
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            let at = at.index(bytes.len());
            bytes[at] ^= xor;
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let mut bytes = vec![APPLIED, 1, b'k'];
        let tail = [0, 1, b'a', 1, 1, 1];
        for (text, error) in [
            (&b"nul"[..], CodecError::Json(String::new())),
            (b"null", CodecError::Null),
            (b"\xff", CodecError::Utf8),
        ] {
            bytes.truncate(3);
            varint::put(&mut bytes, text.len() as u64 + 1);
            bytes.extend_from_slice(text);
            bytes.extend_from_slice(&tail);
            let got = decode(&bytes);
            match error {
                CodecError::Json(_) => assert!(matches!(got, Err(CodecError::Json(_)))),
                error => assert_eq!(got.err(), Some(error)),
            }
        }
    }

    #[test]
    fn bad_tags_and_flags_are_errors() {
        assert_eq!(decode(&[]).err(), Some(CodecError::Short));
        assert_eq!(decode(&[0]).err(), Some(CodecError::Tag(0)));
        assert_eq!(decode(&[7]).err(), Some(CodecError::Tag(7)));
        let record = Record::Applied {
            key: "k".into(),
            entry: crate::protocol::store::tests::entry(None, 1, "a", 1),
            advance: true,
        };
        let mut bytes = Vec::new();
        encode(&record, &mut bytes);
        *bytes.last_mut().unwrap() = 2;
        assert_eq!(decode(&bytes).err(), Some(CodecError::Flag(2)));
    }

    /// A write as the journal records it: a 32-byte value (its JSON text), a key like
    /// the benchmarks', and an epoch in microseconds of the wall clock.
    fn applied(i: u64) -> Record {
        let entry = Entry {
            value: value_from_json(&format!("\"{i:030}\"")).unwrap(),
            lamport: i + 1,
            dot: Dot {
                inc: Incarnation::new("10.10.0.2:8090", 1_764_000_000_000_000),
                seq: i + 1,
            },
        };
        Record::Applied {
            key: format!("key-{i:07}").into(),
            entry,
            advance: true,
        }
    }

    /// Bytes per record and time per record to encode and decode 1M writes, JSON against
    /// this codec. `cargo test --release --lib storage::codec -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: run it in release mode"]
    fn measure_json_against_binary() {
        const N: u64 = 1_000_000;
        let records: Vec<Record> = (0..N).map(applied).collect();
        let json = |r: &Record, out: &mut Vec<u8>| serde_json::to_writer(out, r).unwrap();
        let from_json = |p: &[u8]| serde_json::from_slice::<Record>(p).unwrap();
        let binary = |p: &[u8]| decode(p).unwrap();
        for (name, encode, decode) in [
            (
                "json",
                &json as &dyn Fn(&Record, &mut Vec<u8>),
                &from_json as &dyn Fn(&[u8]) -> Record,
            ),
            ("binary", &encode, &binary),
        ] {
            let start = Instant::now();
            let mut bytes = Vec::new();
            let mut ends = Vec::with_capacity(records.len());
            for record in &records {
                encode(record, &mut bytes);
                ends.push(bytes.len());
            }
            let encoding = start.elapsed();
            let start = Instant::now();
            let mut from = 0;
            let mut back = Vec::with_capacity(records.len());
            for &end in &ends {
                back.push(decode(&bytes[from..end]));
                from = end;
            }
            let decoding = start.elapsed();
            assert!(same(&records[..3], &back[..3]));
            println!(
                "{name}: {:.1} bytes/record, encode {:.0} ns/record, decode {:.0} ns/record",
                bytes.len() as f64 / N as f64,
                encoding.as_nanos() as f64 / N as f64,
                decoding.as_nanos() as f64 / N as f64,
            );
        }
    }
}
