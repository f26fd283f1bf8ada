//! Chunk store: scanning and hashing a share folder, serving chunks of complete files, and
//! partial downloads with verify-then-write, crash-safe resume and atomic assembly.
//!
//! All of it is blocking, synchronous code (async callers use `spawn_blocking`); [`Store`] and
//! [`Partial`] are cheap-to-clone, `Send + Sync` handles. No file is ever loaded whole into
//! memory: chunks stream from and to disk with positioned reads and writes, one chunk-sized
//! buffer per thread.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/                      the share folder: complete files under their names
//! <root>/a/b.bin               file "a/b.bin" (names are relative, '/'-separated)
//! <root>/.p2p/                 bookkeeping (proto::name::RESERVED_DIR); never scanned or served
//! <root>/.p2p/partial/<id>.meta   postcard FileMeta of a download, written atomically first
//! <root>/.p2p/partial/<id>.data   the file being assembled, full length, sparse until written
//! <root>/.p2p/partial/<id>.have   the chunk bitmap's bytes (bit i%8 of byte i/8)
//! <state>/hash-cache           postcard: (length, mtime ns, inode, chunk size) + FileMeta per name
//! ```
//!
//! `<state>` is `<root>/.p2p` for [`Store::open`], which creates `.p2p/partial` at once. With
//! [`Store::open_with_state`] it is a folder of the caller's choosing, and opening, scanning and
//! serving write nothing in the share, which may be read-only; `.p2p/partial` is still where
//! downloads live (on the destination's file system, so placing a finished file is a rename), but
//! it is created by the first download. [`Store::partial_infos`] lists downloads with their
//! progress from these files alone, and [`Store::remove_partial`] deletes one (`.meta` first).
//!
//! `<id>` is the hex of the first 16 bytes of `blake3(name ++ 0u8 ++ root ++ chunk_size_le)`.
//! Files ending in `.tmp` are atomic writes in progress; they and `.data`/`.have` files without a
//! `.meta` are removed when a store opens (if the share can be written). A copy across file
//! systems, and a file about to replace another ([`Partial::finish_replacing_until`]), get the
//! name `.p2p-<id>.tmp` in the destination folder first (skipped by scans as a hidden temporary).
//!
//! # Guarantees
//! - A chunk is written only after it matched its hash ([`StoreError::HashMismatch`] otherwise).
//! - `kill -9` or power loss at any moment loses at most chunks in flight: reopening a download
//!   re-verifies every chunk its bitmap claims, so a torn chunk is never trusted.
//! - A file appears under its name only after the whole file read back from disk matched the root
//!   hash, was fsynced, and was linked into place without replacing another file (or, when the
//!   caller asks, renamed over a different regular file in one step, never over a link or folder).
//! - [`Partial::reserve`] allocates the space a download still needs up front, so a full disk is
//!   reported at once ([`StoreError::NoSpace`]) rather than hours into the download.
//! - No name (see [`proto::validate_name`]) and no symlink in the share folder can make the store
//!   read or write outside it, even one swapped in while the store works: every open, create,
//!   link, rename and removal is resolved below an open handle of the share folder, refusing links
//!   in every component atomically (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or a
//!   component-by-component `openat(O_NOFOLLOW)` walk where the kernel lacks it). Hard links are
//!   ordinary files: whoever can link a file into the share shares it.
//! - A download whose folder is on another file system is copied there, fsynced and checked
//!   against its root hash before it is linked to its name.
//! - Scanning hashes on all cores and caches results, so unchanged files are not re-hashed.

// No module imports one that imports it back. In layers, each importing only layers below it:
// `store`; `partials` (the registry of open downloads, with their folder); `info` (what a download
// on disk amounts to); `partial` (one download, with its flushes and whole-file check in
// `partial/verify.rs` and its space reservation in `partial/space.rs`); `place` (putting a verified
// file under its name); `files` (a download's bookkeeping on disk); `scan` (with the hash cache);
// `hash`; `space` (free space and reservations); `error`; `beneath` and `sync`.
mod beneath;
mod error;
mod files;
mod hash;
mod info;
mod partial;
mod partials;
mod place;
mod reader;
mod scan;
mod space;
mod store;
mod sync;

pub use error::StoreError;
pub use hash::{choose_chunk_size, hash_file, SMALLEST_CHOSEN_CHUNK, TARGET_CHUNKS};
pub use info::PartialInfo;
pub use partial::{Finish, Partial};
pub use reader::Served;
pub use scan::{Entry, FileState, ScanStats};
pub use store::Store;

#[cfg(test)]
mod finish_tests;
#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod manage_tests;
#[cfg(test)]
mod open_tests;
#[cfg(test)]
mod replace_tests;
#[cfg(test)]
mod space_tests;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
