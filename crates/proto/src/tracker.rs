//! The tracker protocol: the seed's five request/reply pairs (Register, File List, File Locations,
//! Chunk Register, Leave), plus the handshake, a metadata request, a keep-alive, Chunk Register
//! Batch (many Chunk Registers in one request, answered like one), Find Root (the files whose
//! root hash starts with a prefix) and Unregister (Leave for one file).
//!
//! One connection is one session. The client sends [`TrackerRequest::Hello`] first; after the
//! [`TrackerResponse::Welcome`] it may send any other request, and the tracker answers every
//! request with exactly one response, in order. Append-only: new variants go at the end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bitmap::Have;
use crate::handshake::{HandshakeError, Hello};
use crate::limits::{MAX_ROOT_PREFIX_DIGITS, MIN_ROOT_PREFIX_DIGITS};
use crate::meta::{FileMeta, Hash, MetaError};
use crate::name::NameError;

/// A request from a peer to the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerRequest {
    /// Opens the session. Must be the first message.
    Hello(Hello),
    /// Announces the peer's endpoint and the files it shares (complete or in part). May be sent
    /// several times; files accumulate. An empty file list just sets the endpoint.
    Register(Register),
    /// Asks for one page of the file list, starting after the given name.
    FileList {
        /// The last name of the previous page, or `None` for the first page.
        after: Option<String>,
    },
    /// Asks for a file's full metadata (chunk hashes included).
    FileMeta {
        /// The file.
        name: String,
    },
    /// Asks which endpoints hold which chunks of a file.
    FileLocations {
        /// The file.
        name: String,
    },
    /// Tells the tracker this session's peer now holds one more chunk of a file.
    ChunkRegister {
        /// The file.
        name: String,
        /// The chunk index.
        chunk: u32,
    },
    /// Removes this session's peer and everything it registered.
    Leave,
    /// Keeps an otherwise idle session alive.
    KeepAlive,
    /// Tells the tracker this session's peer now holds these chunks of a file: many Chunk
    /// Registers in one request, so a downloader registers what it stored every ~100 ms instead
    /// of one round trip per chunk. All or nothing: one index out of range refuses the whole
    /// batch. Answered with [`TrackerResponse::ChunkRegistered`].
    ChunkRegisterBatch {
        /// The file.
        name: String,
        /// The chunk indices, in any order; duplicates and chunks already held are harmless, and
        /// an empty list changes nothing. The frame limit bounds its length.
        chunks: Vec<u32>,
    },
    /// Asks for the registered files whose root hash starts with a prefix, so a client can name
    /// content by (part of) its hash. Answered with [`TrackerResponse::RootMatches`]. Needs no
    /// Register.
    FindRoot {
        /// [`MIN_ROOT_PREFIX_DIGITS`] to [`MAX_ROOT_PREFIX_DIGITS`] hex digits, either case (see
        /// [`crate::RootPrefix`]); anything else is refused with
        /// [`RequestError::InvalidRootPrefix`].
        prefix: String,
    },
    /// Removes this session's holding of one file (complete or partial): Leave for one file, so
    /// a peer whose file was deleted or replaced stops being listed as its source. Answered with
    /// [`TrackerResponse::Unregistered`]; a file the session does not hold is refused with
    /// [`RequestError::NotHeld`].
    Unregister {
        /// The file.
        name: String,
    },
}

/// The Register request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Where the peer accepts connections. An unspecified IP (`0.0.0.0` or `::`) is replaced by the
    /// address the tracker sees the session coming from.
    pub listen: SocketAddr,
    /// The files, each with the chunks held.
    pub files: Vec<RegisterFile>,
}

/// One file in a Register request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterFile {
    /// The file's metadata.
    pub meta: FileMeta,
    /// The chunks the peer holds.
    pub have: Have,
}

