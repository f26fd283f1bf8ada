//! A partial download: verify-then-write of chunks into a data file, a persisted bitmap of the
//! chunks held, resume after a crash, and whole-file verification and atomic promotion.
//!
//! Invariants:
//! - A bit is set in memory only after its chunk's bytes were verified against the chunk hash and
//!   written to the data file; it is set on disk only after it is set in memory.
//! - Nothing a bitmap on disk claims is trusted after a restart: [`open`] re-hashes every claimed
//!   chunk and clears the bits whose bytes do not match. So chunks are never fsynced one by one:
//!   a crash can lose the last chunks written or leave a bit set over torn bytes, and either way
//!   the next open finds out and fetches those chunks again.
//! - A file appears under its name only after every chunk was read back from disk and matched,
//!   the data was fsynced, and it was linked into place without replacing anything.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proto::meta::root_from_chunks;
use proto::{Bitmap, ChunkIndex, FileMeta, Hash, MetaError};
use rayon::prelude::*;
use tracing::{debug, info, warn};

use crate::beneath::{split_parent, Access, Dir};
use crate::error::{io_err, StoreError};
use crate::hash::{chunk_span, hash_chunk_at, hash_open_file};
use crate::scan::write_atomic;
use crate::store::{lock, Store};

/// A download in progress: a handle to its data file and chunk bitmap. Cheap to clone; all clones
/// (and every [`Store::open_partial`] of the same metadata while one is alive) share one state.
/// Every method is safe to call from many threads at once.
#[derive(Clone)]
pub struct Partial {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Store,
    meta: FileMeta,
    id: String,
    /// Paths of the three files, for messages only: they are opened and removed by name in the
    /// store's open `.p2p/partial` folder.
    data_path: PathBuf,
    have_path: PathBuf,
    /// The data file, opened once for positioned reads and writes, which share no cursor and so
    /// need no lock. After `finish` the same handle reads the file under its final name.
    data: File,
    /// The bitmap and its file: one lock so that two writers setting bits in the same byte never
    /// persist a stale byte and lose the other's bit.
    state: Mutex<State>,
    /// Bytes written since the last flush-behind started (see [`Partial::flush_behind`]).
    unflushed: AtomicU64,
    /// A flush-behind is running; at most one at a time.
    flushing: AtomicBool,
    /// The error of a failed flush-behind, as (kind, message). Linux reports a writeback error to
    /// one fsync only, so it is kept here, for good: data written before it may never have reached
    /// the disk, and `finish` must not put this copy in place, however often it is called.
    flush_error: Mutex<Option<(std::io::ErrorKind, String)>>,
}

/// Written bytes after which the data file's writeback is started in the background, so the disk
/// writes while the network delivers and the final fsync has little left to do. Without it the
/// kernel starts writing only at its dirty-memory threshold (gigabytes on a large machine), and a
/// download would cost network time plus disk time instead of the larger of the two.
const FLUSH_BEHIND: u64 = 64 * 1024 * 1024;

struct State {
    have: Bitmap,
    have_file: File,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// `finish` is verifying and promoting the file; the lock is not held meanwhile so readers
    /// keep being served.
    Finishing,
    Finished,
}

