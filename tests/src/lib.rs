//! Helpers for the integration tests: start a tracker in-process on port 0, talk to it with a raw
//! protocol client, wait for conditions with a deadline (never a fixed sleep), make test files.
//! [`netns`] builds hosts on network namespaces for the real binaries (shared with
//! `cargo xtask bench swarm-netns`).

#![allow(clippy::unwrap_used, missing_docs)]

pub mod http;
pub mod netns;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use proto::codec::TrackerClientCodec;
use proto::limits::{DEFAULT_MAX_FRAME, MIN_CHUNK_SIZE};
use proto::tracker::{Register, RegisterFile, TrackerRequest, TrackerResponse, Welcome};
use proto::{FileMeta, Have, Hello};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Bytes in a MiB.
pub const MIB: usize = 1024 * 1024;

/// Every test body runs under this deadline.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn with_timeout<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut).await.expect("test timed out")
}

/// Polls `cond` until it holds, failing after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "condition not reached within {deadline:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A tracker on 127.0.0.1, port 0.
pub async fn spawn_tracker(config: tracker::Config) -> tracker::Tracker {
    init_logging();
    tracker::Tracker::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await.unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Metadata of a test file of `chunks` small chunks (the last one a few bytes short).
pub fn test_meta(name: &str, seed: u64, chunks: usize) -> FileMeta {
    let len = (chunks * MIN_CHUNK_SIZE as usize).saturating_sub(3);
    FileMeta::from_bytes(name, MIN_CHUNK_SIZE, &test_data(len, seed))
}

/// A bare tracker protocol client, for driving the tracker request by request.
pub struct RawClient {
    pub conn: Framed<TcpStream, TrackerClientCodec>,
    pub welcome: Welcome,
}

impl RawClient {
    /// Connects and completes the handshake.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = Framed::new(stream, TrackerClientCodec::new(DEFAULT_MAX_FRAME));
        conn.send(TrackerRequest::Hello(Hello::current())).await.unwrap();
        match conn.next().await.unwrap().unwrap().unwrap() {
            TrackerResponse::Welcome(welcome) => RawClient { conn, welcome },
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Sends a request and returns the reply.
    pub async fn call(&mut self, req: TrackerRequest) -> TrackerResponse {
        self.conn.send(req).await.unwrap();
        self.recv().await.expect("connection closed")
    }

    /// The next reply, or `None` when the tracker closed the connection.
    pub async fn recv(&mut self) -> Option<TrackerResponse> {
        match self.conn.next().await {
            Some(Ok(Ok(r))) => Some(r),
            Some(Ok(Err(e))) => panic!("undecodable reply: {e}"),
            Some(Err(_)) | None => None,
        }
    }

    /// Registers files at a listen port; returns the per-file results.
    pub async fn register(
        &mut self,
        port: u16,
        files: Vec<(FileMeta, Have)>,
    ) -> Vec<Result<(), proto::tracker::RejectReason>> {
        let files = files.into_iter().map(|(meta, have)| RegisterFile { meta, have }).collect();
        match self
            .call(TrackerRequest::Register(Register { listen: SocketAddr::from(([127, 0, 0, 1], port)), files }))
            .await
        {
            TrackerResponse::Registered { results } => results,
            other => panic!("expected Registered, got {other:?}"),
        }
    }

    /// Writes raw bytes to the socket, bypassing the codec.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        self.conn.get_mut().write_all_buf(&mut buf).await.unwrap();
    }
}

/// A peer node on 127.0.0.1, port 0, sharing `dir`, with timeouts shortened for tests.
pub async fn spawn_peer(
    tracker: SocketAddr,
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut peer::NodeConfig),
) -> peer::Node {
    init_logging();
    let mut cfg = peer::NodeConfig::new(tracker, dir);
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.download.poll_interval = Duration::from_millis(200);
    cfg.download.stall_timeout = Duration::from_secs(3);
    cfg.download.connect_timeout = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_secs(5);
    tweak(&mut cfg);
    peer::Node::start(cfg).await.unwrap()
}

/// The metadata a scan would give `data` under `name` (chunk size chosen by size).
pub fn meta_of(data: &[u8], name: &str) -> FileMeta {
    FileMeta::from_bytes(name, chunkstore::choose_chunk_size(data.len() as u64), data)
}

