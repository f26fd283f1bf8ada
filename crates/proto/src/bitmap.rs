//! Chunk bitmaps: which chunks of a file a peer holds, one bit per chunk (bit `i % 8` of byte
//! `i / 8`, least significant first). A bitmap that arrives from the network is validated while it
//! is decoded: its byte count matches its length and the padding bits are zero.

use serde::{Deserialize, Serialize};

/// A fixed-length set of chunk indices.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBitmap")]
pub struct Bitmap {
    len: u32,
    bits: Vec<u8>,
}

#[derive(Deserialize)]
struct RawBitmap {
    len: u32,
    bits: Vec<u8>,
}

impl TryFrom<RawBitmap> for Bitmap {
    type Error = BitmapError;
    fn try_from(raw: RawBitmap) -> Result<Self, BitmapError> {
        Bitmap::from_parts(raw.len, raw.bits)
    }
}

/// Why bytes do not form a valid bitmap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    /// The byte count does not match the bit length.
    #[error("bitmap of {len} bits needs {want} bytes, got {got}")]
    WrongSize {
        /// Bit length.
        len: u32,
        /// Bytes needed.
        want: usize,
        /// Bytes given.
        got: usize,
    },
    /// Bits past the end are set.
    #[error("bitmap has padding bits set")]
    Padding,
}

impl Bitmap {
    /// An empty bitmap of `len` bits.
    pub fn new(len: u32) -> Self {
        Self { len, bits: vec![0; (len as usize).div_ceil(8)] }
    }

    /// A bitmap of `len` bits with the given indices set (those out of range are ignored).
    pub fn with_ones(len: u32, ones: impl IntoIterator<Item = u32>) -> Self {
        let mut b = Self::new(len);
        for i in ones {
            b.set(i);
        }
        b
    }

    /// A bitmap of `len` bits, all set.
    pub fn full(len: u32) -> Self {
        let mut b = Self { len, bits: vec![0xff; (len as usize).div_ceil(8)] };
        b.clear_padding();
        b
    }

    /// Builds a bitmap from its bytes, checking size and padding.
    pub fn from_parts(len: u32, bits: Vec<u8>) -> Result<Self, BitmapError> {
        let want = (len as usize).div_ceil(8);
        if bits.len() != want {
            return Err(BitmapError::WrongSize { len, want, got: bits.len() });
        }
        let b = Self { len, bits };
        let mut clean = b.clone();
        clean.clear_padding();
        if clean.bits != b.bits {
            return Err(BitmapError::Padding);
        }
        Ok(b)
    }

    fn clear_padding(&mut self) {
        let rem = self.len % 8;
        if rem != 0 {
            if let Some(last) = self.bits.last_mut() {
                *last &= (1u8 << rem) - 1;
            }
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the bitmap has zero bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Whether bit `i` is set; false when `i` is out of range.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i`; returns true if it was not set before. Out-of-range indices are ignored and
    /// return false.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let byte = &mut self.bits[(i / 8) as usize];
        let mask = 1 << (i % 8);
        let was = *byte & mask != 0;
        *byte |= mask;
        !was
    }

    /// Clears bit `i`.
    pub fn clear(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] &= !(1 << (i % 8));
        }
    }

    /// Number of set bits.
    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// True when every bit is set.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// Indices of the set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(byte_i, &byte)| {
            (0..8u32).filter(move |bit| byte & (1 << bit) != 0).map(move |bit| byte_i as u32 * 8 + bit)
        })
    }
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitmap({}/{})", self.count(), self.len)
    }
}

/// Which chunks of a file a peer holds: all of them, compactly, or those in a bitmap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Have {
    /// Every chunk.
    Complete,
    /// The chunks whose bits are set.
    Partial(Bitmap),
}

impl Have {
    /// Whether chunk `i` is held, for a file of `num_chunks` chunks.
    pub fn has(&self, i: u32, num_chunks: u32) -> bool {
        match self {
            Have::Complete => i < num_chunks,
            Have::Partial(b) => b.get(i),
        }
    }

    /// The bitmap this stands for, for a file of `num_chunks` chunks.
    pub fn to_bitmap(&self, num_chunks: u32) -> Bitmap {
        match self {
            Have::Complete => Bitmap::full(num_chunks),
            Have::Partial(b) => b.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count() {
        let mut b = Bitmap::new(10);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(9));
        assert!(!b.set(10));
        assert!(b.get(9) && !b.get(10) && !b.get(5));
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 9]);
        b.clear(9);
        assert_eq!(b.count(), 1);
    }

    #[test]
    fn full_has_clean_padding() {
        for n in [0, 1, 7, 8, 9, 16, 17] {
            let b = Bitmap::full(n);
            assert!(b.is_full());
            assert_eq!(b.count(), n);
            assert!(Bitmap::from_parts(n, b.as_bytes().to_vec()).is_ok());
        }
    }

    #[test]
    fn rejects_bad_parts() {
        assert!(matches!(Bitmap::from_parts(9, vec![0]), Err(BitmapError::WrongSize { .. })));
        assert_eq!(Bitmap::from_parts(9, vec![0, 2]), Err(BitmapError::Padding));
        let bytes = postcard::to_stdvec(&(9u32, vec![0u8, 0xff])).unwrap();
        assert!(postcard::from_bytes::<Bitmap>(&bytes).is_err());
    }
}
