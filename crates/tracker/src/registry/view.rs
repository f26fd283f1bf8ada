//! Read-only views of the registry for the tracker's web page and its JSON API (`http`): the
//! files, the sessions, and one file's chunk availability folded into a bounded number of cells.
//!
//! Each view takes the read lock once, copies out at most its cap of rows, and lets go: what a
//! page request costs is bounded by the caps (rows, cells), never by the size of the swarm,
//! except for the one file's availability array, which is walked once (at most 2^18 chunks, the
//! protocol's limit).

use std::time::UNIX_EPOCH;

use serde::Serialize;

use super::{FileEntry, Registry};

/// A file as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileRow {
    /// Its name.
    pub name: String,
    /// Length in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// Root hash, hex.
    pub root: String,
    /// Holders with every chunk.
    pub complete: u32,
    /// Holders with some chunks, not all.
    pub partial: u32,
}

/// One page of rows, the first `rows.len()` of `total`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rows<T> {
    /// The rows shown.
    pub rows: Vec<T>,
    /// How many there are in all.
    pub total: usize,
    /// How many are not shown (`total - rows.len()`).
    pub more: usize,
}

/// A session as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerRow {
    /// The tracker's id of the session (its order of arrival).
    pub id: u64,
    /// Where the session connects from.
    pub address: String,
    /// Where the peer serves, once it has registered (as stored: an unspecified IP is a peer on
    /// the tracker's own host, every interface).
    pub endpoint: Option<String>,
    /// Files it holds, complete or partial.
    pub files: usize,
    /// When the session opened, seconds since the Unix epoch.
    pub since: u64,
}

/// One file's chunk availability, folded into at most a given number of cells.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChunkMap {
    /// The file.
    #[serde(flatten)]
    pub file: FileRow,
    /// Consecutive chunks folded into each cell (the last may have fewer).
    pub chunks_per_cell: u32,
    /// Per cell, the fewest holders any of its chunks has: a cell is as available as its rarest
    /// chunk.
    pub cells: Vec<u32>,
    /// Chunks with at least one holder.
    pub held_chunks: u32,
    /// Copies of chunks in the swarm: the sum over chunks of their holders.
    pub copies: u64,
}

impl FileEntry {
    fn row(&self, name: &str) -> FileRow {
        FileRow {
            name: name.to_owned(),
            size: self.meta.length,
            chunk_size: self.meta.chunk_size,
            chunks: self.meta.num_chunks(),
            root: self.meta.root.to_string(),
            complete: self.holders.complete_sources(),
            partial: self.holders.sources() - self.holders.complete_sources(),
        }
    }
}

impl Registry {
    /// The first `max` files by name, with the total.
    pub fn file_rows(&self, max: usize) -> Rows<FileRow> {
        let st = self.read();
        let rows: Vec<FileRow> = st.files.iter().take(max).map(|(name, f)| f.row(name)).collect();
        let total = st.files.len();
        Rows { more: total - rows.len(), rows, total }
    }

    /// Up to `max` sessions (the first the map yields, sorted by id), with the total.
    pub fn peer_rows(&self, max: usize) -> Rows<PeerRow> {
        let st = self.read();
        let mut rows: Vec<PeerRow> = st
            .peers
            .iter()
            .take(max)
            .map(|(id, p)| PeerRow {
                id: id.0,
                address: p.observed.to_string(),
                endpoint: p.listen.map(|a| a.to_string()),
                files: p.files.len(),
                since: p.opened.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            })
            .collect();
        let total = st.peers.len();
        drop(st);
        rows.sort_unstable_by_key(|r| r.id);
        Rows { more: total - rows.len(), rows, total }
    }

