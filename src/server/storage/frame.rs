//! The on-disk framing of journal records: `[length u32 LE][CRC-32 u32 LE][record]`, the
//! record in the binary encoding of `codec`, the CRC-32 over the record's bytes.
//!
//! Decoding tells a torn tail from corruption. A crash in the middle of an append leaves
//! the last frame short or with a bad checksum, and nothing after it: that tail is cut
//! off. A bad frame with more bytes after it cannot come from a crash: it is corruption,
//! reported with its offset, and recovery stops. So is a frame whose checksum holds but
//! whose bytes are not a record (`codec` refuses them without panicking).

use super::codec;
use crate::protocol::journal::Record;

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;
/// The largest payload a frame may claim (a record carries at most one value, and
/// values are bounded by the request body limit).
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Appends the frame of `record` to `out`: the header is written once the record is.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    codec::encode(record, out);
    let payload = &out[start + HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// How the bytes ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte belongs to a whole, valid frame.
    Clean,
    /// The last frame, from `offset` on, is incomplete or does not check: a crash tore it.
    TornTail { offset: usize },
    /// The frame at `offset` is bad and more bytes follow it.
    Corrupt { offset: usize, why: String },
}

/// Decodes every whole frame of `bytes`; returns the records, the length of the valid
/// prefix, and how the bytes ended.
pub fn decode(bytes: &[u8]) -> (Vec<Record>, usize, End) {
    let mut frames = Frames::new(bytes, bytes.len() as u64);
    let mut records = Vec::new();
    // Reading a slice cannot fail.
    while let Ok(Some(record)) = frames.next_record() {
        records.push(record);
    }
    let valid = frames.valid();
    (records, valid, frames.end().cloned().unwrap_or(End::Clean))
}

/// Reads and decodes frames one at a time from `reader` (which holds `len` bytes), so
/// that recovery never holds a whole file: one frame's payload at a time.
pub struct Frames<R> {
    reader: R,
    len: u64,
    /// Where the next frame starts: the end of the valid prefix so far.
    offset: usize,
    payload: Vec<u8>,
    end: Option<End>,
}

impl<R: std::io::Read> Frames<R> {
    pub fn new(reader: R, len: u64) -> Self {
        Frames {
            reader,
            len,
            offset: 0,
            payload: Vec::new(),
            end: None,
        }
    }

    /// The next record; `None` once the bytes have ended (see `end`).
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let offset = self.offset;
        let rest = usize::try_from(self.len)
            .unwrap_or(usize::MAX)
            .saturating_sub(offset);
        let ended = |end| Ok::<_, std::io::Error>((None, Some(end)));
        let (record, end) = match rest {
            0 => ended(End::Clean)?,
            _ if rest < HEADER => ended(End::TornTail { offset })?,
            _ => self.frame(offset, rest)?,
        };
        self.end = end;
        if record.is_some() {
            self.offset = self.offset.saturating_add(HEADER + self.payload.len());
        }
        Ok(record)
    }

    /// Reads the frame at `offset`, with `rest` bytes from there to the end.
    fn frame(
        &mut self,
        offset: usize,
        rest: usize,
    ) -> std::io::Result<(Option<Record>, Option<End>)> {
        let mut header = [0; HEADER];
        self.reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD {
            let why = format!("a frame claims {len} bytes");
            return Ok((None, Some(bad(offset, rest, HEADER, why))));
        }
        if rest < HEADER + len {
            return Ok((None, Some(End::TornTail { offset })));
        }
        self.payload.resize(len, 0);
        self.reader.read_exact(&mut self.payload)?;
        if crc32fast::hash(&self.payload) != crc {
            let why = "checksum mismatch".to_string();
            return Ok((None, Some(bad(offset, rest, HEADER + len, why))));
        }
        match codec::decode(&self.payload) {
            Ok(record) => Ok((Some(record), None)),
            Err(error) => {
                let why = format!("a checked frame is not a record: {error}");
                Ok((None, Some(End::Corrupt { offset, why })))
            }
        }
    }
}

impl<R> Frames<R> {
    /// The length of the valid prefix read so far.
    pub fn valid(&self) -> usize {
        self.offset
    }

    /// How the bytes ended, once `next_record` has given `None`.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }
}

/// A bad frame of `size` bytes at `offset`, with `rest` bytes from there to the end: a
/// torn tail when nothing follows it.
fn bad(offset: usize, rest: usize, size: usize, why: String) -> End {
    match rest <= size {
        true => End::TornTail { offset },
        false => End::Corrupt { offset, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::causal::{Clock, Incarnation};
    use crate::protocol::store::tests::entry;
    use crate::server::storage::codec::tests::same;
    use proptest::prelude::*;

    fn record(i: u64) -> Record {
        match i % 3 {
            0 => Record::Applied {
                key: format!("k{i}").into(),
                entry: entry(Some(&format!("\"v{i}\"")), i + 1, "10.0.0.1:1", i + 1),
                advance: i % 2 == 0,
            },
            1 => Record::Started {
                incarnation: Incarnation::new("10.0.0.1:1", i),
            },
            _ => Record::ClockMerged {
                clock: Clock::new(),
            },
        }
    }

    fn encoded(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for i in 0..n {
            encode(&record(i), &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn frames_round_trip() {
        let (bytes, _) = encoded(10);
        let (records, valid, end) = decode(&bytes);
        assert_eq!((records.len(), valid, end), (10, bytes.len(), End::Clean));
        let expected: Vec<Record> = (0..10).map(record).collect();
        assert!(same(&records, &expected));
    }

    #[test]
    fn a_bad_frame_in_the_middle_is_corruption_with_its_offset() {
        let (mut bytes, ends) = encoded(5);
        bytes[ends[1] + HEADER + 2] ^= 0xff;
        let (records, valid, end) = decode(&bytes);
        assert_eq!((records.len(), valid), (2, ends[1]));
        assert!(matches!(end, End::Corrupt { offset, .. } if offset == ends[1]));
    }

    proptest! {
        /// A crash can stop an append anywhere, and tear the last frame's bytes: decoding
        /// always gives exactly the whole frames before the tear, and calls it a torn tail.
        #[test]
        fn a_torn_tail_leaves_exactly_the_whole_frames_before_it(
            n in 1u64..20,
            cut in any::<prop::sample::Index>(),
            garble in any::<bool>(),
        ) {
            let (bytes, ends) = encoded(n);
            let cut = cut.index(bytes.len() + 1);
            let mut torn = bytes[..cut].to_vec();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            let start = if whole == 0 { 0 } else { ends[whole - 1] };
            if garble && torn.len() > start + HEADER {
                let last = torn.len() - 1;
                torn[last] ^= 0x5a;
            }
            let (records, valid, end) = decode(&torn);
            prop_assert_eq!(records.len(), whole);
            prop_assert_eq!(valid, start);
            let expected: Vec<Record> = (0..whole as u64).map(record).collect();
            prop_assert!(same(&records, &expected));
            if cut == start {
                prop_assert_eq!(end, End::Clean);
            } else {
                prop_assert_eq!(end, End::TornTail { offset: start });
            }
        }
    }
}