/// A reply from the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerResponse {
    /// The handshake succeeded.
    Welcome(Welcome),
    /// Register's reply: one result per file, in request order (the seed's per-file Boolean, with
    /// a reason when false).
    Registered {
        /// Per-file outcome.
        results: Vec<Result<(), RejectReason>>,
    },
    /// One page of the file list, sorted by name.
    FileList {
        /// The files on this page.
        files: Vec<FileSummary>,
        /// True when more files follow this page.
        more: bool,
    },
    /// A file's metadata. Shared (`Arc`), so the tracker encodes the registry's copy without
    /// cloning it; on the wire exactly a `FileMeta` (serde's `rc` feature).
    FileMeta(Arc<FileMeta>),
    /// A file's sources.
    FileLocations(Locations),
    /// Chunk Register (or Chunk Register Batch) succeeded.
    ChunkRegistered,
    /// Leave succeeded: the peer and its registrations are gone.
    Left,
    /// Reply to a keep-alive.
    KeepAlive,
    /// The request failed; nothing changed.
    Error(RequestError),
    /// Find Root's reply: the files whose root starts with the prefix, sorted by root then name,
    /// at most [`MAX_ROOT_MATCHES`](crate::limits::MAX_ROOT_MATCHES). Several names may share a
    /// root (identical content) and a prefix may match several roots: the tracker lists, the
    /// client decides what is ambiguous.
    RootMatches {
        /// The matching files (empty if none).
        files: Vec<FileSummary>,
        /// True when more files match than the reply lists.
        more: bool,
    },
    /// Unregister succeeded: the session no longer holds the file (and the file is gone if that
    /// was its last holder).
    Unregistered,
}

/// Session parameters the tracker hands out in its welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The tracker's protocol version.
    pub version: u16,
    /// How often the client should send something (a keep-alive if nothing else), in ms.
    pub keepalive_ms: u64,
    /// After this long without a message the session is removed, in ms.
    pub session_timeout_ms: u64,
    /// The address the tracker sees this session coming from.
    pub observed: SocketAddr,
    /// The largest request frame the tracker accepts, in bytes: a client splits its Register
    /// requests to fit.
    pub max_frame: u32,
    /// The most files the tracker accepts in one Register.
    pub max_files_per_register: u32,
}

/// A file in the file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// Its name.
    pub name: String,
    /// Its length in bytes.
    pub length: u64,
    /// Its root hash.
    pub root: Hash,
    /// Its chunk size.
    pub chunk_size: u32,
    /// Peers holding at least one chunk.
    pub sources: u32,
    /// Peers holding every chunk.
    pub complete_sources: u32,
}

/// File Locations' reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locations {
    /// Root hash of the file these locations are for, so a client can tell the file was not
    /// replaced with other content since it fetched the metadata.
    pub root: Hash,
    /// Chunks in the file.
    pub num_chunks: u32,
    /// Peers holding at least one chunk in total (the reply may list fewer).
    pub total_sources: u32,
    /// A selection of sources (at most the tracker's cap), never including the caller.
    pub sources: Vec<SourceInfo>,
    /// Per chunk, how many peers hold it, counting every source (not only those listed).
    pub availability: Vec<u32>,
}

/// One source of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Where the peer accepts connections.
    pub addr: SocketAddr,
    /// Which chunks it holds.
    pub have: Have,
}

/// Why one file of a Register request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    /// The name is not a safe relative path.
    #[error("invalid name: {0}")]
    InvalidName(NameError),
    /// The metadata is not self-consistent.
    #[error("inconsistent metadata: {0}")]
    InconsistentMeta(MetaError),
    /// The name is registered with different content.
    #[error("name already registered with different content (root {existing})")]
    ContentConflict {
        /// The root hash already registered under this name.
        existing: Hash,
    },
    /// The same name appears twice in the request.
    #[error("name appears twice in one request")]
    Duplicate,
    /// A partial bitmap's length does not match the file's chunk count.
    #[error("bitmap has {got} bits, the file has {want} chunks")]
    BitmapLength {
        /// Chunks in the file.
        want: u32,
        /// Bits in the bitmap.
        got: u32,
    },
    /// This session holds as many files as allowed.
    #[error("session file quota of {max} reached")]
    SessionQuota {
        /// The quota.
        max: usize,
    },
    /// The tracker holds as many files as allowed.
    #[error("tracker file quota of {max} reached")]
    GlobalQuota {
        /// The quota.
        max: usize,
    },
    /// The metadata this session holds registered would exceed its budget in bytes.
    #[error("session metadata quota of {max} bytes reached")]
    SessionMetaQuota {
        /// The budget, in bytes.
        max: u64,
    },
    /// The metadata the tracker holds would exceed its budget in bytes.
    #[error("tracker metadata quota of {max} bytes reached")]
    GlobalMetaQuota {
        /// The budget, in bytes.
        max: u64,
    },
}

