//! File metadata: the identity of a file's content, and the BLAKE3 tree arithmetic behind it.
//!
//! A file of length `L` is cut into chunks of `chunk_size` bytes (a power of two), the last one
//! shorter. Because every chunk starts at a multiple of its power-of-two size, each chunk is a
//! complete subtree of the file's BLAKE3 tree. So a chunk's hash is the BLAKE3 *chaining value* of
//! that subtree, and the file's root hash (its ordinary `blake3::hash`) is derived from the chunk
//! hashes alone by merging them up the tree. Two consequences the system relies on:
//! - anyone holding the metadata can check that the chunk hashes really belong to the root
//!   ([`FileMeta::validate`]), so a tracker rejects inconsistent metadata without file data;
//! - hashing a file's chunks in parallel yields its root hash for free: no second pass.
//!
//! A file of exactly one chunk has no interior nodes: its only chunk hash is the root hash itself.

use std::fmt;
use std::str::FromStr;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_CHUNKS_PER_FILE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::name::{validate_name, NameError};

/// A 32-byte BLAKE3 hash or chaining value. On the wire: 32 raw bytes; in human-readable formats
/// (JSON output): a hex string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(Hash)
        }
    }
}

impl Hash {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", &hex::encode(&self.0[..6]))
    }
}

impl FromStr for Hash {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Hash(out))
    }
}

/// Index of a chunk, checked against a file's metadata: only [`FileMeta::chunk`] and
/// [`FileMeta::chunks`] make one, so holding a `ChunkIndex` means it is in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkIndex(u32);

impl ChunkIndex {
    /// The raw index.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Everything needed to fetch and verify a file: its name, length, chunking and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Relative path with `/` separators; see [`validate_name`].
    pub name: String,
    /// Length in bytes.
    pub length: u64,
    /// Chunk size in bytes: a power of two within [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
    pub chunk_size: u32,
    /// BLAKE3 hash of the whole file.
    pub root: Hash,
    /// One hash per chunk (see the module docs).
    pub chunk_hashes: Vec<Hash>,
}

/// Why metadata is not self-consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    /// The name is invalid.
    #[error("invalid name: {0}")]
    Name(NameError),
    /// The chunk size is out of bounds or not a power of two.
    #[error("chunk size {0} is not a power of two within {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    /// The file would have more chunks than allowed.
    #[error("{chunks} chunks exceeds the limit of {MAX_CHUNKS_PER_FILE}")]
    TooManyChunks {
        /// Chunks the length implies.
        chunks: u64,
    },
    /// The hash count does not match length / chunk size.
    #[error("{got} chunk hashes for a file that has {want} chunks")]
    HashCount {
        /// Chunks the length implies.
        want: u64,
        /// Hashes given.
        got: usize,
    },
    /// The chunk hashes do not merge to the root hash.
    #[error("chunk hashes do not match the root hash")]
    RootMismatch,
    /// A chunk index is past the end of the file.
    #[error("chunk {chunk} out of range: the file has {num_chunks} chunks")]
    ChunkOutOfRange {
        /// The index asked for.
        chunk: u32,
        /// Chunks in the file.
        num_chunks: u32,
    },
}

/// A chunk's bytes do not hash to the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chunk {chunk} does not match its hash")]
pub struct HashMismatch {
    /// The chunk.
    pub chunk: u32,
}

/// Checks a chunk size: a power of two within bounds.
pub fn check_chunk_size(chunk_size: u32) -> Result<(), MetaError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(MetaError::ChunkSize(chunk_size))
    }
}

/// Number of chunks of a file of `length` bytes (0 for an empty file).
pub fn chunk_count(length: u64, chunk_size: u32) -> u64 {
    length.div_ceil(u64::from(chunk_size.max(1)))
}

