//! The peer crate's error type. Misbehaviour of a remote peer (bad data, protocol violations) is
//! kept apart from local failures and from the tracker's typed refusals.

use std::net::SocketAddr;
use std::time::Duration;

use chunkstore::StoreError;
use proto::codec::{CodecError, MessageError};
use proto::peer::PeerResponse;
use proto::tracker::{RequestError, TrackerResponse};
use proto::MetaError;

/// Everything that can make a peer operation fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tracker could not be reached or the handshake failed.
    #[error("cannot reach tracker at {tracker}: {reason}")]
    TrackerUnreachable {
        /// The tracker's address.
        tracker: crate::addr::HostPort,
        /// What went wrong.
        reason: std::sync::Arc<ConnectError>,
    },
    /// The tracker refused the request.
    #[error("tracker refused: {0}")]
    Tracker(RequestError),
    /// The tracker answered with a reply that does not fit the request.
    #[error("bad reply from tracker: {0}")]
    TrackerProtocol(TrackerProtocolError),
    /// The connection to the tracker was lost during the request (it reconnects by itself).
    #[error("connection to tracker lost")]
    TrackerLost,
    /// The tracker session has ended (the node is shutting down).
    #[error("tracker session closed")]
    SessionClosed,
    /// The session has not registered an endpoint (it is not connected yet, or registers
    /// nothing).
    #[error("not registered with the tracker yet")]
    NotRegistered,
    /// The tracker refused this peer, or would record an endpoint nothing listens on: trying
    /// again would not help.
    #[error("tracker at {tracker}: {reason}")]
    TrackerRefused {
        /// The tracker's address.
        tracker: crate::addr::HostPort,
        /// Why.
        reason: std::sync::Arc<ConnectError>,
    },
    /// The tracker's metadata for a file is inconsistent.
    #[error("tracker sent invalid metadata for {name:?}: {reason}")]
    BadMeta {
        /// The file asked for.
        name: String,
        /// What is wrong.
        reason: MetaError,
    },
    /// The chunk store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The peer cannot listen where it was told to.
    #[error("cannot listen on {addr}: {source}{}", if source.kind() == std::io::ErrorKind::AddrInUse { " (another process uses that port: choose another with --listen, or 0 for any free one)" } else { "" })]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A local I/O operation failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A chunk failed verification from every source that offered it, too many times.
    #[error("chunk {chunk} failed verification {attempts} times (every source sent bad data); partial download kept")]
    ChunkFailed {
        /// The chunk.
        chunk: u32,
        /// Failed attempts.
        attempts: u32,
    },
    /// Every source that holds a missing chunk was dropped for sending bad data: it cannot arrive.
    #[error("no source left for chunk {chunk}: all {dropped} that hold it were dropped for sending bad data; partial download kept")]
    NoHonestSource {
        /// The chunk (the lowest such).
        chunk: u32,
        /// Sources dropped for this download.
        dropped: usize,
    },
    /// The download's deadline passed with chunks still missing.
    #[error("deadline passed with {missing} chunks missing (first: chunk {first}); partial download kept")]
    Deadline {
        /// Chunks still missing.
        missing: u32,
        /// The lowest missing chunk.
        first: u32,
    },
    /// No verified chunk arrived for the stall timeout.
    #[error("no verified data arrived for {0:?}; partial download kept")]
    Stalled(Duration),
    /// The node was given no tracker.
    #[error("no tracker given")]
    NoTrackers,
    /// No tracker answered for the file's metadata before the download's deadline.
    #[error("no tracker answered within the deadline of {0:?}")]
    NoTracker(Duration),
    /// The file was replaced on the tracker by different content mid-download.
    #[error("file {0:?} changed on the tracker during the download")]
    ContentChanged(String),
    /// A different file of that name is already in the share folder.
    #[error("a different file named {0:?} already exists in the share folder")]
    Conflict(String),
    /// A file name given to download is not a safe relative path.
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is refused.
        reason: proto::NameError,
    },
    /// The operation was cancelled (shutdown or Ctrl-C).
    #[error("cancelled")]
    Cancelled,
    /// What was asked for cannot be understood (a bad name, pattern, root or manifest).
    #[error(transparent)]
    Select(#[from] crate::select::SelectError),
    /// A prefix or pattern that matches no file the trackers list.
    #[error("no file on the tracker matches {0:?}")]
    NoMatch(String),
    /// No file on the trackers has content with this root.
    #[error("no file on the tracker has root {0}")]
    RootNotFound(String),
    /// A root prefix that matches several files: the user must say which.
    #[error("root {root} matches {} files: {}; give more digits or NAME@ROOT", .matches.len(), .matches.join(", "))]
    AmbiguousRoot {
        /// The root or prefix given.
        root: String,
        /// What it matches, as NAME@ROOT (at most the tracker's cap).
        matches: Vec<String>,
    },
    /// The tracker's file of that name has other content than the root asked for.
    #[error("{name:?} on the tracker has root {found}, not the {wanted} asked for")]
    RootMismatch {
        /// The name.
        name: String,
        /// The root (or prefix) asked for.
        wanted: String,
        /// The root the tracker has.
        found: String,
    },
    /// The same name asked for with two different roots.
    #[error("{name:?} is asked for with two different roots, {first} and {second}")]
    ConflictingRoots {
        /// The name.
        name: String,
        /// One root.
        first: String,
        /// The other.
        second: String,
    },
    /// The batch needs more disk space than the share's file system has free.
    #[error("not enough disk space in {path}: the download needs {}, {} free", indicatif::HumanBytes(*.needed), indicatif::HumanBytes(*.free))]
    NoSpace {
        /// The share folder.
        path: std::path::PathBuf,
        /// Bytes still to fetch.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// Another process already serves or downloads into this share or state folder.
    #[error("{} is in use by another peer process (one process per share folder)", .0.display())]
    InUse(std::path::PathBuf),
}

/// What kind of failure an [`Error`] is, for exit codes and HTTP statuses: what a script or a
/// client would do next differs by kind (ask for something else, retry later, distrust the
/// swarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// What was asked for is not on the trackers (a name, a prefix or pattern, a root).
    NotFound,
    /// The request itself cannot be understood or is contradictory.
    Usage,
    /// Every holder of some chunk sent bad data: the download cannot complete from this swarm.
    Integrity,
    /// A time limit passed: the whole run's, or no verified data for the stall timeout.
    Timeout,
    /// Cancelled (Ctrl-C, shutdown, a cancel request).
    Interrupted,
    /// Anything else (trackers unreachable, the disk, a conflict with a local file).
    Other,
}

