//! The share folder: scanning it, serving chunks of complete files, and access to its partial
//! downloads (owned by [`Partials`]).

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proto::name::RESERVED_DIR;
use proto::{validate_name, ChunkIndex, FileMeta};
use tracing::{debug, warn};

use crate::beneath::Dir;
use crate::beneath::{is_symlink_refusal, split_parent};
use crate::error::{io_err, StoreError};
use crate::info::PartialInfo;
use crate::partial::{Home, Partial};
use crate::partials::{Create, Partials};
use crate::reader::Served;
use crate::scan::{Entry, FileState, HashCache, ScanStats, Skipped, Stamp};
use crate::space::free_bytes;
use crate::sync::lock;

/// A share folder: complete files under their names, partial downloads under its `.p2p` folder,
/// and the hash cache in a state folder, by default that same `.p2p` (see the crate docs for the
/// layout). Cheap to clone; all clones share state.
///
/// Every file access below the share folder goes through an open handle of it (`Dir`), refusing
/// symbolic links in every component atomically with the open: nothing is checked by path first
/// and used later, so swapping a component for a link at any moment cannot make the store read or
/// write outside the folder.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Canonical path of the share folder, for messages and for the paths `finish` returns.
    root: PathBuf,
    /// Path of the state folder holding the hash cache, for callers to show.
    state: PathBuf,
    /// The share folder, held open: everything below it is resolved from this handle. Shared with
    /// the downloads, which place finished files below it.
    root_dir: Arc<Dir>,
    /// The hash cache in the state folder, shared with the downloads, which record finished files in it.
    cache: Arc<HashCache>,
    /// Entries the last scan skipped, so each is warned about once, not at every scan.
    warned: Mutex<HashSet<String>>,
    /// The partial downloads: which are open, and the `.p2p/partial` folder they live in.
    partials: Partials,
}

