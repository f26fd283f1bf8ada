//! The server loop: accepts connections under a cap, runs one task per connection (one session),
//! and dispatches each typed request to the registry. The connection owns framing (see
//! [`crate::link`]); handlers take typed requests and return typed replies.
//!
//! What a connection may cost is bounded in bytes, and so is the sum over all of them:
//! - back-pressure: a session writes before it reads on once more than [`WRITE_HIGH_WATER`] is
//!   unsent, so a client that does not read is not read either: one connection holds at most
//!   that much plus the one reply it is sending;
//! - every reply's exact size is known before it is queued, and admitted by the [`Backlog`], the
//!   budget of bytes queued to clients over all connections (`Config::max_queued_bytes`), which
//!   makes room by dropping the connections furthest behind, or refuses the reply with
//!   `Overloaded`;
//! - File Meta replies (up to 8 MiB) are encoded once per file, from the registry's shared
//!   metadata, and kept by the registry: every session sends the same bytes, neither encoded nor
//!   copied again;
//! - writes have a deadline on progress, not on whole replies: a session ends when none of its
//!   bytes leave for the session timeout;
//! - heavy work runs on the tracker's own lowered-priority threads (`heavy.rs`), half the cores:
//!   requests in large frames (Register's metadata) are decoded and checked there, and large
//!   replies encoded there, so hash merges and multi-megabyte encodes never hold up the async
//!   workers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::codec::{CodecError, MessageError, WireMessage, LEN_PREFIX};
use proto::limits::HANDSHAKE_MAX_FRAME;
use proto::tracker::{RequestError, TrackerRequest, TrackerResponse, Welcome};
use proto::{FileMeta, Have, PROTOCOL_VERSION};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::backlog::{Backlog, Queued, Refused};
use crate::config::Config;
use crate::heavy::HeavyPool;
use crate::link::{Incoming, Link, ServerCodec, WriteError};
use crate::registry::{CheckedRegister, PeerId, Registry};