impl Error {
    /// The kind of failure. See [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A pinned root the tracker does not have: that content is not there.
            Error::Tracker(RequestError::UnknownFile(_))
            | Error::NoMatch(_)
            | Error::RootNotFound(_)
            | Error::RootMismatch { .. } => ErrorKind::NotFound,
            Error::Select(_)
            | Error::InvalidName { .. }
            | Error::AmbiguousRoot { .. }
            | Error::ConflictingRoots { .. } => ErrorKind::Usage,
            Error::ChunkFailed { .. } | Error::NoHonestSource { .. } => ErrorKind::Integrity,
            Error::Deadline { .. } | Error::NoTracker(_) | Error::Stalled(_) => ErrorKind::Timeout,
            Error::Cancelled => ErrorKind::Interrupted,
            _ => ErrorKind::Other,
        }
    }
}

/// Why a tracker session could not be opened (connect, handshake and first registration).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The tracker's host name could not be resolved.
    #[error("cannot resolve: {0}")]
    Resolve(#[source] std::io::Error),
    /// The TCP connection could not be made.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The `--announce` host name could not be resolved.
    #[error("cannot resolve the announced address {announce}: {error}")]
    Announce {
        /// The address as given.
        announce: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The tracker would record an endpoint nothing listens on.
    #[error("the tracker sees this peer at {endpoint}, but it listens on {listen} only: listen on [::] (both families) or give --announce")]
    NotListening {
        /// The endpoint the tracker would record.
        endpoint: SocketAddr,
        /// Where the peer listens.
        listen: SocketAddr,
    },
    /// The TCP connection was not made within the request timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The connection was lost (or the request timed out) during a step.
    #[error("connection lost during the {step}")]
    Lost {
        /// The step: "handshake" or "registration".
        step: &'static str,
    },
    /// The tracker refused a step.
    #[error("tracker refused the {step}: {error}")]
    Refused {
        /// The step: "handshake" or "registration".
        step: &'static str,
        /// The tracker's reason.
        error: RequestError,
    },
    /// The tracker's reply to a step broke the protocol.
    #[error("bad reply to the {step}: {error}")]
    Protocol {
        /// The step: "handshake" or "registration".
        step: &'static str,
        /// What was wrong with the reply.
        #[source]
        error: TrackerProtocolError,
    },
}

impl ConnectError {
    /// Whether trying again cannot help: the tracker refused a step, its replies break the
    /// protocol, or the endpoint is wrong. An unreachable or lost tracker is worth retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused { .. }
                | ConnectError::Protocol { .. }
                | ConnectError::NotListening { .. }
                | ConnectError::Announce { .. }
        )
    }
}

