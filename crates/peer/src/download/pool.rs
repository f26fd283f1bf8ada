//! A set of chunk indices for the scheduler's NEEDED and IN FLIGHT chunks.

use proto::Bitmap;

/// A set of chunk indices with O(1) insert, remove and membership, listable in O(len).
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) items: Vec<u32>,
    pub(crate) pos: Vec<usize>,
    /// The same set as a bitmap, for byte-wise intersections with a source's chunks.
    pub(crate) bits: Bitmap,
}

/// The position of a chunk not in the set.
pub(crate) const NONE: usize = usize::MAX;

impl Pool {
    pub(crate) fn new(n: u32) -> Self {
        Self { items: Vec::new(), pos: vec![NONE; n as usize], bits: Bitmap::new(n) }
    }

    pub(crate) fn insert(&mut self, c: u32) {
        if self.pos[c as usize] == NONE {
            self.pos[c as usize] = self.items.len();
            self.items.push(c);
            self.bits.set(c);
        }
    }

    pub(crate) fn remove(&mut self, c: u32) {
        let pos = self.pos[c as usize];
        if pos == NONE {
            return;
        }
        self.items.swap_remove(pos);
        if let Some(&moved) = self.items.get(pos) {
            self.pos[moved as usize] = pos;
        }
        self.pos[c as usize] = NONE;
        self.bits.clear(c);
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}