    /// The file `name`'s availability in at most `max_cells` cells (at least one), or `None` if
    /// no such file is registered.
    pub fn chunk_map(&self, name: &str, max_cells: usize) -> Option<ChunkMap> {
        let st = self.read();
        let file = st.files.get(name)?;
        let row = file.row(name);
        let availability = file.holders.availability();
        let per = availability.len().div_ceil(max_cells.max(1)).max(1);
        let cells = availability.chunks(per).map(|c| c.iter().copied().min().unwrap_or(0)).collect();
        let held_chunks = availability.iter().filter(|&&a| a > 0).count() as u32;
        let copies = availability.iter().map(|&a| u64::from(a)).sum();
        Some(ChunkMap { file: row, chunks_per_cell: per as u32, cells, held_chunks, copies })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proto::limits::MIN_CHUNK_SIZE;
    use proto::tracker::RegisterFile;
    use proto::{Bitmap, FileMeta, Have};

    use super::*;
    use crate::config::Limits;

    fn meta(name: &str, chunks: u32) -> FileMeta {
        let data = vec![7u8; chunks as usize * MIN_CHUNK_SIZE as usize];
        FileMeta::from_bytes(name, MIN_CHUNK_SIZE, &data)
    }

    fn files(list: Vec<(FileMeta, Have)>) -> Vec<RegisterFile> {
        list.into_iter().map(|(meta, have)| RegisterFile { meta, have }).collect()
    }

    #[test]
    fn views_are_capped_and_cells_show_the_rarest_chunk() {
        let registry = Registry::new(Limits { max_files_per_register: 100, ..Limits::default() });
        let a = registry.open_session(SocketAddr::from(([10, 0, 0, 1], 5000)));
        let b = registry.open_session(SocketAddr::from(([10, 0, 0, 2], 5000)));
        let listen = |ip: u8| SocketAddr::from(([10, 0, 0, ip], 7000));
        let five = (0..5).map(|i| (meta(&format!("dir/f{i}"), 10), Have::Complete)).collect();
        registry.register(a, listen(1), files(five)).unwrap();
        let mut have = Bitmap::new(10);
        have.set(0);
        have.set(1);
        registry.register(b, listen(2), files(vec![(meta("dir/f0", 10), Have::Partial(have))])).unwrap();

        let files = registry.file_rows(3);
        assert_eq!((files.rows.len(), files.total, files.more), (3, 5, 2));
        assert_eq!((files.rows[0].name.as_str(), files.rows[0].complete, files.rows[0].partial), ("dir/f0", 1, 1));
        let peers = registry.peer_rows(1);
        assert_eq!((peers.rows.len(), peers.total, peers.more), (1, 2, 1));
        let peers = registry.peer_rows(10);
        assert_eq!(peers.rows.iter().map(|p| p.files).collect::<Vec<_>>(), [5, 1]);
        assert_eq!(peers.rows[1].endpoint.as_deref(), Some("10.0.0.2:7000"));

        // 10 chunks in 4 cells of 3 (the last of 1): chunks 0 and 1 have 2 holders, the rest 1.
        let map = registry.chunk_map("dir/f0", 4).unwrap();
        assert_eq!((map.chunks_per_cell, map.cells.clone()), (3, vec![1, 1, 1, 1]));
        assert_eq!((map.held_chunks, map.copies), (10, 12));
        let map = registry.chunk_map("dir/f0", 100).unwrap();
        assert_eq!(map.cells, [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert!(registry.chunk_map("dir/none", 4).is_none());
    }

    #[test]
    fn a_file_of_2_18_chunks_folds_into_the_cap() {
        let registry = Registry::new(Limits::default());
        let a = registry.open_session(SocketAddr::from(([10, 0, 0, 1], 5000)));
        let chunks = 1u32 << 18;
        let chunk_hashes = vec![proto::Hash([1; 32]); chunks as usize];
        let length = u64::from(chunks) * u64::from(MIN_CHUNK_SIZE);
        let root = proto::meta::root_from_chunks(length, MIN_CHUNK_SIZE, &chunk_hashes);
        let big = FileMeta { name: "big".into(), length, chunk_size: MIN_CHUNK_SIZE, root, chunk_hashes };
        let results = registry.register(a, SocketAddr::from(([10, 0, 0, 1], 7000)), files(vec![(big, Have::Complete)]));
        assert!(results.unwrap().iter().all(Result::is_ok));
        let map = registry.chunk_map("big", 4096).unwrap();
        assert_eq!((map.cells.len(), map.chunks_per_cell, map.held_chunks), (4096, 64, chunks));
    }
}