/// A tracker reply that breaks the protocol.
#[derive(Debug, thiserror::Error)]
pub enum TrackerProtocolError {
    /// A well-framed reply held no valid message.
    #[error("undecodable reply: {0}")]
    Undecodable(#[source] MessageError),
    /// A reply of the wrong kind for the request.
    #[error("reply of the wrong kind: {0:?}")]
    Unexpected(Box<TrackerResponse>),
    /// Metadata for a different file than the one asked for.
    #[error("asked for {asked:?}, got metadata for {got:?}")]
    WrongFile {
        /// The name asked for.
        asked: String,
        /// The name in the reply.
        got: String,
    },
}

/// Why one source of a download stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Could not connect.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection and handshake did not complete within the connect timeout.
    #[error("no welcome within {0:?}")]
    ConnectTimeout(Duration),
    /// The connection failed (transport error, or a frame over the limit).
    #[error("connection lost: {0}")]
    Lost(#[source] CodecError),
    /// The source closed the connection.
    #[error("closed by the source")]
    Closed,
    /// The source refused or answered with an error.
    #[error("refused: {0}")]
    Refused(proto::peer::PeerError),
    /// No answer arrived within the stall timeout while requests were outstanding.
    #[error("stalled")]
    Stalled,
    /// The source broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[source] PeerProtocolError),
    /// The source sent data that failed verification too often.
    #[error("sent bad data {strikes} times")]
    BadData {
        /// Hash failures.
        strikes: u32,
    },
    /// The source's task ended without saying why (it panicked).
    #[error("source task failed")]
    TaskFailed,
}

/// A source's reply that breaks the peer protocol.
#[derive(Debug, thiserror::Error)]
pub enum PeerProtocolError {
    /// A well-framed reply held no valid message.
    #[error("undecodable reply: {0}")]
    Undecodable(#[source] MessageError),
    /// The welcome's bitmap has the wrong length.
    #[error("bitmap of {got} bits for {want} chunks")]
    BitmapLength {
        /// Bits sent.
        got: u32,
        /// Chunks in the file.
        want: u32,
    },
    /// The handshake was answered with something other than a welcome.
    #[error("expected a welcome, got {0:?}")]
    ExpectedWelcome(Box<PeerResponse>),
    /// A second welcome.
    #[error("unexpected welcome")]
    UnexpectedWelcome,
    /// A chunk index past the end of the file, sent or announced.
    #[error("chunk {chunk} out of range: the file has {num_chunks} chunks")]
    ChunkOutOfRange {
        /// The index.
        chunk: u32,
        /// Chunks in the file.
        num_chunks: u32,
    },
    /// A [`proto::peer::PeerResponse::HaveMany`] longer than [`proto::peer::MAX_HAVE_MANY`].
    #[error("announced {got} chunks in one message, more than {max}", max = proto::peer::MAX_HAVE_MANY)]
    TooManyHaves {
        /// Indices in the message.
        got: usize,
    },
    /// An answer that is not for the oldest request outstanding.
    #[error("answered chunk {chunk}, expected {expected:?}")]
    Unrequested {
        /// The chunk answered.
        chunk: u32,
        /// The oldest request outstanding, if any.
        expected: Option<u32>,
    },
}
