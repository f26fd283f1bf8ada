//! Putting a verified download under its name in the share folder: never replacing a file, or,
//! when asked, replacing a different regular file atomically.
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
use rustix::fs::FileType;
use tracing::{debug, info, warn};

use crate::beneath::{split_parent, Access, Dir};
use crate::error::{io_err, StoreError};
use crate::files::{fsync_dir, remove, Names};
use crate::hash::hash_open_file;

/// Whether a download may replace a different file already under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Never: a different file there is an error ([`StoreError::AlreadyExists`]).
    No,
    /// A different regular file there is replaced atomically; a link or folder is refused.
    Yes,
}

/// Puts the verified, fsynced `data` file of the download of `meta` (filed under `id` in the
/// partial folder `partials`) under its name below the share folder `root`. An identical file
/// already there is kept; a different one is an error or replaced, as `replace` says. Returns the
/// final path and the handle of the file now under the name when it is not `data` itself (a
/// copy, or the identical file found there), for the hash cache.
pub(crate) fn promote(
    root: &Dir,
    partials: &Dir,
    data: &File,
    meta: &FileMeta,
    id: &str,
    replace: Replace,
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
    let to = Target { parent, last, dest: &dest, meta, id };
    let placed = match replace {
        Replace::No => link_into(&to, data, partials)?,
        Replace::Yes => replace_into(&to, data, partials)?,
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
        Placed::Identical(existing) => {
            info!(name = meta.name, "identical file already in place; dropping the download");
            Some(existing)
        }
    };
    Ok((dest, file))
}

/// Where a download goes: the name `last` in the open folder `parent` (`dest` for messages).
struct Target<'a> {
    parent: &'a Dir,
    last: &'a str,
    dest: &'a PathBuf,
    meta: &'a FileMeta,
    id: &'a str,
}

impl Target<'_> {
    /// The hidden temporary name of the download in the destination folder (skipped by scans).
    fn tmp(&self) -> String {
        format!(".p2p-{}.tmp", self.id)
    }
}

/// Gives the verified `data` (named by the download's data file in `partials`) its name, never
/// replacing a file: linked, or copied across file systems. A file already there is kept if it
/// is identical ([`StoreError::AlreadyExists`] otherwise).
fn link_into(to: &Target<'_>, data: &File, partials: &Dir) -> Result<Placed, StoreError> {
    match place(to.parent, to.last, data, partials, &Names::of(to.id).data) {
        Ok(Outcome::Placed) => return Ok(Placed::Data),
        Ok(Outcome::Exists) => {}
        // The destination folder is on another file system (a mount inside the share), or the
        // verified file can no longer be named safely (its data file's name was taken, say): a
        // verified copy is placed instead.
        Ok(Outcome::OtherFileSystem | Outcome::Unnameable) => {
            if let Some(copy) = copy_into(to, data, Replace::No)? {
                return Ok(Placed::Copy(copy));
            }
        }
        Err(e) => return Err(io_err("move into place", to.dest)(e)),
    }
    identical(to).map(Placed::Identical).ok_or_else(|| StoreError::AlreadyExists { name: to.meta.name.clone() })
}

/// The file under the target's name if it is a regular file identical to the download.
fn identical(to: &Target<'_>) -> Option<File> {
    let meta = to.meta;
    to.parent
        .open_file(to.last, Access::Read)
        .ok()
        .filter(|f| f.metadata().is_ok_and(|md| md.is_file() && md.len() == meta.length))
        .filter(|f| hash_open_file(f, to.dest, &meta.name, meta.chunk_size).is_ok_and(|m| m.root == meta.root))
}

