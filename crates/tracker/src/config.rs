//! Tracker configuration: listen address, limits and timeouts, with the protocol's defaults.

use std::time::Duration;

use proto::limits;

/// Limits the registry enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Files in one Register request.
    pub max_files_per_register: usize,
    /// Files one session may hold registered.
    pub max_files_per_session: usize,
    /// Distinct files in the tracker.
    pub max_files_total: usize,
    /// Endpoints in one File Locations reply.
    pub max_locations: usize,
    /// Entries in one File List page.
    pub list_page: usize,
    /// Bytes in one File List page, about; [`crate::Tracker`] keeps it under half the frame limit.
    pub list_page_bytes: usize,
    /// Whether a peer may register an endpoint on another IP than the one its session comes from.
    /// Off by default: otherwise anyone could point a swarm's downloaders at a third party.
    pub allow_foreign_endpoints: bool,
    /// Metadata bytes one session may hold registered, by the registry's estimate
    /// ([`crate::registry::session_cost`] per file held): valid metadata needs no file data, so
    /// without a budget in bytes one session could fill the tracker's memory at its upload rate.
    pub max_meta_bytes_per_session: u64,
    /// Metadata bytes the registry holds in total ([`crate::registry::file_bytes`] per file,
    /// [`crate::registry::holding_bytes`] per holding).
    pub max_meta_bytes_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_files_per_register: limits::DEFAULT_MAX_FILES_PER_REGISTER,
            max_files_per_session: limits::DEFAULT_MAX_FILES_PER_SESSION,
            max_files_total: limits::DEFAULT_MAX_FILES_TOTAL,
            max_locations: limits::DEFAULT_MAX_LOCATIONS,
            list_page: limits::DEFAULT_LIST_PAGE,
            list_page_bytes: limits::DEFAULT_MAX_FRAME / 2,
            allow_foreign_endpoints: false,
            max_meta_bytes_per_session: limits::DEFAULT_MAX_META_BYTES_PER_SESSION,
            max_meta_bytes_total: limits::DEFAULT_MAX_META_BYTES_TOTAL,
        }
    }
}

/// Everything the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Registry limits.
    pub limits: Limits,
    /// Largest frame accepted after the handshake.
    pub max_frame: usize,
    /// Concurrent connections; extras are told so and closed.
    pub max_connections: usize,
    /// Keep-alive interval asked of clients.
    pub keepalive: Duration,
    /// A session silent for this long is removed; also the deadline for any one frame to arrive,
    /// and for each write of replies to make progress (a reply may take longer in all, as long as
    /// its bytes keep leaving).
    pub session_timeout: Duration,
    /// Deadline for the handshake of a new connection.
    pub handshake_timeout: Duration,
    /// Bytes of replies encoded but not yet written to their sockets, over all connections. A
    /// reply that would take the total over it makes room by dropping the connections furthest
    /// behind (most bytes unsent); if that cannot make room, it is refused with
    /// `RequestError::Overloaded`.
    pub max_queued_bytes: usize,
    /// How often the tracker logs a summary line (sessions, files, holdings, requests per second
    /// by kind) at `info`, so its load shows without a metrics system; zero: never.
    pub summary_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_frame: limits::DEFAULT_MAX_FRAME,
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            keepalive: Duration::from_millis(limits::DEFAULT_KEEPALIVE_MS),
            session_timeout: Duration::from_millis(limits::DEFAULT_SESSION_TIMEOUT_MS),
            handshake_timeout: Duration::from_millis(limits::DEFAULT_HANDSHAKE_TIMEOUT_MS),
            max_queued_bytes: limits::DEFAULT_MAX_QUEUED_BYTES,
            summary_interval: Duration::from_secs(60),
        }
    }
}
