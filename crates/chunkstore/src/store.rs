//! The share folder: scanning it, serving chunks of complete files, and the registry of partial
//! downloads kept under its bookkeeping folder.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use proto::meta::{check_chunk_size, chunk_count};
use proto::name::RESERVED_DIR;
use proto::{validate_name, ChunkIndex, FileMeta, MetaError};
use tracing::{debug, warn};

use crate::error::{io_err, StoreError};
use crate::hash::chunk_span;
use crate::partial::{self, Partial};
use crate::scan::{self, ScanStats};

/// Folder under the bookkeeping folder that holds partial downloads.
const PARTIAL_DIR: &str = "partial";
/// File under the bookkeeping folder that holds the hash cache.
const CACHE_FILE: &str = "hash-cache";

/// A share folder: complete files under their names, partial downloads and the hash cache under
/// its `.p2p` folder (see the crate docs for the layout). Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Canonical path of the share folder, so a root given through a symlink is resolved once
    /// here and every path below it is checked component by component.
    root: PathBuf,
    pub(crate) partial_dir: PathBuf,
    cache_path: PathBuf,
    /// Serialises scans: two concurrent scans would race on the cache's temporary file.
    scan_lock: Mutex<()>,
    /// Partial downloads currently open, by id. Opening the same download twice returns the same
    /// handle, so there is only ever one bitmap and one lock per download; two independent
    /// handles would overwrite each other's bookkeeping.
    pub(crate) open: Mutex<HashMap<String, Weak<partial::Inner>>>,
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent
/// (bitmap updates are single operations), so a panic elsewhere does not make it unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fails with [`StoreError::Symlink`] if `path` exists and is a symbolic link.
fn refuse_symlink(path: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => Err(StoreError::Symlink { path: path.to_path_buf() }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("examine", path)(e)),
    }
}

