//! The opaque causal metadata that clients carry between requests.
//!
//! Metadata is a [`Clock`] without floors: the writes a client's session has seen or made.
//! On the wire it is one JSON string, `base64url(version ‖ entries ‖ crc32)`, where each
//! entry is the incarnation's address, epoch and sequence number as length-prefixed bytes
//! and LEB128 varints. The version byte and checksum let a replica tell metadata it produced
//! from anything else, which is answered with `400`; `null` is the empty clock.
//!
//! Its size is one entry per live incarnation, never one per write (see `clock`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::clock::{Clock, Incarnation};
use crate::protocol::varint::{self, Reader};

const VERSION: u8 = 1;
/// Upper bounds that keep decoding cheap whatever a client sends.
const MAX_ENCODED_LEN: usize = 16 * 1024;
const MAX_ADDR_LEN: usize = 255;

/// Why a metadata value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("causal-metadata must be null or a string produced by causalkv")]
    NotAString,
    #[error("causal-metadata is too long")]
    TooLong,
    #[error("causal-metadata was not produced by causalkv")]
    Foreign,
}

/// Encodes `clock`'s entries (floors are not sent to clients).
pub fn encode(clock: &Clock) -> String {
    let mut bytes = vec![VERSION];
    varint::put(&mut bytes, clock.len() as u64);
    for (inc, seq) in clock.entries() {
        varint::put(&mut bytes, inc.addr.len() as u64);
        bytes.extend_from_slice(inc.addr.as_bytes());
        varint::put(&mut bytes, inc.epoch);
        varint::put(&mut bytes, seq);
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes the `causal-metadata` field of a request; absent or `null` is the empty clock.
pub fn decode(value: Option<&Value>) -> Result<Clock, MetadataError> {
    match value {
        None | Some(Value::Null) => Ok(Clock::new()),
        Some(Value::String(text)) => decode_str(text),
        Some(_) => Err(MetadataError::NotAString),
    }
}

pub fn decode_str(text: &str) -> Result<Clock, MetadataError> {
    if text.len() > MAX_ENCODED_LEN {
        return Err(MetadataError::TooLong);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| MetadataError::Foreign)?;
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or(MetadataError::Foreign)?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(MetadataError::Foreign);
    }
    parse_body(body).ok_or(MetadataError::Foreign)
}

fn parse_body(body: &[u8]) -> Option<Clock> {
    let mut reader = Reader::new(body);
    if reader.byte()? != VERSION {
        return None;
    }
    let count = reader.varint()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let len = usize::try_from(reader.varint()?).ok()?;
        if len == 0 || len > MAX_ADDR_LEN {
            return None;
        }
        let addr = std::str::from_utf8(reader.take(len)?).ok()?;
        let epoch = reader.varint()?;
        let seq = reader.varint()?;
        entries.push((Incarnation::new(addr, epoch), seq));
    }
    reader
        .rest()
        .is_empty()
        .then(|| Clock::from_entries(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::causal::clock::tests::{arb_clock, inc};
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn null_and_absent_are_the_empty_clock() {
        assert_eq!(decode(None), Ok(Clock::new()));
        assert_eq!(decode(Some(&Value::Null)), Ok(Clock::new()));
    }

    #[test]
    fn round_trips_a_clock() {
        let clock = Clock::from_entries([
            (inc("10.10.0.2:8090", 1_700_000_000_000_000), 42),
            (inc("10.10.0.3:8090", 7), u64::MAX),
        ]);
        let text = encode(&clock);
        assert_eq!(decode(Some(&json!(text))), Ok(clock));
    }

    #[test]
    fn refuses_what_it_did_not_produce() {
        for value in [json!(42), json!({"x": 1}), json!([1, 2]), json!(true)] {
            assert_eq!(decode(Some(&value)), Err(MetadataError::NotAString));
        }
        for text in ["", "garbage", "AAAA", "!!!", &"A".repeat(20_000)] {
            assert!(decode_str(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let clock = Clock::from_entries([(inc("a:1", 3), 9)]);
        let mut bytes = URL_SAFE_NO_PAD.decode(encode(&clock)).unwrap();
        bytes[3] ^= 1;
        assert_eq!(
            decode_str(&URL_SAFE_NO_PAD.encode(bytes)),
            Err(MetadataError::Foreign)
        );
    }

    #[test]
    fn size_grows_with_incarnations_not_writes() {
        let small = encode(&Clock::from_entries([(inc("10.10.0.2:8090", 1), 1)]));
        let many = encode(&Clock::from_entries([(inc("10.10.0.2:8090", 1), 1 << 40)]));
        assert!(many.len() <= small.len() + 8);
    }

    proptest! {
        #[test]
        fn round_trips_any_clock(clock in arb_clock()) {
            let entries_only = Clock::from_entries(
                clock.entries().map(|(i, s)| (i.clone(), s)),
            );
            prop_assert_eq!(decode_str(&encode(&clock)), Ok(entries_only));
        }

        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,64}") {
            let _ = decode_str(&text);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_str(&URL_SAFE_NO_PAD.encode(bytes));
        }
    }
}
