//! The upload server: accepts downloaders under a cap, and answers each connection's pipelined
//! chunk requests in order, reading chunks from disk by offset (complete files) or from the
//! verified chunks of partial downloads. Memory per connection is one chunk buffer, reused, plus
//! small buffers; chunk bytes go from that buffer to the socket without another copy.
//!
//! Fairness under hostile clients: connections are capped in total and per remote address (so one
//! host cannot take every slot), and a send that makes no progress for
//! [`ServeConfig::send_timeout`] ends its connection (so clients that never read cannot hold slots),
//! while a slow reader that keeps reading is served however long its replies take.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use proto::peer::{PeerError, PeerRequest, PeerResponse};
use proto::{validate_name, Bitmap, FileMeta, Hash};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use chunkstore::{Served, Store, StoreError};

use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::shares::{Shared, Shares};
use crate::task::TaskGroup;
use announce::Announcer;
use conn::{Conn, UploadError, GOODBYE_TIMEOUT};

/// Largest request frame after the handshake: requests are a few bytes.
const REQUEST_MAX_FRAME: usize = 1024;

/// Upload server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Concurrent downloader connections; extras get [`PeerError::Busy`].
    pub max_uploads: usize,
    /// Concurrent downloader connections from one IP address; extras get [`PeerError::Busy`].
    pub max_uploads_per_ip: usize,
    /// A connection that sends nothing for this long is closed; also the handshake deadline.
    pub idle_timeout: Duration,
    /// A reply whose bytes make no progress into the socket for this long ends the connection:
    /// the downloader is not reading. Measured per write, so a slow but steady reader is served.
    pub send_timeout: Duration,
    /// Announcements of chunks a downloading node stores go out to each downloader at most once
    /// per this interval on a write of their own (the first after a quiet spell at once), and with
    /// any reply sent meanwhile: see `serve_announce.rs`.
    pub announce_interval: Duration,
}

/// The default [`ServeConfig::announce_interval`].
pub(crate) const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_uploads: 256,
            max_uploads_per_ip: 4,
            idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(5),
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
        }
    }
}

/// What the server needs, shared by all connections.
pub(crate) struct Uploader {
    /// Served files.
    pub(crate) shares: Shares,
    /// Where complete files are read from.
    pub(crate) store: Store,
    /// The process-wide upload cap.
    pub(crate) limiter: Arc<RateLimiter>,
    /// Bytes sent and connections served, for reports and tests.
    pub(crate) stats: Arc<UploadStats>,
    /// Settings.
    pub(crate) config: ServeConfig,
    /// The node's metrics: bytes sent, by downloader.
    pub(crate) metrics: Arc<Metrics>,
    /// Per complete file (by root hash and chunk size), the chunks sent to anyone at least once,
    /// for [`PeerRequest::GetFresh`]. Shared by all connections: that is what spreads them.
    pub(crate) fresh: Mutex<HashMap<(Hash, u32), Fresh>>,
    /// Open upload connections per remote address and per IPv6 /64, for
    /// [`ServeConfig::max_uploads_per_ip`].
    pub(crate) per_ip: Mutex<HashMap<SlotKey, usize>>,
}

/// What a connection is counted under for the per-address caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SlotKey {
    /// One address (IPv4-mapped addresses as IPv4): at most `max_uploads_per_ip`.
    Addr(IpAddr),
    /// An IPv6 /64, which one host can fill with addresses of its own but a whole LAN also
    /// shares: at most [`PREFIX_FACTOR`] times `max_uploads_per_ip`, so many hosts on one IPv6
    /// LAN are served and one host with many addresses still cannot take every slot.
    Prefix64(u64),
}

/// How many addresses' worth of slots one IPv6 /64 may hold.
pub(crate) const PREFIX_FACTOR: usize = 16;

