//! The HTTP API's server side: the router, the access rule, the handlers, and the one error shape
//! every failure is answered with (`{"error": {"code", "message"}}`, including unknown paths,
//! wrong methods and bodies that do not parse). Beside `/v1`, the operational endpoints:
//! `/metrics` (Prometheus text, under the access rule) and the probes `/health` and `/ready`
//! (open to any client: a load balancer or an orchestrator holds no token, and they tell nothing
//! but the node's state).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{StreamExt, TryStreamExt};
use proto::tracker::RequestError;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use super::downloads::Downloads;
use super::types::{DownloadList, DownloadRequest, ErrorBody, ErrorDetail, FileEntry, FileList, SeedPolicy, Started};
use super::{ApiConfig, MAX_PARALLEL};
use crate::batch::{BatchOptions, BatchProgress, Target};
use crate::error::Error;
use crate::node::Node;
use crate::select::{parse_manifest, parse_root, RootPrefix, Selector};
use crate::shares::Shared;
use proto::Have;

/// How long `DELETE` waits for a download to stop (its downloads end cleanly, each keeping its
/// partial) before answering, and how long a cancelled batch gets before it is dropped.
const CANCEL_PATIENCE: Duration = Duration::from_secs(10);

/// File metadata asked of the trackers at once when checking plain names before a start.
const META_CONCURRENCY: usize = 16;

/// What the handlers share.
pub(crate) struct ApiState {
    pub(crate) node: Arc<Node>,
    pub(crate) downloads: Downloads,
    /// One permit per running download: the cap on them.
    running: Arc<Semaphore>,
    /// The token's hash: hashes of equal length compare in constant time (`blake3::Hash`'s
    /// `PartialEq`), so neither the token nor its length leaks through timing.
    token: Option<blake3::Hash>,
    resolve_timeout: Duration,
    /// The downloads' tasks, waited for when the API stops.
    pub(crate) tasks: TaskTracker,
}

impl ApiState {
    pub(crate) fn new(node: Arc<Node>, config: &ApiConfig) -> Arc<ApiState> {
        Arc::new(ApiState {
            node,
            downloads: Downloads::new(config.max_finished),
            running: Arc::new(Semaphore::new(config.max_running)),
            token: config.token.as_deref().map(|t| blake3::hash(t.as_bytes())),
            resolve_timeout: config.resolve_timeout,
            tasks: TaskTracker::new(),
        })
    }
}

