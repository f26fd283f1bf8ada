//! Scanning a share folder: walking it, hashing new or changed files on all cores, and the hash
//! cache that lets a restart skip unchanged files.
//!
//! The cache (`.p2p/hash-cache`, postcard) maps a name to the file's metadata together with the
//! length, modification time (ns), inode and chunk size it was computed from. A file whose four
//! values all match is not re-hashed. The cache is rewritten atomically (temporary file, fsync,
//! rename) so a crash leaves either the old or the new cache, and a cache that fails to decode is
//! simply ignored: it is an optimisation, never a source of truth.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proto::{validate_name, FileMeta};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::error::{io_err, StoreError};
use crate::hash::{choose_chunk_size, hash_file};

/// Bumped whenever the cache layout or the hashing changes, so an old cache is discarded.
const CACHE_VERSION: u32 = 1;

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

    fn of(md: &fs::Metadata, chunk_size: u32) -> Self {
        Stamp {
            length: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            inode: md.ino(),
            chunk_size,
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

/// A regular file found by the walk.
struct Found {
    name: String,
    path: PathBuf,
    stamp: Stamp,
}

/// Walks `root` and returns every shareable regular file, skipping the bookkeeping folder,
/// symlinks (never followed: they could point outside the share), other non-regular entries and
/// names that fail [`validate_name`].
fn walk(root: &Path, stats: &mut ScanStats) -> Result<Vec<Found>, StoreError> {
    let mut out = Vec::new();
    // (directory path, its name prefix relative to root with '/' separators)
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // The root itself must be readable; a subfolder that is not is skipped, not fatal.
            Err(e) if dir != root => {
                warn!(path = %dir.display(), error = %e, "skipping unreadable folder");
                stats.skipped += 1;
                continue;
            }
            Err(e) => return Err(io_err("read folder", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read folder", &dir))?;
            let path = entry.path();
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                warn!(path = %path.display(), "skipping file whose name is not UTF-8");
                stats.skipped += 1;
                continue;
            };
            if prefix.is_empty() && file_name == proto::name::RESERVED_DIR {
                continue;
            }
            let name = if prefix.is_empty() { file_name } else { format!("{prefix}/{file_name}") };
            // symlink_metadata does not follow links, so a link is seen as a link.
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping entry that cannot be examined");
                    stats.skipped += 1;
                    continue;
                }
            };
            let ft = md.file_type();
            if ft.is_symlink() {
                debug!(path = %path.display(), "skipping symlink");
                stats.skipped += 1;
            } else if ft.is_dir() {
                stack.push((path, name));
            } else if !ft.is_file() {
                debug!(path = %path.display(), "skipping non-regular file");
                stats.skipped += 1;
            } else if let Err(e) = validate_name(&name) {
                warn!(name, error = %e, "skipping file with an invalid name");
                stats.skipped += 1;
            } else {
                let stamp = Stamp::of(&md, choose_chunk_size(md.len()));
                out.push(Found { name, path, stamp });
            }
        }
    }
    Ok(out)
}

fn load_cache(path: &Path) -> HashMap<String, (Stamp, FileMeta)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "cannot read hash cache; re-hashing");
            }
            return HashMap::new();
        }
    };
    match postcard::from_bytes::<CacheFile>(&bytes) {
        Ok(c) if c.version == CACHE_VERSION => c.entries.into_iter().map(|(s, m)| (m.name.clone(), (s, m))).collect(),
        Ok(_) => HashMap::new(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring corrupt hash cache");
            HashMap::new()
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename. Readers see
/// the old content or the new, never a torn mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    Ok(())
}

/// Records in the cache at `cache_path` that the file at `path` has metadata `meta` (just
/// verified by a finished download), so the next scan neither re-hashes it nor re-chunks it at a
/// different chunk size.
pub(crate) fn remember(cache_path: &Path, path: &Path, meta: &FileMeta) -> Result<(), StoreError> {
    let md = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    let mut cache = load_cache(cache_path);
    cache.insert(meta.name.clone(), (Stamp::of(&md, meta.chunk_size), meta.clone()));
    let mut entries: Vec<(Stamp, FileMeta)> = cache.into_values().collect();
    entries.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let bytes = postcard::to_stdvec(&CacheFileRef { version: CACHE_VERSION, entries: &entries })
        .map_err(|e| StoreError::Corrupt { path: cache_path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(cache_path, &bytes)
}

/// Scans `root` (using and refreshing the cache at `cache_path`); see [`crate::Store::scan`].
pub(crate) fn scan(root: &Path, cache_path: &Path) -> Result<(Vec<FileMeta>, ScanStats), StoreError> {
    let mut stats = ScanStats::default();
    let found = walk(root, &mut stats)?;
    let cache = load_cache(cache_path);

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
    let hashed: Vec<Option<(Stamp, FileMeta)>> = miss
        .par_iter()
        .map(|f| {
            let meta = match hash_file(&f.path, &f.name, f.stamp.chunk_size) {
                Ok(m) => m,
                Err(e) => {
                    warn!(name = f.name, error = %e, "skipping file that failed to hash");
                    return None;
                }
            };
            // A file written to while it was hashed may have mixed content: don't share or cache
            // it now; the next scan picks it up once it is stable.
            match fs::symlink_metadata(&f.path) {
                Ok(md) if Stamp::of(&md, f.stamp.chunk_size).same_file(&f.stamp) => Some((f.stamp, meta)),
                _ => {
                    warn!(name = f.name, "skipping file that changed while being hashed");
                    None
                }
            }
        })
        .collect();
    let before = entries.len();
    entries.extend(hashed.into_iter().flatten());
    stats.hashed = entries.len() - before;
    stats.skipped += miss.len() - stats.hashed;

    entries.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    // Rewrite the cache only when it changed (something hashed, or something gone).
    if stats.hashed > 0 || cache.len() != stats.cached {
        let bytes = postcard::to_stdvec(&CacheFileRef { version: CACHE_VERSION, entries: &entries })
            .map_err(|e| StoreError::Corrupt { path: cache_path.to_path_buf(), reason: e.to_string() })?;
        // A share folder may be read-only: failing to save the cache costs a re-hash next
        // time, not this scan.
        if let Err(e) = write_atomic(cache_path, &bytes) {
            warn!(error = %e, "cannot save hash cache");
        }
    }
    Ok((entries.into_iter().map(|(_, m)| m).collect(), stats))
}
