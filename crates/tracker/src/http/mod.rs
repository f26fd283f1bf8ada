//! The tracker's HTTP listener (`tracker --http ADDR`, [`crate::Tracker::serve_http`]): metrics for
//! Prometheus, health checks, and a live page of the swarm with the JSON API behind it. It runs
//! on the tracker's runtime and stops with the tracker (same token).
//!
//! - `GET /metrics`: every metric of [`metrics`] in the OpenMetrics text format.
//! - `GET /health`: 200 while the process serves HTTP; `GET /ready`: 200 while the tracker's own
//!   listener accepts connections, 503 otherwise (before it starts, and once it stops).
//! - `GET /`: the page (static HTML, CSS and JS compiled into the binary, no external resource);
//!   it polls the API every second.
//! - `GET /api/v1/files`, `/api/v1/files/{name}` (names hold slashes: a wildcard route),
//!   `/api/v1/peers`: JSON, every failure as `{"error": {"code", "message"}}` (unknown paths
//!   404, wrong methods 405), the shape of the peer's API.
//!
//! What a request may cost is bounded: lists are cut at [`MAX_ROWS`] rows (with the count of the
//! rest), a file's chunk map at [`MAX_CELLS`] cells, each read under one short registry read lock
//! (never held across an `.await`). Anyone who reaches the listener sees what the tracker
//! protocol already tells any peer (files, holders' endpoints); bind it to loopback or a private
//! interface where that matters.

pub(crate) mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{ChunkMap, FileRow, PeerRow, Rows};
use crate::session::Shared;

/// Rows a list of the API (files, peers) holds at most; the rest is counted in `more`.
pub const MAX_ROWS: usize = 1000;

/// Cells a chunk map holds at most: consecutive chunks are folded into one cell beyond it.
pub const MAX_CELLS: usize = 4096;

/// How long connections still open get to finish once the tracker stops.
const GRACE: Duration = Duration::from_secs(1);

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/page.css");
const PAGE_JS: &str = include_str!("page/page.js");

/// The listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {source}")]
pub struct HttpBindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` for the HTTP listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpBindError> {
    TcpListener::bind(addr).await.map_err(|source| HttpBindError { addr, source })
}

/// Serves `listener` until `shutdown`, then gives open connections [`GRACE`] to finish.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!("HTTP (metrics, health, swarm page) on http://{addr}/");
    }
    let server = axum::serve(listener, router(shared)).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        r = async { server.await } => {
            if let Err(e) = r {
                warn!(error = %e, "HTTP server failed");
            }
        }
        // The listener is closed at once on shutdown; connections left after the grace are cut.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(GRACE).await } => {}
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { page(PAGE_HTML, "text/html; charset=utf-8") }))
        .route("/page.css", get(|| async { page(PAGE_CSS, "text/css; charset=utf-8") }))
        .route("/page.js", get(|| async { page(PAGE_JS, "text/javascript; charset=utf-8") }))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/v1/files", get(files))
        .route("/api/v1/files/{*name}", get(file))
        .route("/api/v1/peers", get(peers))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
        })
        .with_state(shared)
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Every error's body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: String,
}

/// An error answer: a status and the one JSON error shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, body: ErrorBody { error: ErrorDetail { code, message: message.into() } } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match shared.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "metrics could not be encoded").into_response()
        }
    }
}

#[derive(Debug, Serialize)]
struct Status {
    status: &'static str,
}

async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Status>) {
    if shared.accepting.load(Ordering::Relaxed) {
        (StatusCode::OK, Json(Status { status: "ready" }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(Status { status: "not accepting connections" }))
    }
}

#[derive(Debug, Serialize)]
struct FilesPage {
    files: Vec<FileRow>,
    total: usize,
    more: usize,
}

async fn files(State(shared): State<Arc<Shared>>) -> Json<FilesPage> {
    let Rows { rows, total, more } = shared.registry.file_rows(MAX_ROWS);
    Json(FilesPage { files: rows, total, more })
}

#[derive(Debug, Serialize)]
struct PeersPage {
    peers: Vec<PeerRow>,
    total: usize,
    more: usize,
}

async fn peers(State(shared): State<Arc<Shared>>) -> Json<PeersPage> {
    let Rows { rows, total, more } = shared.registry.peer_rows(MAX_ROWS);
    Json(PeersPage { peers: rows, total, more })
}

async fn file(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Json<ChunkMap>, ApiError> {
    shared
        .registry
        .chunk_map(&name, MAX_CELLS)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no file named {name:?}")))
}