/// The keys a connection from `ip` is counted under, with each one's cap.
fn slot_keys(ip: IpAddr, per_ip: usize) -> Vec<(SlotKey, usize)> {
    match ip.to_canonical() {
        IpAddr::V6(v6) => vec![
            (SlotKey::Addr(IpAddr::V6(v6)), per_ip),
            (SlotKey::Prefix64((v6.to_bits() >> 64) as u64), per_ip.saturating_mul(PREFIX_FACTOR)),
        ],
        v4 => vec![(SlotKey::Addr(v4), per_ip)],
    }
}

/// One connection's places in [`Uploader::per_ip`], given back when dropped.
struct IpSlot {
    up: Arc<Uploader>,
    keys: Vec<SlotKey>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.up.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if let Some(n) = per_ip.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(key);
                }
            }
        }
    }
}

/// What the upload server has done, shared with the node for its reports.
#[derive(Debug, Default)]
pub(crate) struct UploadStats {
    /// Bytes of chunk data sent.
    pub(crate) uploaded: AtomicU64,
    /// Downloader connections accepted (not those refused at a cap).
    pub(crate) opened: AtomicU64,
    /// Downloader connections open now.
    pub(crate) open: AtomicU64,
}

/// Counts one connection as open while it lives, however its task ends.
struct OpenConnection(Arc<UploadStats>);

