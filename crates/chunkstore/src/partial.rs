//! A partial download: verify-then-write of chunks into a data file, a persisted bitmap of the
//! chunks held, and whole-file verification before the file is placed.
//!
//! Invariants:
//! - A bit is set in memory only after its chunk's bytes were verified against the chunk hash and
//!   written to the data file; it is set on disk only after it is set in memory.
//! - Nothing a bitmap on disk claims is trusted after a restart: opening a download re-hashes every
//!   claimed chunk and clears the bits whose bytes do not match (`files.rs`). So chunks are never
//!   fsynced one by one: a crash can lose the last chunks written or leave a bit set over torn
//!   bytes, and either way the next open finds out and fetches those chunks again.
//! - A file appears under its name only after every chunk was verified (when it was written, and
//!   read back from disk and matched if the caller asked: [`Finish::read_back`]), the data was
//!   fsynced, and it was linked into place without replacing anything (`place.rs`), or, if the
//!   caller asked ([`Finish::replace`]), renamed over a regular file.
//!
//! A download knows of its store only what [`Home`] gives it (the share folder and the hash cache)
//! and the partial folder the registry opened for it. Which downloads are open, and that each has
//! one handle, is the registry's business (`partials.rs`); finishing never waits for it. The
//! flushes of the data file and the whole-file check, which a caller may interrupt
//! ([`Partial::finish_until`]), are in `partial/verify.rs`;
//! reserving the space it still needs is in `partial/space.rs`.

mod space;
mod verify;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, Weak};

use bytes::Bytes;
use proto::{Bitmap, ChunkIndex, FileMeta, MetaError};

use crate::beneath::Dir;
use crate::error::{io_err, StoreError};
use crate::files::{self, Opened};
use crate::place::{promote, Replace};
use crate::scan::HashCache;
use crate::sync::lock;

/// A download in progress: a handle to its data file and chunk bitmap. Cheap to clone; all clones
/// (and every [`crate::Store::open_partial`] of the same metadata while one is alive) share one
/// state. Every method is safe to call from many threads at once.
#[derive(Clone)]
pub struct Partial {
    inner: Arc<Inner>,
}

/// What a download needs of its store, and nothing more: the share folder, held open, and the
/// hash cache it records its finished file in. One per store, shared by its downloads.
pub(crate) struct Home {
    /// The share folder: a finished download is placed below it.
    pub(crate) root: Arc<Dir>,
    /// Where a finished file is recorded, so the next scan neither re-hashes nor re-chunks it.
    pub(crate) cache: Arc<HashCache>,
}

struct Inner {
    home: Arc<Home>,
    /// `.p2p/partial`, held open: the download's own files are opened and removed by name in it.
    dir: Arc<Dir>,
    meta: FileMeta,
    id: String,
    /// Paths of the data and bitmap files, for messages only: they are opened and removed by name
    /// in the open partial folder.
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
    /// A flush of the data file is running (a flush-behind, or the fsync of `finish`); at most
    /// one at a time.
    flushing: AtomicBool,
    /// The error of a failed flush, as (action, kind, message). Linux reports a writeback error
    /// to one fsync only, so it is kept here, for good: data written before it may never have
    /// reached the disk, and `finish` must not put this copy in place, however often it is called.
    flush_error: Mutex<Option<FlushError>>,
    /// Signalled (with `flush_error` locked) when a flush ends, for a finish waiting for it.
    flush_ended: Condvar,
}