impl Store {
    /// Opens the share folder at `root`, creating it and its bookkeeping folders
    /// (`root/.p2p/partial`) if needed, and sweeping bookkeeping left behind by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("create share folder", &root))?;
        let root = fs::canonicalize(&root).map_err(io_err("resolve share folder", &root))?;
        let p2p = root.join(RESERVED_DIR);
        let partial_dir = p2p.join(PARTIAL_DIR);
        // A symlinked bookkeeping folder would let writes land outside the share folder.
        refuse_symlink(&p2p)?;
        refuse_symlink(&partial_dir)?;
        fs::create_dir_all(&partial_dir).map_err(io_err("create folder", &partial_dir))?;
        let store = Store {
            inner: Arc::new(Inner {
                root,
                cache_path: p2p.join(CACHE_FILE),
                partial_dir,
                scan_lock: Mutex::new(()),
                open: Mutex::new(HashMap::new()),
            }),
        };
        store.sweep_orphans()?;
        Ok(store)
    }

    /// The share folder (canonical path).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Removes bookkeeping a crash can leave behind: temporaries of atomic writes, and data or
    /// bitmap files whose `.meta` is gone (`finish` deletes the `.meta` first).
    fn sweep_orphans(&self) -> Result<(), StoreError> {
        let dir = &self.inner.partial_dir;
        for entry in fs::read_dir(dir).map_err(io_err("read folder", dir))? {
            let path = entry.map_err(io_err("read folder", dir))?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
            let orphan = match ext {
                "tmp" => true,
                "data" | "have" => !path.with_extension("meta").exists(),
                _ => false,
            };
            if orphan {
                debug!(path = %path.display(), "removing stale bookkeeping file");
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove stale bookkeeping file");
                }
            }
        }
        Ok(())
    }

    /// Scans the share folder: every regular file under it (recursively, names relative with `/`
    /// separators), sorted by name. Skips the `.p2p` folder, symlinks, non-regular files and
    /// (with a warning) names that fail [`validate_name`]. New or changed files are hashed on all
    /// cores; unchanged ones come from the hash cache.
    pub fn scan(&self) -> Result<Vec<FileMeta>, StoreError> {
        self.scan_with_stats().map(|(metas, _)| metas)
    }

    /// [`Store::scan`], also telling how many files were hashed and how many came from the cache.
    pub fn scan_with_stats(&self) -> Result<(Vec<FileMeta>, ScanStats), StoreError> {
        let _guard = lock(&self.inner.scan_lock);
        let (metas, stats) = scan::scan(&self.inner.root, &self.inner.cache_path)?;
        debug!(files = metas.len(), hashed = stats.hashed, cached = stats.cached, skipped = stats.skipped, "scanned");
        Ok((metas, stats))
    }

    /// Records a just-verified file in the hash cache (see [`scan::remember`]); failure only costs
    /// a re-hash later, so it is logged, not returned.
    pub(crate) fn remember(&self, path: &Path, meta: &FileMeta) {
        let _guard = lock(&self.inner.scan_lock);
        if let Err(e) = scan::remember(&self.inner.cache_path, path, meta) {
            warn!(name = meta.name, error = %e, "cannot record finished download in the hash cache");
        }
    }

    /// The path of `name` under the share folder, refusing unsafe names and any existing path
    /// component that is a symbolic link. Components that do not exist yet are allowed (a
    /// download creates them).
    ///
    /// The check and the later open are not atomic; it guards against links in the share folder,
    /// not against a local attacker racing the peer, who could write the folder anyway.
    pub(crate) fn path_of(&self, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        let mut p = self.inner.root.clone();
        for comp in name.split('/') {
            p.push(comp);
            match fs::symlink_metadata(&p) {
                Ok(md) if md.file_type().is_symlink() => return Err(StoreError::Symlink { path: p }),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(self.inner.root.join(name)),
                Err(e) => return Err(io_err("examine", &p)(e)),
            }
        }
        Ok(p)
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
        check_chunk_size(meta.chunk_size)?;
        // `i` may come from another meta: check it against this one before computing offsets.
        if i.get() >= meta.num_chunks() || chunk_count(meta.length, meta.chunk_size) != u64::from(meta.num_chunks()) {
            return Err(StoreError::InvalidMeta(MetaError::ChunkOutOfRange {
                chunk: i.get(),
                num_chunks: meta.num_chunks(),
            }));
        }
        let path = self.path_of(&meta.name)?;
        let changed = || StoreError::FileChanged { name: meta.name.clone() };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(changed()),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let md = file.metadata().map_err(io_err("stat", &path))?;
        if !md.is_file() {
            return Err(StoreError::NotRegular { path });
        }
        if md.len() != meta.length {
            return Err(changed());
        }
        let (off, len) = chunk_span(meta.length, meta.chunk_size, i.get());
        buf.resize(len, 0);
        file.read_exact_at(buf, off).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                changed()
            } else {
                io_err("read chunk of", &path)(e)
            }
        })
    }

    /// Metadata of the partial downloads present on disk, sorted by name, so a restarted peer can
    /// resume them and register the chunks it holds. Unreadable entries are skipped with a warning.
    pub fn partials(&self) -> Result<Vec<FileMeta>, StoreError> {
        let dir = &self.inner.partial_dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("read folder", dir))? {
            let path = entry.map_err(io_err("read folder", dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("meta") {
                continue;
            }
            match partial::read_meta(&path) {
                Ok(meta) if path.file_stem().and_then(|s| s.to_str()) == Some(&partial::partial_id(&meta)) => {
                    out.push(meta)
                }
                Ok(_) => warn!(path = %path.display(), "skipping partial download filed under the wrong id"),
                Err(e) => warn!(path = %path.display(), error = %e, "skipping unreadable partial download"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates the partial download of `meta`, or resumes it if it is on disk (re-verifying every
    /// chunk its bitmap claims), or returns the handle already open for it.
    ///
    /// `meta` is validated first; an unsafe name gives [`StoreError::InvalidName`].
    pub fn open_partial(&self, meta: &FileMeta) -> Result<Partial, StoreError> {
        partial::open(self, meta)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.inner.root).finish()
    }
}
