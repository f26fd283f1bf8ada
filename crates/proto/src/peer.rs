//! The peer wire protocol, between a downloader (client) and a peer that serves chunks (server).
//!
//! The client opens with [`PeerRequest::Hello`], naming the file and its root hash; the server
//! answers [`PeerResponse::Welcome`] with the chunks it holds, or an error. Then the client sends
//! [`PeerRequest::GetChunk`] (or [`PeerRequest::GetFresh`]) requests, several in flight
//! (pipelined); the server answers each in order with the chunk's bytes or
//! [`PeerResponse::DontHave`]. A server that is itself still
//! downloading the file also sends [`PeerResponse::Have`] whenever it stores a new chunk, at any
//! point between those answers, so its downloaders can ask for the chunk at once. A downloader that
//! sends [`PeerRequest::BatchedHaves`] gets these announcements gathered into
//! [`PeerResponse::HaveMany`] instead: one message, one write and one wake-up for many chunks. A
//! chunk's bytes travel raw after a small postcard header: decoding them copies nothing.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bitmap::Have;
use crate::handshake::{HandshakeError, Hello};
use crate::meta::Hash;
use crate::name::NameError;

/// A request from a downloader to a serving peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Opens the connection for one file.
    Hello {
        /// Magic and version.
        hello: Hello,
        /// The file wanted.
        name: String,
        /// Its root hash: the server only serves this exact content.
        root: Hash,
    },
    /// Asks for one chunk.
    GetChunk {
        /// The chunk index.
        chunk: u32,
    },
    /// Asks for `chunk`, or for another chunk the server has not sent anyone yet, at the server's
    /// choice: the answer's index says which. A complete source (a seed) uses this to hand out
    /// each chunk once before any twice, so downloaders starting together spread the file among
    /// themselves instead of fetching the same chunks from it (the "initial seeding" of
    /// BitTorrent). A server without such a chunk, or still downloading the file, sends `chunk`.
    GetFresh {
        /// The chunk wanted if the server has no fresher one.
        chunk: u32,
    },
    /// Appended within version 3, sent by a downloader after its `Hello`: it understands
    /// [`PeerResponse::HaveMany`], so the server may gather announcements (a server without the
    /// variant answers `Error(Malformed)` and goes on, which such a downloader then ignores once).
    /// No answer from a server that knows it.
    BatchedHaves,
}

/// The most chunk indices in one [`PeerResponse::HaveMany`]: a longer announcement is split.
pub const MAX_HAVE_MANY: usize = 4096;

/// A reply from a serving peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerResponse {
    /// The handshake succeeded; the chunks the server holds now.
    Welcome {
        /// Held chunks.
        have: Have,
    },
    /// A chunk's bytes.
    Chunk {
        /// The chunk index.
        chunk: u32,
        /// Its bytes.
        data: Bytes,
    },
    /// The server does not hold this chunk.
    DontHave {
        /// The chunk index.
        chunk: u32,
    },
    /// The request failed.
    Error(PeerError),
    /// Unsolicited: the server now holds this chunk too. Not an answer to any request.
    Have {
        /// The chunk index.
        chunk: u32,
    },
    /// Appended within version 3. Unsolicited, and only to a downloader that sent
    /// [`PeerRequest::BatchedHaves`]: the server now holds these chunks too (at most
    /// [`MAX_HAVE_MANY`], in any order). Not an answer to any request.
    HaveMany {
        /// The chunk indices.
        chunks: Vec<u32>,
    },
}

/// A typed error from a serving peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The handshake failed.
    #[error("handshake refused: {0}")]
    Handshake(HandshakeError),
    /// The server does not share that file (or not with that root hash).
    #[error("file not shared here")]
    UnknownFile,
    /// The name is invalid.
    #[error("invalid name: {0}")]
    InvalidName(NameError),
    /// The chunk index is past the end of the file.
    #[error("chunk {chunk} out of range")]
    ChunkOutOfRange {
        /// The index sent.
        chunk: u32,
    },
    /// The server is at its upload cap; try later.
    #[error("server busy")]
    Busy,
    /// The server failed to read the chunk.
    #[error("server failed to read the chunk")]
    Internal,
    /// The frame held no valid request.
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// The header that [`PeerResponse`] is encoded as; `Chunk` is followed by `len` raw bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ResponseHeader {
    Welcome { have: Have },
    Chunk { chunk: u32, len: u32 },
    DontHave { chunk: u32 },
    Error(PeerError),
    Have { chunk: u32 },
    HaveMany { chunks: Vec<u32> },
}