/// A failed flush of a download's data file, kept (see `Inner::flush_error`): what was being done
/// ("flush" behind the writes, "fsync" when finishing), the error's kind and its message.
type FlushError = (&'static str, std::io::ErrorKind, String);

/// Written bytes after which the data file's writeback is started in the background, so the disk
/// writes while the network delivers and the final fsync has little left to do. Without it the
/// kernel starts writing only at its dirty-memory threshold (gigabytes on a large machine), and a
/// download would cost network time plus disk time instead of the larger of the two.
const FLUSH_BEHIND: u64 = 64 * 1024 * 1024;

struct State {
    have: Bitmap,
    /// None for an unnamed download, which keeps no bitmap on disk (`files::open`).
    have_file: Option<File>,
    phase: Phase,
    /// Bits set in memory since the bitmap file was last written: the bytes that hold them
    /// (first, last) and how many chunks.
    unsaved: Option<(usize, usize)>,
    unsaved_chunks: u32,
}

/// Newly stored chunks after which the bitmap file is brought up to date. The file may lag memory
/// by fewer: a chunk it does not list yet is fetched again after a crash (its data is in the data
/// file, but only a listed chunk is trusted, after re-verification), which costs little next to
/// a write per chunk. It is brought up to date when the download is closed, too.
pub(crate) const SAVE_EVERY: u32 = 16;

impl State {
    /// Writes the bitmap bytes changed since the last save, if any.
    fn save(&mut self, have_path: &std::path::Path) -> Result<(), StoreError> {
        let Some((first, last)) = self.unsaved else { return Ok(()) };
        if let Some(file) = &self.have_file {
            file.write_all_at(&self.have.as_bytes()[first..=last], first as u64).map_err(io_err("write", have_path))?;
        }
        self.unsaved = None;
        self.unsaved_chunks = 0;
        Ok(())
    }
}

impl Drop for Inner {
    /// A closed download's bitmap file lists every chunk it holds.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.phase == Phase::Open {
            if let Err(e) = st.save(&self.have_path) {
                tracing::warn!(name = self.meta.name, error = %e, "could not save a closed download's chunk list");
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// `finish` is verifying and promoting the file; the lock is not held meanwhile so readers
    /// keep being served.
    Finishing,
    Finished,
}

/// How [`Partial::finish_with`] completes a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// Read the whole file back and hash it before placing it.
    pub read_back: bool,
    /// A different regular file already under the name is replaced rather than refused: the
    /// verified file is given a temporary name in the destination folder and renamed over the
    /// old one, so the name holds the old file or the new one at every moment, never neither;
    /// then the folder is fsynced. A symbolic link at the name is refused
    /// ([`StoreError::Symlink`]), as is a folder or any other non-regular file
    /// ([`StoreError::NotRegular`]); either way nothing is changed and the download is kept.
    pub replace: bool,
}

impl Finish {
    /// With the read-back, replacing nothing.
    pub const fn checked() -> Self {
        Finish { read_back: true, replace: false }
    }
}

/// A reference to a download that does not keep it open: what the registry holds, so a download
/// nobody uses is closed.
#[derive(Default)]
pub(crate) struct WeakPartial(Weak<Inner>);

impl WeakPartial {
    /// The download, if a handle to it is still alive.
    pub(crate) fn upgrade(&self) -> Option<Partial> {
        self.0.upgrade().map(|inner| Partial { inner })
    }

    /// Whether a handle to the download is still alive.
    pub(crate) fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl Partial {
    /// Creates or resumes the download of `meta`, filed under `id` in the partial folder `dir`
    /// (see [`files::open`]: a resume re-hashes every chunk it claims). The caller makes sure there
    /// is only one handle per download: two would overwrite each other's bookkeeping.
    pub(crate) fn open(home: Arc<Home>, dir: Arc<Dir>, meta: &FileMeta, id: String) -> Result<Partial, StoreError> {
        let Opened { data, have_file, have, data_path, have_path } = files::open(&dir, meta, &id)?;
        Ok(Partial {
            inner: Arc::new(Inner {
                home,
                dir,
                meta: meta.clone(),
                id,
                data_path,
                have_path,
                data,
                state: Mutex::new(State { have, have_file, phase: Phase::Open, unsaved: None, unsaved_chunks: 0 }),
                unflushed: AtomicU64::new(0),
                flushing: AtomicBool::new(false),
                flush_error: Mutex::new(None),
                flush_ended: Condvar::new(),
            }),
        })
    }

    /// A reference that does not keep the download open.
    pub(crate) fn downgrade(&self) -> WeakPartial {
        WeakPartial(Arc::downgrade(&self.inner))
    }

    /// Whether the download was placed under its name: its files are gone, so opening the same
    /// metadata again starts a new download rather than returning this handle.
    pub(crate) fn is_finished(&self) -> bool {
        lock(&self.inner.state).phase == Phase::Finished
    }

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
        files::bytes_held(&self.inner.meta, &lock(&self.inner.state).have)
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
    /// memory, and on disk with the next save of the bitmap (every [`SAVE_EVERY`] chunks, and when
    /// the download is closed). Returns true if the chunk is newly stored, false if it was already
    /// held.
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
        st.unsaved = Some(st.unsaved.map_or((byte, byte), |(first, last)| (first.min(byte), last.max(byte))));
        st.unsaved_chunks += 1;
        if st.unsaved_chunks >= SAVE_EVERY {
            // The chunk is stored and listed in memory either way, and a bitmap file that lags is
            // safe: a failed save is logged and tried again with the next chunk.
            if let Err(e) = st.save(&inner.have_path) {
                tracing::warn!(name = inner.meta.name, error = %e, "could not save the chunk list; trying again");
            }
        }
        drop(st);
        self.flush_behind(data.len() as u64);
        Ok(true)
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

    /// [`Partial::read_chunk_into`] if the whole chunk is in the page cache; `Ok(false)` (and
    /// `buf` holding nothing of use) if reading it would wait for the disk. See `reader.rs`.
    /// Never waits for the download's lock either (a writer holds it across a write of its
    /// bitmap): `Ok(false)` then too. Meant for an event loop, which must not block.
    pub fn read_chunk_cached(&self, i: ChunkIndex, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let idx = self.index(i)?;
        let inner = &*self.inner;
        let held = match inner.state.try_lock() {
            Ok(st) => st.have.get(idx),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().have.get(idx),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        if !held {
            return Err(StoreError::NotHeld { chunk: idx });
        }
        let (off, len) = inner.meta.chunk_range(i);
        crate::reader::read_cached(&inner.data, off, len as usize, buf)
            .map_err(io_err("read chunk of", &inner.data_path))
    }

    /// Writes the whole bitmap to disk (after bits were cleared).
    fn persist_all(&self, st: &mut State) -> Result<(), StoreError> {
        st.unsaved = None;
        st.unsaved_chunks = 0;
        let Some(file) = &st.have_file else { return Ok(()) };
        file.write_all_at(st.have.as_bytes(), 0).map_err(io_err("write", &self.inner.have_path))
    }

    /// Completes the download with the whole-file read-back ([`Finish::checked`]): see
    /// [`Partial::finish_with`]. Cannot be interrupted. A second call fails with
    /// [`StoreError::Finished`].
    pub fn finish(&self) -> Result<PathBuf, StoreError> {
        self.finish_with(&AtomicBool::new(false), Finish::checked())
    }

    /// [`Partial::finish`], giving up once `stop` is set (see [`Partial::finish_with`]).
    pub fn finish_until(&self, stop: &AtomicBool) -> Result<PathBuf, StoreError> {
        self.finish_with(stop, Finish::checked())
    }

    /// [`Partial::finish_until`], replacing a different file at the name (see [`Finish::replace`]).
    pub fn finish_replacing_until(&self, stop: &AtomicBool) -> Result<PathBuf, StoreError> {
        self.finish_with(stop, Finish { replace: true, ..Finish::checked() })
    }

    /// Completes the download: checks every chunk is held ([`StoreError::Incomplete`]); if
    /// `how.read_back`, reads the whole data file back and checks it hashes to the root hash
    /// ([`StoreError::WholeFileMismatch`] otherwise: the bad chunks are marked missing and
    /// nothing is put in place); fsyncs it; creates the parent folders, and moves it to its name
    /// (without replacing anything unless `how.replace`: [`StoreError::AlreadyExists`] if a
    /// different file is there; an identical file there is kept and the download dropped). Then
    /// fsyncs the folder and deletes the bookkeeping. Returns the file's path. A second call fails
    /// with [`StoreError::Finished`].
    ///
    /// Without the read-back the content is still exactly the root's: every chunk was checked
    /// against its hash before it was written (and again when a download resumed), and the chunk
    /// hashes chain to the root. What the read-back adds is a check that the bytes the file
    /// system returns now are the ones written, which mostly re-hashes the page cache.
    ///
    /// Gives up once `stop` is set: `stop` is checked between chunks of the read-back and while
    /// waiting for the data file's flushes; then this fails with [`StoreError::Interrupted`],
    /// nothing is placed, and the download stays open with every chunk held, so a later finish
    /// can succeed. Once the file is verified and durable, placing it is not interrupted.
    pub fn finish_with(&self, stop: &AtomicBool, how: Finish) -> Result<PathBuf, StoreError> {
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
        let result = self.verify_and_promote(stop, how);
        let mut st = lock(&inner.state);
        if result.is_ok() {
            // The registry needs no word: it treats a finished download as gone (`is_finished`).
            st.phase = Phase::Finished;
        } else {
            // Nothing was put in place: the download stays open, to be fixed and finished again.
            st.phase = Phase::Open;
        }
        result
    }

    /// Verifies the file (unless `stop` is set first), places it (`place.rs`), deletes the
    /// bookkeeping and records the file in the hash cache.
    fn verify_and_promote(&self, stop: &AtomicBool, how: Finish) -> Result<PathBuf, StoreError> {
        self.verify(stop, how.read_back)?;
        let replace = if how.replace { Replace::Yes } else { Replace::No };
        let inner = &*self.inner;
        let home = &*inner.home;
        let (dest, file) = promote(&home.root, &inner.dir, &inner.data, &inner.meta, &inner.id, replace)?;
        // An unnamed download left nothing to remove.
        if lock(&inner.state).have_file.is_some() {
            files::remove_all(&inner.dir, &inner.id)?;
        }
        home.cache.remember(file.as_ref().unwrap_or(&inner.data), &inner.meta);
        Ok(dest)
    }
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial").field("name", &self.inner.meta.name).field("have", &self.have()).finish()
    }
}
