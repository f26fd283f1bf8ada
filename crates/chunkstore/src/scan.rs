//! Scanning a share folder: walking it, hashing new or changed files on all cores, and the hash
//! cache that lets a restart skip unchanged files.
//!
//! The cache (`hash-cache` in the state folder, `.p2p` by default; postcard) maps a name to the
//! file's metadata together with the length, modification time (ns), inode and chunk size it was
//! computed from. A file whose four values all match is not re-hashed. The cache is rewritten
//! atomically (temporary file, fsync, rename) so a crash leaves either the old or the new cache,
//! and a cache that fails to decode is simply ignored: it is an optimisation, never a source of
//! truth.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use proto::{validate_name, FileMeta};
use rayon::prelude::*;
use rustix::fs::FileType;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::beneath::{Access, Dir};
use crate::error::{io_err, StoreError};
use crate::hash::{choose_chunk_size, hash_open_file};
use crate::sync::lock;

/// Bumped whenever the cache layout or the hashing changes, so an old cache is discarded.
const CACHE_VERSION: u32 = 1;

/// File under the bookkeeping folder that holds the hash cache.
const CACHE_FILE: &str = "hash-cache";

/// The hash cache of one share folder, held by the store and by every download of it (which
/// records its finished file here). Both scans and finished downloads rewrite the whole cache
/// (read, change, write a temporary, rename), so they take turns.
pub(crate) struct HashCache {
    /// The state folder (the share's `.p2p`, or one of the caller's choosing), held open: the
    /// cache and its temporary are opened by name in it.
    dir: Dir,
    /// Serialises the cache's writers: two at once would race on the temporary file, and the
    /// entries of one would be lost.
    lock: Mutex<()>,
}

impl HashCache {
    /// The cache in the open bookkeeping folder `dir`.
    pub(crate) fn new(dir: Dir) -> Self {
        HashCache { dir, lock: Mutex::new(()) }
    }

    /// Scans the share folder `root`, using and refreshing the cache; see [`crate::Store::scan`].
    /// Also returns what was skipped and why.
    pub(crate) fn scan(&self, root: &Dir) -> Result<(Vec<FileMeta>, ScanStats, Vec<Skipped>), StoreError> {
        let _guard = lock(&self.lock);
        scan(root, &self.dir, CACHE_FILE)
    }

    /// Lists every shareable regular file of the share folder `root` with its state, hashing
    /// nothing (the walk of a scan); also returns what was skipped and why.
    pub(crate) fn list(&self, root: &Dir) -> Result<Listed, StoreError> {
        let mut skipped = Vec::new();
        let found = walk(root, &mut skipped)?;
        Ok((found.into_iter().map(|f| (f.name, f.stamp.state())).collect(), skipped))
    }

    /// Hashes the files `names` of the share folder `root` as a scan does, each with
    /// [`hash_one`], taking from the cache those whose state matches it, and records what was
    /// hashed in the cache. One result per name, in order: the state the file was hashed (or
    /// found in the cache) at, and its metadata. The cache is read once before and updated once
    /// after; the lock is not held while hashing, which may take minutes, so a download finishing
    /// meanwhile records its file at once.
    pub(crate) fn hash_files(&self, root: &Dir, names: &[String]) -> Vec<Result<(FileState, FileMeta), StoreError>> {
        let cache = {
            let _guard = lock(&self.lock);
            load_cache(&self.dir, CACHE_FILE)
        };
        let results: Vec<Result<(Stamp, FileMeta, bool), StoreError>> = names
            .par_iter()
            .map(|name| {
                validate_name(name)?;
                let not_shared = |reason: String| StoreError::NotShared { name: name.clone(), reason };
                // The cache is keyed by the state of the file as opened now, not following links.
                let file = root.open_file(name, Access::Read).map_err(|e| not_shared(open_failure("file", &e)))?;
                let md = file.metadata().map_err(|e| not_shared(format!("cannot stat: {e}")))?;
                let now = Stamp::of(&md, choose_chunk_size(md.len()));
                match cache.get(name) {
                    Some((s, m)) if md.is_file() && s.same_file(&now) && m.validate().is_ok() => {
                        Ok((*s, m.clone(), false))
                    }
                    _ => hash_one(root, name).map(|(s, m)| (s, m, true)).map_err(not_shared),
                }
            })
            .collect();
        let mut hashed = Vec::new();
        let out = results
            .into_iter()
            .map(|r| {
                r.map(|(stamp, meta, fresh)| {
                    if fresh {
                        hashed.push((meta.name.clone(), (stamp, meta.clone())));
                    }
                    (stamp.state(), meta)
                })
            })
            .collect();
        if !hashed.is_empty() {
            // Read again under the lock: others may have recorded files while this one hashed.
            let _guard = lock(&self.lock);
            let mut cache = load_cache(&self.dir, CACHE_FILE);
            cache.extend(hashed);
            // As for a scan: failing to save the cache costs a re-hash next time, not this one.
            if let Err(e) = save_cache(&self.dir, CACHE_FILE, cache) {
                warn!(error = %e, "cannot save hash cache");
            }
        }
        out
    }