impl OpenConnection {
    fn new(stats: Arc<UploadStats>) -> Self {
        stats.opened.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The chunks of one file a server has sent to anyone, for [`PeerRequest::GetFresh`].
#[derive(Debug)]
pub(crate) struct Fresh {
    sent: Bitmap,
    /// Chunks never sent: once none of the asked chunk's length is left, every request is
    /// answered as asked without a scan.
    unsent: u32,
}

impl Uploader {
    /// A new server's shared state.
    pub(crate) fn new(
        shares: Shares,
        store: Store,
        limiter: Arc<RateLimiter>,
        stats: Arc<UploadStats>,
        config: ServeConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Uploader { shares, store, limiter, stats, config, metrics, fresh: Mutex::default(), per_ip: Mutex::default() }
    }

    /// Takes a connection slot for `remote` (see [`SlotKey`]), or None if its address already
    /// holds [`ServeConfig::max_uploads_per_ip`] or its IPv6 /64 [`PREFIX_FACTOR`] times that.
    fn ip_slot(self: &Arc<Self>, remote: SocketAddr) -> Option<IpSlot> {
        let keys = slot_keys(remote.ip(), self.config.max_uploads_per_ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.iter().any(|(key, cap)| per_ip.get(key).copied().unwrap_or(0) >= *cap) {
            return None;
        }
        for (key, _) in &keys {
            *per_ip.entry(*key).or_insert(0) += 1;
        }
        Some(IpSlot { up: self.clone(), keys: keys.into_iter().map(|(k, _)| k).collect() })
    }

    /// The chunk to send for a request of `chunk` of the complete file `meta`: `chunk` itself
    /// unless fresh was asked for, this server already sent it, and another chunk of the same
    /// length was never sent; then that one. Marks the answer sent. (The same length: a
    /// downloader waits for the frame of the chunk it asked for, see `lowat.rs`.)
    fn choose(&self, meta: &FileMeta, chunk: u32, fresh: bool) -> u32 {
        let mut all = self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
        let n = meta.num_chunks();
        let f = all.entry((meta.root, meta.chunk_size)).or_insert_with(|| Fresh { sent: Bitmap::new(n), unsent: n });
        if f.unsent == 0 {
            return chunk;
        }
        // Every chunk has the full size but a shorter last one, which is never a substitute.
        let last = n.saturating_sub(1);
        let short = |c: u32| c == last && meta.length % u64::from(meta.chunk_size.max(1)) != 0;
        let unsent_alike = if short(chunk) { 0 } else { f.unsent - u32::from(short(last) && !f.sent.get(last)) };
        let pick = if fresh && f.sent.get(chunk) && unsent_alike > 0 {
            // Start at a random place so connections do not all scan from the same end.
            let start = rand::random_range(0..n.max(1));
            (start..n).chain(0..start).find(|&c| !f.sent.get(c) && !short(c)).unwrap_or(chunk)
        } else {
            chunk
        };
        if f.sent.set(pick) {
            f.unsent -= 1;
        }
        pick
    }
}

/// Serves until `shutdown` is cancelled, then waits for connection tasks to end.
pub(crate) async fn serve(listener: TcpListener, up: Arc<Uploader>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(up.config.max_uploads));
    let tasks = TaskGroup::new(shutdown.clone());
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
        let mut conn = Conn::new(stream);
        // The address's slot first, so one address refused in bulk never holds a global slot.
        match up.ip_slot(remote).and_then(|slot| Some((slot, permits.clone().try_acquire_owned().ok()?))) {
            Some((slot, permit)) => {
                let up = up.clone();
                let open = OpenConnection::new(up.stats.clone());
                tasks.spawn_until(tracing::debug_span!("upload", %remote), async move {
                    let _held = (slot, permit, open);
                    if let Err(e) = connection(&mut conn, &up, remote).await {
                        debug!(error = %e, "upload ended");
                    }
                });
            }
            None => {
                debug!(%remote, "upload cap reached (in total or for this address)");
                tasks.spawn_until(tracing::debug_span!("refuse", %remote), async move {
                    let _ = conn.send(PeerResponse::Error(PeerError::Busy), GOODBYE_TIMEOUT).await;
                });
            }
        }
    }
    drop(listener);
    tasks.wait().await;
}

async fn connection(conn: &mut Conn, up: &Uploader, remote: SocketAddr) -> Result<(), UploadError> {
    let idle = up.config.idle_timeout;
    // By IP: a downloader's port is a fresh ephemeral one per connection.
    let tally = up.metrics.uploaded.tally(&remote.ip().to_canonical().to_string());
    let send = up.config.send_timeout;
    let (name, root) = match timeout(idle, conn.requests.next()).await {
        Ok(Some(Ok(Ok(PeerRequest::Hello { hello, name, root })))) => match hello.check() {
            Ok(()) => (name, root),
            Err(e) => return conn.refuse(PeerError::Handshake(e)).await,
        },
        Ok(Some(Ok(Ok(_)))) => return conn.refuse(PeerError::Handshake(proto::HandshakeError::Expected)).await,
        Ok(Some(Ok(Err(e)))) => return conn.refuse(PeerError::Malformed(e.to_string())).await,
        Ok(Some(Err(e))) => return Err(UploadError::Receive(e)),
        Ok(None) | Err(_) => return Ok(()),
    };
    if let Err(e) = validate_name(&name) {
        return conn.refuse(PeerError::InvalidName(e)).await;
    }
    let Some(shared) = up.shares.get(&name).filter(|s| s.meta().root == root) else {
        return conn.refuse(PeerError::UnknownFile).await;
    };
    let mut announcer = Announcer::new(&shared, up.config.announce_interval);
    // The Welcome is the announcer's snapshot: a chunk it lists is never announced again.
    conn.send(PeerResponse::Welcome { have: announcer.welcome(&shared) }, send).await?;
    conn.requests.decoder_mut().set_max_frame(REQUEST_MAX_FRAME);
    // One buffer for every chunk this connection sends: no allocation per chunk.
    let mut buf = Vec::new();
    let mut idle_until = Instant::now() + idle;
    // Failed reads are warned about once per connection, then counted: a client asking again and
    // again for a chunk that cannot be read must not flood the log.
    let mut failed_reads = ReadFailures { name: name.clone(), count: 0 };
    let mut open = OpenFile::default();
    let result = loop {
        let next = tokio::select! {
            // Requests first: a downloader's BatchedHaves, sent with its Hello, is seen before
            // any announcement goes out.
            biased;
            r = conn.requests.next() => r,
            () = announcer.due(&shared) => {
                if let Err(e) = conn.send_all(announcer.messages().into_iter(), send).await {
                    break Err(e);
                }
                // A downloader waiting for chunks it has not got is not idle: it has nothing to
                // ask until told of them, and is being told.
                idle_until = Instant::now() + idle;
                continue;
            }
            _ = tokio::time::sleep_until(idle_until) => break Ok(()),
        };
        idle_until = Instant::now() + idle;
        let (chunk, fresh) = match next {
            None => break Ok(()),
            Some(Err(e)) => break Err(UploadError::Receive(e)),
            Some(Ok(Err(e))) => {
                if let Err(e) = conn.send(PeerResponse::Error(PeerError::Malformed(e.to_string())), send).await {
                    break Err(e);
                }
                continue;
            }
            Some(Ok(Ok(PeerRequest::GetChunk { chunk }))) => (chunk, false),
            Some(Ok(Ok(PeerRequest::GetFresh { chunk }))) => (chunk, true),
            Some(Ok(Ok(PeerRequest::BatchedHaves))) => {
                announcer.batch();
                continue;
            }
            Some(Ok(Ok(PeerRequest::Hello { .. }))) => {
                if let Err(e) = conn.send(PeerResponse::Error(PeerError::Malformed("second hello".into())), send).await
                {
                    break Err(e);
                }
                continue;
            }
        };
        // Announcements pending go out in the same write as the answer. Taken before the chunk
        // is looked at, so a chunk stored meanwhile is announced after a DontHave for it, never
        // before (which would leave the downloader thinking it is not held).
        announcer.collect(&shared);
        if let Err(e) = conn.queue(announcer.messages()) {
            break Err(e);
        }
        // Look the file up again: a partial download may have been promoted to a complete file.
        // A complete file no longer served (removed, or changed and served anew) is not read
        // through the handle this connection kept.
        let current = match up.shares.get(&name).filter(|s| s.meta().root == root) {
            Some(current) => current,
            None if matches!(shared, Shared::Partial { .. }) => shared.clone(),
            None => {
                open.close();
                let reply = failed(&mut failed_reads, chunk, &"the file is no longer served");
                if let Err(e) = conn.send(reply, send).await {
                    break Err(e);
                }
                continue;
            }
        };
        let chunk = match &current {
            Shared::Complete(meta) if chunk < meta.num_chunks() => up.choose(meta, chunk, fresh),
            _ => chunk,
        };
        let (read, returned) = read_chunk(up, current, chunk, buf, &mut failed_reads, &mut open).await;
        buf = returned;
        let sent = match read {
            Ok(()) => {
                up.limiter.acquire(buf.len()).await;
                let r = conn.send_chunk(chunk, &buf, send).await;
                if r.is_ok() {
                    up.stats.uploaded.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    tally.add(buf.len() as u64);
                }
                r
            }
            Err(reply) => conn.send(reply, send).await,
        };
        if let Err(e) = sent {
            break Err(e);
        }
    };
    result
}

/// Failed chunk reads on one connection: the first is logged as a warning with its reason, the
/// rest only counted, and the count logged once when the connection ends, however it ends (so
/// also when its task is cancelled).
struct ReadFailures {
    name: String,
    count: u64,
}

impl ReadFailures {
    fn record(&mut self, chunk: u32, error: &dyn std::fmt::Display) {
        self.count += 1;
        if self.count == 1 {
            warn!(chunk, %error, "cannot read chunk for upload (further failures on this connection are counted)");
        } else {
            debug!(chunk, %error, "cannot read chunk for upload");
        }
    }
}

impl Drop for ReadFailures {
    fn drop(&mut self) {
        if self.count > 1 {
            warn!(name = self.name, failures = self.count, "chunk reads failed on this upload connection");
        }
    }
}

/// The complete file a connection serves, opened at its first chunk and kept for the next ones,
/// with its root and chunk size (a file served anew under the name is opened anew). Closed on a
/// blocking thread: closing the last handle of a file deleted meanwhile frees its blocks, which
/// for a large file takes a while, and the runtime's thread serves every connection.
#[derive(Default)]
struct OpenFile(Option<((Hash, u32), Arc<Served>)>);

impl OpenFile {
    /// The open file of `meta`, if that is the one held.
    fn get(&self, meta: &FileMeta) -> Option<Arc<Served>> {
        self.0.as_ref().filter(|(key, _)| *key == (meta.root, meta.chunk_size)).map(|(_, f)| f.clone())
    }

