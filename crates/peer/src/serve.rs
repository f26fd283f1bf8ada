//! The upload server: accepts downloaders under a cap, and answers each connection's pipelined
//! chunk requests in order, reading chunks from disk by offset (complete files) or from the
//! verified chunks of partial downloads. Memory per connection is one chunk plus small buffers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::codec::PeerServerCodec;
use proto::limits::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
use proto::peer::{PeerError, PeerRequest, PeerResponse};
use proto::{validate_name, FileMeta};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use chunkstore::{Store, StoreError};

use crate::ratelimit::RateLimiter;
use crate::shares::{Shared, Shares};

type Conn = Framed<TcpStream, PeerServerCodec>;

/// Upload server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Concurrent downloader connections; extras get [`PeerError::Busy`].
    pub max_uploads: usize,
    /// A connection that sends nothing for this long is closed; also the handshake deadline.
    pub idle_timeout: Duration,
}

/// What the server needs, shared by all connections.
pub struct Uploader {
    /// Served files.
    pub shares: Shares,
    /// Where complete files are read from.
    pub store: Store,
    /// The process-wide upload cap.
    pub limiter: Arc<RateLimiter>,
    /// Bytes of chunk data sent, for reports and tests.
    pub uploaded: Arc<AtomicU64>,
    /// Settings.
    pub config: ServeConfig,
}

/// Serves until `shutdown` is cancelled, then waits for connection tasks to end.
pub async fn serve(listener: TcpListener, up: Arc<Uploader>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(up.config.max_uploads));
    let tasks = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut conn = Framed::new(stream, PeerServerCodec::with_limits(HANDSHAKE_MAX_FRAME, DEFAULT_MAX_FRAME));
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (up, shutdown) = (up.clone(), shutdown.clone());
                tasks.spawn(
                    async move {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            r = connection(&mut conn, &up) => if let Err(e) = r { debug!(error = %e, "upload ended") },
                        }
                        drop(permit);
                    }
                    .instrument(tracing::debug_span!("upload", %remote)),
                );
            }
            Err(_) => {
                tasks.spawn(async move {
                    let _ = timeout(Duration::from_secs(1), conn.send(PeerResponse::Error(PeerError::Busy))).await;
                });
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

async fn connection(conn: &mut Conn, up: &Uploader) -> Result<(), String> {
    let idle = up.config.idle_timeout;
    let (name, root) = match timeout(idle, conn.next()).await {
        Ok(Some(Ok(Ok(PeerRequest::Hello { hello, name, root })))) => match hello.check() {
            Ok(()) => (name, root),
            Err(e) => return refuse(conn, PeerError::Handshake(e)).await,
        },
        Ok(Some(Ok(Ok(_)))) => return refuse(conn, PeerError::Handshake(proto::HandshakeError::Expected)).await,
        Ok(Some(Ok(Err(e)))) => return refuse(conn, PeerError::Malformed(e.to_string())).await,
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(None) | Err(_) => return Ok(()),
    };
    if let Err(e) = validate_name(&name) {
        return refuse(conn, PeerError::InvalidName(e)).await;
    }
    let Some(shared) = up.shares.get(&name).filter(|s| s.meta().root == root) else {
        return refuse(conn, PeerError::UnknownFile).await;
    };
    send(conn, PeerResponse::Welcome { have: shared.have() }, idle).await?;
    loop {
        let chunk = match timeout(idle, conn.next()).await {
            Err(_) | Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(Err(e)))) => {
                send(conn, PeerResponse::Error(PeerError::Malformed(e.to_string())), idle).await?;
                continue;
            }
            Ok(Some(Ok(Ok(PeerRequest::GetChunk { chunk })))) => chunk,
            Ok(Some(Ok(Ok(PeerRequest::Hello { .. })))) => {
                send(conn, PeerResponse::Error(PeerError::Malformed("second hello".into())), idle).await?;
                continue;
            }
        };
        // Look the file up again: a partial download may have been promoted to a complete file.
        let current = up.shares.get(&name).filter(|s| s.meta().root == root).unwrap_or_else(|| shared.clone());
        let reply = read_chunk(up, current, chunk).await;
        if let PeerResponse::Chunk { data, .. } = &reply {
            up.limiter.acquire(data.len()).await;
            up.uploaded.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        send(conn, reply, idle).await?;
    }
}

async fn read_chunk(up: &Uploader, shared: Shared, chunk: u32) -> PeerResponse {
    let meta: &FileMeta = shared.meta();
    let Ok(idx) = meta.chunk(chunk) else { return PeerResponse::Error(PeerError::ChunkOutOfRange { chunk }) };
    let store = up.store.clone();
    let read = tokio::task::spawn_blocking(move || match &shared {
        Shared::Complete(meta) => store.read_chunk(meta, idx),
        Shared::Partial(p) => p.read_chunk(idx),
    })
    .await;
    match read {
        Ok(Ok(data)) => PeerResponse::Chunk { chunk, data },
        Ok(Err(StoreError::NotHeld { .. })) => PeerResponse::DontHave { chunk },
        Ok(Err(e)) => {
            warn!(chunk, error = %e, "cannot read chunk for upload");
            PeerResponse::Error(PeerError::Internal)
        }
        Err(e) => {
            warn!(chunk, error = %e, "chunk read task failed");
            PeerResponse::Error(PeerError::Internal)
        }
    }
}

async fn send(conn: &mut Conn, msg: PeerResponse, deadline: Duration) -> Result<(), String> {
    match timeout(deadline, conn.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("send timed out".into()),
    }
}

async fn refuse(conn: &mut Conn, e: PeerError) -> Result<(), String> {
    debug!(error = %e, "refusing downloader");
    let _ = timeout(Duration::from_secs(1), conn.send(PeerResponse::Error(e))).await;
    Ok(())
}
