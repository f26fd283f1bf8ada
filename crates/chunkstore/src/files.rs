//! A download's bookkeeping files in `.p2p/partial` (`<id>.meta`, `<id>.data`, `<id>.have`):
//! their names, creating them or resuming them from disk, and removing them once the download is
//! placed.
//!
//! Nothing on disk is trusted after a restart: resuming re-hashes every chunk the bitmap claims
//! and clears the bits whose bytes do not match, so a chunk torn by a crash (or changed by a local
//! user) is fetched again, never served or placed. A hard link planted under one of these
//! predictable names is never written through: a resumed download's files must have no other
//! link, and a new download's are created exclusively (`O_EXCL`) after removing whatever had their
//! names. Everything is opened by name in the open partial folder ([`Dir`]), refusing links.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use proto::{Bitmap, FileMeta};
use rayon::prelude::*;
use tracing::{debug, info, warn};

use crate::beneath::{Access, Dir};
use crate::error::{io_err, StoreError};
use crate::hash::{chunk_span, hash_chunk_at};
use crate::scan::write_atomic;

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

/// The names of a download's three files in the partial folder.
pub(crate) struct Names {
    /// `<id>.meta`: the postcard [`FileMeta`], written atomically before any data.
    pub(crate) meta: String,
    /// `<id>.data`: the file being assembled.
    pub(crate) data: String,
    /// `<id>.have`: the chunk bitmap's bytes.
    pub(crate) have: String,
}

impl Names {
    /// The names of the download filed under `id`.
    pub(crate) fn of(id: &str) -> Self {
        Names { meta: format!("{id}.meta"), data: format!("{id}.data"), have: format!("{id}.have") }
    }
}