/// Unsent reply bytes above which a session writes before it reads its next request: what one
/// connection may hold besides the reply it is sending (back-pressure: a client that does not
/// read is not read either, so its requests are not answered into memory).
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Request frames larger than this (only Register's metadata makes them so) are decoded, and a
/// Register checked, on the heavy-work threads: up to 2^18 hash merges per file, about 16 MiB to
/// decode, never on an async worker. Smaller ones (at most 8,192 chunk hashes, about a
/// millisecond of merging) are handled at once: queued for the heavy-work threads, a burst of
/// thousands of peers registering their shares at start would hold every waiting frame in memory
/// (measured: tracker RSS after 10,000 peers x 100 files registered, 1,000 at a time, went from
/// 228 to 450 MiB with a 64 KiB threshold; `cargo xtask bench tracker`).
const OFFLOAD_FRAME: usize = 256 * 1024;

/// Replies whose [`size_hint`] is above this (File Meta of a large file the first time, large
/// File Locations or File List pages) are sized and encoded on the heavy-work threads: 8 MiB of
/// metadata takes milliseconds to encode, which would hold up every other session on the worker.
const OFFLOAD_REPLY: usize = 64 * 1024;

/// A reply to queue.
#[derive(Debug)]
enum Reply {
    /// A message, to encode into the write buffer.
    Message(TrackerResponse),
    /// A whole frame already encoded and shared (a File Meta reply, encoded once per file and
    /// kept by the registry): written from the shared bytes, neither encoded nor copied again.
    Shared(Bytes),
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    config: Config,
    registry: Registry,
    /// The budget of bytes queued to clients, over all connections.
    backlog: Arc<Backlog>,
    /// Caps the heavy work on the heavy-work threads (large requests decoded and checked, large
    /// replies encoded) at half the cores, at least one: a flood of large Registers waits here
    /// instead of taking every core from the async workers, which keep serving everyone else.
    heavy: Arc<Semaphore>,
    /// The threads that do that heavy work, at lowered priority (see `heavy.rs`).
    pool: HeavyPool,
}

/// A running tracker: its address, registry, and the handle that stops it.
#[derive(Debug)]
pub struct Tracker {
    addr: SocketAddr,
    registry: Registry,
    backlog: Arc<Backlog>,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Tracker {
    /// Binds `addr` (port 0 for any) and starts serving in the background.
    pub async fn bind(addr: SocketAddr, config: Config) -> io::Result<Tracker> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::start(listener, config))
    }

    /// Starts serving on an already-bound listener.
    pub fn start(listener: TcpListener, config: Config) -> Tracker {
        let addr = listener.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut limits = config.limits.clone();
        // A list page must fit in a frame whatever the names on it.
        limits.list_page_bytes = limits.list_page_bytes.min(config.max_frame / 2);
        let registry = Registry::new(limits);
        let shutdown = CancellationToken::new();
        let shared = Shared::new(config, registry.clone());
        let backlog = shared.backlog.clone();
        let task = tokio::spawn(run(listener, shared, shutdown.clone()));
        Tracker { addr, registry, backlog, shutdown, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry, for inspection.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Bytes of replies queued to clients (encoded, not yet written to their sockets), over all
    /// connections: what `Config::max_queued_bytes` bounds.
    pub fn queued_bytes(&self) -> usize {
        self.backlog.total()
    }

    /// A token that stops the tracker when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, tells every session, and waits for all connection tasks to end.
    pub async fn shutdown(self) -> io::Result<()> {
        self.shutdown.cancel();
        self.task.await.map_err(io::Error::other)?
    }

    /// Waits until the tracker stops (after its token is cancelled).
    pub async fn wait(self) -> io::Result<()> {
        self.task.await.map_err(io::Error::other)?
    }
}

impl Shared {
    fn new(config: Config, registry: Registry) -> Shared {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let backlog = Backlog::new(config.max_queued_bytes);
        let threads = cores.div_ceil(2);
        // Without threads of its own (none can be started), heavy work fails as if it panicked
        // and ends only the session that asked; everything else keeps working.
        let pool = HeavyPool::new(threads).unwrap_or_else(|e| {
            warn!(error = %e, "cannot start the heavy-work threads");
            HeavyPool::unavailable()
        });
        Shared { config, registry, backlog, heavy: Arc::new(Semaphore::new(threads)), pool }
    }
}

/// Serves `listener` until `shutdown` is cancelled, then closes the listener and waits for every
/// connection task to finish.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> io::Result<()> {
    run(listener, Shared::new(config, registry), shutdown).await
}

async fn run(listener: TcpListener, shared: Shared, shutdown: CancellationToken) -> io::Result<()> {
    let shared = Arc::new(shared);
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let tasks = TaskTracker::new();
    info!(addr = %listener.local_addr()?, "tracker listening");
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (shared, shutdown) = (shared.clone(), shutdown.clone());
                tasks.spawn(
                    async move {
                        connection(stream, remote, &shared, &shutdown).await;
                        drop(permit);
                    }
                    .instrument(tracing::debug_span!("session", %remote)),
                );
            }
            Err(_) => {
                debug!(%remote, "connection cap reached");
                let max = shared.config.max_connections;
                let link = Link::new(stream, HANDSHAKE_MAX_FRAME, HANDSHAKE_MAX_FRAME);
                tasks.spawn(link.goodbye(RequestError::TooManyConnections { max }));
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    info!("tracker stopped");
    Ok(())
}

/// What ended a session, for the log.
#[derive(Debug)]
enum End {
    Closed,
    Expired,
    Shutdown,
    Framing(CodecError),
    SendFailed,
    /// No reply byte left for the session timeout.
    Stalled,
    /// Dropped to make room in the budget of bytes queued to clients.
    Dropped,
    /// Work on the heavy-work threads panicked (a bug), or there are no such threads.
    Panicked,
}

impl From<WriteError> for End {
    fn from(e: WriteError) -> End {
        match e {
            WriteError::Failed => End::SendFailed,
            WriteError::Stalled => End::Stalled,
        }
    }
}

async fn connection(stream: TcpStream, remote: SocketAddr, shared: &Shared, shutdown: &CancellationToken) {
    let config = &shared.config;
    // An IPv4 client of a dual-stack listener shows as `::ffff:a.b.c.d`: it is `a.b.c.d`.
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    let mut link = Link::new(stream, HANDSHAKE_MAX_FRAME, config.max_frame);
    // Handshake: the first frame must be a Hello, within the deadline and the small frame limit.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = timeout(config.handshake_timeout, link.next()) => r,
    };
    let hello = match first {
        Ok(Some(Ok(Ok(frame)))) => match TrackerRequest::decode_body(frame) {
            Ok(TrackerRequest::Hello(h)) => h.check().map_err(RequestError::Handshake),
            Ok(_) => Err(RequestError::Handshake(proto::HandshakeError::Expected)),
            Err(e) => Err(RequestError::Malformed(e.to_string())),
        },
        Ok(Some(Ok(Err(e)))) => Err(RequestError::Malformed(e.to_string())),
        Ok(Some(Err(e))) => {
            debug!(error = %e, "framing error before handshake");
            return link.goodbye(RequestError::Malformed(e.to_string())).await;
        }
        Ok(None) | Err(_) => return,
    };
    if let Err(e) = hello {
        debug!(error = %e, "handshake refused");
        return link.goodbye(e).await;
    }
    let welcome = TrackerResponse::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        keepalive_ms: config.keepalive.as_millis() as u64,
        session_timeout_ms: config.session_timeout.as_millis() as u64,
        observed: remote,
        max_frame: u32::try_from(config.max_frame).unwrap_or(u32::MAX),
        max_files_per_register: u32::try_from(config.limits.max_files_per_register).unwrap_or(u32::MAX),
    });
    if !matches!(timeout(config.session_timeout, link.send(welcome)).await, Ok(Ok(()))) {
        return;
    }
    link.set_max_frame(config.max_frame);

    let queued = Arc::new(shared.backlog.join());
    let peer = shared.registry.open_session(remote);
    let end = session(&mut link, peer, shared, &queued, shutdown).await;
    shared.registry.close_session(peer);
    match end {
        End::Framing(e) => {
            debug!(error = %e, "closing on framing error");
            link.goodbye(RequestError::Malformed(e.to_string())).await;
        }
        End::Shutdown => link.goodbye(RequestError::ShuttingDown).await,
        End::Panicked => warn!("session ended: its work on the heavy-work threads failed"),
        other => debug!(end = ?other, "session ended"),
    }
}

