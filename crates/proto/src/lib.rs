//! Wire protocol of the p2p file distribution system: every message exchanged with the tracker and
//! between peers, the data types they carry, the protocol limits, and the one length-delimited
//! postcard codec that frames them.
//!
//! This crate is pure: no sockets, no tasks, no policy. Wire enums are append-only because postcard
//! tags enum variants by position; `tests/golden.rs` pins the byte layout.

pub mod bitmap;
pub mod codec;
#[cfg(feature = "cli")]
pub mod config_file;
pub mod handshake;
pub mod limits;
pub mod meta;
pub mod name;
pub mod net;
pub mod peer;
pub mod root_prefix;
pub mod tracker;
pub mod units;

pub use bitmap::{Bitmap, BitmapError, Have};
pub use codec::{
    Codec, CodecError, MessageError, PeerClientCodec, PeerServerCodec, TrackerClientCodec, TrackerServerCodec,
    WireMessage,
};
pub use handshake::{HandshakeError, Hello, MAGIC, PROTOCOL_VERSION};
pub use meta::{ChunkIndex, FileMeta, Hash, HashMismatch, MetaError};
pub use name::{validate_name, NameError};
pub use root_prefix::RootPrefix;
