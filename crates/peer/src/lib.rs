//! The peer of the p2p file distribution system: shares a folder, serves chunks to other peers,
//! and downloads files from many peers at once, rarest chunk first, verifying every chunk with
//! BLAKE3 and becoming a source of each chunk as soon as it has it.
//!
//! [`Node`] is the entry point; the `peer` binary is a thin command line around it. Everything
//! else is internal; what a user of the library meets is re-exported here. The downloader's
//! and the upload server's parts, for example, are not reachable from outside:
//!
//! ```compile_fail
//! use peer::scheduler::Scheduler;
//! ```
//!
//! ```compile_fail
//! use peer::serve::Uploader;
//! ```

mod addr;
pub mod api;
mod batch;
mod connection;
mod download;
mod error;
mod folders;
mod lock;
mod lowat;
mod metrics;
mod node;
mod ratelimit;
mod select;
mod serve;
mod session;
mod shares;
mod sockopt;
mod task;
mod tick;
mod trackers;
mod watch;

pub use addr::{parse_listen, parse_trackers, AddrError, HostPort, DEFAULT_TRACKER_PORT};
pub use batch::{resolve, BatchOptions, BatchProgress, BatchReport, FileOutcome, Target};
pub use chunkstore::PartialInfo;
pub use download::{DownloadConfig, DownloadOptions, DownloadReport, Progress, SourceReport};
pub use error::{ConnectError, Error, ErrorKind, PeerProtocolError, SourceError, TrackerProtocolError};
pub use folders::{default_state_dir, partials};
pub use metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};
pub use node::{Node, NodeConfig, UploadSnapshot};
pub use ratelimit::{parse_bytes, RateLimiter};
pub use select::{format_manifest, parse_manifest, parse_root, RootPrefix, SelectError, Selector, MIN_ROOT_PREFIX};
pub use serve::ServeConfig;
pub use session::{Link, Registration, SessionConfig, TrackerSession};
pub use shares::{Refusal, Shared, Shares};
pub use trackers::{rendezvous_order, Trackers};
