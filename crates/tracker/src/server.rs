//! The server loop: accepts connections under a cap, runs one task per connection (one session),
//! and dispatches each typed request to the registry. The connection owns framing; handlers take
//! typed requests and return typed replies.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{FutureExt, SinkExt, StreamExt};
use proto::codec::{CodecError, TrackerServerCodec};
use proto::limits::HANDSHAKE_MAX_FRAME;
use proto::tracker::{RequestError, TrackerRequest, TrackerResponse, Welcome};
use proto::PROTOCOL_VERSION;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::Config;
use crate::registry::{PeerId, Registry};

type Conn = Framed<TcpStream, TrackerServerCodec>;

/// How long a goodbye (an error before closing) may take to send.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running tracker: its address, registry, and the handle that stops it.
#[derive(Debug)]
pub struct Tracker {
    addr: SocketAddr,
    registry: Registry,
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
        let task = tokio::spawn(serve(listener, config, registry.clone(), shutdown.clone()));
        Tracker { addr, registry, shutdown, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry, for inspection.
    pub fn registry(&self) -> &Registry {
        &self.registry
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

/// Serves `listener` until `shutdown` is cancelled, then closes the listener and waits for every
/// connection task to finish.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections));
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
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (config, registry, shutdown) = (config.clone(), registry.clone(), shutdown.clone());
                tasks.spawn(
                    async move {
                        connection(stream, remote, &config, &registry, &shutdown).await;
                        drop(permit);
                    }
                    .instrument(tracing::debug_span!("session", %remote)),
                );
            }
            Err(_) => {
                debug!(%remote, "connection cap reached");
                let max = config.max_connections;
                tasks.spawn(goodbye(
                    Framed::new(stream, TrackerServerCodec::new(HANDSHAKE_MAX_FRAME)),
                    RequestError::TooManyConnections { max },
                ));
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    info!("tracker stopped");
    Ok(())
}

async fn goodbye(mut conn: Conn, err: RequestError) {
    let _ = timeout(GOODBYE_TIMEOUT, conn.send(TrackerResponse::Error(err))).await;
}

/// What ended a session, for the log.
#[derive(Debug)]
enum End {
    Closed,
    Expired,
    Shutdown,
    Framing(CodecError),
    SendFailed,
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    config: &Config,
    registry: &Registry,
    shutdown: &CancellationToken,
) {
    let mut conn = Framed::new(stream, TrackerServerCodec::with_limits(HANDSHAKE_MAX_FRAME, config.max_frame));
    // Handshake: the first frame must be a Hello, within the deadline and the small frame limit.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = timeout(config.handshake_timeout, conn.next()) => r,
    };
    let hello = match first {
        Ok(Some(Ok(Ok(TrackerRequest::Hello(h))))) => h.check().map_err(RequestError::Handshake),
        Ok(Some(Ok(Ok(_)))) => Err(RequestError::Handshake(proto::HandshakeError::Expected)),
        Ok(Some(Ok(Err(e)))) => Err(RequestError::Malformed(e.to_string())),
        Ok(Some(Err(e))) => {
            debug!(error = %e, "framing error before handshake");
            return goodbye(conn, RequestError::Malformed(e.to_string())).await;
        }
        Ok(None) | Err(_) => return,
    };
    if let Err(e) = hello {
        debug!(error = %e, "handshake refused");
        return goodbye(conn, e).await;
    }
    let welcome = TrackerResponse::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        keepalive_ms: config.keepalive.as_millis() as u64,
        session_timeout_ms: config.session_timeout.as_millis() as u64,
        observed: remote,
        max_frame: u32::try_from(config.max_frame).unwrap_or(u32::MAX),
        max_files_per_register: u32::try_from(config.limits.max_files_per_register).unwrap_or(u32::MAX),
    });
    if !matches!(timeout(config.session_timeout, conn.send(welcome)).await, Ok(Ok(()))) {
        return;
    }
    conn.codec_mut().set_max_frame(config.max_frame);

    let peer = registry.open_session(remote);
    let end = session(&mut conn, peer, config, registry, shutdown).await;
    registry.close_session(peer);
    match end {
        End::Framing(e) => {
            debug!(error = %e, "closing on framing error");
            goodbye(conn, RequestError::Malformed(e.to_string())).await;
        }
        End::Shutdown => goodbye(conn, RequestError::ShuttingDown).await,
        other => debug!(end = ?other, "session ended"),
    }
}

async fn session(
    conn: &mut Conn,
    peer: PeerId,
    config: &Config,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> End {
    loop {
        // Requests already buffered are answered before anything is flushed, so a client that
        // pipelines gets its replies in one write; the flush happens only when the next request
        // is not there yet.
        let next = match conn.next().now_or_never() {
            Some(r) => Ok(r),
            None => {
                if !matches!(timeout(config.session_timeout, conn.flush()).await, Ok(Ok(()))) {
                    return End::SendFailed;
                }
                shrink_buffers(conn);
                // The session timeout bounds both silence and how long any one frame may take.
                tokio::select! {
                    _ = shutdown.cancelled() => return End::Shutdown,
                    r = timeout(config.session_timeout, conn.next()) => r,
                }
            }
        };
        let reply = match next {
            Err(_) => return End::Expired,
            Ok(None) => {
                // A client that pipelined and then half-closed still gets the replies queued.
                let _ = timeout(config.session_timeout, conn.flush()).await;
                return End::Closed;
            }
            Ok(Some(Err(e))) => return End::Framing(e),
            Ok(Some(Ok(Err(e)))) => TrackerResponse::Error(RequestError::Malformed(e.to_string())),
            Ok(Some(Ok(Ok(req)))) => handle(registry, peer, req),
        };
        match timeout(config.session_timeout, conn.feed(reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(CodecError::FrameTooLarge { len, max })) => {
                // Nothing was written: say so instead of leaving the client waiting.
                warn!(len, max, "reply exceeds the frame limit");
                let err = TrackerResponse::Error(RequestError::ReplyTooLarge { len, max });
                if !matches!(timeout(config.session_timeout, conn.feed(err)).await, Ok(Ok(()))) {
                    return End::SendFailed;
                }
            }
            Ok(Err(_)) | Err(_) => return End::SendFailed,
        }
    }
}

/// Buffers above this capacity are released once empty: one large Register must not pin its
/// frame's worth of memory for the rest of a long, mostly idle session.
const KEEP_BUFFER: usize = 64 * 1024;

fn shrink_buffers(conn: &mut Conn) {
    if conn.read_buffer().is_empty() && conn.read_buffer().capacity() > KEEP_BUFFER {
        *conn.read_buffer_mut() = BytesMut::new();
    }
    if conn.write_buffer().is_empty() && conn.write_buffer().capacity() > KEEP_BUFFER {
        *conn.write_buffer_mut() = BytesMut::new();
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
        TrackerRequest::FileMeta { name } => registry.meta(&name).map(|m| R::FileMeta((*m).clone())),
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
