//! What a partial download on disk amounts to, read from its bookkeeping files alone: nothing is
//! re-hashed, so listing many large downloads is instant (and trusts their bitmaps, which the next
//! open of each re-verifies).

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::{Bitmap, FileMeta};

use crate::beneath::{Access, Dir};
use crate::files::{bytes_held, Names};

/// A partial download on disk (see [`crate::Store::partial_infos`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialInfo {
    /// The file being downloaded: its name, root hash, length, chunk size and chunk hashes.
    pub meta: FileMeta,
    /// Chunks its bitmap marks held (not re-verified here).
    pub chunks_done: u32,
    /// Chunks in the file.
    pub num_chunks: u32,
    /// Bytes of the file in the chunks held.
    pub bytes_done: u64,
    /// The last write to any of its files (the data file changes with every chunk stored).
    pub modified: SystemTime,
    /// Disk space its files take (allocated blocks, so a sparse data file counts only what was
    /// written or reserved).
    pub disk_bytes: u64,
}

/// The info of the download of `meta` filed under `id` in the partial folder `dir`. Files that are
/// missing or unreadable count as empty: a bitmap that cannot be read holds nothing (as a resume
/// would treat it). `open` is the bitmap of the download if this store has it open: newer than
/// its file.
pub(crate) fn read(dir: &Dir, id: &str, meta: FileMeta, open: Option<Bitmap>) -> PartialInfo {
    let names = Names::of(id);
    let n = meta.num_chunks();
    let have = open.filter(|b| b.len() == n).unwrap_or_else(|| {
        let mut bytes = Vec::new();
        let read = dir.open_file(&names.have, Access::Read).and_then(|mut f| f.read_to_end(&mut bytes));
        read.ok().and_then(|_| Bitmap::from_parts(n, bytes).ok()).unwrap_or_else(|| Bitmap::new(n))
    });
    let mut modified = UNIX_EPOCH;
    let mut disk_bytes = 0u64;
    for name in [&names.meta, &names.data, &names.have] {
        let Ok(st) = dir.stat(name) else { continue };
        modified = modified.max(mtime(&st));
        disk_bytes = disk_bytes.saturating_add(allocated(&st));
    }
    PartialInfo {
        chunks_done: have.count(),
        num_chunks: n,
        bytes_done: bytes_held(&meta, &have),
        modified,
        disk_bytes,
        meta,
    }
}

/// The modification time in `st` (the epoch for times before it or beyond `SystemTime`).
// `Stat`'s field types differ across architectures, so some conversions are no-ops here.
#[allow(clippy::useless_conversion)]
fn mtime(st: &rustix::fs::Stat) -> SystemTime {
    let secs = u64::try_from(st.st_mtime).unwrap_or(0);
    let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos)).unwrap_or(UNIX_EPOCH)
}

/// Bytes allocated to the file of `st` (`st_blocks` counts 512-byte units whatever the file
/// system's block size).
#[allow(clippy::useless_conversion)]
fn allocated(st: &rustix::fs::Stat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
}
