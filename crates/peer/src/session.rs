//! The peer's session with the tracker: one connection, owned by an actor task that serializes
//! requests, sends keep-alives, and on loss reconnects with backoff and re-registers everything the
//! peer holds (so a tracker restart costs the swarm only a few seconds).
//!
//! Callers hold a cheap [`TrackerSession`] handle and await typed replies.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::codec::TrackerClientCodec;
use proto::limits::DEFAULT_MAX_FRAME;
use proto::tracker::{
    FileSummary, Locations, Register, RegisterFile, RequestError, TrackerRequest, TrackerResponse, Welcome,
};
use proto::{FileMeta, Hello};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::addr::HostPort;
use crate::error::{ConnectError, Error, TrackerProtocolError};
use crate::shares::{sent, Shares};
use session_register::register_all;
pub(crate) use session_register::FileFilter;
pub use session_register::Registration;

#[path = "session_register.rs"]
mod session_register;

type Conn = Framed<TcpStream, TrackerClientCodec>;

/// Longest wait between reconnect attempts; also never longer than the tracker's keep-alive
/// interval, so a restarted tracker has every peer back within about two intervals.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Refused files offered again per keep-alive interval, so a retry stays a small frame.
const RETRY_BATCH: usize = 64;
/// How often a tracker that stays unreachable is mentioned at warn (each failure is at debug).
const UNREACHABLE_WARNING: Duration = Duration::from_secs(30);

/// How to reach the tracker.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The tracker's address: a host name is resolved at every (re)connect.
    pub tracker: HostPort,
    /// Deadline for connecting and for each request's reply.
    pub request_timeout: Duration,
}

struct Call {
    req: TrackerRequest,
    reply: oneshot::Sender<Result<TrackerResponse, Error>>,
}

/// A handle to the session actor. Cheap to clone.
#[derive(Clone)]
pub struct TrackerSession {
    calls: mpsc::Sender<Call>,
    link: watch::Receiver<Link>,
    /// The registration's shares, where refusals are recorded.
    shares: Option<Shares>,
    /// Set once the tracker answered Unregister with `Malformed` (it predates it), so that is
    /// logged once, not for every file.
    old_tracker: Arc<AtomicBool>,
}

/// The state of a session's connection, as its actor last saw it.
#[derive(Debug, Clone)]
pub enum Link {
    /// Not connected yet: the first attempt is under way.
    Connecting,
    /// Connected and registered.
    Up {
        /// The IP the tracker sees the session coming from.
        observed: IpAddr,
        /// The endpoint registered (none for a session that registers nothing).
        endpoint: Option<SocketAddr>,
    },
    /// Not connected: attempts go on, with backoff.
    Down {
        /// Since when.
        since: Instant,
        /// The tracker's keep-alive interval (from its last welcome): lost for less than this,
        /// it still counts as live (a blip does not move files to another tracker).
        grace: Duration,
        /// Why the last attempt failed (or the connection was lost).
        error: Arc<ConnectError>,
    },
}

impl TrackerSession {
    /// Connects, completes the handshake and the initial registration (if any), then returns a
    /// handle and the actor that owns the connection, for the caller to spawn. Fails if the
    /// tracker cannot be reached now (for one-shot commands); later losses are repaired by
    /// reconnecting.
    pub async fn connect(
        config: SessionConfig,
        registration: Option<Registration>,
        shutdown: CancellationToken,
    ) -> Result<(TrackerSession, impl Future<Output = ()> + Send + 'static), Error> {
        let unreachable = |reason: ConnectError| Error::TrackerUnreachable {
            tracker: config.tracker.clone(),
            reason: Arc::new(reason),
        };
        let (mut conn, welcome) = open(&config).await.map_err(unreachable)?;
        let mut endpoint = None;
        if let Some(reg) = &registration {
            endpoint = Some(register_all(&mut conn, &welcome, reg, config.request_timeout).await.map_err(unreachable)?);
        }
        let (session, actor) =
            Self::actor(config, registration, shutdown, Link::Up { observed: welcome.observed.ip(), endpoint });
        Ok((session, actor.run(Some((conn, welcome)))))
    }

