//! Hashing files on disk into [`FileMeta`]: streaming, on all cores, never loading a file whole.
//!
//! Every chunk is a complete BLAKE3 subtree (see [`proto::meta`]), so chunks are hashed
//! independently in parallel and the root hash is merged from the chunk hashes: one pass over the
//! data gives both.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proto::limits::{DEFAULT_CHUNK_SIZE, MAX_CHUNKS_PER_FILE, MAX_CHUNK_SIZE};
use proto::meta::{check_chunk_size, chunk_count, hash_chunk, root_from_chunks};
use proto::{validate_name, FileMeta, Hash, MetaError};
use rayon::prelude::*;

use crate::error::{io_err, StoreError};

thread_local! {
    /// One chunk buffer per thread, reused across chunks and files, so hashing allocates
    /// `threads × chunk_size` bytes in total whatever the file size.
    static CHUNK_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// About how many chunks a file is cut into when its size allows: enough pieces that a swarm of
/// downloaders always has something to trade, and that the last chunk to leave the seed is a
/// small fraction of the file (it still has to be forwarded when it arrives).
pub const TARGET_CHUNKS: u64 = 1024;

/// The smallest chunk size a scan chooses (64 KiB): below it, per-chunk costs (a request, a
/// Chunk Register, a hash) start to show next to the transfer itself.
pub const SMALLEST_CHOSEN_CHUNK: u32 = 64 * 1024;

/// The chunk size used for a file of `length` bytes: the power of two that gives about
/// [`TARGET_CHUNKS`] chunks, within [`SMALLEST_CHOSEN_CHUNK`]..=[`DEFAULT_CHUNK_SIZE`] (1 MiB, so
/// files up to 1 GiB get ~1024 chunks and larger ones 1 MiB chunks), doubled beyond that only
/// while the file would have more than [`MAX_CHUNKS_PER_FILE`] chunks, up to [`MAX_CHUNK_SIZE`].
pub fn choose_chunk_size(length: u64) -> u32 {
    let ideal = length.div_ceil(TARGET_CHUNKS).next_power_of_two();
    let mut cs = ideal.clamp(u64::from(SMALLEST_CHOSEN_CHUNK), u64::from(DEFAULT_CHUNK_SIZE)) as u32;
    while chunk_count(length, cs) > u64::from(MAX_CHUNKS_PER_FILE) && cs < MAX_CHUNK_SIZE {
        cs *= 2;
    }
    cs
}

/// Byte offset and length of chunk `index` of a file of `length` bytes.
pub(crate) fn chunk_span(length: u64, chunk_size: u32, index: u32) -> (u64, usize) {
    let off = u64::from(index) * u64::from(chunk_size);
    let len = length.saturating_sub(off).min(u64::from(chunk_size));
    (off, len as usize)
}

/// Reads chunk `index` of `file` (which is `length` bytes long and has `num_chunks` chunks) with
/// one positioned read into this thread's buffer, and returns its hash as stored in [`FileMeta`].
/// Safe to call from many threads on the same `File`: positioned reads share no cursor.
pub(crate) fn hash_chunk_at(
    file: &File,
    length: u64,
    chunk_size: u32,
    num_chunks: u32,
    index: u32,
) -> std::io::Result<Hash> {
    let (off, len) = chunk_span(length, chunk_size, index);
    CHUNK_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(len, 0);
        file.read_exact_at(&mut buf[..len], off)?;
        Ok(hash_chunk(num_chunks, chunk_size, index, &buf[..len]))
    })
}

/// Hashes every chunk of an open file of `length` bytes in parallel, in chunk order.
pub(crate) fn hash_all_chunks(file: &File, length: u64, chunk_size: u32) -> std::io::Result<Vec<Hash>> {
    let n = chunk_count(length, chunk_size) as u32;
    (0..n).into_par_iter().map(|i| hash_chunk_at(file, length, chunk_size, n, i)).collect()
}

