//! The store's records, in key order, packed into blocks of a few KiB.
//!
//! A B-tree of one allocation per key costs a pointer slot, allocator rounding and node
//! slack per key: more than a 32-byte value itself. Blocks instead hold many [records]
//! back to back in one exact-size allocation, so a key costs little beyond its record.
//!
//! # Invariants
//!
//! * Records are in strictly increasing key order within a block, and every key of a block
//!   is below every key of the next one.
//! * No block is empty. A block is split, at the record boundary nearest its middle, when a
//!   write makes it larger than [`MAX_BLOCK_BYTES`]: blocks of small records stay within
//!   the limit, and a large value may have a block to itself.
//!
//! A lookup binary-searches the blocks by their first key, then scans one block. A write
//! rebuilds one block (a few KiB copied), splitting it in two when it outgrows the limit.

use super::record::{self, Fields, RecordRef};

/// A block is split in two when a write makes it larger than this.
pub const MAX_BLOCK_BYTES: usize = 4096;

#[derive(Debug, Default)]
pub struct Blocks {
    blocks: Vec<Box<[u8]>>,
}

fn first_key(block: &[u8]) -> &[u8] {
    record::decode(block).map_or(&[], |(record, _)| record.key)
}

impl Blocks {
    /// The block that holds `key`, or would: the last one whose first key is not above it.
    fn block_for(&self, key: &[u8]) -> usize {
        self.blocks
            .partition_point(|block| first_key(block) <= key)
            .saturating_sub(1)
    }

    pub fn get(&self, key: &[u8]) -> Option<RecordRef<'_>> {
        let block = self.blocks.get(self.block_for(key))?;
        record::records(block)
            .map(|(record, _)| record)
            .take_while(|record| record.key <= key)
            .find(|record| record.key == key)
    }

    /// Stores the record of `key`, replacing the one it had.
    pub fn upsert(&mut self, key: &str, fields: Fields<'_>) {
        let index = self.block_for(key.as_bytes());
        let Some(block) = self.blocks.get(index) else {
            let mut bytes = Vec::new();
            record::encode(&mut bytes, key, fields);
            self.blocks.push(bytes.into_boxed_slice());
            return;
        };
        let (rebuilt, boundaries) = rebuild(block, key, fields);
        match split_point(&boundaries, rebuilt.len()) {
            None => self.blocks[index] = rebuilt.into_boxed_slice(),
            Some(at) => {
                let (left, right) = rebuilt.split_at(at);
                self.blocks[index] = left.into();
                self.blocks.insert(index + 1, right.into());
            }
        }
    }

    /// Every record whose key is above `after` (every record for `None`), in key order.
    pub fn iter_after<'a>(
        &'a self,
        after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = RecordRef<'a>> {
        let start = after.map_or(0, |key| self.block_for(key));
        self.blocks[start.min(self.blocks.len())..]
            .iter()
            .flat_map(|block| record::records(block).map(|(record, _)| record))
            .skip_while(move |record| after.is_some_and(|after| record.key <= after))
    }

    #[cfg(test)]
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }
}

/// `block` with the record of `key` put in its place, and the offsets where its records
/// start.
fn rebuild(block: &[u8], key: &str, fields: Fields<'_>) -> (Vec<u8>, Vec<usize>) {
    let extra = key.len() + fields.value.map_or(0, str::len) + 40;
    let mut out = Vec::with_capacity(block.len() + extra);
    let mut boundaries = Vec::new();
    let mut pending = Some(fields);
    let mut offset = 0;
    for (held, len) in record::records(block) {
        let span = &block[offset..offset + len];
        offset += len;
        if held.key >= key.as_bytes() {
            if let Some(fields) = pending.take() {
                boundaries.push(out.len());
                record::encode(&mut out, key, fields);
            }
            if held.key == key.as_bytes() {
                continue;
            }
        }
        boundaries.push(out.len());
        out.extend_from_slice(span);
    }
    if let Some(fields) = pending {
        boundaries.push(out.len());
        record::encode(&mut out, key, fields);
    }
    (out, boundaries)
}

/// Where to split a rebuilt block of `len` bytes: the record boundary nearest its middle,
/// or `None` if it fits or holds a single record.
fn split_point(boundaries: &[usize], len: usize) -> Option<usize> {
    if len <= MAX_BLOCK_BYTES {
        return None;
    }
    let half = len / 2;
    boundaries
        .iter()
        .copied()
        .filter(|&at| at > 0)
        .min_by_key(|&at| at.abs_diff(half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn fields(value: &str) -> Fields<'_> {
        Fields {
            lamport: 1,
            incarnation: 0,
            seq: 1,
            value: Some(value),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Blocks behave as an ordered map, whatever the order and sizes of the writes.
        #[test]
        fn behave_as_an_ordered_map(
            writes in prop::collection::vec(("[a-z]{1,6}", "[0-9]{1,900}"), 0..200),
        ) {
            let mut blocks = Blocks::default();
            let mut model = BTreeMap::new();
            for (key, value) in &writes {
                blocks.upsert(key, fields(value));
                model.insert(key.clone(), value.clone());
            }
            for (key, value) in &model {
                let found = blocks.get(key.as_bytes()).map(|r| r.value());
                prop_assert_eq!(found, Some(Some(value.as_str())));
            }
            prop_assert!(blocks.get(b"0").is_none());
            let all: Vec<(String, String)> = blocks
                .iter_after(None)
                .map(|r| (r.key_str().to_string(), r.value().unwrap_or("").to_string()))
                .collect();
            let want: Vec<(String, String)> = model.clone().into_iter().collect();
            prop_assert_eq!(all, want);
            for after in model.keys() {
                let keys: Vec<&str> = blocks
                    .iter_after(Some(after.as_bytes()))
                    .map(|r| r.key_str())
                    .collect();
                let want: Vec<&str> = model
                    .range::<String, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                    .map(|(k, _)| k.as_str())
                    .collect();
                prop_assert_eq!(keys, want);
            }
            for block in &blocks.blocks {
                let count = record::records(block).count();
                prop_assert!(count >= 1);
                prop_assert!(block.len() <= MAX_BLOCK_BYTES || count == 1);
            }
        }
    }

    #[test]
    fn many_small_records_share_few_blocks() {
        let mut blocks = Blocks::default();
        for i in 0..10_000 {
            blocks.upsert(&format!("key{i:05}"), fields("\"0123456789abcdef\""));
        }
        // 31 bytes per record; blocks split in halves, so each holds over a quarter of
        // the limit. (Memory is the records' bytes whatever the count: blocks are exact.)
        assert!(blocks.block_count() < 10_000 * 31 / (MAX_BLOCK_BYTES / 4));
    }
}