async fn session(
    link: &mut Link,
    peer: PeerId,
    shared: &Shared,
    queued: &Arc<Queued>,
    shutdown: &CancellationToken,
) -> End {
    let idle = shared.config.session_timeout;
    loop {
        // Back-pressure: with more than a little unsent, write before reading on.
        if link.unsent() > WRITE_HIGH_WATER {
            if let Err(end) = flush(link, idle, queued, shutdown).await {
                return end;
            }
        }
        // Requests already buffered are answered before anything is flushed, so a client that
        // pipelines gets its replies in one write; the flush happens only when the next request
        // is not there yet.
        let next: Result<Incoming, _> = match link.next_now() {
            Some(r) => Ok(r),
            None => {
                if let Err(end) = flush(link, idle, queued, shutdown).await {
                    return end;
                }
                link.shrink_buffers();
                // The session timeout bounds both silence and how long any one frame may take.
                tokio::select! {
                    _ = shutdown.cancelled() => return End::Shutdown,
                    _ = queued.dropped() => return End::Dropped,
                    r = timeout(idle, link.next()) => r,
                }
            }
        };
        let reply = match next {
            Err(_) => return End::Expired,
            Ok(None) => {
                // A client that pipelined and then half-closed still gets the replies queued.
                let _ = flush(link, idle, queued, shutdown).await;
                return End::Closed;
            }
            Ok(Some(Err(e))) => return End::Framing(e),
            Ok(Some(Ok(Err(e)))) => Reply::Message(malformed(e)),
            Ok(Some(Ok(Ok(frame)))) => match answer(shared, peer, frame, queued, shutdown).await {
                Ok(reply) => reply,
                Err(end) => return end,
            },
        };
        if let Err(end) = queue(link, reply, shared, queued, shutdown).await {
            return end;
        }
    }
}

