//! Large values, kept out of line so that rewriting a segment never copies them.
//!
//! A record whose value is at least [`LARGE_VALUE_BYTES`] names a slot here instead of
//! holding the text. A slot is freed when its record is overwritten, and reused.

/// Values of at least this many bytes live in the slab.
pub const LARGE_VALUE_BYTES: usize = 512;

#[derive(Debug, Default)]
pub struct Slab {
    values: Vec<Box<[u8]>>,
    free: Vec<u32>,
    /// Bytes of the values in use.
    bytes: usize,
}

impl Slab {
    pub fn insert(&mut self, value: Box<[u8]>) -> u32 {
        self.bytes += value.len();
        match self.free.pop() {
            Some(slot) => {
                self.values[slot as usize] = value;
                slot
            }
            None => {
                self.values.push(value);
                (self.values.len() - 1) as u32
            }
        }
    }

    /// The value in `slot`; empty for a free or unknown slot.
    pub fn get(&self, slot: u32) -> &[u8] {
        self.values.get(slot as usize).map_or(&[], |v| v)
    }

    /// Slots in use.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.values.len() - self.free.len()
    }

    /// Bytes of the values in use.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn remove(&mut self, slot: u32) {
        if let Some(value) = self.values.get_mut(slot as usize) {
            self.bytes -= value.len();
            *value = Box::default();
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused() {
        let mut slab = Slab::default();
        let a = slab.insert(b"a".to_vec().into());
        let b = slab.insert(b"b".to_vec().into());
        slab.remove(a);
        assert_eq!(slab.get(a), b"");
        let c = slab.insert(b"c".to_vec().into());
        assert_eq!(c, a);
        assert_eq!((slab.get(b), slab.get(c)), (&b"b"[..], &b"c"[..]));
    }
}