/// A typed error reply. The request changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// The handshake failed.
    #[error("handshake refused: {0}")]
    Handshake(HandshakeError),
    /// A second Hello on an open session.
    #[error("session already open")]
    AlreadyOpen,
    /// The frame held no valid request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Register carried more files than allowed.
    #[error("{got} files in one Register, limit {max}")]
    TooManyFiles {
        /// Files sent.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The request needs a prior Register (it sets the endpoint).
    #[error("register an endpoint first")]
    NotRegistered,
    /// No such file.
    #[error("unknown file '{0}'")]
    UnknownFile(String),
    /// The chunk index is past the end of the file.
    #[error("chunk {chunk} out of range: the file has {num_chunks} chunks")]
    ChunkOutOfRange {
        /// The index sent.
        chunk: u32,
        /// Chunks in the file.
        num_chunks: u32,
    },
    /// The name is invalid.
    #[error("invalid name: {0}")]
    InvalidName(NameError),
    /// The listen address cannot be used: port 0. (An IP other than the one the session connects
    /// from is [`RequestError::ForeignEndpoint`] since that variant was added; trackers before it
    /// sent this.)
    #[error("invalid listen address {0}")]
    BadEndpoint(SocketAddr),
    /// A quota was reached.
    #[error("{0}")]
    Quota(RejectReason),
    /// The tracker is at its connection cap; the connection closes.
    #[error("tracker at its cap of {max} connections")]
    TooManyConnections {
        /// The cap.
        max: usize,
    },
    /// The tracker is shutting down; the connection closes.
    #[error("tracker shutting down")]
    ShuttingDown,
    /// The reply would exceed the frame limit (e.g. metadata of a huge file on a tracker with a
    /// lowered `max_frame`); nothing else is wrong with the session.
    #[error("reply of {len} bytes exceeds the frame limit of {max}")]
    ReplyTooLarge {
        /// The reply's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The reply cannot be queued now: with it, the bytes the tracker has queued to all its
    /// clients would exceed its budget, even after dropping every connection further behind
    /// than this one. Nothing else is wrong with the session; retry later.
    #[error("reply of {len} bytes does not fit the tracker's budget of {max} bytes queued to clients")]
    Overloaded {
        /// The reply's size, in bytes (length prefix included).
        len: u64,
        /// The budget, in bytes.
        max: u64,
    },
    /// Register announced an endpoint on another IP than the one the session connects from, and
    /// the tracker does not allow foreign endpoints: a peer may announce only its own address,
    /// never point a swarm at a third host. Both addresses are named, so whoever reads the error
    /// sees the mismatch (typically a peer bound to one address of a multi-homed host that
    /// reaches the tracker from another).
    #[error(
        "announced endpoint {announced} is not on {observed}, the address this session connects from \
         (a tracker started with --allow-foreign-endpoints accepts it)"
    )]
    ForeignEndpoint {
        /// The `listen` sent, canonical (an IPv4-mapped address as the IPv4 address).
        announced: SocketAddr,
        /// The IP the tracker sees the session coming from, canonical.
        observed: IpAddr,
    },
    /// Find Root's prefix is not [`MIN_ROOT_PREFIX_DIGITS`] to [`MAX_ROOT_PREFIX_DIGITS`] hex
    /// digits. Only its length is named: the string came from the network and may be as long as
    /// a frame.
    #[error(
        "invalid root prefix of {prefix_len} bytes: expected {MIN_ROOT_PREFIX_DIGITS} to {MAX_ROOT_PREFIX_DIGITS} hex digits"
    )]
    InvalidRootPrefix {
        /// The prefix's length in bytes (not characters), `u32::MAX` if longer.
        prefix_len: u32,
    },
    /// Unregister of a file this session does not hold (never registered, already unregistered,
    /// or no such file). Only the name's length is named: the string came from the network and
    /// may be as long as a frame.
    #[error("this session holds no file of that name ({name_len} bytes)")]
    NotHeld {
        /// The name's length in bytes, `u32::MAX` if longer.
        name_len: u32,
    },
}
