//! The tracker: the trusted registry of which files exist (with their BLAKE3 metadata), which
//! peers are online, and which chunks each peer holds, served over TCP with the framed postcard
//! protocol of the `proto` crate.
//!
//! One connection is one session; everything a session registers belongs to it and disappears
//! when it leaves, disconnects or stops sending keep-alives.

mod backlog;
pub mod config;
mod handler;
mod heavy;
mod link;
pub mod registry;
mod reply;
pub mod server;
mod session;

pub use config::{Config, Limits};
pub use registry::{PeerId, Registry, Stats};
pub use server::{serve, Tracker};