impl Store {
    /// Opens the share folder at `root`, creating it and its bookkeeping folders
    /// (`root/.p2p/partial`) if needed, and sweeping bookkeeping left behind by a crash. The hash
    /// cache lives in `root/.p2p`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let (root, root_dir) = open_share(root.into())?;
        // Created and opened without following links: a symlinked bookkeeping folder would let
        // writes land outside the share folder.
        let state = root.join(RESERVED_DIR);
        let p2p_dir = root_dir.create_dir_all(RESERVED_DIR).map_err(io_err("create folder", &state))?;
        Store::assemble(root, root_dir, state, p2p_dir, Create::Now)
    }

    /// Opens the share folder `share` (created if missing) keeping the hash cache in `state_dir`
    /// (`state_dir/hash-cache`; the folder is created if missing), so that opening, scanning and
    /// serving write nothing inside the share: it may be read-only. Partial downloads still live
    /// in `share/.p2p/partial`, on the destination's file system so that placing a finished file
    /// is a rename, but that folder is created only by the first [`Store::open_partial`] that
    /// starts a download. Bookkeeping left there by a crash is swept when the folder exists and
    /// can be written, and left alone (with a warning) when the share is read-only.
    ///
    /// `state_dir` should be outside the share (or be its `.p2p`): one elsewhere inside would be
    /// scanned and shared like any folder.
    pub fn open_with_state(share: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let (root, root_dir) = open_share(share.into())?;
        let state = state_dir.into();
        fs::create_dir_all(&state).map_err(io_err("create state folder", &state))?;
        let state = fs::canonicalize(&state).map_err(io_err("resolve state folder", &state))?;
        // Held open from here on, like the share folder: the cache is written by name in it.
        let state_dir = Dir::open_anchor(&state).map_err(io_err("open state folder", &state))?;
        if state.starts_with(&root) && state != root.join(RESERVED_DIR) {
            warn!(state = %state.display(), "the state folder is inside the share folder; its files will be shared");
        }
        Store::assemble(root, root_dir, state, state_dir, Create::Lazily)
    }

    /// A store of the open share folder `root_dir` (at `root`), its hash cache in `state_dir`
    /// (at `state`), its partial folder made as `create` says.
    fn assemble(
        root: PathBuf,
        root_dir: Arc<Dir>,
        state: PathBuf,
        state_dir: Dir,
        create: Create,
    ) -> Result<Store, StoreError> {
        let cache = Arc::new(HashCache::new(state_dir));
        let home = Home { root: root_dir.clone(), cache: cache.clone() };
        let partials = Partials::new(Arc::new(home), create)?;
        let warned = Mutex::new(HashSet::new());
        Ok(Store { inner: Arc::new(Inner { root, state, root_dir, cache, warned, partials }) })
    }

    /// The share folder (canonical path).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The state folder holding the hash cache (canonical path): `root/.p2p` unless the store
    /// was opened with [`Store::open_with_state`].
    pub fn state_dir(&self) -> &Path {
        &self.inner.state
    }

    /// Bytes free for this process on the share folder's file system (`statvfs`: `f_bavail ×
    /// f_frsize`), where downloads are written: for a caller checking a whole batch of downloads
    /// before starting any. See also [`Partial::reserve`].
    pub fn free_space(&self) -> Result<u64, StoreError> {
        free_bytes(&*self.inner.root_dir).map_err(io_err("check free space of", &self.inner.root))
    }

    /// Scans the share folder: every regular file under it (recursively, names relative with `/`
    /// separators), sorted by name. Skips the `.p2p` folder, symlinks, non-regular files and
    /// names that fail [`validate_name`], with a warning saying what and why (once per entry, not
    /// at every scan). New or changed files are hashed on all cores; unchanged ones come from the
    /// hash cache.
    pub fn scan(&self) -> Result<Vec<FileMeta>, StoreError> {
        self.scan_with_stats().map(|(metas, _)| metas)
    }

    /// [`Store::scan`], also telling how many files were hashed and how many came from the cache.
    pub fn scan_with_stats(&self) -> Result<(Vec<FileMeta>, ScanStats), StoreError> {
        let (metas, stats, skipped) = self.inner.cache.scan(&self.inner.root_dir)?;
        self.report_skipped(skipped);
        debug!(files = metas.len(), hashed = stats.hashed, cached = stats.cached, skipped = stats.skipped, "scanned");
        Ok((metas, stats))
    }

    /// Every shareable regular file under the share folder, as [`Store::scan`] finds them
    /// (skipping and reporting the same entries), with its state on disk, hashing nothing: for a
    /// caller reconciling what it shares with what is on disk.
    pub fn list_files(&self) -> Result<Vec<(String, FileState)>, StoreError> {
        let (files, skipped) = self.inner.cache.list(&self.inner.root_dir)?;
        self.report_skipped(skipped);
        Ok(files)
    }

    /// What the name `name` (relative, `/`-separated) is in the share folder now, not following
    /// links, in any component: a symbolic link, or a path through one, is [`Entry::Other`], as
    /// is an invalid name or the `.p2p` folder.
    pub fn entry(&self, name: &str) -> Result<Entry, StoreError> {
        if validate_name(name).is_err() {
            return Ok(Entry::Other);
        }
        let (parent, leaf) = split_parent(name);
        let held;
        let dir = match parent {
            None => &*self.inner.root_dir,
            Some(parent) => match self.inner.root_dir.open_dir(parent) {
                Ok(d) => {
                    held = d;
                    &held
                }
                Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                    return Ok(Entry::Missing)
                }
                Err(e) if is_symlink_refusal(&e) => return Ok(Entry::Other),
                Err(e) => return Err(io_err("open folder", &self.inner.root_dir.display(parent))(e)),
            },
        };
        match dir.stat(leaf) {
            Ok(st) => Ok(match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                rustix::fs::FileType::RegularFile => Entry::File(Stamp::of_stat(&st).state()),
                rustix::fs::FileType::Directory => Entry::Folder,
                _ => Entry::Other,
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Entry::Missing),
            Err(e) => Err(io_err("examine", &self.inner.root_dir.display(name))(e)),
        }
    }

    /// Hashes the files `names` of the share folder for sharing, each as a scan does (the file
    /// opened below the share folder refusing links, its state checked before and after, so a
    /// file written to meanwhile fails with [`StoreError::NotShared`]), taking from the hash
    /// cache those whose state matches it and recording the others in it. One result per name,
    /// in order: the state the metadata is for, and the metadata. On all cores; blocking.
    pub fn hash_files(&self, names: &[String]) -> Vec<Result<(FileState, FileMeta), StoreError>> {
        self.inner.cache.hash_files(&self.inner.root_dir, names)
    }

    /// Logs what a scan skipped: at the default level the first time an entry is skipped, at
    /// debug level while it stays skipped, so a folder full of links does not flood the log.
    fn report_skipped(&self, skipped: Vec<Skipped>) {
        let mut warned = lock(&self.inner.warned);
        let mut now = HashSet::with_capacity(skipped.len());
        for s in skipped {
            if warned.contains(&s.name) {
                debug!(name = s.name, reason = %s.reason, "skipped (still)");
            } else {
                warn!("not sharing {:?}: {}", s.name, s.reason);
            }
            now.insert(s.name);
        }
        *warned = now;
    }

    /// Reads chunk `i` of the complete file `meta` describes, by offset, without loading the file.
    ///
    /// Refuses unsafe names and symlinks, and fails with [`StoreError::FileChanged`] if the file
    /// vanished or its length differs from `meta.length`. It does not re-hash the chunk: the
    /// downloader verifies every chunk it receives. Safe to call from many threads at once.
    pub fn read_chunk(&self, meta: &FileMeta, i: ChunkIndex) -> Result<Bytes, StoreError> {
        let mut buf = Vec::new();
        self.read_chunk_into(meta, i, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// [`Store::read_chunk`] into `buf` (resized to the chunk's length), so a server reuses one
    /// buffer for every chunk it sends instead of allocating each.
    pub fn read_chunk_into(&self, meta: &FileMeta, i: ChunkIndex, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        self.open_served(meta)?.read_chunk_into(i, buf)
    }

    /// Opens the complete file `meta` describes to serve many of its chunks (see [`Served`]):
    /// the checks of [`Store::read_chunk`] once, then reads by offset.
    pub fn open_served(&self, meta: &FileMeta) -> Result<Served, StoreError> {
        Served::open(&self.inner.root_dir, meta)
    }

    /// Metadata of the partial downloads present on disk, sorted by name, so a restarted peer can
    /// resume them and register the chunks it holds. Unreadable entries are skipped with a warning.
    /// Empty when there is no partial folder (yet).
    pub fn partials(&self) -> Result<Vec<FileMeta>, StoreError> {
        self.inner.partials.on_disk()
    }

    /// The partial downloads present on disk with their progress, age and disk usage, sorted by
    /// name, for a user deciding what to resume or remove. Read from their bookkeeping files
    /// only: nothing is re-hashed, so progress is what each bitmap claims (an open re-verifies
    /// it). Unreadable entries are skipped with a warning, as by [`Store::partials`].
    pub fn partial_infos(&self) -> Result<Vec<PartialInfo>, StoreError> {
        self.inner.partials.infos()
    }

    /// Removes the partial download of `meta` from disk: its metadata first, then its data and
    /// bitmap, then fsyncs the folder (a crash part way leaves only files the next open sweeps).
    /// Refused with [`StoreError::PartialInUse`] while this store has it open (a [`Partial`]
    /// handle to it is alive, or an open of it is under way); other stores and processes are not
    /// known of. [`StoreError::NoPartial`] if there is no such download on disk.
    pub fn remove_partial(&self, meta: &FileMeta) -> Result<(), StoreError> {
        self.inner.partials.remove(meta)
    }

    /// Creates the partial download of `meta`, or resumes it if it is on disk (re-verifying every
    /// chunk its bitmap claims), or returns the handle already open for it.
    ///
    /// `meta` is validated first; an unsafe name gives [`StoreError::InvalidName`].
    pub fn open_partial(&self, meta: &FileMeta) -> Result<Partial, StoreError> {
        self.inner.partials.open(meta)
    }

    /// The registry of partial downloads, for tests that stop an open part way.
    #[cfg(test)]
    pub(crate) fn partials_for_test(&self) -> &Partials {
        &self.inner.partials
    }
}

/// Creates the share folder at `root` if it is missing, and opens it: its canonical path and its
/// handle, which everything below it is resolved from.
fn open_share(root: PathBuf) -> Result<(PathBuf, Arc<Dir>), StoreError> {
    fs::create_dir_all(&root).map_err(io_err("create share folder", &root))?;
    let root = fs::canonicalize(&root).map_err(io_err("resolve share folder", &root))?;
    let root_dir = Arc::new(Dir::open_anchor(&root).map_err(io_err("open share folder", &root))?);
    Ok((root, root_dir))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.inner.root).finish()
    }
}
