//! The peer's session with the tracker: one connection, owned by an actor task that serializes
//! requests, sends keep-alives, and on loss reconnects with backoff and re-registers everything the
//! peer holds (so a tracker restart costs the swarm only a few seconds).
//!
//! Callers hold a cheap [`TrackerSession`] handle and await typed replies.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::codec::TrackerClientCodec;
use proto::limits::DEFAULT_MAX_FRAME;
use proto::tracker::{
    FileSummary, Locations, Register, RegisterFile, RequestError, TrackerRequest, TrackerResponse, Welcome,
};
use proto::{FileMeta, Have, Hello};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{ConnectError, Error, TrackerProtocolError};
use crate::shares::Shares;

type Conn = Framed<TcpStream, TrackerClientCodec>;

/// Room left in a Register frame for what the size estimate of [`register_batches`] leaves out.
const REGISTER_FRAME_SLACK: usize = 4096;
/// Longest wait between reconnect attempts; also never longer than the tracker's keep-alive
/// interval, so a restarted tracker has every peer back within about two intervals.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How to reach the tracker.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The tracker's address.
    pub tracker: SocketAddr,
    /// Deadline for connecting and for each request's reply.
    pub request_timeout: Duration,
}

/// What the session registers on every (re)connect: the peer's endpoint and its files.
#[derive(Clone)]
pub struct Registration {
    /// Where the peer serves.
    pub listen: SocketAddr,
    /// What it serves.
    pub shares: Shares,
}

struct Call {
    req: TrackerRequest,
    reply: oneshot::Sender<Result<TrackerResponse, Error>>,
}

/// A handle to the session actor. Cheap to clone.
#[derive(Clone)]
pub struct TrackerSession {
    calls: mpsc::Sender<Call>,
    /// The IP the tracker sees this peer's session coming from (from its latest welcome).
    observed: Arc<Mutex<IpAddr>>,
}

impl TrackerSession {
    /// Connects, completes the handshake and the initial registration (if any), then returns a
    /// handle and the actor that owns the connection, for the caller to spawn. Fails if the tracker cannot be reached now; later losses
    /// are repaired by reconnecting.
    pub async fn connect(
        config: SessionConfig,
        registration: Option<Registration>,
        shutdown: CancellationToken,
    ) -> Result<(TrackerSession, impl Future<Output = ()> + Send + 'static), Error> {
        let unreachable = |reason: ConnectError| Error::TrackerUnreachable { addr: config.tracker, reason };
        let (mut conn, welcome) = open(&config).await.map_err(unreachable)?;
        if let Some(reg) = &registration {
            register_all(&mut conn, &welcome, reg, config.request_timeout).await.map_err(unreachable)?;
        }
        let (tx, rx) = mpsc::channel(1024);
        let keepalive = Duration::from_millis(welcome.keepalive_ms.max(10));
        let observed = Arc::new(Mutex::new(welcome.observed.ip()));
        let actor = Actor { config, registration, calls: rx, shutdown, keepalive, observed: observed.clone() };
        Ok((TrackerSession { calls: tx, observed }, actor.run(conn, welcome)))
    }

