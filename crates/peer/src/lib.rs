//! The peer of the p2p file distribution system: shares a folder, serves chunks to other peers,
//! and downloads files from many peers at once, rarest chunk first, verifying every chunk with
//! BLAKE3 and becoming a source of each chunk as soon as it has it.
//!
//! [`Node`] is the entry point; the `peer` binary is a thin command line around it.

pub mod connection;
pub mod download;
pub mod error;
pub mod node;
pub mod ratelimit;
pub mod scheduler;
pub mod serve;
pub mod session;
pub mod shares;

pub use download::{DownloadConfig, DownloadOptions, DownloadReport, Progress, SourceReport};
pub use error::{ConnectError, Error, SourceError, TrackerProtocolError};
pub use node::{Node, NodeConfig};
pub use ratelimit::{parse_bytes, RateLimiter};
pub use serve::ServeConfig;
pub use session::{SessionConfig, TrackerSession};