/// The API's routes, behind the access rule and the body limit. The caller supplies the client
/// address as `ConnectInfo<SocketAddr>` (or, in tests, `MockConnectInfo`).
pub(crate) fn router(state: Arc<ApiState>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/downloads", get(list_downloads).post(start_download))
        .route("/v1/downloads/{id}", get(download_status).delete(cancel_download))
        .route("/v1/files", get(list_files))
        .route("/metrics", get(metrics))
        .route(HEALTH, get(health))
        .route(READY, get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// An error answer: a status and the JSON body every error has.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unknown_download(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no download with id {id:?}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let code = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        // Unprocessable (well-formed JSON of the wrong shape) is a bad request here too.
        let status = if r.status() == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { r.status() };
        ApiError::new(status, code, r.body_text())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        use StatusCode as S;
        let (status, code) = match &e {
            Error::Select(_) | Error::InvalidName { .. } => (S::BAD_REQUEST, "bad_request"),
            Error::Tracker(RequestError::InvalidName(_) | RequestError::Malformed(_)) => {
                (S::BAD_REQUEST, "bad_request")
            }
            Error::NoMatch(_) | Error::RootNotFound(_) | Error::Tracker(RequestError::UnknownFile(_)) => {
                (S::NOT_FOUND, "not_found")
            }
            Error::AmbiguousRoot { .. } => (S::CONFLICT, "ambiguous_root"),
            Error::ConflictingRoots { .. } => (S::CONFLICT, "conflicting_roots"),
            Error::RootMismatch { .. } => (S::CONFLICT, "root_mismatch"),
            Error::Conflict(_) => (S::CONFLICT, "conflict"),
            Error::NoSpace { .. } => (S::INSUFFICIENT_STORAGE, "no_space"),
            Error::TrackerUnreachable { .. }
            | Error::TrackerLost
            | Error::TrackerRefused { .. }
            | Error::SessionClosed
            | Error::NotRegistered
            | Error::NoTracker(_)
            | Error::NoTrackers
            | Error::Tracker(_)
            | Error::TrackerProtocol(_)
            | Error::BadMeta { .. } => (S::SERVICE_UNAVAILABLE, "tracker_unavailable"),
            Error::Cancelled => (S::SERVICE_UNAVAILABLE, "shutting_down"),
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Why a request is refused before it reaches a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// From another host, and no token is configured: 403.
    Forbidden,
    /// A token is configured and the request does not carry it: 401.
    Unauthorized,
}

/// The access rule. Without a token only the local host may use the API (the node's loopback
/// addresses, IPv4-mapped ones included). With one, any address may, but every request must
/// carry `Authorization: Bearer TOKEN` (the scheme's case does not matter).
pub(crate) fn admit(client: IpAddr, token: Option<&blake3::Hash>, authorization: Option<&[u8]>) -> Result<(), Denied> {
    let Some(want) = token else {
        return if is_loopback(client) { Ok(()) } else { Err(Denied::Forbidden) };
    };
    let given =
        authorization.filter(|h| h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer ")).map(|h| blake3::hash(&h[7..]));
    match given {
        Some(g) if g == *want => Ok(()),
        _ => Err(Denied::Unauthorized),
    }
}

/// Whether a request's `Host` header names this host by a loopback name (`localhost`,
/// `127.0.0.1`, `[::1]`, with any port), or is absent. Without a token this is checked too: a web
/// page that rebinds its own domain name to 127.0.0.1 reaches the API from the local browser, but
/// its requests still carry that domain as their host.
pub(crate) fn local_host_header(host: Option<&[u8]>) -> bool {
    let Some(host) = host else { return true };
    let Ok(host) = std::str::from_utf8(host) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(v6, _)| v6),
        None => {
            host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(n, _)| n)
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The liveness probe: 200 while the process serves.
const HEALTH: &str = "/health";

/// The readiness probe: 200 while the node is registered with a tracker.
const READY: &str = "/ready";

async fn guard(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    // The probes are answered to anyone, token or not: they reveal only whether the node is up
    // and registered, and the machines that ask (load balancers, orchestrators) carry no secret.
    if matches!(request.uri().path(), HEALTH | READY) {
        return next.run(request).await;
    }
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if state.token.is_none() && !local_host_header(request.headers().get(header::HOST).map(HeaderValue::as_bytes)) {
        let why = "without a token the API accepts only requests addressed to localhost, 127.0.0.1 or [::1]";
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response();
    }
    match admit(client.ip(), state.token.as_ref(), authorization) {
        Ok(()) => next.run(request).await,
        Err(Denied::Forbidden) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the API accepts only local clients unless a token is configured",
        )
        .into_response(),
        Err(Denied::Unauthorized) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token").into_response()
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let body = state.node.metrics().encode();
    ([(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE))], body).into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 when at least one of the node's trackers is connected and has its registration (with
/// several, files whose tracker is down move to a live one, so the node still serves and
/// downloads); 503 otherwise, saying so. Counts only: no addresses, since anyone may ask.
async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    let (up, total) = state.node.trackers_up();
    if up > 0 {
        Json(serde_json::json!({"status": "ready", "trackers_up": up, "trackers": total})).into_response()
    } else {
        let reason = format!("not registered with any tracker: 0 of {total} connected (reconnecting)");
        let body = serde_json::json!({"status": "not_ready", "reason": reason, "trackers_up": 0, "trackers": total});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn list_downloads(State(state): State<Arc<ApiState>>) -> Json<DownloadList> {
    Json(DownloadList { downloads: state.downloads.list() })
}

async fn download_status(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    match state.downloads.status(&id) {
        Some(s) => Json(s).into_response(),
        None => ApiError::unknown_download(&id).into_response(),
    }
}

async fn cancel_download(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    match state.downloads.cancel(&id, CANCEL_PATIENCE).await {
        Some(s) => Json(s).into_response(),
        None => ApiError::unknown_download(&id).into_response(),
    }
}

async fn list_files(State(state): State<Arc<ApiState>>) -> Json<FileList> {
    let mut files: Vec<FileEntry> = state
        .node
        .shares()
        .snapshot()
        .into_iter()
        .map(|f| {
            let total = f.meta.num_chunks();
            let held = match &f.have {
                Have::Complete => total,
                Have::Partial(bits) => bits.count(),
            };
            FileEntry {
                name: f.meta.name,
                size: f.meta.length,
                root: f.meta.root.to_string(),
                complete: held == total,
                chunks_held: held,
                chunks_total: total,
            }
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Json(FileList { files })
}

/// Parses, checks and resolves the request; starts the batch only if all of it holds.
async fn start_download(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<DownloadRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let selectors = selectors(&req)?;
    let parallel = req.parallel.unwrap_or(4);
    if parallel == 0 || parallel > MAX_PARALLEL {
        return Err(ApiError::bad_request(format!("parallel must be 1 to {MAX_PARALLEL}, not {parallel}")));
    }
    if req.deadline_secs == Some(0) {
        return Err(ApiError::bad_request("deadline_secs must be at least 1"));
    }
    if let Some(SeedPolicy::Ratio { ratio }) = req.seed {
        if !(ratio.is_finite() && ratio > 0.0) {
            return Err(ApiError::bad_request("seed ratio must be a positive number"));
        }
    }
    // Taken before resolving, so clients cannot pile up resolutions past the cap either.
    let permit = state.running.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_downloads",
            "too many downloads running; wait for one to end or cancel one",
        )
    })?;
    let node = state.node.clone();
    let targets = tokio::time::timeout(state.resolve_timeout, resolve(&node, &selectors, req.replace)).await.map_err(
        |_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tracker_unavailable",
                format!("no tracker answered within {:?}", state.resolve_timeout),
            )
        },
    )??;

    let files = targets.len();
    let group = node.child_tasks();
    let (tx, rx) = watch::channel(BatchProgress::default());
    let opts = BatchOptions {
        parallel,
        deadline: req.deadline_secs.map(Duration::from_secs),
        replace: req.replace,
        progress: Some(tx),
        ..BatchOptions::default()
    };
    let (id, handle) = state.downloads.add(files, req.seed, rx, group.clone(), permit);
    state.tasks.spawn(async move {
        let cancel = group.token().clone();
        let batch = node.download_all_in(targets, opts, &group);
        handle.run(batch, cancel, CANCEL_PATIENCE).await;
    });
    let location = HeaderValue::from_str(&format!("/v1/downloads/{id}")).ok();
    let mut response = (StatusCode::ACCEPTED, Json(Started { id, files })).into_response();
    if let Some(l) = location {
        response.headers_mut().insert(header::LOCATION, l);
    }
    Ok(response)
}

/// What the request asks for, as the CLI parses its arguments.
fn selectors(req: &DownloadRequest) -> Result<Vec<Selector>, ApiError> {
    let mut out = Vec::new();
    for n in &req.names {
        out.push(Selector::parse(n).map_err(Error::from)?);
    }
    for r in &req.roots {
        out.push(Selector::Root(parse_root(r).map_err(Error::from)?));
    }
    if let Some(text) = &req.manifest {
        let entries = parse_manifest(text).map_err(Error::from)?;
        out.extend(
            entries.into_iter().map(|(root, name)| Selector::Name { name, root: Some(RootPrefix::exact(&root)) }),
        );
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("nothing to download: give names, roots or a manifest"));
    }
    Ok(out)
}