    /// The endpoint the tracker records for a peer listening at `listen`, which is where other
    /// peers reach it: `listen`, with an unspecified IP (`0.0.0.0`, `::`) replaced by the one the
    /// tracker sees the session coming from (as the tracker does).
    pub fn endpoint(&self, listen: SocketAddr) -> SocketAddr {
        if listen.ip().is_unspecified() {
            let ip = *self.observed.lock().unwrap_or_else(PoisonError::into_inner);
            SocketAddr::new(ip.to_canonical(), listen.port())
        } else {
            listen
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

    /// Registers files (with the chunks held) at the given endpoint.
    pub async fn register(&self, listen: SocketAddr, files: Vec<RegisterFile>) -> Result<(), Error> {
        match self.call(TrackerRequest::Register(Register { listen, files })).await? {
            TrackerResponse::Registered { results } => {
                log_rejections(&results);
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
    let stream = match timeout(t, TcpStream::connect(config.tracker)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Connect(e)),
        Err(_) => return Err(ConnectError::ConnectTimeout(t)),
    };
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

/// Splits files into Register requests that fit the tracker's limits (from its welcome) and ours:
/// at most its file cap each, and an encoded size under both frame limits. A file whose
/// metadata alone could not fit any frame is left out with a warning (sending it would only get
/// the session closed).
fn register_batches(files: Vec<RegisterFile>, welcome: &Welcome) -> Vec<Vec<RegisterFile>> {
    let max_files = (welcome.max_files_per_register as usize).max(1);
    let max_bytes = (welcome.max_frame as usize).min(DEFAULT_MAX_FRAME).saturating_sub(REGISTER_FRAME_SLACK).max(1);
    let mut batches: Vec<Vec<RegisterFile>> = Vec::new();
    let mut bytes = 0;
    for f in files {
        // Postcard size, over-estimated: a hash is 32 bytes, varints and a bitmap are small.
        let bitmap = match &f.have {
            Have::Complete => 0,
            Have::Partial(b) => b.as_bytes().len(),
        };
        let size = 64 + f.meta.name.len() + 32 * f.meta.chunk_hashes.len() + bitmap;
        if size > max_bytes {
            warn!(
                name = f.meta.name,
                size, max_bytes, "file metadata too large for the tracker's frames; not registered"
            );
            continue;
        }
        match batches.last_mut() {
            Some(b) if b.len() < max_files && bytes + size <= max_bytes => b.push(f),
            _ => {
                batches.push(vec![f]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    batches
}

async fn register_all(conn: &mut Conn, welcome: &Welcome, reg: &Registration, t: Duration) -> Result<(), ConnectError> {
    const STEP: &str = "registration";
    let mut batches = register_batches(reg.shares.snapshot(), welcome);
    if batches.is_empty() {
        // Sets the endpoint, so the peer can chunk-register what it downloads.
        batches.push(Vec::new());
    }
    for files in batches {
        let n = files.len();
        match roundtrip(conn, TrackerRequest::Register(Register { listen: reg.listen, files }), t).await {
            Ok(TrackerResponse::Registered { results }) => {
                log_rejections(&results);
                debug!(files = n, "registered");
            }
            Ok(other) => return Err(step_failed(STEP, other)),
            Err(e) => return Err(e.during(STEP)),
        }
    }
    Ok(())
}

struct Actor {
    config: SessionConfig,
    registration: Option<Registration>,
    calls: mpsc::Receiver<Call>,
    /// Cancelled when the node shuts down: the actor says Leave and ends.
    shutdown: CancellationToken,
    /// The keep-alive interval of the last session, which also caps the reconnect backoff.
    keepalive: Duration,
    /// Shared with the handles: the IP the tracker saw in its latest welcome.
    observed: Arc<Mutex<IpAddr>>,
}

enum Exit {
    Shutdown,
    Lost,
}

impl Actor {
    async fn run(mut self, conn: Conn, welcome: Welcome) {
        let mut current = Some((conn, welcome));
        loop {
            let (mut conn, welcome) = match current.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Some(c) => c,
                    None => return,
                },
            };
            let keepalive = Duration::from_millis(welcome.keepalive_ms.max(10));
            self.keepalive = keepalive;
            *self.observed.lock().unwrap_or_else(PoisonError::into_inner) = welcome.observed.ip();
            match self.serve(&mut conn, keepalive).await {
                Exit::Shutdown => {
                    // Goodbye under a timeout: a dead tracker must not hold up shutdown.
                    let _ = roundtrip(&mut conn, TrackerRequest::Leave, Duration::from_secs(1)).await;
                    return;
                }
                Exit::Lost => warn!(tracker = %self.config.tracker, "lost the tracker; reconnecting"),
            }
        }
    }

    async fn serve(&mut self, conn: &mut Conn, keepalive: Duration) -> Exit {
        let mut last = Instant::now();
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
            }
        }
    }

    /// Reconnects with jittered exponential backoff and re-registers; `None` on shutdown.
    async fn reconnect(&mut self) -> Option<(Conn, Welcome)> {
        let cap = MAX_BACKOFF.min(self.keepalive);
        let mut backoff = Duration::from_millis(50).min(cap);
        loop {
            // Jitter spreads a swarm's reconnects after a tracker restart; the cap holds anyway.
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff.mul_f64(jitter).min(cap)) => {}
            }
            backoff = (backoff * 2).min(cap);
            let attempt = async {
                let (mut conn, welcome) = open(&self.config).await?;
                if let Some(reg) = &self.registration {
                    register_all(&mut conn, &welcome, reg, self.config.request_timeout).await?;
                }
                Ok::<_, ConnectError>((conn, welcome))
            };
            match attempt.await {
                Ok(c) => {
                    info!(tracker = %self.config.tracker, "reconnected to the tracker and re-registered");
                    return Some(c);
                }
                Err(e) => debug!(error = %e, "reconnect failed"),
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