/// The id a download is filed under: hex of the first 16 bytes of
/// `blake3(name ++ 0 ++ root ++ chunk_size as u32 little-endian)`. The chunk size is included
/// because the same content chunked differently has a different bitmap.
pub(crate) fn partial_id(meta: &FileMeta) -> String {
    let mut h = blake3::Hasher::new();
    h.update(meta.name.as_bytes());
    h.update(&[0]);
    h.update(meta.root.as_bytes());
    h.update(&meta.chunk_size.to_le_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

/// Reads and validates the `.meta` file `name` of `dir`.
pub(crate) fn read_meta(dir: &Dir, name: &str) -> Result<FileMeta, StoreError> {
    let path = dir.display(name);
    let mut bytes = Vec::new();
    dir.open_file(name, Access::Read).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err("read", &path))?;
    let corrupt = |reason: String| StoreError::Corrupt { path: path.clone(), reason };
    let meta: FileMeta = postcard::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
    meta.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(meta)
}

fn remove(dir: &Dir, name: &str) -> Result<(), StoreError> {
    dir.remove_file(name).map_err(io_err("remove", &dir.display(name)))
}

/// Whether `file` has no other name than the one it was opened by.
fn only_link(file: &File) -> bool {
    file.metadata().is_ok_and(|md| std::os::unix::fs::MetadataExt::nlink(&md) == 1)
}

fn fsync_dir(dir: &Dir) -> Result<(), StoreError> {
    dir.sync().map_err(io_err("fsync folder", dir.path()))
}

/// See [`Store::open_partial`].
pub(crate) fn open(store: &Store, meta: &FileMeta) -> Result<Partial, StoreError> {
    meta.validate()?;
    let id = partial_id(meta);
    // Held while creating or resuming, so two callers cannot both create a handle for one
    // download; resuming a large download re-hashes it, which delays other opens meanwhile.
    let mut registry = lock(&store.inner.open);
    registry.retain(|_, w| w.strong_count() > 0);
    if let Some(inner) = registry.get(&id).and_then(|w| w.upgrade()) {
        if inner.meta == *meta {
            return Ok(Partial { inner });
        }
        // Same id, different metadata: only a BLAKE3 collision could get here.
        return Err(StoreError::AlreadyExists { name: meta.name.clone() });
    }

    let dir = &store.inner.partial_dir;
    let (data_name, meta_name, have_name) = (format!("{id}.data"), format!("{id}.meta"), format!("{id}.have"));
    let (data_path, meta_path, have_path) = (dir.display(&data_name), dir.display(&meta_name), dir.display(&have_name));

    let resumed = match read_meta(dir, &meta_name) {
        Ok(m) if m == *meta => true,
        Ok(_) => {
            warn!(name = meta.name, "partial download on disk has other metadata; starting over");
            false
        }
        Err(StoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => false,
        Err(e) => {
            warn!(name = meta.name, error = %e, "partial download on disk is unreadable; starting over");
            false
        }
    };
    // A hard link planted under one of these predictable names must never make the store write
    // to the file it points at: a resumed download's files must have no other link, and a new
    // download's are created exclusively (O_EXCL) after removing whatever had their names.
    let reopened = if resumed {
        let open = |name: &str| dir.open_file(name, Access::ReadWrite).ok().filter(only_link);
        match (open(&data_name), open(&have_name)) {
            (Some(data), Some(have)) => Some((data, have)),
            _ => {
                warn!(name = meta.name, "partial download's files are missing or linked elsewhere; starting over");
                None
            }
        }
    } else {
        None
    };
    let resumed = reopened.is_some();
    let (data, mut have_file) = match reopened {
        Some(files) => files,
        None => {
            // The meta is written (atomically) before any data, so every data file on disk has a
            // meta saying what it holds; stale data and bitmap files go first.
            remove(dir, &data_name)?;
            remove(dir, &have_name)?;
            let bytes = postcard::to_stdvec(meta)
                .map_err(|e| StoreError::Corrupt { path: meta_path.clone(), reason: e.to_string() })?;
            write_atomic(dir, &meta_name, &bytes)?;
            let data = dir.open_file(&data_name, Access::ReadWriteNew).map_err(io_err("create", &data_path))?;
            let have = dir.open_file(&have_name, Access::ReadWriteNew).map_err(io_err("create", &have_path))?;
            (data, have)
        }
    };
    let len = data.metadata().map_err(io_err("stat", &data_path))?.len();
    if len != meta.length {
        // Sparse: unwritten chunks are holes, so a large download takes no space up front.
        data.set_len(meta.length).map_err(io_err("resize", &data_path))?;
    }
    let n = meta.num_chunks();
    let mut have = if resumed {
        let mut bytes = Vec::new();
        have_file.read_to_end(&mut bytes).map_err(io_err("read", &have_path))?;
        Bitmap::from_parts(n, bytes).unwrap_or_else(|e| {
            warn!(name = meta.name, error = %e, "chunk bitmap on disk is corrupt; re-fetching every chunk");
            Bitmap::new(n)
        })
    } else {
        Bitmap::new(n)
    };

    // Re-verify every claimed chunk (see the module docs): a bit may have reached the disk
    // before its data did.
    let claimed: Vec<u32> = have.iter_ones().collect();
    let bad: Vec<u32> = claimed
        .par_iter()
        .copied()
        .filter(|&i| match hash_chunk_at(&data, meta.length, meta.chunk_size, n, i) {
            Ok(h) => h != meta.chunk_hashes[i as usize],
            Err(e) => {
                warn!(name = meta.name, chunk = i, error = %e, "cannot re-read chunk; re-fetching it");
                true
            }
        })
        .collect();
    for &i in &bad {
        have.clear(i);
    }
    have_file.set_len(have.as_bytes().len() as u64).map_err(io_err("resize", &have_path))?;
    have_file.write_all_at(have.as_bytes(), 0).map_err(io_err("write", &have_path))?;
    if resumed {
        info!(name = meta.name, held = have.count(), dropped = bad.len(), chunks = n, "resumed partial download");
    } else {
        debug!(name = meta.name, chunks = n, id, "started partial download");
    }

    let inner = Arc::new(Inner {
        store: store.clone(),
        meta: meta.clone(),
        id: id.clone(),
        data_path,
        have_path,
        data,
        state: Mutex::new(State { have, have_file, phase: Phase::Open }),
        unflushed: AtomicU64::new(0),
        flushing: AtomicBool::new(false),
        flush_error: Mutex::new(None),
    });
    registry.insert(id, Arc::downgrade(&inner));
    Ok(Partial { inner })
}

impl Partial {
    /// The metadata of the file being downloaded.
    pub fn meta(&self) -> &FileMeta {
        &self.inner.meta
    }

    /// A snapshot of the chunks held.
    pub fn have(&self) -> Bitmap {
        lock(&self.inner.state).have.clone()
    }

    /// Whether chunk `i` is held (false if out of range).
    pub fn has(&self, i: u32) -> bool {
        lock(&self.inner.state).have.get(i)
    }

    /// Bytes of the file held so far.
    pub fn bytes_done(&self) -> u64 {
        let meta = &self.inner.meta;
        let st = lock(&self.inner.state);
        let n = meta.num_chunks();
        let mut done = u64::from(st.have.count()) * u64::from(meta.chunk_size);
        if n > 0 && st.have.get(n - 1) {
            // The last chunk may be short.
            let (_, last) = chunk_span(meta.length, meta.chunk_size, n - 1);
            done -= u64::from(meta.chunk_size) - last as u64;
        }
        done
    }

    /// Whether every chunk is held (true at once for an empty file).
    pub fn is_complete(&self) -> bool {
        lock(&self.inner.state).have.is_full()
    }

    /// Checks that `i` (which may come from another [`FileMeta`]) is in range for this file.
    fn index(&self, i: ChunkIndex) -> Result<u32, StoreError> {
        let n = self.inner.meta.num_chunks();
        if i.get() < n {
            Ok(i.get())
        } else {
            Err(StoreError::InvalidMeta(MetaError::ChunkOutOfRange { chunk: i.get(), num_chunks: n }))
        }
    }

    /// Stores chunk `i`: verifies `data` against the chunk hash first ([`StoreError::HashMismatch`]
    /// and nothing written if it does not match), writes it at its offset, then marks it held in
    /// memory and on disk. Returns true if the chunk is newly stored, false if it was already held.
    ///
    /// There is no fsync per chunk: it would cost a disk flush per chunk, and it is not needed for
    /// safety because a reopened download re-verifies every chunk its bitmap claims. Durability
    /// comes once, in [`Partial::finish`].
    pub fn write_chunk(&self, i: ChunkIndex, data: &[u8]) -> Result<bool, StoreError> {
        let idx = self.index(i)?;
        let inner = &*self.inner;
        inner.meta.verify_chunk(i, data)?;
        {
            let st = lock(&inner.state);
            if st.phase != Phase::Open {
                return Err(StoreError::Finished { name: inner.meta.name.clone() });
            }
            if st.have.get(idx) {
                return Ok(false);
            }
        }
        // Written without the lock so writers of different chunks proceed in parallel. Two writers
        // of the same chunk write the same verified bytes, so their overlap is harmless.
        let (off, _) = inner.meta.chunk_range(i);
        inner.data.write_all_at(data, off).map_err(io_err("write chunk to", &inner.data_path))?;

        let mut st = lock(&inner.state);
        if st.phase == Phase::Finished || !st.have.set(idx) {
            return Ok(false);
        }
        let byte = (idx / 8) as usize;
        let value = st.have.as_bytes()[byte];
        if let Err(e) = st.have_file.write_all_at(&[value], byte as u64) {
            // Keep memory equal to disk: the chunk will be fetched again.
            st.have.clear(idx);
            return Err(io_err("write", &inner.have_path)(e));
        }
        drop(st);
        self.flush_behind(data.len() as u64);
        Ok(true)
    }

    /// Records a background flush failure as if the disk had reported one, for tests of what
    /// `finish` does after it.
    #[cfg(test)]
    pub(crate) fn fail_flush_for_test(&self) {
        *lock(&self.inner.flush_error) = Some((std::io::ErrorKind::Other, "injected writeback error".into()));
    }

    /// Starts writeback of the data file on a background thread once [`FLUSH_BEHIND`] bytes were
    /// written since the last one started (see there for why).
    fn flush_behind(&self, written: u64) {
        let inner = &self.inner;
        if inner.unflushed.fetch_add(written, Ordering::Relaxed) + written < FLUSH_BEHIND
            || inner.flushing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        inner.unflushed.store(0, Ordering::Relaxed);
        let flusher = self.inner.clone();
        let spawned = std::thread::Builder::new().name("p2p-flush".into()).spawn(move || {
            if let Err(e) = flusher.data.sync_data() {
                warn!(name = flusher.meta.name, error = %e, "background flush of a download failed");
                lock(&flusher.flush_error).get_or_insert((e.kind(), e.to_string()));
            }
            flusher.flushing.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            // No thread to spare: the final fsync does all the work, as it would without this.
            inner.flushing.store(false, Ordering::Release);
        }
    }

    /// Reads held chunk `i` ([`StoreError::NotHeld`] otherwise), so a downloader serves the
    /// chunks it has to others while it downloads.
    pub fn read_chunk(&self, i: ChunkIndex) -> Result<Bytes, StoreError> {
        let mut buf = Vec::new();
        self.read_chunk_into(i, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// [`Partial::read_chunk`] into `buf` (resized to the chunk's length).
    pub fn read_chunk_into(&self, i: ChunkIndex, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        let idx = self.index(i)?;
        let inner = &*self.inner;
        if !lock(&inner.state).have.get(idx) {
            return Err(StoreError::NotHeld { chunk: idx });
        }
        let (off, len) = inner.meta.chunk_range(i);
        buf.resize(len as usize, 0);
        inner.data.read_exact_at(buf, off).map_err(io_err("read chunk of", &inner.data_path))
    }

    /// Writes the whole bitmap to disk (after bits were cleared).
    fn persist_all(&self, st: &State) -> Result<(), StoreError> {
        st.have_file.write_all_at(st.have.as_bytes(), 0).map_err(io_err("write", &self.inner.have_path))
    }

    /// Completes the download: checks every chunk is held ([`StoreError::Incomplete`]), reads the
    /// whole data file back from disk and checks it hashes to the root hash
    /// ([`StoreError::WholeFileMismatch`] otherwise: the bad chunks are marked missing and
    /// nothing is put in place), fsyncs it, creates the parent folders, and moves it to its name
    /// without replacing anything ([`StoreError::AlreadyExists`] if a different file is there; an
    /// identical file there is kept and the download dropped). Then fsyncs the folder and deletes
    /// the bookkeeping. Returns the file's path. A second call fails with
    /// [`StoreError::Finished`].
    pub fn finish(&self) -> Result<PathBuf, StoreError> {
        let inner = &*self.inner;
        let meta = &inner.meta;
        {
            let mut st = lock(&inner.state);
            if st.phase != Phase::Open {
                return Err(StoreError::Finished { name: meta.name.clone() });
            }
            if !st.have.is_full() {
                return Err(StoreError::Incomplete {
                    name: meta.name.clone(),
                    have: st.have.count(),
                    total: meta.num_chunks(),
                });
            }
            st.phase = Phase::Finishing;
        }
        let result = self.verify_and_promote();
        let mut st = lock(&inner.state);
        if result.is_ok() {
            st.phase = Phase::Finished;
            lock(&inner.store.inner.open).remove(&inner.id);
        } else {
            // Nothing was put in place: the download stays open, to be fixed and finished again.
            st.phase = Phase::Open;
        }
        result
    }

    fn verify_and_promote(&self) -> Result<PathBuf, StoreError> {
        let inner = &*self.inner;
        let meta = &inner.meta;
        let data_path = &inner.data_path;
        let len = inner.data.metadata().map_err(io_err("stat", data_path))?.len();
        if len != meta.length {
            // Someone extended or truncated the data file: restore its length, and let the hash
            // below judge the content.
            inner.data.set_len(meta.length).map_err(io_err("resize", data_path))?;
        }
        // The whole file, read back from disk and hashed on all cores. Hashing it chunk by chunk
        // (each a BLAKE3 subtree) and merging gives exactly blake3(file) while reading through one
        // buffer per core; hashing a memory map would grow resident memory to the file's size.
        // The fsync runs meanwhile on its own thread: both must succeed before the file is put in
        // place, and on a disk the flush takes longer than the hash, which it then hides.
        let n = meta.num_chunks();
        // A flush-behind still running holds the answer to whether earlier writes reached the
        // disk: wait for it (finish runs on a blocking thread).
        while inner.flushing.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (hashes, synced) = std::thread::scope(|s| {
            let sync = s.spawn(|| inner.data.sync_all());
            let hashes: std::io::Result<Vec<Hash>> = (0..n)
                .into_par_iter()
                .map(|i| hash_chunk_at(&inner.data, meta.length, meta.chunk_size, n, i))
                .collect();
            (hashes, sync.join().unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked"))))
        });
        let hashes = hashes.map_err(io_err("read back", data_path))?;
        if root_from_chunks(meta.length, meta.chunk_size, &hashes) != meta.root {
            // Mark the chunks that went bad on disk as missing, so the downloader fetches them
            // again instead of starting over.
            let mut st = lock(&inner.state);
            let mut bad = 0;
            for (i, (got, want)) in hashes.iter().zip(&meta.chunk_hashes).enumerate() {
                if got != want {
                    st.have.clear(i as u32);
                    bad += 1;
                }
            }
            self.persist_all(&st)?;
            warn!(name = meta.name, bad_chunks = bad, "assembled file does not match its root hash");
            return Err(StoreError::WholeFileMismatch { name: meta.name.clone(), bad_chunks: bad });
        }
        synced.map_err(io_err("fsync", data_path))?;
        if let Some((kind, msg)) = lock(&inner.flush_error).clone() {
            return Err(io_err("flush", data_path)(std::io::Error::new(kind, msg)));
        }

        let store = &inner.store;
        let root = &store.inner.root_dir;
        let dest = root.display(&meta.name);
        // The parent folders are created and opened below the share folder's handle without
        // following links, and the file is linked into the folder held open: no path is resolved
        // twice, so no component swapped for a link meanwhile can redirect it.
        let (parent_rel, last) = split_parent(&meta.name);
        let created;
        let parent = match parent_rel {
            Some(rel) => {
                created = root.create_dir_all(rel).map_err(io_err("create folder", &root.display(rel)))?;
                &created
            }
            None => root,
        };
        let partials = &store.inner.partial_dir;
        let data_name = format!("{}.data", inner.id);
        let placed = match place(parent, last, &inner.data, partials, &data_name) {
            Ok(Outcome::Placed) => Placed::Data,
            Ok(Outcome::Exists) => Placed::Exists,
            // The destination folder is on another file system (a mount inside the share), or the
            // verified file can no longer be named safely (its data file's name was taken, say):
            // a verified copy is placed instead.
            Ok(Outcome::OtherFileSystem | Outcome::Unnameable) => self.copy_into(parent, last)?,
            Err(e) => return Err(io_err("move into place", &dest)(e)),
        };
        let file = match placed {
            Placed::Data => {
                fsync_dir(parent)?;
                info!(name = meta.name, bytes = meta.length, "download complete");
                None
            }
            Placed::Copy(file) => {
                info!(name = meta.name, bytes = meta.length, "download complete (copied across file systems)");
                Some(file)
            }
            Placed::Exists => {
                let existing = parent
                    .open_file(last, Access::Read)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|md| md.is_file() && md.len() == meta.length));
                let identical = existing.filter(|f| {
                    hash_open_file(f, &dest, &meta.name, meta.chunk_size).is_ok_and(|m| m.root == meta.root)
                });
                let Some(existing) = identical else {
                    return Err(StoreError::AlreadyExists { name: meta.name.clone() });
                };
                info!(name = meta.name, "identical file already in place; dropping the download");
                Some(existing)
            }
        };
        // The meta goes first: a crash part way leaves only orphans that `Store::open` sweeps,
        // never a meta that would make the finished download look unfinished.
        remove(partials, &format!("{}.meta", inner.id))?;
        remove(partials, &data_name)?;
        remove(partials, &format!("{}.have", inner.id))?;
        fsync_dir(partials)?;
        store.remember(file.as_ref().unwrap_or(&inner.data), meta);
        Ok(dest)
    }

    /// Places the verified data file under `last` in `parent` when `parent` is on another file
    /// system: copies it to a temporary file there, fsyncs it, checks the copy against the root
    /// hash, then links it to its name (never replacing a file) and fsyncs the folder. The name
    /// appears atomically, and only with verified content. A crash leaves at most the hidden
    /// temporary, which the next attempt replaces.
    fn copy_into(&self, parent: &Dir, last: &str) -> Result<Placed, StoreError> {
        let inner = &*self.inner;
        let meta = &inner.meta;
        let tmp = format!(".p2p-{}.tmp", inner.id);
        let tmp_path = parent.display(&tmp);
        remove(parent, &tmp)?;
        let mut out = parent.open_file(&tmp, Access::ReadWriteNew).map_err(io_err("create", &tmp_path))?;
        let copied = (|| {
            let mut src = &inner.data;
            // Only positioned reads and writes use this handle elsewhere, so its cursor is free.
            src.rewind()?;
            let n = std::io::copy(&mut src.take(meta.length), &mut out)?;
            if n != meta.length {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "data file shorter than the download"));
            }
            out.sync_all()?;
            hash_open_file(&out, &tmp_path, &meta.name, meta.chunk_size).map_err(std::io::Error::other)
        })();
        let result = match copied {
            Err(e) => Err(io_err("copy into place", &tmp_path)(e)),
            Ok(m) if m.root != meta.root => {
                Err(StoreError::WholeFileMismatch { name: meta.name.clone(), bad_chunks: 0 })
            }
            Ok(_) => match place(parent, last, &out, parent, &tmp) {
                Ok(Outcome::Placed) => Ok(Placed::Copy(out)),
                Ok(Outcome::Exists) => Ok(Placed::Exists),
                Ok(Outcome::OtherFileSystem | Outcome::Unnameable) => {
                    Err(io_err("move into place", &parent.display(last))(std::io::Error::other(
                        "the copy was replaced while it was being placed",
                    )))
                }
                Err(e) => Err(io_err("move into place", &parent.display(last))(e)),
            },
        };
        remove(parent, &tmp)?;
        fsync_dir(parent)?;
        result
    }
}

/// What [`place`] did.
enum Outcome {
    /// The file has its name.
    Placed,
    /// Something else already has the name; nothing was changed.
    Exists,
    /// The folder is on another file system than the file; nothing was changed.
    OtherFileSystem,
    /// The file cannot be given the name from its handle (it has no name left, or `/proc` is
    /// missing) and `src` no longer names it; nothing was changed.
    Unnameable,
}

/// Gives the verified `file` (named `src` in folder `from`) the name `last` in `parent`, never
/// replacing a file. From the open handle where the system allows, so the name can only ever
/// be the verified file's, whatever was done meanwhile to `src`. Otherwise by name: a hard link,
/// or a rename where the file system has none, after which the name is checked to hold the
/// verified file (device and inode) and removed again if it does not ([`Outcome::Unnameable`]).
fn place(parent: &Dir, last: &str, file: &File, from: &Dir, src: &str) -> std::io::Result<Outcome> {
    let by_name = match parent.link_open_file(file, last) {
        Ok(()) => return Ok(Outcome::Placed),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Outcome::Exists),
        Err(e) if e.kind() == ErrorKind::CrossesDevices => return Ok(Outcome::OtherFileSystem),
        Err(e) => {
            debug!(error = %e, "cannot link the open file; placing it by name");
            match parent.link_from(from, src, last) {
                Err(e) if !matches!(e.kind(), ErrorKind::AlreadyExists | ErrorKind::CrossesDevices) => {
                    debug!(error = %e, "hard link failed; renaming instead");
                    parent.rename_from_noreplace(from, src, last)
                }
                linked => linked,
            }
        }
    };
    match by_name {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Outcome::Exists),
        Err(e) if e.kind() == ErrorKind::CrossesDevices => return Ok(Outcome::OtherFileSystem),
        Err(e) => return Err(e),
    }
    if parent.is_same_file(last, file)? {
        Ok(Outcome::Placed)
    } else {
        warn!(name = last, "the verified file's name was taken by another file; not placing that one");
        parent.remove_file(last)?;
        Ok(Outcome::Unnameable)
    }
}

/// What `finish` found or put under the download's name.
enum Placed {
    /// The data file itself, linked or renamed into place.
    Data,
    /// A verified copy (the destination is on another file system), with its handle.
    Copy(File),
    /// A file already there (identical or not: checked next).
    Exists,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial").field("name", &self.inner.meta.name).field("have", &self.have()).finish()
    }
}