/// Writes out what is queued, keeping the backlog's count current as bytes leave (see
/// [`Link::flush`] for the deadline on progress); ends early at shutdown or when the connection
/// is dropped to make room.
async fn flush(link: &mut Link, idle: Duration, queued: &Queued, shutdown: &CancellationToken) -> Result<(), End> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(End::Shutdown),
        _ = queued.dropped() => Err(End::Dropped),
        r = link.flush(idle, |unsent| queued.set(unsent)) => r.map_err(End::from),
    }
}

/// The reply to one request frame. A frame over [`OFFLOAD_FRAME`] is decoded, and a Register
/// checked, on the heavy-work threads; the registry update itself is made here, in order, and is
/// fast.
async fn answer(
    shared: &Shared,
    peer: PeerId,
    frame: BytesMut,
    queued: &Queued,
    shutdown: &CancellationToken,
) -> Result<Reply, End> {
    let request = if frame.len() <= OFFLOAD_FRAME {
        TrackerRequest::decode_body(frame)
    } else {
        let permit = heavy_permit(shared, queued, shutdown).await?;
        let registry = shared.registry.clone();
        // Not cancelled at shutdown: it is bounded by one frame's work, and owns its memory.
        let checked = shared
            .pool
            .run(move || {
                let _permit = permit;
                match TrackerRequest::decode_body(frame) {
                    Ok(TrackerRequest::Register(r)) => Offloaded::Register(registry.check_register(r.listen, r.files)),
                    other => Offloaded::Decoded(other),
                }
            })
            .await;
        match checked {
            Ok(Offloaded::Register(checked)) => {
                let results = checked.and_then(|c| shared.registry.apply_register(peer, c));
                let reply =
                    results.map_or_else(TrackerResponse::Error, |results| TrackerResponse::Registered { results });
                return Ok(Reply::Message(reply));
            }
            Ok(Offloaded::Decoded(request)) => request,
            Err(_) => return Err(End::Panicked),
        }
    };
    match request {
        Ok(TrackerRequest::FileMeta { name }) => file_meta(shared, &name, queued, shutdown).await,
        Ok(req) => Ok(Reply::Message(handle(&shared.registry, peer, req))),
        Err(e) => Ok(Reply::Message(malformed(e))),
    }
}

/// What the blocking pool made of a large frame.
enum Offloaded {
    /// A Register, checked.
    Register(Result<CheckedRegister, RequestError>),
    /// Any other request (or none), decoded.
    Decoded(Result<TrackerRequest, MessageError>),
}

fn malformed(e: MessageError) -> TrackerResponse {
    TrackerResponse::Error(RequestError::Malformed(e.to_string()))
}

/// File Meta's reply: the file's frame as the registry keeps it, encoded by the first session
/// that asks (on the heavy-work threads if large; others asking meanwhile wait for it) and shared by
/// every session from then on.
async fn file_meta(shared: &Shared, name: &str, queued: &Queued, shutdown: &CancellationToken) -> Result<Reply, End> {
    let (meta, cell) = match shared.registry.meta_reply(name) {
        Ok(found) => found,
        Err(e) => return Ok(Reply::Message(TrackerResponse::Error(e))),
    };
    let encode = async {
        if 32 * meta.chunk_hashes.len() <= OFFLOAD_REPLY {
            return encode_frame(meta);
        }
        let permit = heavy_permit(shared, queued, shutdown).await?;
        shared
            .pool
            .run(move || {
                let _permit = permit;
                encode_frame(meta)
            })
            .await
            .map_err(|_| End::Panicked)?
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err(End::Shutdown),
        _ = queued.dropped() => Err(End::Dropped),
        frame = cell.get_or_try_init(|| encode) => frame.map(|frame| Reply::Shared(frame.clone())),
    }
}