    fn set(&mut self, meta: &FileMeta, file: Arc<Served>) {
        self.close();
        self.0 = Some(((meta.root, meta.chunk_size), file));
    }

    fn close(&mut self) {
        if let Some((_, file)) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(file))),
                Err(_) => drop(file),
            }
        }
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads chunk `chunk` of `shared` into `buf`: in place when the whole chunk is in the page cache
/// (a copy, no thread hand-off), else on a blocking thread. Returns the buffer either way, and on
/// failure the reply to send instead.
async fn read_chunk(
    up: &Uploader,
    shared: Shared,
    chunk: u32,
    mut buf: Vec<u8>,
    failures: &mut ReadFailures,
    open: &mut OpenFile,
) -> (Result<(), PeerResponse>, Vec<u8>) {
    let Ok(idx) = shared.meta().chunk(chunk) else {
        return (Err(PeerResponse::Error(PeerError::ChunkOutOfRange { chunk })), buf);
    };
    let source = match &shared {
        Shared::Complete(meta) => match open.get(meta) {
            Some(file) => ChunkSource::File(file),
            None => {
                // Opening resolves the path below the share: a blocking thread's work.
                let (store, m) = (up.store.clone(), meta.clone());
                match tokio::task::spawn_blocking(move || store.open_served(&m)).await {
                    Ok(Ok(file)) => {
                        let file = Arc::new(file);
                        open.set(meta, file.clone());
                        ChunkSource::File(file)
                    }
                    Ok(Err(e)) => return (Err(failed(failures, chunk, &e)), buf),
                    Err(e) => return (Err(failed(failures, chunk, &e)), buf),
                }
            }
        },
        Shared::Partial { partial, .. } => ChunkSource::Partial(partial.clone()),
    };
    let read = match source.read_cached(idx, &mut buf) {
        Ok(true) => Ok(()),
        Ok(false) => match tokio::task::spawn_blocking(move || (source.read(idx, &mut buf), buf)).await {
            Ok((r, b)) => {
                buf = b;
                r
            }
            // The blocking task died with the buffer.
            Err(e) => return (Err(failed(failures, chunk, &e)), Vec::new()),
        },
        Err(e) => Err(e),
    };
    match read {
        Ok(()) => (Ok(()), buf),
        Err(StoreError::NotHeld { .. }) => (Err(PeerResponse::DontHave { chunk }), buf),
        Err(e) => {
            // The file may have changed: open it again for the next chunk.
            open.close();
            (Err(failed(failures, chunk, &e)), buf)
        }
    }
}

/// Where a connection reads a chunk from: the complete file it keeps open, or a download.
enum ChunkSource {
    File(Arc<Served>),
    Partial(chunkstore::Partial),
}

impl ChunkSource {
    /// The chunk, if all of it is in the page cache (see `Served::read_chunk_cached`).
    fn read_cached(&self, idx: proto::ChunkIndex, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        match self {
            ChunkSource::File(f) => f.read_chunk_cached(idx, buf),
            ChunkSource::Partial(p) => p.read_chunk_cached(idx, buf),
        }
    }

    /// The chunk, from the disk if need be: for a blocking thread.
    fn read(&self, idx: proto::ChunkIndex, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        match self {
            ChunkSource::File(f) => f.read_chunk_into(idx, buf),
            ChunkSource::Partial(p) => p.read_chunk_into(idx, buf),
        }
    }
}

/// Records a failed read and returns the reply that says so.
fn failed(failures: &mut ReadFailures, chunk: u32, e: &dyn std::fmt::Display) -> PeerResponse {
    failures.record(chunk, e);
    PeerResponse::Error(PeerError::Internal)
}

#[path = "serve_announce.rs"]
mod announce;
#[path = "serve_conn.rs"]
mod conn;

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