/// The hash of chunk `index` of a file of `num_chunks` chunks, as stored in [`FileMeta`].
pub fn hash_chunk(num_chunks: u32, chunk_size: u32, index: u32, data: &[u8]) -> Hash {
    if num_chunks == 1 {
        return blake3::hash(data).into();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(u64::from(index) * u64::from(chunk_size));
    h.update(data);
    Hash(h.finalize_non_root())
}

/// The root hash of a file, derived from its chunk hashes (see the module docs). The caller
/// guarantees `chunk_hashes.len() == chunk_count(length, chunk_size)`.
pub fn root_from_chunks(length: u64, chunk_size: u32, chunk_hashes: &[Hash]) -> Hash {
    match chunk_hashes {
        [] => blake3::hash(b"").into(),
        [only] => *only,
        _ => {
            let (l, r) = split(length, chunk_size, 0, chunk_hashes);
            merge_subtrees_root(&l, &r, Mode::Hash).into()
        }
    }
}

/// Splits the subtree made of `hashes` (starting at chunk `first`) into its two children's
/// chaining values. BLAKE3 puts the largest power-of-two number of bytes that leaves something
/// for the right child on the left; with power-of-two chunk sizes that is a whole number of chunks.
fn split(length: u64, chunk_size: u32, first: usize, hashes: &[Hash]) -> (ChainingValue, ChainingValue) {
    let cs = u64::from(chunk_size);
    let start = first as u64 * cs;
    let end = (start + hashes.len() as u64 * cs).min(length);
    let left_chunks = (blake3::hazmat::left_subtree_len(end - start) / cs) as usize;
    let (l, r) = hashes.split_at(left_chunks);
    (cv(length, chunk_size, first, l), cv(length, chunk_size, first + left_chunks, r))
}

fn cv(length: u64, chunk_size: u32, first: usize, hashes: &[Hash]) -> ChainingValue {
    if let [only] = hashes {
        return only.0;
    }
    let (l, r) = split(length, chunk_size, first, hashes);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

impl FileMeta {
    /// Number of chunks.
    pub fn num_chunks(&self) -> u32 {
        self.chunk_hashes.len() as u32
    }

    /// Checks the raw index against the file and returns it as a [`ChunkIndex`].
    pub fn chunk(&self, raw: u32) -> Result<ChunkIndex, MetaError> {
        if raw < self.num_chunks() {
            Ok(ChunkIndex(raw))
        } else {
            Err(MetaError::ChunkOutOfRange { chunk: raw, num_chunks: self.num_chunks() })
        }
    }

    /// Every chunk index of the file, ascending.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkIndex> {
        (0..self.num_chunks()).map(ChunkIndex)
    }

    /// Byte offset and length of a chunk.
    pub fn chunk_range(&self, i: ChunkIndex) -> (u64, u32) {
        let off = u64::from(i.0) * u64::from(self.chunk_size);
        let len = self.length.saturating_sub(off).min(u64::from(self.chunk_size)) as u32;
        (off, len)
    }

    /// Checks that `data` is chunk `i` of this file.
    pub fn verify_chunk(&self, i: ChunkIndex, data: &[u8]) -> Result<(), HashMismatch> {
        let (_, len) = self.chunk_range(i);
        if data.len() == len as usize
            && hash_chunk(self.num_chunks(), self.chunk_size, i.0, data) == self.chunk_hashes[i.0 as usize]
        {
            Ok(())
        } else {
            Err(HashMismatch { chunk: i.0 })
        }
    }

    /// Checks that the metadata is self-consistent: a valid name, a valid chunk size, the right
    /// number of chunk hashes, and chunk hashes that merge to the root hash.
    pub fn validate(&self) -> Result<(), MetaError> {
        validate_name(&self.name).map_err(MetaError::Name)?;
        check_chunk_size(self.chunk_size)?;
        let want = chunk_count(self.length, self.chunk_size);
        if want > u64::from(MAX_CHUNKS_PER_FILE) {
            return Err(MetaError::TooManyChunks { chunks: want });
        }
        if want != self.chunk_hashes.len() as u64 {
            return Err(MetaError::HashCount { want, got: self.chunk_hashes.len() });
        }
        if root_from_chunks(self.length, self.chunk_size, &self.chunk_hashes) != self.root {
            return Err(MetaError::RootMismatch);
        }
        Ok(())
    }

    /// Whether `other` describes the same content (same length, chunking and hashes).
    pub fn same_content(&self, other: &FileMeta) -> bool {
        self.length == other.length
            && self.chunk_size == other.chunk_size
            && self.root == other.root
            && self.chunk_hashes == other.chunk_hashes
    }

    /// Builds the metadata of an in-memory file. For tests and tools; the chunk store hashes
    /// files on disk without loading them.
    pub fn from_bytes(name: &str, chunk_size: u32, data: &[u8]) -> FileMeta {
        let n = chunk_count(data.len() as u64, chunk_size) as u32;
        let chunk_hashes: Vec<Hash> =
            data.chunks(chunk_size as usize).enumerate().map(|(i, c)| hash_chunk(n, chunk_size, i as u32, c)).collect();
        FileMeta {
            name: name.to_owned(),
            length: data.len() as u64,
            chunk_size,
            root: root_from_chunks(data.len() as u64, chunk_size, &chunk_hashes),
            chunk_hashes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The root derived from chunk hashes equals plain BLAKE3 of the whole file, at every
    /// boundary size.
    #[test]
    fn root_equals_plain_blake3() {
        let cs = MIN_CHUNK_SIZE as usize;
        for len in [0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * cs - 1, 3 * cs, 5 * cs + 7, 8 * cs, 13 * cs + 1] {
            let d = data(len);
            let m = FileMeta::from_bytes("f", MIN_CHUNK_SIZE, &d);
            assert_eq!(m.root, Hash::from(blake3::hash(&d)), "len {len}");
            assert_eq!(m.num_chunks() as usize, len.div_ceil(cs));
            m.validate().unwrap();
        }
    }

    #[test]
    fn verify_chunk_accepts_good_rejects_bad() {
        let cs = MIN_CHUNK_SIZE as usize;
        let d = data(3 * cs + 5);
        let m = FileMeta::from_bytes("f", MIN_CHUNK_SIZE, &d);
        for i in m.chunks() {
            let (off, len) = m.chunk_range(i);
            let chunk = &d[off as usize..off as usize + len as usize];
            m.verify_chunk(i, chunk).unwrap();
            let mut bad = chunk.to_vec();
            bad[0] ^= 1;
            assert_eq!(m.verify_chunk(i, &bad), Err(HashMismatch { chunk: i.get() }));
            assert!(m.verify_chunk(i, &chunk[1..]).is_err());
        }
        // A chunk moved to another index does not verify there.
        let c0 = m.chunk(0).unwrap();
        let c1 = m.chunk(1).unwrap();
        let (o0, l0) = m.chunk_range(c0);
        assert!(m.verify_chunk(c1, &d[o0 as usize..(o0 + u64::from(l0)) as usize]).is_err());
    }

    #[test]
    fn validate_rejects_inconsistent() {
        let d = data(2 * MIN_CHUNK_SIZE as usize);
        let good = FileMeta::from_bytes("f", MIN_CHUNK_SIZE, &d);
        let mut m = good.clone();
        m.chunk_size = 0;
        assert_eq!(m.validate(), Err(MetaError::ChunkSize(0)));
        let mut m = good.clone();
        m.chunk_size = MIN_CHUNK_SIZE + 1;
        assert!(matches!(m.validate(), Err(MetaError::ChunkSize(_))));
        let mut m = good.clone();
        m.length = u64::MAX;
        assert!(matches!(m.validate(), Err(MetaError::TooManyChunks { .. })));
        let mut m = good.clone();
        m.chunk_hashes.push(m.chunk_hashes[0]);
        assert!(matches!(m.validate(), Err(MetaError::HashCount { .. })));
        let mut m = good.clone();
        m.length = 0;
        assert!(matches!(m.validate(), Err(MetaError::HashCount { .. })));
        let mut m = good.clone();
        m.chunk_hashes[1] = m.chunk_hashes[0];
        assert_eq!(m.validate(), Err(MetaError::RootMismatch));
        let mut m = good;
        m.name = "../x".into();
        assert!(matches!(m.validate(), Err(MetaError::Name(_))));
    }

    #[test]
    fn chunk_index_is_checked() {
        let m = FileMeta::from_bytes("f", MIN_CHUNK_SIZE, &data(10));
        assert!(m.chunk(0).is_ok());
        assert_eq!(m.chunk(1), Err(MetaError::ChunkOutOfRange { chunk: 1, num_chunks: 1 }));
        assert!(m.chunk(u32::MAX).is_err());
    }

    #[test]
    fn hash_hex_round_trip() {
        let h = Hash::from(blake3::hash(b"x"));
        assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
        assert!("zz".parse::<Hash>().is_err());
    }
}
