//! The chunk store's one error type.

use std::io;
use std::path::{Path, PathBuf};

use proto::{HashMismatch, MetaError, NameError};

/// Everything that can go wrong in the chunk store.
///
/// Peer misbehaviour ([`StoreError::HashMismatch`]) is kept apart from local failures so the
/// downloader can blame the sender. I/O errors name the action and the path; the OS error is the
/// [`std::error::Error::source`], so print the chain (`{:#}` with anyhow) to see it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done, e.g. "open", "read chunk of".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Data offered for a chunk does not match the chunk's hash: the sender misbehaved.
    #[error("chunk {chunk} does not match its hash")]
    HashMismatch {
        /// The chunk.
        chunk: u32,
    },
    /// A file name is unsafe (see [`proto::validate_name`]).
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    /// File metadata is not self-consistent, or a chunk index is out of range.
    #[error("invalid metadata: {0}")]
    InvalidMeta(MetaError),
    /// A path component under the share folder is a symbolic link; following it could leave the
    /// share folder, so it is refused (atomically with the open: see the threat model in
    /// docs/ARCHITECTURE.md).
    #[error("{} is a symbolic link", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A path under the share folder is not a regular file (or directory where one is needed).
    #[error("{} is not a regular file", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// A partial download was asked for a chunk it does not hold yet.
    #[error("chunk {chunk} is not held")]
    NotHeld {
        /// The chunk.
        chunk: u32,
    },
    /// A shared file vanished or its length on disk no longer matches its metadata.
    #[error("file {name:?} changed on disk since it was hashed")]
    FileChanged {
        /// The file's name.
        name: String,
    },
    /// `finish` was called before every chunk was held.
    #[error("download of {name:?} is incomplete: {have} of {total} chunks")]
    Incomplete {
        /// The file's name.
        name: String,
        /// Chunks held.
        have: u32,
        /// Chunks in the file.
        total: u32,
    },
    /// The assembled file does not hash to its root hash; it was not put in place, and the chunks
    /// found bad on disk were marked missing again.
    #[error("assembled file {name:?} does not match its root hash ({bad_chunks} bad chunks)")]
    WholeFileMismatch {
        /// The file's name.
        name: String,
        /// Chunks whose bytes on disk did not match their hash (now marked missing).
        bad_chunks: u32,
    },
    /// A different file already exists under the name a download would take.
    #[error("a different file already exists at {name:?}")]
    AlreadyExists {
        /// The file's name.
        name: String,
    },
    /// The partial download was already finished (or abandoned); it takes no more writes.
    #[error("download of {name:?} is already finished")]
    Finished {
        /// The file's name.
        name: String,
    },
    /// `Partial::finish_until` was told to stop before the whole-file check was done. Nothing was
    /// put in place and the download is kept, every chunk still held: a later finish can succeed.
    #[error("finishing {name:?} was interrupted; the partial download is kept")]
    Interrupted {
        /// The file's name.
        name: String,
    },
    /// The file system has too little free space for what a download still needs (see
    /// `Partial::reserve`). The download is kept: free some space and reserve again.
    #[error(
        "not enough disk space for {}: needs {}, {} free",
        path.display(),
        human_bytes(*needed),
        human_bytes(*free)
    )]
    NoSpace {
        /// Where the download goes.
        path: PathBuf,
        /// Bytes of the chunks not yet held.
        needed: u64,
        /// Bytes free for this process on the download's file system.
        free: u64,
    },
    /// A partial download cannot be removed while this store has it open (a `Partial` handle to
    /// it is alive, or it is being opened).
    #[error("download of {name:?} is open; close it before removing it")]
    PartialInUse {
        /// The file's name.
        name: String,
    },
    /// There is no partial download of this metadata on disk.
    #[error("no partial download of {name:?}")]
    NoPartial {
        /// The file's name.
        name: String,
    },
    /// A file of the share could not be hashed for sharing (it could not be opened or read, is
    /// not a regular file, or changed while it was hashed).
    #[error("not sharing {name:?}: {reason}")]
    NotShared {
        /// The file's name.
        name: String,
        /// Why, in words (the OS error included).
        reason: String,
    },
    /// A bookkeeping file under `.p2p` could not be decoded.
    #[error("corrupt bookkeeping file {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<HashMismatch> for StoreError {
    fn from(e: HashMismatch) -> Self {
        StoreError::HashMismatch { chunk: e.chunk }
    }
}

impl From<MetaError> for StoreError {
    /// An invalid name inside metadata is reported as [`StoreError::InvalidName`], so callers have
    /// one variant to match for every unsafe name whatever the path it came by.
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Name(n) => StoreError::InvalidName(n),
            other => StoreError::InvalidMeta(other),
        }
    }
}

/// Builds a closure mapping an `io::Error` to [`StoreError::Io`] for `action` on `path`.
pub(crate) fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| {
        // Every open below the share refuses links (see `beneath`): say so rather than "too many
        // levels of symbolic links".
        if crate::beneath::is_symlink_refusal(&source) {
            StoreError::Symlink { path: path.to_path_buf() }
        } else {
            StoreError::Io { action, path: path.to_path_buf(), source }
        }
    }
}

/// `bytes` for people: "512 B", "4 MiB", "1.2 GiB" (one decimal below 10 units, none above).
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let shown = if unit == 0 || value >= 10.0 { format!("{value:.0}") } else { format!("{value:.1}") };
    format!("{} {}", shown.strip_suffix(".0").unwrap_or(&shown), UNITS[unit])
}
