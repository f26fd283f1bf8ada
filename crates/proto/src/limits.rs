//! Protocol limits, as named constants. The `DEFAULT_*` ones are defaults that the tracker or peer
//! may change through its configuration; the others (chunk sizes, chunks per file, name lengths,
//! the pre-handshake frame) are fixed by the protocol. Each has a typed error where it is enforced.

/// Largest frame body accepted after the handshake, in bytes (16 MiB). Holds a chunk of the
/// largest size plus its header, or the metadata of a file of [`MAX_CHUNKS_PER_FILE`] chunks.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Largest frame body accepted before the handshake completes (4 KiB): an unauthenticated
/// connection cannot make the receiver buffer more than this.
pub const HANDSHAKE_MAX_FRAME: usize = 4 * 1024;

/// Smallest chunk size (16 KiB). Chunk sizes are powers of two so that every chunk is a complete
/// BLAKE3 subtree (see [`crate::meta`]).
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;

/// Largest chunk size (8 MiB): one chunk must fit in a frame with room to spare.
pub const MAX_CHUNK_SIZE: u32 = 8 * 1024 * 1024;

/// Default chunk size for large files (1 MiB): large enough that per-chunk overhead (a request, a
/// hash, a tracker Chunk Register) is negligible next to the transfer. Smaller files get smaller
/// chunks, so that they too have many pieces to trade (see `chunkstore::choose_chunk_size`).
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;

/// Most chunks one file may have (262,144): its hash list is 8 MiB, which fits in one frame.
/// With the largest chunk size this allows files up to 2 TiB.
pub const MAX_CHUNKS_PER_FILE: u32 = 1 << 18;

/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Longest single path component of a file name, in bytes (the common file-system limit).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Default cap on files in one Register request.
pub const DEFAULT_MAX_FILES_PER_REGISTER: usize = 1024;

/// Default cap on files one session may hold registered.
pub const DEFAULT_MAX_FILES_PER_SESSION: usize = 100_000;

/// Default cap on distinct files the tracker holds in total.
pub const DEFAULT_MAX_FILES_TOTAL: usize = 1_000_000;

/// Default cap on endpoints in one File Locations reply.
pub const DEFAULT_MAX_LOCATIONS: usize = 64;

/// Default number of entries in one File List page.
pub const DEFAULT_LIST_PAGE: usize = 1000;

/// Default cap on concurrent tracker connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default keep-alive interval the tracker asks of its clients, in milliseconds.
pub const DEFAULT_KEEPALIVE_MS: u64 = 2_000;

/// Default session expiry: a session from which nothing arrives for this long is removed, in
/// milliseconds. Also bounds how long one frame may take to arrive.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 6_000;

/// Default deadline for the handshake of a new connection, in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Default budget of metadata bytes one tracker session may hold registered (256 MiB), counted
/// by the tracker's estimate of what each holding costs it (see `tracker::registry`): the chunk
/// hashes (32 bytes a chunk), the encoded File Meta reply (32), the availability counters (4),
/// the holder's bitmap row (1/8), the name three times and a fixed overhead. About 3.9 million
/// chunks: 14 files of [`MAX_CHUNKS_PER_FILE`] chunks (18 MiB each), 3.7 TiB of data in 1 MiB
/// chunks, or [`DEFAULT_MAX_FILES_PER_SESSION`] small files several times over: an honest peer
/// sharing a large library fits, one session alone cannot fill the tracker.
pub const DEFAULT_MAX_META_BYTES_PER_SESSION: u64 = 256 * 1024 * 1024;

/// Default budget of metadata bytes the tracker holds in total (2 GiB), counted as for
/// [`DEFAULT_MAX_META_BYTES_PER_SESSION`] (each file's metadata once, plus every holder's row):
/// eight sessions at their full budget, about 31 million chunks, or a million small files; what
/// the registry may take of a tracker host's memory.
pub const DEFAULT_MAX_META_BYTES_TOTAL: u64 = 2 * 1024 * 1024 * 1024;

/// Default budget of bytes the tracker holds queued to clients (encoded replies not yet written
/// to their sockets), over all connections (256 MiB): 32 File Meta replies of the largest file
/// in flight at once. Beyond it the connections furthest behind are dropped.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

/// Fewest hex digits in a Find Root prefix (16: 64 bits). A random root shares a given 64-bit
/// prefix with probability 2^-64, so such a prefix names one content in practice, yet is short
/// enough to type; shorter ones would make Find Root a way to sweep the file list by hash.
pub const MIN_ROOT_PREFIX_DIGITS: usize = 16;

/// Most hex digits in a Find Root prefix: a whole root hash (32 bytes).
pub const MAX_ROOT_PREFIX_DIGITS: usize = 64;

/// Most files in one Root Matches reply (fixed, not configurable): several names can share a
/// root, and a short prefix can match several roots, but a client resolving a prefix needs only
/// enough to tell whether it is ambiguous. `more` says some were left out.
pub const MAX_ROOT_MATCHES: usize = 16;
