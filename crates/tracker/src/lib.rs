//! The tracker: the trusted registry of which files exist (with their BLAKE3 metadata), which
//! peers are online, and which chunks each peer holds, served over TCP with the framed postcard
//! protocol of the `proto` crate.
//!
//! One connection is one session; everything a session registers belongs to it and disappears
//! when it leaves, disconnects or stops sending keep-alives.
//!
//! A peer on the tracker's own host that reaches it over loopback and listens on every interface
//! is handed out to each asker at the address that asker reached the tracker at (see
//! [`registry`]), so it is reachable from other hosts too. [`net`] binds the dual-stack listener
//! of `--listen PORT`. The tracker logs sessions, refusals and a periodic summary at `info`
//! (see [`server`]). With [`Tracker::serve_http`] (`tracker --http ADDR`) it also serves
//! Prometheus metrics, health checks and a live page of the swarm over HTTP (see [`http`]).

mod backlog;
pub mod config;
mod handler;
mod heavy;
pub mod http;
mod link;
pub mod net;
pub mod registry;
mod reply;
pub mod server;
mod session;
mod summary;

pub use config::{Config, Limits};
pub use http::HttpBindError;
pub use net::{bind_dual_stack, ListenAddr};
pub use registry::{PeerId, Registry, Stats};
pub use server::{serve, Tracker};
