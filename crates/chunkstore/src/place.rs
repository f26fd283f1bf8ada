//! Putting a verified download under its name in the share folder, never replacing a file.
//!
//! The parent folders are created and opened below the share folder's handle without following
//! links, and the file is linked into the folder held open: no path is resolved twice, so no
//! component swapped for a link meanwhile can redirect it. The name is given from the verified
//! file's open handle where the system allows (`linkat` of `/proc/self/fd/N`), so it can only go
//! to the file that was verified, whatever was renamed over its data file meanwhile; otherwise by
//! name, checked afterwards. A destination on another file system gets a verified copy.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek};
use std::path::PathBuf;

use proto::FileMeta;
use tracing::{debug, info, warn};

use crate::beneath::{split_parent, Access, Dir};
use crate::error::{io_err, StoreError};
use crate::files::{fsync_dir, remove, Names};
use crate::hash::hash_open_file;

/// Puts the verified, fsynced `data` file of the download of `meta` (filed under `id` in the
/// partial folder `partials`) under its name below the share folder `root`. An identical file
/// already there is kept ([`StoreError::AlreadyExists`] if it differs). Returns the final path and
/// the handle of the file now under the name when it is not `data` itself (a copy, or the
/// identical file found there), for the hash cache.
pub(crate) fn promote(
    root: &Dir,
    partials: &Dir,
    data: &File,
    meta: &FileMeta,
    id: &str,
) -> Result<(PathBuf, Option<File>), StoreError> {
    let dest = root.display(&meta.name);
    let (parent_rel, last) = split_parent(&meta.name);
    let created;
    let parent = match parent_rel {
        Some(rel) => {
            created = root.create_dir_all(rel).map_err(io_err("create folder", &root.display(rel)))?;
            &created
        }
        None => root,
    };
    let placed = match place(parent, last, data, partials, &Names::of(id).data) {
        Ok(Outcome::Placed) => Placed::Data,
        Ok(Outcome::Exists) => Placed::Exists,
        // The destination folder is on another file system (a mount inside the share), or the
        // verified file can no longer be named safely (its data file's name was taken, say): a
        // verified copy is placed instead.
        Ok(Outcome::OtherFileSystem | Outcome::Unnameable) => copy_into(parent, last, data, meta, id)?,
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
            let identical = existing
                .filter(|f| hash_open_file(f, &dest, &meta.name, meta.chunk_size).is_ok_and(|m| m.root == meta.root));
            let Some(existing) = identical else {
                return Err(StoreError::AlreadyExists { name: meta.name.clone() });
            };
            info!(name = meta.name, "identical file already in place; dropping the download");
            Some(existing)
        }
    };
    Ok((dest, file))
}

/// Places the verified `data` file under `last` in `parent` when it cannot be linked there:
/// copies it to a temporary file in `parent` (created exclusively, skipped by scans), fsyncs it,
/// checks the copy against the root hash, then links it to its name (never replacing a file) and
/// fsyncs the folder. The name appears atomically, and only with verified content. A crash leaves
/// at most the hidden temporary, which the next attempt replaces.
fn copy_into(parent: &Dir, last: &str, data: &File, meta: &FileMeta, id: &str) -> Result<Placed, StoreError> {
    let tmp = format!(".p2p-{id}.tmp");
    let tmp_path = parent.display(&tmp);
    remove(parent, &tmp)?;
    let mut out = parent.open_file(&tmp, Access::ReadWriteNew).map_err(io_err("create", &tmp_path))?;
    let copied = (|| {
        let mut src = data;
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
        Ok(m) if m.root != meta.root => Err(StoreError::WholeFileMismatch { name: meta.name.clone(), bad_chunks: 0 }),
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

/// What [`promote`] found or put under the download's name.
enum Placed {
    /// The data file itself, linked or renamed into place.
    Data,
    /// A verified copy (the destination is on another file system), with its handle.
    Copy(File),
    /// A file already there (identical or not: checked next).
    Exists,
}
