//! Peer (in progress).