/// Bytes of the file of `meta` in the chunks `have` marks held (the last chunk may be short).
pub(crate) fn bytes_held(meta: &FileMeta, have: &Bitmap) -> u64 {
    let n = meta.num_chunks();
    let mut done = u64::from(have.count()) * u64::from(meta.chunk_size);
    if n > 0 && have.get(n - 1) {
        let (_, last) = chunk_span(meta.length, meta.chunk_size, n - 1);
        done -= u64::from(meta.chunk_size) - last as u64;
    }
    done
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

/// Removes the file `name` of `dir` (nothing to do if it is gone).
pub(crate) fn remove(dir: &Dir, name: &str) -> Result<(), StoreError> {
    dir.remove_file(name).map_err(io_err("remove", &dir.display(name)))
}

/// Makes the entries of `dir` durable.
pub(crate) fn fsync_dir(dir: &Dir) -> Result<(), StoreError> {
    dir.sync().map_err(io_err("fsync folder", dir.path()))
}

/// Whether `file` has no other name than the one it was opened by.
fn only_link(file: &File) -> bool {
    file.metadata().is_ok_and(|md| std::os::unix::fs::MetadataExt::nlink(&md) == 1)
}

/// A download's files, open, and the chunks they verifiably hold.
pub(crate) struct Opened {
    /// The data file, opened read-write and set to the file's length (sparse where unwritten).
    pub(crate) data: File,
    /// The bitmap file, holding exactly the bytes of `have`; None for an unnamed download
    /// (see [`open`]), which keeps no bookkeeping on disk.
    pub(crate) have_file: Option<File>,
    /// The chunks whose bytes in the data file match their hashes.
    pub(crate) have: Bitmap,
    /// Paths of the data and bitmap files, for messages only.
    pub(crate) data_path: PathBuf,
    /// See `data_path`.
    pub(crate) have_path: PathBuf,
}

/// Resumes the download of `meta` filed under `id` in the partial folder `dir` if its files are
/// there, describe `meta` and are linked nowhere else; otherwise starts it over. Either way every
/// chunk the bitmap claims is re-verified before it is trusted (see the module docs), which on a
/// large download reads the whole file: the caller must not hold any lock other opens need.
///
/// A file of at most one chunk has nothing to resume: its data goes to an unnamed file in the
/// folder (`O_TMPFILE`), with neither meta nor bitmap, linked under its name when it is done, or
/// gone with the process. That spares a data set of many small files two thirds of its file
/// creations and all of its removals. Where the file system has no unnamed files, it is kept
/// like any other.
pub(crate) fn open(dir: &Dir, meta: &FileMeta, id: &str) -> Result<Opened, StoreError> {
    let names = Names::of(id);
    let (data_path, have_path) = (dir.display(&names.data), dir.display(&names.have));
    // Without /proc an unnamed file could only be placed by copying it.
    if meta.num_chunks() <= 1 && proc_fd_available() {
        if let Some(opened) = open_unnamed(dir, meta, &names, data_path.clone(), have_path.clone())? {
            return Ok(opened);
        }
    }
    let (data, mut have_file, resumed) = match reopen(dir, meta, &names) {
        Some((data, have_file)) => (data, have_file, true),
        None => {
            let (data, have_file) = create(dir, meta, &names)?;
            (data, have_file, false)
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

    // A bit may have reached the disk before its data did, or the data may have changed since.
    let dropped = reverify(&data, meta, &mut have);
    have_file.set_len(have.as_bytes().len() as u64).map_err(io_err("resize", &have_path))?;
    have_file.write_all_at(have.as_bytes(), 0).map_err(io_err("write", &have_path))?;
    if resumed {
        info!(name = meta.name, held = have.count(), dropped, chunks = n, "resumed partial download");
    } else {
        debug!(name = meta.name, chunks = n, id, "started partial download");
    }
    Ok(Opened { data, have_file: Some(have_file), have, data_path, have_path })
}

/// Whether this process can name its open files through `/proc/self/fd` (what links an unnamed
/// file into place), looked up once.
fn proc_fd_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| std::path::Path::new("/proc/self/fd").is_dir())
}

/// The unnamed download of a file of at most one chunk (see [`open`]), after removing any files
/// an earlier run left under its names; None where the file system has no unnamed files.
fn open_unnamed(
    dir: &Dir,
    meta: &FileMeta,
    names: &Names,
    data_path: PathBuf,
    have_path: PathBuf,
) -> Result<Option<Opened>, StoreError> {
    let data = match dir.create_unnamed() {
        Ok(f) => f,
        Err(e) => {
            debug!(error = %e, "no unnamed files here; keeping a named partial download");
            return Ok(None);
        }
    };
    for name in [&names.meta, &names.data, &names.have] {
        remove(dir, name)?;
    }
    data.set_len(meta.length).map_err(io_err("resize", &data_path))?;
    debug!(name = meta.name, id = names.data, "started unnamed partial download");
    Ok(Some(Opened { data, have_file: None, have: Bitmap::new(meta.num_chunks()), data_path, have_path }))
}

/// The data and bitmap files of a download on disk whose `.meta` equals `meta`, if both open and
/// have no other link; `None` (with a warning saying why, unless there is simply no download)
/// when it must start over.
fn reopen(dir: &Dir, meta: &FileMeta, names: &Names) -> Option<(File, File)> {
    match read_meta(dir, &names.meta) {
        Ok(m) if m == *meta => {}
        Ok(_) => {
            warn!(name = meta.name, "partial download on disk has other metadata; starting over");
            return None;
        }
        Err(StoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(name = meta.name, error = %e, "partial download on disk is unreadable; starting over");
            return None;
        }
    }
    let open = |name: &str| dir.open_file(name, Access::ReadWrite).ok().filter(only_link);
    match (open(&names.data), open(&names.have)) {
        (Some(data), Some(have)) => Some((data, have)),
        _ => {
            warn!(name = meta.name, "partial download's files are missing or linked elsewhere; starting over");
            None
        }
    }
}

/// Starts the download over: removes stale files, writes the `.meta` atomically, then creates the
/// data and bitmap files exclusively.
fn create(dir: &Dir, meta: &FileMeta, names: &Names) -> Result<(File, File), StoreError> {
    // The meta is written before any data, so every data file on disk has a meta saying what it
    // holds; stale data and bitmap files go first.
    remove(dir, &names.data)?;
    remove(dir, &names.have)?;
    let bytes = postcard::to_stdvec(meta)
        .map_err(|e| StoreError::Corrupt { path: dir.display(&names.meta), reason: e.to_string() })?;
    write_atomic(dir, &names.meta, &bytes)?;
    let data = dir.open_file(&names.data, Access::ReadWriteNew).map_err(io_err("create", &dir.display(&names.data)))?;
    let have = dir.open_file(&names.have, Access::ReadWriteNew).map_err(io_err("create", &dir.display(&names.have)))?;
    Ok((data, have))
}

/// Re-hashes, on all cores, every chunk `have` claims, and clears the bits of those whose bytes in
/// `data` do not match (or cannot be read). Returns how many were cleared.
fn reverify(data: &File, meta: &FileMeta, have: &mut Bitmap) -> usize {
    let n = meta.num_chunks();
    let claimed: Vec<u32> = have.iter_ones().collect();
    let bad: Vec<u32> = claimed
        .par_iter()
        .copied()
        .filter(|&i| match hash_chunk_at(data, meta.length, meta.chunk_size, n, i) {
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
    bad.len()
}

/// Removes the files of the download filed under `id` once it is in place, then makes that
/// durable. The meta goes first: a crash part way leaves only orphans that `Store::open` sweeps,
/// never a meta that would make the finished download look unfinished.
pub(crate) fn remove_all(dir: &Dir, id: &str) -> Result<(), StoreError> {
    let names = Names::of(id);
    remove(dir, &names.meta)?;
    remove(dir, &names.data)?;
    remove(dir, &names.have)?;
    fsync_dir(dir)
}