/// Resolves the selectors into targets and checks every one before anything starts: plain names
/// (and manifest lines) must exist on their tracker with the root pinned, if any (each is then
/// pinned to that root, as a prefix's files are, and its length known for the space check), and
/// without `replace` no target may differ from a complete local file of its name.
async fn resolve(node: &Node, selectors: &[Selector], replace: bool) -> Result<Vec<Target>, Error> {
    let mut targets = crate::batch::resolve(node.trackers(), selectors).await?;
    let unlisted: Vec<usize> = (0..targets.len()).filter(|&i| targets[i].length.is_none()).collect();
    let metas: Vec<(usize, proto::FileMeta)> = futures::stream::iter(unlisted)
        .map(|i| {
            let name = targets[i].name.clone();
            async move { node.trackers().file_meta(&name).await.map(|m| (i, m)) }
        })
        .buffered(META_CONCURRENCY)
        .try_collect()
        .await?;
    for (i, meta) in metas {
        let t = &mut targets[i];
        if let Some(want) = t.root.as_ref().filter(|r| !r.matches(&meta.root)) {
            return Err(Error::RootMismatch {
                name: t.name.clone(),
                wanted: want.to_string(),
                found: meta.root.to_string(),
            });
        }
        t.root = Some(RootPrefix::exact(&meta.root));
        t.length = Some(meta.length);
    }
    if !replace {
        for t in &targets {
            if let (Some(Shared::Complete(here)), Some(want)) = (node.shares().get(&t.name), &t.root) {
                if !want.matches(&here.root) {
                    return Err(Error::Conflict(t.name.clone()));
                }
            }
        }
    }
    Ok(targets)
}