    /// Records a just-verified file (see [`remember`]). A failure only costs a re-hash at the next
    /// scan, so it is logged, not returned.
    pub(crate) fn remember(&self, file: &fs::File, meta: &FileMeta) {
        let _guard = lock(&self.lock);
        if let Err(e) = remember(&self.dir, CACHE_FILE, file, meta) {
            warn!(name = meta.name, error = %e, "cannot record finished download in the hash cache");
        }
    }
}

/// What a scan did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Files hashed in this scan (new or changed).
    pub hashed: usize,
    /// Files whose metadata came from the hash cache.
    pub cached: usize,
    /// Entries skipped: symlinks, non-regular files, invalid names, files that failed to hash.
    pub skipped: usize,
}

/// What [`HashCache::list`] finds: each file with its state, and what was skipped.
pub(crate) type Listed = (Vec<(String, FileState)>, Vec<Skipped>);

/// A regular file's state on disk as the hash cache keys it: while all of it is unchanged, so is
/// the content, as far as can be told without reading it. A file being written changes it (its
/// length or modification time) with every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    /// Length in bytes.
    pub length: u64,
    /// Last modification, in ns since the epoch.
    pub mtime_ns: i128,
    /// Inode number: a file replaced by another (a rename over it) differs here.
    pub inode: u64,
}

/// What a name in the share folder is now (see [`crate::Store::entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A regular file, in this state.
    File(FileState),
    /// A folder.
    Folder,
    /// Nothing (or a parent folder is missing).
    Missing,
    /// Something never shared: a symbolic link (or one in the path), another kind of file, or
    /// an invalid name.
    Other,
}

/// An entry a scan did not share, and why (for the store to log once).
#[derive(Debug, Clone)]
pub(crate) struct Skipped {
    /// Its path relative to the share folder (as far as it could be told).
    pub(crate) name: String,
    /// Why, in words.
    pub(crate) reason: String,
}

/// The identity of a file's state on disk: if all of it is unchanged, so is the content (as far as
/// a cache can tell without reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    length: u64,
    mtime_ns: i128,
    inode: u64,
    chunk_size: u32,
}

impl Stamp {
    /// Whether both stamps describe the same file state, whatever chunk size each was hashed at.
    fn same_file(&self, other: &Stamp) -> bool {
        self.length == other.length && self.mtime_ns == other.mtime_ns && self.inode == other.inode
    }

    pub(crate) fn state(&self) -> FileState {
        FileState { length: self.length, mtime_ns: self.mtime_ns, inode: self.inode }
    }

    pub(crate) fn of(md: &fs::Metadata, chunk_size: u32) -> Self {
        Stamp {
            length: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            inode: md.ino(),
            chunk_size,
        }
    }

    // `Stat`'s field types differ across architectures, so some conversions are no-ops here.
    #[allow(clippy::useless_conversion)]
    pub(crate) fn of_stat(st: &rustix::fs::Stat) -> Self {
        let length = u64::try_from(st.st_size).unwrap_or(0);
        Stamp {
            length,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            inode: u64::from(st.st_ino),
            chunk_size: choose_chunk_size(length),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: Vec<(Stamp, FileMeta)>,
}

/// The same layout as [`CacheFile`], borrowed, so writing the cache needs no copy.
#[derive(Serialize)]
struct CacheFileRef<'a> {
    version: u32,
    entries: &'a [(Stamp, FileMeta)],
}

/// A folder the walk holds open: the share folder itself, or one below it.
#[derive(Clone)]
enum Held<'a> {
    Root(&'a Dir),
    Sub(Arc<Dir>),
}

impl std::ops::Deref for Held<'_> {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        match self {
            Held::Root(d) => d,
            Held::Sub(d) => d,
        }
    }
}

/// A regular file found by the walk.
struct Found {
    name: String,
    stamp: Stamp,
}

