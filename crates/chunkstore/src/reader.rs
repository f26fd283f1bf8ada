//! Reading chunks to serve them: a complete file held open for a connection ([`Served`]), and
//! reads that succeed only when they need not wait for the disk ([`read_cached`]).
//!
//! A server on an event loop reads a chunk in place when it is in the page cache (most are: just
//! downloaded, or just sent to someone else), which costs a copy and no thread hand-off; only a
//! chunk that must come from the disk goes to a blocking thread.

use std::fs::File;
use std::io::{ErrorKind, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use proto::meta::{check_chunk_size, chunk_count};
use proto::{validate_name, ChunkIndex, FileMeta, MetaError};
use rustix::io::{preadv2, Errno, ReadWriteFlags};

use crate::beneath::{Access, Dir};
use crate::error::{io_err, StoreError};
use crate::hash::chunk_span;

/// A complete file of the share, opened once to serve many of its chunks. It stays the file that
/// was opened (and checked) whatever happens to its name meanwhile; a file truncated under it
/// fails the read with [`StoreError::FileChanged`].
#[derive(Debug)]
pub struct Served {
    file: File,
    meta_name: String,
    length: u64,
    chunk_size: u32,
    num_chunks: u32,
    path: PathBuf,
}

impl Served {
    /// Opens `meta`'s file below `root`, refusing unsafe names and links in every component, and
    /// checks it is a regular file of `meta.length` bytes ([`StoreError::FileChanged`] if it
    /// vanished or its length differs).
    pub(crate) fn open(root: &Dir, meta: &FileMeta) -> Result<Served, StoreError> {
        check_chunk_size(meta.chunk_size)?;
        if chunk_count(meta.length, meta.chunk_size) != u64::from(meta.num_chunks()) {
            return Err(StoreError::InvalidMeta(MetaError::ChunkOutOfRange {
                chunk: meta.num_chunks(),
                num_chunks: meta.num_chunks(),
            }));
        }
        validate_name(&meta.name)?;
        let path = root.display(&meta.name);
        let changed = || StoreError::FileChanged { name: meta.name.clone() };
        let file = match root.open_file(&meta.name, Access::Read) {
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
        Ok(Served {
            file,
            meta_name: meta.name.clone(),
            length: meta.length,
            chunk_size: meta.chunk_size,
            num_chunks: meta.num_chunks(),
            path,
        })
    }

    /// The byte range of chunk `i`, checked against this file (`i` may come from another meta).
    fn span(&self, i: ChunkIndex) -> Result<(u64, usize), StoreError> {
        if i.get() >= self.num_chunks {
            return Err(StoreError::InvalidMeta(MetaError::ChunkOutOfRange {
                chunk: i.get(),
                num_chunks: self.num_chunks,
            }));
        }
        Ok(chunk_span(self.length, self.chunk_size, i.get()))
    }

    /// Reads chunk `i` into `buf` (resized to its length). Does not re-hash it: the downloader
    /// verifies every chunk it receives.
    pub fn read_chunk_into(&self, i: ChunkIndex, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        let (off, len) = self.span(i)?;
        buf.resize(len, 0);
        self.file.read_exact_at(buf, off).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                StoreError::FileChanged { name: self.meta_name.clone() }
            } else {
                io_err("read chunk of", &self.path)(e)
            }
        })
    }

    /// [`Served::read_chunk_into`] if the whole chunk is in the page cache; `Ok(false)` (and `buf`
    /// holding nothing of use) if reading it would wait for the disk.
    pub fn read_chunk_cached(&self, i: ChunkIndex, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let (off, len) = self.span(i)?;
        read_cached(&self.file, off, len, buf).map_err(io_err("read chunk of", &self.path))
    }
}

/// Reads `len` bytes at `off` into `buf` (resized) only from the page cache (`RWF_NOWAIT`): true
/// if they all were there, false if any must come from the disk, or the kernel cannot tell.
pub(crate) fn read_cached(file: &File, off: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.resize(len, 0);
    if len == 0 {
        return Ok(true);
    }
    match preadv2(file, &mut [IoSliceMut::new(buf)], off, ReadWriteFlags::NOWAIT) {
        // A short read: part of it is not cached, or the file shrank. The blocking read tells.
        Ok(n) => Ok(n == len),
        Err(Errno::AGAIN) => Ok(false),
        // A kernel or file system without RWF_NOWAIT for buffered reads.
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
