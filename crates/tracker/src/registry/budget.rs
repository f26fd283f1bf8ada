//! The metadata byte budgets: what a file and a holding cost, by estimate, and the one place
//! where those costs are charged and given back.
//!
//! Counts alone do not bound memory: valid metadata needs no file data, so a client can register
//! files of 2^18 chunks for nothing. Each session is charged [`session_cost`] for every file it
//! holds (checked against `Limits::max_meta_bytes_per_session`), and the registry [`file_bytes`]
//! per file plus [`holding_bytes`] per holding (`Limits::max_meta_bytes_total`). Both are checked
//! by [`charge`] before anything is added; [`release`] gives the registry's bytes back, and a
//! session that drops its holdings drops its whole charge with them.

use proto::tracker::RejectReason;
use proto::FileMeta;

use crate::config::Limits;

/// Bytes of overhead per file in the registry's estimate: the entry, its maps and lists, the
/// metadata's fixed fields.
const FILE_OVERHEAD: u64 = 256;

/// Bytes of a file's entry in the index by root (`files.rs`): a 48-byte element (the root and
/// the name's shared pointer; the name itself is the map's key, not copied) in B-tree nodes
/// about two thirds full.
const ROOT_INDEX_ENTRY: u64 = 80;

/// Bytes of overhead per holding: its places in the file's holder map and lists and in the
/// session's set of names.
const HOLDING_OVERHEAD: u64 = 64;

/// What the registry holds for one file, in bytes, about: its chunk hashes (32 bytes a chunk),
/// its File Meta reply once encoded (32 more), its availability counters (4), its name three
/// times (the metadata's, the map key's, the reply's), the entry and its place in the index by
/// root. The reply is encoded only if someone asks for it, but counted from the start: the
/// budget is what the file may cost.
pub fn file_bytes(meta: &FileMeta) -> u64 {
    FILE_OVERHEAD + ROOT_INDEX_ENTRY + 3 * meta.name.len() as u64 + 68 * meta.chunk_hashes.len() as u64
}

/// What one holder of a file costs the registry, in bytes: a bitmap row (a bit per chunk; counted
/// for every holding, whatever its state) and its places in the maps.
pub fn holding_bytes(meta: &FileMeta) -> u64 {
    HOLDING_OVERHEAD + (meta.chunk_hashes.len() as u64).div_ceil(8)
}

/// What one holding costs the session that holds it: the file as if it held it alone, so a
/// session's charge depends only on what it registered, never on what others do.
pub fn session_cost(meta: &FileMeta) -> u64 {
    file_bytes(meta) + holding_bytes(meta)
}

/// Charges a new holding of `meta` to a session (`session`, its bytes so far) and to the
/// registry (`total`), or refuses it, changing neither, if either would exceed its budget.
/// `new_file`: the file is not in the registry yet, so its own bytes are charged too.
pub(super) fn charge(
    total: &mut u64,
    session: &mut u64,
    meta: &FileMeta,
    new_file: bool,
    limits: &Limits,
) -> Result<(), RejectReason> {
    let session_bytes = *session + session_cost(meta);
    if session_bytes > limits.max_meta_bytes_per_session {
        return Err(RejectReason::SessionMetaQuota { max: limits.max_meta_bytes_per_session });
    }
    let global = *total + holding_bytes(meta) + if new_file { file_bytes(meta) } else { 0 };
    if global > limits.max_meta_bytes_total {
        return Err(RejectReason::GlobalMetaQuota { max: limits.max_meta_bytes_total });
    }
    *session = session_bytes;
    *total = global;
    Ok(())
}

/// Gives back to the registry's `total` one holding of `meta` that ended, and the file's own
/// bytes when it was the last holding (the file is gone).
pub(super) fn release(total: &mut u64, meta: &FileMeta, file_gone: bool) {
    *total -= holding_bytes(meta);
    if file_gone {
        *total -= file_bytes(meta);
    }
}

/// What a session holding the files of `metas` has been charged, for the invariant checks.
pub(super) fn session_total<'a>(metas: impl IntoIterator<Item = &'a FileMeta>) -> u64 {
    metas.into_iter().map(session_cost).sum()
}

/// What the registry holds for `files`, each with its number of holdings, for the invariant
/// checks.
pub(super) fn registry_total<'a>(files: impl IntoIterator<Item = (&'a FileMeta, usize)>) -> u64 {
    files.into_iter().map(|(meta, holdings)| file_bytes(meta) + holdings as u64 * holding_bytes(meta)).sum()
}