/// Walks the share folder and returns every shareable regular file, skipping the bookkeeping
/// folder, symlinks (never followed: they could point outside the share), other non-regular
/// entries and names that fail [`validate_name`]; each skip is recorded with its reason. Every
/// folder is opened below its parent's handle without following links.
fn walk(root: &Dir, skipped: &mut Vec<Skipped>) -> Result<Vec<Found>, StoreError> {
    let mut out = Vec::new();
    let mut skip = |name: String, reason: String| skipped.push(Skipped { name, reason });
    // Folders still to list: (the open parent, the folder's own name in it or None for the
    // parent itself, its name prefix relative to root with '/' separators). A folder is opened
    // only when its turn comes, so the walk holds open only the folders on the current path
    // (depth-first), not one descriptor per folder waiting its turn.
    let mut stack: Vec<(Held<'_>, Option<String>, String)> = vec![(Held::Root(root), None, String::new())];
    while let Some((parent, child, prefix)) = stack.pop() {
        let dir = match child {
            None => parent,
            Some(child) => match parent.open_dir(&child) {
                Ok(sub) => Held::Sub(Arc::new(sub)),
                Err(e) => {
                    skip(prefix, open_failure("folder", &e));
                    continue;
                }
            },
        };
        let entries = match dir.entries() {
            Ok(e) => e,
            // The root itself must be readable; a subfolder that is not is skipped, not fatal.
            Err(e) if !prefix.is_empty() => {
                skip(prefix, format!("cannot read folder: {e}"));
                continue;
            }
            Err(e) => return Err(io_err("read folder", dir.path())(e)),
        };
        for (file_name, kind) in entries {
            let Some(file_name) = file_name.to_str().map(str::to_owned) else {
                let shown =
                    format!("{prefix}{}{}", if prefix.is_empty() { "" } else { "/" }, file_name.to_string_lossy());
                skip(shown, "name is not UTF-8".into());
                continue;
            };
            if prefix.is_empty() && file_name == proto::name::RESERVED_DIR {
                continue;
            }
            // A copy being placed across file systems (see `Partial::finish`): not a file yet.
            if file_name.starts_with(".p2p-") && file_name.ends_with(".tmp") {
                continue;
            }
            let name = if prefix.is_empty() { file_name.clone() } else { format!("{prefix}/{file_name}") };
            // Not following links, so a link is seen as a link.
            let st = match dir.stat(&file_name) {
                Ok(st) => st,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    skip(name, format!("cannot examine: {e}"));
                    continue;
                }
            };
            let kind = match kind {
                FileType::Unknown => FileType::from_raw_mode(st.st_mode),
                k => k,
            };
            match kind {
                FileType::Symlink => skip(name, "symbolic links are not followed".into()),
                FileType::Directory => stack.push((dir.clone(), Some(file_name), name)),
                FileType::RegularFile => match validate_name(&name) {
                    Ok(()) => out.push(Found { name, stamp: Stamp::of_stat(&st) }),
                    Err(e) => skip(name, format!("invalid name: {e}")),
                },
                other => {
                    let what = match other {
                        FileType::Fifo => "a FIFO",
                        FileType::Socket => "a socket",
                        FileType::CharacterDevice | FileType::BlockDevice => "a device",
                        _ => "of an unknown kind",
                    };
                    skip(name, format!("not a regular file ({what})"))
                }
            }
        }
    }
    Ok(out)
}

fn load_cache(dir: &Dir, name: &str) -> HashMap<String, (Stamp, FileMeta)> {
    let mut bytes = Vec::new();
    if let Err(e) = dir.open_file(name, Access::Read).and_then(|mut f| f.read_to_end(&mut bytes)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %dir.display(name).display(), error = %e, "cannot read hash cache; re-hashing");
        }
        return HashMap::new();
    }
    match postcard::from_bytes::<CacheFile>(&bytes) {
        Ok(c) if c.version == CACHE_VERSION => c.entries.into_iter().map(|(s, m)| (m.name.clone(), (s, m))).collect(),
        Ok(_) => HashMap::new(),
        Err(e) => {
            warn!(path = %dir.display(name).display(), error = %e, "ignoring corrupt hash cache");
            HashMap::new()
        }
    }
}

/// Writes `bytes` to the file `name` of `dir` atomically: a temporary file beside it, fsync,
/// rename. Readers see the old content or the new, never a torn mix.
pub(crate) fn write_atomic(dir: &Dir, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = format!("{name}.tmp");
    let tmp_path = dir.display(&tmp);
    // Exclusively: whatever has the temporary's name (a crash's leftover, or a link planted
    // there) is removed, never written through.
    dir.remove_file(&tmp).map_err(io_err("remove", &tmp_path))?;
    let mut f = dir.open_file(&tmp, Access::ReadWriteNew).map_err(io_err("create", &tmp_path))?;
    f.write_all(bytes).map_err(io_err("write", &tmp_path))?;
    f.sync_all().map_err(io_err("fsync", &tmp_path))?;
    dir.rename(&tmp, name).map_err(io_err("rename into place", &dir.display(name)))?;
    Ok(())
}

/// Records in the cache `cache` of folder `dir` that `file` has metadata `meta` (just verified by
/// a finished download), so the next scan neither re-hashes it nor re-chunks it at a different
/// chunk size.
fn remember(dir: &Dir, cache: &str, file: &fs::File, meta: &FileMeta) -> Result<(), StoreError> {
    let md = file.metadata().map_err(io_err("stat", &dir.display(cache)))?;
    let mut entries = load_cache(dir, cache);
    entries.insert(meta.name.clone(), (Stamp::of(&md, meta.chunk_size), meta.clone()));
    save_cache(dir, cache, entries)
}