/// A File Meta reply's whole frame, length prefix included.
fn encode_frame(meta: Arc<FileMeta>) -> Result<Bytes, End> {
    let mut buf = BytesMut::new();
    // Its size is checked against the frame limit each time it is queued.
    match ServerCodec::with_limits(0, usize::MAX).encode(TrackerResponse::FileMeta(meta), &mut buf) {
        Ok(()) => Ok(buf.freeze()),
        Err(e) => {
            warn!(error = %e, "metadata cannot be encoded");
            Err(End::SendFailed)
        }
    }
}

/// A permit for heavy work on the heavy-work threads, unless the session ends first.
async fn heavy_permit(
    shared: &Shared,
    queued: &Queued,
    shutdown: &CancellationToken,
) -> Result<OwnedSemaphorePermit, End> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(End::Shutdown),
        _ = queued.dropped() => Err(End::Dropped),
        // Never closed.
        p = shared.heavy.clone().acquire_owned() => p.map_err(|_| End::Shutdown),
    }
}

/// Queues `reply` after everything queued before it, once the backlog has admitted its size; in
/// its place, a typed error (a few bytes) if it exceeds the frame limit or the budget. A message
/// is encoded into the write buffer (a large one on the heavy-work threads, which get the write
/// buffer for the time it takes); a shared frame follows it as it is. Nothing is written here.
async fn queue(
    link: &mut Link,
    reply: Reply,
    shared: &Shared,
    queued: &Arc<Queued>,
    shutdown: &CancellationToken,
) -> Result<(), End> {
    if link.has_shared() {
        // A message encoded now would overtake the shared frame: write it out first. (The
        // session does not read on while one is queued, so this does not happen; the order
        // does not depend on it.)
        flush(link, shared.config.session_timeout, queued, shutdown).await?;
    }
    let max_frame = shared.config.max_frame;
    let reply = match reply {
        Reply::Message(reply) => reply,
        Reply::Shared(frame) => {
            let (len, body) = (frame.len(), frame.len().saturating_sub(LEN_PREFIX));
            let refusal = if body > max_frame {
                warn!(len = body, max = max_frame, "reply exceeds the frame limit");
                RequestError::ReplyTooLarge { len: body, max: max_frame }
            } else {
                match queued.admit(len) {
                    Ok(()) => {
                        link.queue_shared(frame);
                        queued.set(link.unsent());
                        return Ok(());
                    }
                    Err(Refused::Dropped) => return Err(End::Dropped),
                    Err(Refused::Overloaded { max }) => {
                        debug!(len, max, "reply refused: over the queued-bytes budget");
                        RequestError::Overloaded { len: len as u64, max: max as u64 }
                    }
                }
            };
            TrackerResponse::Error(refusal)
        }
    };
    if size_hint(&reply) <= OFFLOAD_REPLY {
        return admit_and_encode(link.write_buffer_mut(), reply, max_frame, queued);
    }
    let permit = heavy_permit(shared, queued, shutdown).await?;
    let mut buf = std::mem::take(link.write_buffer_mut());
    let queued = queued.clone();
    let encoded = shared
        .pool
        .run(move || {
            let _permit = permit;
            let result = admit_and_encode(&mut buf, reply, max_frame, &queued);
            (buf, result)
        })
        .await;
    match encoded {
        Ok((buf, result)) => {
            *link.write_buffer_mut() = buf;
            result
        }
        Err(_) => Err(End::Panicked),
    }
}

