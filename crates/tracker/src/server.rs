//! The server loop: accepts connections under a cap, runs one task per connection (one session),
//! and owns the session's life: handshake, the loop that reads requests and flushes replies, and
//! its end. What each request is answered is in [`crate::handler`], how a reply is admitted and
//! queued in [`crate::reply`], and the socket itself in [`crate::link`]: the connection owns
//! framing, handlers take typed requests and return typed replies.
//!
//! The [`Tracker`] handle owns what it starts: dropping it stops the accept loop and every session
//! as `shutdown()` does, so a tracker nobody holds does not keep serving (or its port open).
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
//!   requests in large frames (Register's metadata, a long Chunk Register Batch) are decoded and
//!   checked there, and large replies encoded there, so hash merges and multi-megabyte encodes
//!   never hold up the async workers.
//!
//! What it logs at `info`: each session opened (from where, to which of the tracker's addresses)
//! and closed (how long it lasted, the files it held, why it ended, in words), each Register that
//! refuses anything (`handler.rs`), and a summary every `Config::summary_interval`
//! (`summary.rs`, a task of the tracker's like the accept loop).
//!
//! What it measures (`http/metrics.rs`, served by [`Tracker::serve_http`]): each request by kind
//! and outcome with its time from frame read to reply queued, measured in the session loop, and
//! each connection refused before its session (the cap, a bad or missing Hello).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::codec::WireMessage;
use proto::limits::HANDSHAKE_MAX_FRAME;
use proto::tracker::{RequestError, TrackerRequest, TrackerResponse, Welcome};
use proto::PROTOCOL_VERSION;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::backlog::Queued;
use crate::config::Config;
use crate::handler::{answer, malformed};
use crate::http::metrics::{Refusal, RequestKind};
use crate::http::{self, HttpBindError};
use crate::link::{Incoming, Link};
use crate::registry::Registry;
use crate::reply::{queue, Reply};
use crate::session::{flush, Caller, End, Shared};
use crate::summary::{self, Count, Kind};

/// Unsent reply bytes above which a session writes before it reads its next request: what one
/// connection may hold besides the reply it is sending (back-pressure: a client that does not
/// read is not read either, so its requests are not answered into memory).
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// A running tracker: its address, registry, and the handle that stops it. Dropping it stops the
/// tracker too (without waiting for its connections to close): see [`Tracker::shutdown`].
#[derive(Debug)]
pub struct Tracker {
    addr: SocketAddr,
    registry: Registry,
    /// What the sessions share: the HTTP listener reads its metrics and state.
    shared: Arc<Shared>,
    /// The HTTP listener's address and task, once started.
    http: Option<(SocketAddr, JoinHandle<()>)>,
    /// The tracker's token, cancelled when the handle is dropped: the accept loop and the
    /// sessions are detached tasks, which would otherwise serve on, port open, with nobody able
    /// to stop them.
    shutdown: DropGuard,
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
        let shared = Arc::new(Shared::new(config, registry.clone()));
        let task = tokio::spawn(run(listener, shared.clone(), shutdown.clone()));
        Tracker { addr, registry, shared, http: None, shutdown: shutdown.drop_guard(), task }
    }

    /// Binds `addr` (port 0 for any) and serves the tracker's HTTP there (metrics, health, the
    /// swarm page: see [`crate::http`]) until the tracker stops. Returns the bound address.
    pub async fn bind_http(&mut self, addr: SocketAddr) -> Result<SocketAddr, HttpBindError> {
        let listener = http::bind(addr).await?;
        self.serve_http(listener).map_err(|source| HttpBindError { addr, source })
    }

    /// Serves the tracker's HTTP on an already-bound listener until the tracker stops. Returns
    /// its address. One HTTP listener per tracker: a second is refused (`AlreadyExists`).
    pub fn serve_http(&mut self, listener: TcpListener) -> io::Result<SocketAddr> {
        if self.http.is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the tracker already serves HTTP"));
        }
        let addr = listener.local_addr()?;
        let task = tokio::spawn(http::serve(listener, self.shared.clone(), self.shutdown.token().clone()));
        self.http = Some((addr, task));
        Ok(addr)
    }

    /// The HTTP listener's address, if it serves HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(addr, _)| *addr)
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
        self.shared.backlog.total()
    }

    /// A token that stops the tracker when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.token().clone()
    }

    /// Stops accepting, tells every session, and waits for all connection tasks to end.
    pub async fn shutdown(self) -> io::Result<()> {
        self.shutdown.token().cancel();
        self.wait().await
    }

    /// Waits until the tracker stops (after its token is cancelled). The handle, and with it the
    /// tracker, lives as long as this future: dropping the future stops the tracker.
    pub async fn wait(mut self) -> io::Result<()> {
        // Only the tasks are awaited: the guard stays in `self`, held until the tracker has
        // stopped, so waiting does not itself stop it.
        let served = (&mut self.task).await.map_err(io::Error::other)?;
        if let Some((_, task)) = self.http.take() {
            // The HTTP task stops on the same token, within its grace period.
            task.await.map_err(io::Error::other)?;
        }
        served
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
    run(listener, Arc::new(Shared::new(config, registry)), shutdown).await
}