/// Writes the cache `cache` of folder `dir` with `entries`, sorted by name, atomically.
fn save_cache(dir: &Dir, cache: &str, entries: HashMap<String, (Stamp, FileMeta)>) -> Result<(), StoreError> {
    let mut entries: Vec<(Stamp, FileMeta)> = entries.into_values().collect();
    entries.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let bytes = postcard::to_stdvec(&CacheFileRef { version: CACHE_VERSION, entries: &entries })
        .map_err(|e| StoreError::Corrupt { path: dir.display(cache), reason: e.to_string() })?;
    write_atomic(dir, cache, &bytes)
}

/// `e` with the OS error it wraps, if any (`StoreError`'s message names only the action).
fn with_source(e: &StoreError) -> String {
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// Why a file or folder could not be opened, in words (the OS error included).
fn open_failure(what: &str, e: &std::io::Error) -> String {
    if crate::beneath::is_symlink_refusal(e) {
        format!("{what} became a symbolic link (links are not followed)")
    } else {
        format!("cannot open {what}: {e}")
    }
}

/// Opens `name` below `root` (refusing links) and hashes it, or says why it is not shared. The
/// file hashed is the file opened; its state is taken from the open handle before and after, so a
/// file written to meanwhile is not shared now (the next scan picks it up once it is stable).
fn hash_one(root: &Dir, name: &str) -> Result<(Stamp, FileMeta), String> {
    let path = root.display(name);
    let file = root.open_file(name, Access::Read).map_err(|e| open_failure("file", &e))?;
    let md = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let stamp = Stamp::of(&md, choose_chunk_size(md.len()));
    let meta = hash_open_file(&file, &path, name, stamp.chunk_size)
        .map_err(|e| format!("cannot hash: {}", with_source(&e)))?;
    match file.metadata() {
        Ok(after) if Stamp::of(&after, stamp.chunk_size).same_file(&stamp) => Ok((stamp, meta)),
        _ => Err("changed while being hashed".into()),
    }
}

/// Scans the share folder `root` (using and refreshing the cache file `cache` of folder `p2p`);
/// see [`crate::Store::scan`]. Also returns what was skipped and why.
fn scan(root: &Dir, p2p: &Dir, cache_name: &str) -> Result<(Vec<FileMeta>, ScanStats, Vec<Skipped>), StoreError> {
    let mut stats = ScanStats::default();
    let mut skipped = Vec::new();
    let found = walk(root, &mut skipped)?;
    let cache = load_cache(p2p, cache_name);

    let (hit, miss): (Vec<_>, Vec<_>) = found.into_iter().partition(|f| {
        // A cached meta that no longer validates (e.g. a hand-edited cache) is re-hashed.
        // The chunk size is not compared: a downloaded file is remembered at the chunk size it
        // was downloaded with (see `remember`), so re-sharing it keeps its identity in the swarm.
        cache.get(&f.name).is_some_and(|(s, m)| s.same_file(&f.stamp) && m.validate().is_ok())
    });
    let mut entries: Vec<(Stamp, FileMeta)> = Vec::with_capacity(hit.len() + miss.len());
    for f in &hit {
        if let Some(e) = cache.get(&f.name) {
            entries.push(e.clone());
        }
    }
    stats.cached = entries.len();

    // Files are hashed in parallel, and each file's chunks in parallel too: rayon balances both,
    // so a folder of one huge file and a folder of many small ones both use every core.
    let hashed: Vec<Result<(Stamp, FileMeta), Skipped>> = miss
        .par_iter()
        .map(|f| hash_one(root, &f.name).map_err(|reason| Skipped { name: f.name.clone(), reason }))
        .collect();
    let before = entries.len();
    for h in hashed {
        match h {
            Ok(e) => entries.push(e),
            Err(s) => skipped.push(s),
        }
    }
    stats.hashed = entries.len() - before;
    stats.skipped = skipped.len();

    entries.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    // Rewrite the cache only when it changed (something hashed, or something gone).
    if stats.hashed > 0 || cache.len() != stats.cached {
        let bytes = postcard::to_stdvec(&CacheFileRef { version: CACHE_VERSION, entries: &entries })
            .map_err(|e| StoreError::Corrupt { path: p2p.display(cache_name), reason: e.to_string() })?;
        // A share folder may be read-only: failing to save the cache costs a re-hash next
        // time, not this scan.
        if let Err(e) = write_atomic(p2p, cache_name, &bytes) {
            warn!(error = %e, "cannot save hash cache");
        }
    }
    Ok((entries.into_iter().map(|(_, m)| m).collect(), stats, skipped))
}