/// Encodes `reply` into `buf` once the backlog has admitted its exact size (computed first, in
/// a pass that writes nothing); in its place a typed error (a few bytes) if it exceeds the frame
/// limit or the queued-bytes budget.
fn admit_and_encode(buf: &mut BytesMut, reply: TrackerResponse, max_frame: usize, queued: &Queued) -> Result<(), End> {
    let mut codec = ServerCodec::with_limits(0, max_frame);
    let refusal = match codec.encoded_len(&reply) {
        Ok(len) => match queued.admit(len) {
            Ok(()) => return encode(&mut codec, buf, reply, queued),
            Err(Refused::Dropped) => return Err(End::Dropped),
            Err(Refused::Overloaded { max }) => {
                debug!(len, max, "reply refused: over the queued-bytes budget");
                RequestError::Overloaded { len: len as u64, max: max as u64 }
            }
        },
        Err(CodecError::FrameTooLarge { len, max }) => {
            // Nothing was written: say so instead of leaving the client waiting.
            warn!(len, max, "reply exceeds the frame limit");
            RequestError::ReplyTooLarge { len, max }
        }
        Err(e) => {
            warn!(error = %e, "reply cannot be encoded");
            return Err(End::SendFailed);
        }
    };
    let refusal = TrackerResponse::Error(refusal);
    let len = codec.encoded_len(&refusal).map_err(|_| End::SendFailed)?;
    match queued.admit(len) {
        // A refusal is a few bytes: it goes out even over the budget (and is counted).
        Ok(()) | Err(Refused::Overloaded { .. }) => encode(&mut codec, buf, refusal, queued),
        Err(Refused::Dropped) => Err(End::Dropped),
    }
}

fn encode(codec: &mut ServerCodec, buf: &mut BytesMut, reply: TrackerResponse, queued: &Queued) -> Result<(), End> {
    let result = codec.encode(reply, buf);
    queued.set(buf.len());
    result.map_err(|_| End::SendFailed)
}

/// About how many bytes `reply` encodes to, from its lengths alone (no pass over it): enough to
/// tell the few replies that may be large.
fn size_hint(reply: &TrackerResponse) -> usize {
    match reply {
        TrackerResponse::FileMeta(m) => 32 * m.chunk_hashes.len() + m.name.len(),
        TrackerResponse::FileLocations(l) => {
            let bitmaps: usize = l
                .sources
                .iter()
                .map(|s| match &s.have {
                    Have::Partial(b) => b.as_bytes().len(),
                    Have::Complete => 0,
                })
                .sum();
            5 * l.availability.len() + 32 * l.sources.len() + bitmaps
        }
        TrackerResponse::FileList { files, .. } => files.iter().map(|f| f.name.len() + 64).sum(),
        TrackerResponse::Registered { results } => 16 * results.len(),
        _ => 0,
    }
}

/// One function per request kind, each returning the typed reply.
fn handle(registry: &Registry, peer: PeerId, req: TrackerRequest) -> TrackerResponse {
    use TrackerResponse as R;
    let reply = match req {
        TrackerRequest::Hello(_) => Err(RequestError::AlreadyOpen),
        TrackerRequest::Register(r) => {
            registry.register(peer, r.listen, r.files).map(|results| R::Registered { results })
        }
        TrackerRequest::FileList { after } => {
            let (files, more) = registry.list(after.as_deref());
            Ok(R::FileList { files, more })
        }
        // The session sends File Meta from the shared frame instead (see `file_meta`).
        TrackerRequest::FileMeta { name } => registry.meta(&name).map(R::FileMeta),
        TrackerRequest::FileLocations { name } => registry.locations(peer, &name).map(R::FileLocations),
        TrackerRequest::ChunkRegister { name, chunk } => {
            registry.chunk_register(peer, &name, chunk).map(|()| R::ChunkRegistered)
        }
        TrackerRequest::Leave => {
            registry.leave(peer);
            Ok(R::Left)
        }
        TrackerRequest::KeepAlive => Ok(R::KeepAlive),
    };
    reply.unwrap_or_else(R::Error)
}
