//! A local HTTP API on a running node, and its client: start downloads (names, prefixes, globs,
//! roots, a manifest, as `peer download` takes them), follow and cancel them, and list what the
//! node serves. JSON in and out, under `/v1`; see README.md ("HTTP API") for each endpoint.
//!
//! [`serve_api`] runs on the node's own Tokio runtime (axum over HTTP/1). A download is resolved
//! and checked against the trackers before it is accepted, so a bad selector or a name that does
//! not exist is an error answer and nothing starts; it then runs as a batch
//! ([`crate::Node::download_all`]) in a task group of its own, so cancelling one leaves the others
//! (and keeps its partial downloads). Without a token only loopback clients are served; with one,
//! every request must carry it. What a client can make the node hold is bounded: running
//! downloads, finished records kept, the request body and the time spent resolving.
//!
//! [`ApiClient`] is the other side, for `peer download --node ADDR`: one short HTTP/1 connection
//! per call, typed answers and errors.

mod client;
mod downloads;
mod server;
mod types;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::node::Node;

pub use client::{ApiClient, ClientError, POLL_INTERVAL};
pub use types::{
    ActiveFile, DownloadList, DownloadRequest, DownloadState, ErrorBody, ErrorDetail, FileEntry, FileList, FileResult,
    SeedPolicy, SourceBytes, Started, Status, Summary,
};

/// Most files one API download may fetch at once (`parallel`).
pub const MAX_PARALLEL: usize = 64;

/// How long open connections may take to finish once the API is told to stop.
const GRACE: Duration = Duration::from_secs(2);

/// How long the API waits for its downloads to stop once it is told to stop.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// The API's settings and limits.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every request must carry `Authorization: Bearer TOKEN`, and clients on other
    /// hosts are accepted; otherwise only loopback clients are. Visible ASCII, not empty.
    pub token: Option<String>,
    /// Downloads running at once through the API; more are refused with 429.
    pub max_running: usize,
    /// Finished downloads whose records are kept (the oldest are forgotten); running ones are
    /// always kept.
    pub max_finished: usize,
    /// Largest request body (a manifest travels in one): 413 past it.
    pub max_body: usize,
    /// How long resolving a request against the trackers may take before it is refused (503).
    pub resolve_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            max_running: 64,
            max_finished: 100,
            max_body: 16 << 20,
            resolve_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The token is empty or holds characters a header cannot carry.
    #[error("the API token must be non-empty visible ASCII (no spaces)")]
    BadToken,
    /// The listener failed.
    #[error("cannot serve the HTTP API: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the API on `listener` until `shutdown` is cancelled, then cancels the downloads it
/// started (their partials are kept) and waits for them (at most 10 s). Downloads started
/// through it hold `node` (an `Arc` clone each) until they end. Fails at once for a bad token.
pub async fn serve_api(
    node: Arc<Node>,
    listener: TcpListener,
    config: ApiConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    if let Some(t) = &config.token {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ServeError::BadToken);
        }
    }
    let state = server::ApiState::new(node, &config);
    let app = server::router(state.clone(), config.max_body).into_make_service_with_connect_info::<SocketAddr>();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, token = config.token.is_some(), "HTTP API listening");
    }
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // Graceful shutdown waits for every open connection, and one that never finishes sending its
    // headers would hold it for ever: past a short grace, the connections left are cut.
    let result = tokio::select! {
        r = async { server.await } => r,
        () = async { shutdown.cancelled().await; tokio::time::sleep(GRACE).await } => Ok(()),
    };
    state.downloads.cancel_all();
    state.tasks.close();
    if tokio::time::timeout(STOP_PATIENCE, state.tasks.wait()).await.is_err() {
        warn!("API downloads did not stop within {STOP_PATIENCE:?}");
    }
    Ok(result?)
}
