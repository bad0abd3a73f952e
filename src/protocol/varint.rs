//! LEB128 varints: the compact integers of the causal metadata codec and of stored records.
//!
//! Small numbers take one byte and no number takes more than ten. [`Reader`] never panics:
//! whatever bytes it is given, a truncated or overlong number reads as `None`.

/// Appends `value` to `out`.
pub fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads bytes, varints and slices off the front of a byte string.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// What is left to read.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(*first)
    }

    pub fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(head)
    }

    pub fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(values in prop::collection::vec(any::<u64>(), 0..16)) {
            let mut bytes = Vec::new();
            for v in &values {
                put(&mut bytes, *v);
            }
            let mut reader = Reader::new(&bytes);
            for v in &values {
                prop_assert_eq!(reader.varint(), Some(*v));
            }
            prop_assert!(reader.rest().is_empty());
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            let mut reader = Reader::new(&bytes);
            while reader.varint().is_some() {}
        }
    }

    #[test]
    fn small_numbers_take_one_byte() {
        let mut bytes = Vec::new();
        put(&mut bytes, 127);
        assert_eq!(bytes, [127]);
        put(&mut bytes, 128);
        assert_eq!(bytes.len(), 3);
    }
}