/// The bytes of `dir/name`.
pub fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// Writes chosen chunks of `data` as a partial download in `dir`, as if an earlier run fetched
/// them.
pub fn make_partial(dir: &std::path::Path, meta: &FileMeta, data: &[u8], chunks: impl Iterator<Item = u32>) {
    let store = chunkstore::Store::open(dir).unwrap();
    let p = store.open_partial(meta).unwrap();
    for c in chunks {
        let idx = meta.chunk(c).unwrap();
        let (off, len) = meta.chunk_range(idx);
        p.write_chunk(idx, &data[off as usize..off as usize + len as usize]).unwrap();
    }
}

/// Writes a file (creating folders) and returns its bytes.
pub fn write_file(dir: &std::path::Path, name: &str, len: usize, seed: u64) -> Vec<u8> {
    let data = test_data(len, seed);
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// How a fake source misbehaves after a correct handshake (it claims the whole file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// Answers every chunk with garbage of the right length.
    Corrupt,
    /// Never answers a chunk request.
    Stall,
    /// Starts each chunk's frame, then sends one byte every 200 ms.
    Trickle,
    /// Sends the header and half of the first chunk asked for, then closes.
    HalfThenClose,
}

/// A fake source for `meta` that misbehaves as told, on 127.0.0.1, any number of connections.
pub async fn spawn_fake_source(meta: FileMeta, how: Misbehave) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use proto::codec::PeerServerCodec;
    use proto::peer::{PeerRequest, PeerResponse};
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let meta = meta.clone();
            tokio::spawn(async move {
                let mut conn = Framed::new(stream, PeerServerCodec::new(DEFAULT_MAX_FRAME));
                while let Some(Ok(Ok(req))) = conn.next().await {
                    let chunk = match req {
                        PeerRequest::Hello { .. } => {
                            if conn.send(PeerResponse::Welcome { have: Have::Complete }).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        PeerRequest::GetChunk { chunk } | PeerRequest::GetFresh { chunk } => chunk,
                        PeerRequest::BatchedHaves => continue,
                    };
                    let Ok(idx) = meta.chunk(chunk) else { return };
                    let len = meta.chunk_range(idx).1;
                    let header = proto::codec::chunk_frame_header(chunk, len, DEFAULT_MAX_FRAME).unwrap();
                    let stream = conn.get_mut();
                    match how {
                        Misbehave::Corrupt => {
                            let data = bytes::Bytes::from(vec![0xAB; len as usize]);
                            if conn.send(PeerResponse::Chunk { chunk, data }).await.is_err() {
                                return;
                            }
                        }
                        Misbehave::Stall => std::future::pending::<()>().await,
                        Misbehave::Trickle => {
                            if stream.write_all(&header).await.is_err() {
                                return;
                            }
                            loop {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                if stream.write_all(&[0x55]).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Misbehave::HalfThenClose => {
                            let _ = stream.write_all(&header).await;
                            let _ = stream.write_all(&vec![0x55; len as usize / 2]).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

/// An honest source of `data` as a build of an earlier protocol version 3 serves it: it does not
/// know the request `BatchedHaves`, and answers it, as it answers any undecodable request, with
/// `Error(Malformed)`, then goes on. On 127.0.0.1, any number of connections.
pub async fn spawn_earlier_source(meta: FileMeta, data: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use proto::codec::PeerServerCodec;
    use proto::peer::{PeerError, PeerRequest, PeerResponse};
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = bytes::Bytes::from(data);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (meta, data) = (meta.clone(), data.clone());
            tokio::spawn(async move {
                let mut conn = Framed::new(stream, PeerServerCodec::new(DEFAULT_MAX_FRAME));
                while let Some(Ok(Ok(req))) = conn.next().await {
                    let reply = match req {
                        PeerRequest::Hello { .. } => PeerResponse::Welcome { have: Have::Complete },
                        PeerRequest::BatchedHaves => {
                            PeerResponse::Error(PeerError::Malformed("unknown variant index 3".into()))
                        }
                        PeerRequest::GetChunk { chunk } | PeerRequest::GetFresh { chunk } => {
                            let Ok(idx) = meta.chunk(chunk) else { return };
                            let (off, len) = meta.chunk_range(idx);
                            PeerResponse::Chunk { chunk, data: data.slice(off as usize..off as usize + len as usize) }
                        }
                    };
                    if conn.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// A fake source that answers every chunk with garbage of the right length.
pub async fn spawn_corrupt_source(meta: FileMeta) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    spawn_fake_source(meta, Misbehave::Corrupt).await
}

/// Registers fake sources at the tracker as complete holders of `meta`, through one session kept
/// alive in the background; abort the returned task to let the registration lapse.
pub async fn register_fakes(tracker: SocketAddr, meta: &FileMeta, ports: &[u16]) -> tokio::task::JoinHandle<()> {
    let mut sessions = Vec::new();
    for &port in ports {
        let mut c = RawClient::connect(tracker).await;
        assert_eq!(c.register(port, vec![(meta.clone(), Have::Complete)]).await, vec![Ok(())]);
        sessions.push(c);
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for c in &mut sessions {
                c.call(TrackerRequest::KeepAlive).await;
            }
        }
    })
}

/// This process's resident set size in bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

/// This process's open sockets (Linux; 0 elsewhere): what a leak of connections shows in. Other
/// descriptors are left out, because a test's neighbours in the same binary open some of their
/// own at moments of their own (a Tokio runtime's epoll and eventfd descriptors, as a test
/// thread starts).
pub fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Reads from the socket until the peer closes it; returns how long that took.
pub async fn time_until_closed(stream: &mut TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

/// A fake tracker for hostile-tracker tests: completes the handshake, then answers every request
/// with `answer(request)`. Serves any number of connections until aborted.
pub async fn spawn_fake_tracker(
    answer: impl Fn(TrackerRequest) -> TrackerResponse + Send + Sync + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use proto::codec::TrackerServerCodec;
    let answer = std::sync::Arc::new(answer);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, remote)) = listener.accept().await else { return };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut conn = Framed::new(stream, TrackerServerCodec::new(DEFAULT_MAX_FRAME));
                while let Some(Ok(Ok(req))) = conn.next().await {
                    let reply = match req {
                        TrackerRequest::Hello(_) => TrackerResponse::Welcome(Welcome {
                            version: proto::PROTOCOL_VERSION,
                            keepalive_ms: 1000,
                            session_timeout_ms: 3000,
                            observed: remote,
                            max_frame: DEFAULT_MAX_FRAME as u32,
                            max_files_per_register: 1024,
                        }),
                        other => answer(other),
                    };
                    if conn.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Every file under `root`, relative, sorted.
pub fn walk_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p.strip_prefix(root).unwrap().to_path_buf()),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Sorted latencies' percentile `p` (0..=1).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The `peer` and `tracker` binaries of this workspace (debug), built on first use, for tests
/// that run nodes as separate processes.
pub fn binary(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "peer", "-p", "tracker"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the peer and tracker binaries failed");
    });
    // target/debug/deps/<test binary> -> target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join(name);
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// Unmounts a folder when dropped, so a test that mounted something (a tmpfs, a read-only bind
/// mount) leaves nothing behind, even when it fails.
pub struct Unmount(pub std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Writes a folder of `n` files under `top/` in nested folders, sizes from 0 to a few MiB (most
/// small, as in real data sets); returns (name, bytes) sorted by name.
pub fn write_folder(dir: &std::path::Path, top: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let len = match (i % 100, i % 50) {
                (_, 0) => 0,
                (1, _) => 3 * MIB / 2 + i * 97,
                (_, 2..=6) => 60_000 + i * 31,
                _ => 1 + (i * 7919) % 16_000,
            };
            let name = format!("{top}/d{}/s{}/f{i:04}.bin", i % 7, i % 3);
            let data = write_file(dir, &name, len, i as u64 + 1);
            (name, data)
        })
        .collect();
    files.sort();
    files
}

/// Copies the files under `from` (not its `.p2p` state) to `to`.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for rel in walk_files(from) {
        if rel.starts_with(".p2p") {
            continue;
        }
        std::fs::create_dir_all(to.join(&rel).parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), to.join(&rel)).unwrap();
    }
}