/// Gives the verified `data` its name, replacing a different regular file there: the verified
/// file is first given the hidden temporary name in the destination folder (from its handle, as
/// [`place`] does), then renamed over the name, which swaps the old file for the new in one step.
/// A link or anything but a regular file at the name is refused, nothing changed. A local writer
/// racing this can at worst make the rename fail (a folder put there) or replace a link they put
/// there meanwhile; the rename never follows a link.
fn replace_into(to: &Target<'_>, data: &File, partials: &Dir) -> Result<Placed, StoreError> {
    match to.parent.stat(to.last) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                if let Some(existing) = identical(to) {
                    return Ok(Placed::Identical(existing));
                }
            }
            FileType::Symlink => return Err(StoreError::Symlink { path: to.dest.clone() }),
            _ => return Err(StoreError::NotRegular { path: to.dest.clone() }),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("examine", to.dest)(e)),
    }
    let (parent, tmp, data_name) = (to.parent, to.tmp(), Names::of(to.id).data);
    remove(parent, &tmp)?;
    match place(parent, &tmp, data, partials, &data_name) {
        Ok(Outcome::Placed) => {}
        Ok(Outcome::OtherFileSystem | Outcome::Unnameable) => {
            return copy_into(to, data, Replace::Yes)?.map(Placed::Copy).ok_or_else(|| taken(to));
        }
        Ok(Outcome::Exists) => return Err(taken(to)),
        Err(e) => return Err(io_err("move into place", to.dest)(e)),
    }
    if let Err(e) = parent.rename(&tmp, to.last) {
        // Drop the temporary name, unless it became the data's only one (placed by renaming, on
        // a file system without hard links): then it goes back, so the download stays whole.
        let undone = match partials.is_same_file(&data_name, data) {
            Ok(true) => parent.remove_file(&tmp),
            // An unnamed data file (a one-chunk download) keeps its open handle: no name to
            // give back.
            Err(e) if e.kind() == ErrorKind::NotFound => parent.remove_file(&tmp),
            _ => partials.rename_from_noreplace(parent, &tmp, &data_name),
        };
        if let Err(u) = undone {
            warn!(path = %parent.display(&tmp).display(), error = %u, "cannot undo a failed replacement");
        }
        return Err(io_err("move into place", to.dest)(e));
    }
    Ok(Placed::Data)
}

/// The hidden temporary name was taken while this store was using it.
fn taken(to: &Target<'_>) -> StoreError {
    let tmp = to.parent.display(&to.tmp());
    io_err("move into place", &tmp)(std::io::Error::other("the temporary name was taken meanwhile"))
}

/// Places the verified `data` file under the target's name when it cannot be linked there:
/// copies it to the hidden temporary file in the destination folder (created exclusively),
/// fsyncs it, checks the copy against the root hash, then links it to its name (never replacing
/// a file: `None` if one is there) or, if `replace` says so, renames it over the name; then
/// fsyncs the folder. The name appears atomically, and only with verified content. A crash leaves
/// at most the hidden temporary, which the next attempt replaces.
fn copy_into(to: &Target<'_>, data: &File, replace: Replace) -> Result<Option<File>, StoreError> {
    let (parent, last, meta, tmp) = (to.parent, to.last, to.meta, to.tmp());
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
    let into_place = io_err("move into place", to.dest);
    let result = match copied {
        Err(e) => Err(io_err("copy into place", &tmp_path)(e)),
        Ok(m) if m.root != meta.root => Err(StoreError::WholeFileMismatch { name: meta.name.clone(), bad_chunks: 0 }),
        Ok(_) if replace == Replace::Yes => parent.rename(&tmp, last).map(|()| Some(out)).map_err(into_place),
        Ok(_) => match place(parent, last, &out, parent, &tmp) {
            Ok(Outcome::Placed) => Ok(Some(out)),
            Ok(Outcome::Exists) => Ok(None),
            Ok(Outcome::OtherFileSystem | Outcome::Unnameable) => {
                Err(into_place(std::io::Error::other("the copy was replaced while it was being placed")))
            }
            Err(e) => Err(into_place(e)),
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
        // An unnamed data file (a one-chunk download) cannot be placed by name: a copy is.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Outcome::Unnameable),
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

/// What [`promote`] put, or found, under the download's name.
enum Placed {
    /// The data file itself, linked or renamed into place.
    Data,
    /// A verified copy (the destination is on another file system), with its handle.
    Copy(File),
    /// An identical file already there, kept, with its handle.
    Identical(File),
}