async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let tasks = TaskTracker::new();
    info!(addr = %listener.local_addr()?, "tracker listening");
    // Stops with the tracker: the token ends it, and the wait below waits for it.
    tasks.spawn(summary::run(shared.clone(), shutdown.clone()));
    shared.accepting.store(true, Ordering::Relaxed);
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
                shared.metrics.refused(Refusal::MaxConnections);
                let max = shared.config.max_connections;
                let link = Link::new(stream, HANDSHAKE_MAX_FRAME, HANDSHAKE_MAX_FRAME);
                tasks.spawn(link.goodbye(RequestError::TooManyConnections { max }));
            }
        }
    }
    shared.accepting.store(false, Ordering::Relaxed);
    drop(listener);
    tasks.close();
    tasks.wait().await;
    info!("tracker stopped");
    Ok(())
}

async fn connection(stream: TcpStream, remote: SocketAddr, shared: &Shared, shutdown: &CancellationToken) {
    let config = &shared.config;
    // An IPv4 client of a dual-stack listener shows as `::ffff:a.b.c.d`: it is `a.b.c.d`.
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    // The tracker's address this client reached: where it reaches the peers on the tracker's own
    // host (see `Registry::locations_via`). An accepted socket always has one; were it unknown,
    // loopback is the one address sure to be this host.
    let local = stream.local_addr().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip().to_canonical());
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
            shared.metrics.refused(Refusal::Handshake);
            return link.goodbye(RequestError::Malformed(e.to_string())).await;
        }
        Ok(None) => return,
        Err(_) => {
            shared.metrics.refused(Refusal::HandshakeTimeout);
            return;
        }
    };
    if let Err(e) = hello {
        debug!(error = %e, "handshake refused");
        shared.metrics.refused(Refusal::Handshake);
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
    let opened = Instant::now();
    info!("session opened from {remote} (to {local})");
    let caller = Caller { peer, remote, local };
    let end = session(&mut link, &caller, shared, &queued, shutdown).await;
    let held = Count(shared.registry.close_session(peer), "file");
    let lasted = opened.elapsed();
    // A failure of the tracker's own (a bug) is a warning; every other end is the network's way.
    if matches!(end, End::Panicked) {
        warn!("session from {remote} closed after {lasted:.1?}, holding {held}: {end}");
    } else {
        info!("session from {remote} closed after {lasted:.1?}, holding {held}: {end}");
    }
    match end {
        End::Framing(e) => {
            debug!(error = %e, "closing on framing error");
            link.goodbye(RequestError::Malformed(e.to_string())).await;
        }
        End::Shutdown => link.goodbye(RequestError::ShuttingDown).await,
        _ => {}
    }
}

async fn session(
    link: &mut Link,
    caller: &Caller,
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
        // From here to the reply queued is what the latency histogram measures.
        let started = std::time::Instant::now();
        let (kind, reply) = match next {
            Err(_) => return End::Expired,
            Ok(None) => {
                // A client that pipelined and then half-closed still gets the replies queued.
                let _ = flush(link, idle, queued, shutdown).await;
                return End::Closed;
            }
            Ok(Some(Err(e))) => return End::Framing(e),
            Ok(Some(Ok(Err(e)))) => {
                shared.counters.count(Kind::Other);
                (RequestKind::Malformed, Reply::Message(malformed(e)))
            }
            Ok(Some(Ok(Ok(frame)))) => match answer(shared, caller, frame, queued, shutdown).await {
                Ok(reply) => reply,
                Err(end) => return end,
            },
        };
        let failed = reply.is_error();
        if let Err(end) = queue(link, reply, shared, queued, shutdown).await {
            return end;
        }
        shared.metrics.request(kind, failed, started.elapsed());
    }
}
