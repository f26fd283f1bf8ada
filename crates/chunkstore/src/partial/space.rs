//! Reserving the disk space a download still needs, so a full disk fails at once rather than after
//! hours of downloading.

use rustix::fs::FallocateFlags;

use super::Partial;
use crate::error::StoreError;
use crate::space::{free_bytes, judge_reservation};

impl Partial {
    /// Reserves the disk space the download still needs: allocates the holes of its data file
    /// (`fallocate` over the whole file, which leaves written chunks as they are), so writing the
    /// remaining chunks cannot run out of space. Fails with [`StoreError::NoSpace`] naming the
    /// bytes still needed (those of the chunks not held) and the bytes free, if the file system
    /// lacks them; where it cannot preallocate, the two are compared instead. Either way the
    /// download is kept as it was. Some file systems keep what they allocated before running
    /// out; the download needs that space anyway. Nothing to do once every chunk is held.
    pub fn reserve(&self) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let needed = inner.meta.length.saturating_sub(self.bytes_done());
        if needed == 0 {
            return Ok(());
        }
        let result = rustix::fs::fallocate(&inner.data, FallocateFlags::empty(), 0, inner.meta.length);
        let dest = inner.home.root.display(&inner.meta.name);
        judge_reservation(result, needed, || free_bytes(&*inner.dir), &dest, &inner.data_path)
    }
}