    /// A session that connects in the background, at once and then with backoff until it
    /// succeeds, and stays connected: for a node, which must not depend on the tracker being up
    /// first. Calls wait for the connection. [`TrackerSession::link`] tells how it is going.
    pub fn start(
        config: SessionConfig,
        registration: Option<Registration>,
        shutdown: CancellationToken,
    ) -> (TrackerSession, impl Future<Output = ()> + Send + 'static) {
        let (session, actor) = Self::actor(config, registration, shutdown, Link::Connecting);
        (session, actor.run(None))
    }

    fn actor(
        config: SessionConfig,
        registration: Option<Registration>,
        shutdown: CancellationToken,
        link: Link,
    ) -> (TrackerSession, Actor) {
        let (tx, rx) = mpsc::channel(1024);
        let (link_tx, link_rx) = watch::channel(link);
        let keepalive = MAX_BACKOFF;
        let shares = registration.as_ref().map(|r| r.shares.clone());
        let actor = Actor { config, registration, calls: rx, shutdown, keepalive, link: link_tx };
        (TrackerSession { calls: tx, link: link_rx, shares, old_tracker: Arc::default() }, actor)
    }

    /// The state of the connection, updated as it changes.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    /// The endpoint the tracker records for this peer, which is where other peers reach it: the
    /// one registered, with an unspecified IP (`0.0.0.0`, `::`) replaced by the one the tracker
    /// sees the session coming from (as the tracker does). `None` before the first registration.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match &*self.link.borrow() {
            Link::Up { observed, endpoint: Some(e) } if e.ip().is_unspecified() => {
                Some(SocketAddr::new(observed.to_canonical(), e.port()))
            }
            Link::Up { endpoint, .. } => *endpoint,
            _ => None,
        }
    }

    /// Sends one request and awaits its reply.
    pub async fn call(&self, req: TrackerRequest) -> Result<TrackerResponse, Error> {
        let (tx, rx) = oneshot::channel();
        self.calls.send(Call { req, reply: tx }).await.map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    /// A file's metadata, checked for consistency.
    pub async fn file_meta(&self, name: &str) -> Result<FileMeta, Error> {
        match self.call(TrackerRequest::FileMeta { name: name.to_owned() }).await? {
            TrackerResponse::FileMeta(meta) => {
                let meta = Arc::unwrap_or_clone(meta);
                // The tracker is trusted for metadata, but not to be free of bugs or tampering:
                // a wrong name or hashes that do not add up to the root are refused here.
                let meta = validate_off_runtime(name, meta).await?;
                if meta.name != name {
                    return Err(Error::TrackerProtocol(TrackerProtocolError::WrongFile {
                        asked: name.to_owned(),
                        got: meta.name,
                    }));
                }
                Ok(meta)
            }
            other => Err(unexpected(other)),
        }
    }

    /// A file's sources.
    pub async fn locations(&self, name: &str) -> Result<Locations, Error> {
        match self.call(TrackerRequest::FileLocations { name: name.to_owned() }).await? {
            TrackerResponse::FileLocations(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// Every file on the tracker, all pages.
    pub async fn list_all(&self) -> Result<Vec<FileSummary>, Error> {
        let mut out: Vec<FileSummary> = Vec::new();
        loop {
            let after = out.last().map(|f| f.name.clone());
            match self.call(TrackerRequest::FileList { after }).await? {
                TrackerResponse::FileList { files, more } => {
                    let empty = files.is_empty();
                    out.extend(files);
                    if !more || empty {
                        return Ok(out);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Registers chunks of a file as held, in one request.
    pub async fn chunk_register_batch(&self, name: &str, chunks: Vec<u32>) -> Result<(), Error> {
        match self.call(TrackerRequest::ChunkRegisterBatch { name: name.to_owned(), chunks }).await? {
            TrackerResponse::ChunkRegistered => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The files whose root starts with `prefix` (hex), at most the tracker's cap.
    pub async fn find_root(&self, prefix: &str) -> Result<Vec<FileSummary>, Error> {
        match self.call(TrackerRequest::FindRoot { prefix: prefix.to_owned() }).await? {
            TrackerResponse::RootMatches { files, .. } => Ok(files),
            other => Err(unexpected(other)),
        }
    }

    /// Withdraws one file this session registered (Unregister): the tracker stops listing this
    /// peer as its source. A file the tracker does not hold for this session (never registered
    /// there, or already gone) is no error: the outcome is the same. A tracker older than
    /// Unregister answers `Malformed`: that is said once per session (the file stays listed
    /// there until the session ends) and is no error either.
    pub async fn unregister(&self, name: &str) -> Result<(), Error> {
        match self.call(TrackerRequest::Unregister { name: name.to_owned() }).await? {
            TrackerResponse::Unregistered => Ok(()),
            TrackerResponse::Error(RequestError::NotHeld { .. }) => {
                debug!(name, "the tracker did not hold the file for this peer");
                Ok(())
            }
            TrackerResponse::Error(RequestError::Malformed(reason)) => {
                if !self.old_tracker.swap(true, Ordering::Relaxed) {
                    warn!(
                        %reason,
                        "the tracker does not know Unregister (an older version): files removed here stay \
                         listed there until this peer's session ends"
                    );
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Registers files (with the chunks held) at the endpoint this session registered.
    pub async fn register(&self, files: Vec<RegisterFile>) -> Result<(), Error> {
        let listen = match &*self.link.borrow() {
            Link::Up { endpoint: Some(e), .. } => *e,
            _ => return Err(Error::NotRegistered),
        };
        let sent = sent(&files);
        match self.call(TrackerRequest::Register(Register { listen, files })).await? {
            TrackerResponse::Registered { results } => {
                log_rejections(&results);
                if let Some(shares) = &self.shares {
                    shares.record_results(&sent, &results);
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(r: TrackerResponse) -> Error {
    match r {
        TrackerResponse::Error(e) => Error::Tracker(e),
        other => Error::TrackerProtocol(TrackerProtocolError::Unexpected(Box::new(other))),
    }
}

fn log_rejections(results: &[Result<(), proto::tracker::RejectReason>]) {
    for r in results {
        if let Err(reason) = r {
            warn!(%reason, "tracker refused a file");
        }
    }
}

async fn open(config: &SessionConfig) -> Result<(Conn, Welcome), ConnectError> {
    const STEP: &str = "handshake";
    let t = config.request_timeout;
    // Resolved at every attempt, so a DNS change moves the peer; each address tried in turn.
    let addrs = config.tracker.resolve().await.map_err(ConnectError::Resolve)?;
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match timeout(t, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = Some(ConnectError::Connect(e)),
            Err(_) => last = Some(ConnectError::ConnectTimeout(t)),
        }
    }
    let Some(stream) = stream else { return Err(last.unwrap_or(ConnectError::ConnectTimeout(t))) };
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, TrackerClientCodec::new(DEFAULT_MAX_FRAME));
    match roundtrip(&mut conn, TrackerRequest::Hello(Hello::current()), t).await {
        Ok(TrackerResponse::Welcome(w)) => Ok((conn, w)),
        Ok(other) => Err(step_failed(STEP, other)),
        Err(e) => Err(e.during(STEP)),
    }
}

/// Why one request to the tracker got no usable reply.
#[derive(Debug)]
enum RoundtripError {
    /// The connection failed, closed, timed out, or the tracker said it is shutting down.
    Lost,
    /// The reply could not be decoded.
    Undecodable(proto::codec::MessageError),
}

impl RoundtripError {
    /// The error of a failed step of opening a session.
    fn during(self, step: &'static str) -> ConnectError {
        match self {
            RoundtripError::Lost => ConnectError::Lost { step },
            RoundtripError::Undecodable(e) => {
                ConnectError::Protocol { step, error: TrackerProtocolError::Undecodable(e) }
            }
        }
    }
}

impl From<RoundtripError> for Error {
    fn from(e: RoundtripError) -> Self {
        match e {
            RoundtripError::Lost => Error::TrackerLost,
            RoundtripError::Undecodable(e) => Error::TrackerProtocol(TrackerProtocolError::Undecodable(e)),
        }
    }
}

/// The error for a step of opening a session that got the reply `r`, which it did not expect.
fn step_failed(step: &'static str, r: TrackerResponse) -> ConnectError {
    match r {
        TrackerResponse::Error(error) => ConnectError::Refused { step, error },
        other => ConnectError::Protocol { step, error: TrackerProtocolError::Unexpected(Box::new(other)) },
    }
}

async fn roundtrip(conn: &mut Conn, req: TrackerRequest, t: Duration) -> Result<TrackerResponse, RoundtripError> {
    let r = timeout(t, async {
        conn.send(req).await.map_err(|_| RoundtripError::Lost)?;
        match conn.next().await {
            // The tracker says goodbye before closing: treat it as the loss it is.
            Some(Ok(Ok(TrackerResponse::Error(RequestError::ShuttingDown)))) => Err(RoundtripError::Lost),
            Some(Ok(Ok(resp))) => Ok(resp),
            Some(Ok(Err(e))) => Err(RoundtripError::Undecodable(e)),
            Some(Err(_)) | None => Err(RoundtripError::Lost),
        }
    })
    .await;
    r.unwrap_or(Err(RoundtripError::Lost))
}

struct Actor {
    config: SessionConfig,
    registration: Option<Registration>,
    calls: mpsc::Receiver<Call>,
    /// Cancelled when the node shuts down: the actor says Leave and ends.
    shutdown: CancellationToken,
    /// The keep-alive interval of the last session, which also caps the reconnect backoff.
    keepalive: Duration,
    /// Shared with the handles: how the connection is.
    link: watch::Sender<Link>,
}

enum Exit {
    Shutdown,
    Lost,
}

impl Actor {
    async fn run(mut self, first: Option<(Conn, Welcome)>) {
        let mut current = first;
        let mut attempt_now = true;
        loop {
            let (mut conn, welcome) = match current.take() {
                Some(c) => c,
                None => match self.reconnect(attempt_now).await {
                    Some(c) => c,
                    None => return,
                },
            };
            attempt_now = false;
            let keepalive = Duration::from_millis(welcome.keepalive_ms.max(10));
            self.keepalive = keepalive;
            match self.serve(&mut conn, keepalive).await {
                Exit::Shutdown => {
                    // Goodbye under a timeout: a dead tracker must not hold up shutdown.
                    let _ = roundtrip(&mut conn, TrackerRequest::Leave, Duration::from_secs(1)).await;
                    return;
                }
                Exit::Lost => {
                    warn!(tracker = %self.config.tracker, "lost the tracker; reconnecting");
                    let error = Arc::new(ConnectError::Lost { step: "session" });
                    self.link.send_replace(Link::Down { since: Instant::now(), grace: self.keepalive, error });
                }
            }
        }
    }

    async fn serve(&mut self, conn: &mut Conn, keepalive: Duration) -> Exit {
        let mut last = Instant::now();
        let mut retry_at = last + keepalive;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Exit::Shutdown,
                call = self.calls.recv() => {
                    let Some(call) = call else { return Exit::Shutdown };
                    let r = roundtrip(conn, call.req, self.config.request_timeout).await;
                    last = Instant::now();
                    let lost = matches!(r, Err(RoundtripError::Lost));
                    let _ = call.reply.send(r.map_err(Error::from));
                    if lost {
                        return Exit::Lost;
                    }
                }
                _ = tokio::time::sleep_until(last + keepalive) => {
                    if roundtrip(conn, TrackerRequest::KeepAlive, self.config.request_timeout).await.is_err() {
                        return Exit::Lost;
                    }
                    last = Instant::now();
                }
                // Files refused before are offered again once per interval, busy or not: a name
                // held by other content is free once its last holder leaves.
                _ = tokio::time::sleep_until(retry_at) => {
                    retry_at = Instant::now() + keepalive;
                    let Some((req, sent)) = self.retry_refused() else { continue };
                    match roundtrip(conn, req, self.config.request_timeout).await {
                        Ok(TrackerResponse::Registered { results }) => {
                            if let Some(reg) = &self.registration {
                                reg.shares.record_results(&sent, &results);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return Exit::Lost,
                    }
                    last = Instant::now();
                }
            }
        }
    }

    /// A Register of the refused files this session is responsible for, if any (at most one
    /// frame's worth: the rest go at the next interval).
    fn retry_refused(&self) -> Option<(TrackerRequest, Vec<(String, proto::Hash)>)> {
        let reg = self.registration.as_ref()?;
        let listen = match &*self.link.borrow() {
            Link::Up { endpoint: Some(e), .. } => *e,
            _ => return None,
        };
        let mut files = reg.shares.refused_files(|n| reg.accepts(n));
        files.truncate(RETRY_BATCH);
        if files.is_empty() {
            return None;
        }
        let sent = sent(&files);
        Some((TrackerRequest::Register(Register { listen, files }), sent))
    }

    /// Connects with jittered exponential backoff (the first try at once if `now`) and
    /// registers; `None` on shutdown.
    async fn reconnect(&mut self, now: bool) -> Option<(Conn, Welcome)> {
        let cap = MAX_BACKOFF.min(self.keepalive);
        let mut backoff = Duration::from_millis(50).min(cap);
        let mut first = now;
        // Failures are logged at warn now and then, so a peer stuck on a dead tracker says so
        // (the first failure is reported by whoever started the session, or the loss was).
        let mut next_warning = Instant::now() + UNREACHABLE_WARNING;
        loop {
            if !first {
                // Jitter spreads a swarm's reconnects after a tracker restart; the cap holds.
                let jitter = rand::rng().random_range(0.5..1.5);
                tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.mul_f64(jitter).min(cap)) => {}
                }
                backoff = (backoff * 2).min(cap);
            }
            first = false;
            let attempt = async {
                let (mut conn, welcome) = open(&self.config).await?;
                let mut endpoint = None;
                if let Some(reg) = &self.registration {
                    endpoint = Some(register_all(&mut conn, &welcome, reg, self.config.request_timeout).await?);
                }
                Ok::<_, ConnectError>((conn, welcome, endpoint))
            };
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = attempt => r,
            };
            match result {
                Ok((conn, welcome, endpoint)) => {
                    info!(tracker = %self.config.tracker, "connected to the tracker and registered");
                    self.link.send_replace(Link::Up { observed: welcome.observed.ip(), endpoint });
                    return Some((conn, welcome));
                }
                Err(e) => {
                    if Instant::now() >= next_warning {
                        warn!(tracker = %self.config.tracker, error = %e, "cannot connect to the tracker; still trying");
                        next_warning = Instant::now() + UNREACHABLE_WARNING;
                    } else {
                        debug!(tracker = %self.config.tracker, error = %e, "connecting to the tracker failed");
                    }
                    let since = match &*self.link.borrow() {
                        Link::Down { since, .. } => *since,
                        _ => Instant::now(),
                    };
                    self.link.send_replace(Link::Down { since, grace: self.keepalive, error: Arc::new(e) });
                }
            }
        }
    }
}

/// Checks `meta` on a blocking thread: up to 2^18 hash merges, too long for an async worker
/// (it would stall every other task on it). At most one check per core at a time, so a burst of
/// downloads cannot fill the blocking pool with them.
async fn validate_off_runtime(name: &str, meta: FileMeta) -> Result<FileMeta, Error> {
    static CHECKS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let checks = CHECKS.get_or_init(|| tokio::sync::Semaphore::new(cores));
    // The semaphore is never closed, so acquiring cannot fail; were it to, check anyway.
    let _permit = checks.acquire().await.ok();
    match tokio::task::spawn_blocking(move || meta.validate().map(|()| meta)).await {
        Ok(r) => r.map_err(|reason| Error::BadMeta { name: name.to_owned(), reason }),
        // A panic inside `validate` is resumed where it belongs.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(Error::Cancelled),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
