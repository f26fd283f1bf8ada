//! The handshake that opens every connection, to the tracker and between peers: a magic and the
//! protocol version, so that a stray client or an incompatible build is refused with a word.

use serde::{Deserialize, Serialize};

/// Four bytes that open every handshake ("P2PF").
pub const MAGIC: [u8; 4] = *b"P2PF";

/// The protocol version this build speaks. Bumped on any incompatible change: 2 added the
/// Welcome's limits, `ReplyTooLarge`, and the peer protocol's `GetFresh` and `Have`; 3 added the
/// metadata budgets' `SessionMetaQuota` and `GlobalMetaQuota`, the queued-bytes budget's
/// `Overloaded`, and the tracker request `ChunkRegisterBatch`.
pub const PROTOCOL_VERSION: u16 = 3;

/// The first message of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
}

impl Hello {
    /// The hello this build sends.
    pub const fn current() -> Self {
        Self { magic: MAGIC, version: PROTOCOL_VERSION }
    }

    /// Checks magic and version.
    pub fn check(&self) -> Result<(), HandshakeError> {
        if self.magic != MAGIC {
            return Err(HandshakeError::BadMagic { got: self.magic });
        }
        if self.version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: self.version });
        }
        Ok(())
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HandshakeError {
    /// The connection did not open with [`MAGIC`].
    #[error("bad magic {got:?}: not a p2p peer or tracker")]
    BadMagic {
        /// What arrived instead.
        got: [u8; 4],
    },
    /// The two sides speak different protocol versions.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The first message was not a handshake.
    #[error("expected a handshake first")]
    Expected,
}