/// Hashes the file at `path` into the metadata it would be shared under as `name`.
///
/// Streams the file: each rayon worker reads its chunk with a positioned read into a reused
/// per-thread buffer, so memory stays at one chunk per core. The root hash comes from the chunk
/// hashes, with no second pass. A file that shrinks while being hashed gives
/// [`StoreError::FileChanged`].
pub fn hash_file(path: &Path, name: &str, chunk_size: u32) -> Result<FileMeta, StoreError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    hash_open_file(&file, path, name, chunk_size)
}

/// [`hash_file`] of a file already open (`path` only names it in errors), so the store hashes
/// exactly the file it opened below the share folder, not whatever a path names by then.
pub(crate) fn hash_open_file(file: &File, path: &Path, name: &str, chunk_size: u32) -> Result<FileMeta, StoreError> {
    validate_name(name)?;
    check_chunk_size(chunk_size)?;
    let md = file.metadata().map_err(io_err("stat", path))?;
    if !md.is_file() {
        return Err(StoreError::NotRegular { path: path.to_path_buf() });
    }
    let length = md.len();
    let chunks = chunk_count(length, chunk_size);
    if chunks > u64::from(MAX_CHUNKS_PER_FILE) {
        return Err(StoreError::InvalidMeta(MetaError::TooManyChunks { chunks }));
    }
    let chunk_hashes = hash_all_chunks(file, length, chunk_size).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StoreError::FileChanged { name: name.to_owned() }
        } else {
            io_err("read", path)(e)
        }
    })?;
    Ok(FileMeta {
        name: name.to_owned(),
        length,
        chunk_size,
        root: root_from_chunks(length, chunk_size, &chunk_hashes),
        chunk_hashes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::limits::MIN_CHUNK_SIZE;

    #[test]
    fn chunk_size_choice() {
        assert_eq!(choose_chunk_size(0), SMALLEST_CHOSEN_CHUNK);
        assert_eq!(choose_chunk_size(1), SMALLEST_CHOSEN_CHUNK);
        assert_eq!(choose_chunk_size(64 << 20), SMALLEST_CHOSEN_CHUNK);
        assert_eq!(choose_chunk_size((64 << 20) + 1), 2 * SMALLEST_CHOSEN_CHUNK);
        assert_eq!(choose_chunk_size(256 << 20), 256 * 1024);
        assert_eq!(choose_chunk_size(1 << 30), DEFAULT_CHUNK_SIZE);
        assert_eq!(choose_chunk_size(100 << 30), DEFAULT_CHUNK_SIZE);
        let max_default = u64::from(DEFAULT_CHUNK_SIZE) * u64::from(MAX_CHUNKS_PER_FILE);
        assert_eq!(choose_chunk_size(max_default), DEFAULT_CHUNK_SIZE);
        assert_eq!(choose_chunk_size(max_default + 1), 2 * DEFAULT_CHUNK_SIZE);
        assert_eq!(choose_chunk_size(u64::MAX), MAX_CHUNK_SIZE);
    }

    #[test]
    fn hash_file_matches_from_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5 * MIN_CHUNK_SIZE as usize + 3).map(|i| (i % 253) as u8).collect();
        let p = dir.path().join("f");
        std::fs::write(&p, &data).unwrap();
        let m = hash_file(&p, "f", MIN_CHUNK_SIZE).unwrap();
        assert_eq!(m, FileMeta::from_bytes("f", MIN_CHUNK_SIZE, &data));
        assert_eq!(m.root, Hash::from(blake3::hash(&data)));
        assert!(matches!(hash_file(&p, "../f", MIN_CHUNK_SIZE), Err(StoreError::InvalidName(_))));
        assert!(matches!(hash_file(&p, "f", 1000), Err(StoreError::InvalidMeta(_))));
        assert!(matches!(hash_file(dir.path(), "f", MIN_CHUNK_SIZE), Err(StoreError::NotRegular { .. })));
    }
}
