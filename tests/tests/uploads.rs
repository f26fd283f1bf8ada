//! The upload server under hostile and careless clients: one address cannot take every slot,
//! clients that never read lose theirs at the send-progress deadline, failed reads do not flood
//! the log, and a share whose folders are swapped for links while it serves never sends a byte
//! from outside.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use peer::DownloadOptions;
use proto::codec::PeerClientCodec;
use proto::peer::{PeerError, PeerRequest, PeerResponse};
use proto::FileMeta;
use tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, Framed};

fn hello(meta: &FileMeta) -> PeerRequest {
    PeerRequest::Hello { hello: proto::Hello::current(), name: meta.name.clone(), root: meta.root }
}

/// Connects from `from` (any loopback address), says Hello and asks for `requests` chunks in one
/// write, then never reads.
async fn non_reader(to: SocketAddr, from: IpAddr, meta: &FileMeta, requests: u32) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(from, 0)).ok()?;
    let mut stream = sock.connect(to).await.ok()?;
    let mut codec = PeerClientCodec::new(1 << 20);
    let mut buf = BytesMut::new();
    codec.encode(hello(meta), &mut buf).unwrap();
    for i in 0..requests {
        codec.encode(PeerRequest::GetChunk { chunk: i % meta.num_chunks() }, &mut buf).unwrap();
    }
    stream.write_all(&buf).await.ok()?;
    Some(stream)
}

/// Hundreds of connections from one address that ask for chunks and never read take only that
/// address's few slots: a normal downloader on another address is served at once, not after the
/// send deadline (set long here, so only the per-address cap can explain a fast download).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_upload_slot() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let (s, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = write_file(s.path(), "f.bin", 4 * MIB, 31);
        let meta = meta_of(&data, "f.bin");
        let seed = spawn_peer(t.addr(), s.path(), |c| {
            c.serve.send_timeout = Duration::from_secs(60);
            c.serve.idle_timeout = Duration::from_secs(60);
        })
        .await;
        let hostile_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let mut hostile = Vec::new();
        for _ in 0..300 {
            if let Some(c) = non_reader(seed.listen_addr(), hostile_ip, &meta, 256).await {
                hostile.push(c);
            }
        }
        assert_eq!(hostile.len(), 300, "hostile connections opened");

        let downloader = spawn_peer(t.addr(), d.path(), |_| {}).await;
        let start = Instant::now();
        let report = downloader.download("f.bin", DownloadOptions::default()).await.unwrap();
        let took = start.elapsed();
        println!("download of 4 MiB beside 300 non-reading connections from one address: {took:?}");
        assert_eq!(read(d.path(), "f.bin"), data);
        assert!(report.fetched_chunks > 0);
        assert!(took < Duration::from_secs(20), "downloader waited {took:?}: slots were held");
        drop(hostile);
        downloader.shutdown().await;
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A client that asks for more than the socket buffers hold and never reads loses its slot once
/// its send makes no progress for `send_timeout`, not after the idle or any whole-reply deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_its_slot() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let s = tempfile::tempdir().unwrap();
        let data = write_file(s.path(), "f.bin", 8 * MIB, 32);
        let meta = meta_of(&data, "f.bin");
        let seed = spawn_peer(t.addr(), s.path(), |c| {
            c.serve.max_uploads = 1;
            c.serve.send_timeout = Duration::from_millis(500);
            c.serve.idle_timeout = Duration::from_secs(60);
        })
        .await;
        let start = Instant::now();
        // 64 MiB asked for: far more than any socket buffers.
        let _hostile = non_reader(seed.listen_addr(), IpAddr::V4(Ipv4Addr::LOCALHOST), &meta, 1024).await.unwrap();
        // Until the slot frees, others are told Busy; then one is welcomed.
        let freed = loop {
            let stream = TcpStream::connect(seed.listen_addr()).await.unwrap();
            let mut c = Framed::new(stream, PeerClientCodec::new(1 << 20));
            c.send(hello(&meta)).await.unwrap();
            match c.next().await {
                Some(Ok(Ok(PeerResponse::Welcome { .. }))) => break start.elapsed(),
                Some(Ok(Ok(PeerResponse::Error(PeerError::Busy)))) => {}
                other => panic!("unexpected reply {other:?}"),
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the slot was never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("slot of a non-reading client freed after {freed:?} (send_timeout 500 ms)");
        assert!(freed >= Duration::from_millis(400), "{freed:?}: freed before any deadline");
        assert!(freed < Duration::from_secs(10), "{freed:?}");
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A log sink that keeps the lines written to it.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A client asking over and over for a chunk that cannot be read (the file vanished) gets a typed
/// error each time, and the log gets one warning when it starts and one count when it ends, not
/// a line per request.
#[tokio::test]
async fn failed_reads_are_warned_about_once_per_connection() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime: every task of the peer logs on this thread, into this sink.
    let _guard = tracing::subscriber::set_default(subscriber);
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let s = tempfile::tempdir().unwrap();
        let data = write_file(s.path(), "f.bin", 256 * 1024, 33);
        let meta = meta_of(&data, "f.bin");
        let seed = spawn_peer(t.addr(), s.path(), |_| {}).await;
        std::fs::remove_file(s.path().join("f.bin")).unwrap();
        let stream = TcpStream::connect(seed.listen_addr()).await.unwrap();
        let mut c = Framed::new(stream, PeerClientCodec::new(1 << 20));
        c.send(hello(&meta)).await.unwrap();
        assert!(matches!(c.next().await, Some(Ok(Ok(PeerResponse::Welcome { .. })))));
        for i in 0..500 {
            c.send(PeerRequest::GetChunk { chunk: i % meta.num_chunks() }).await.unwrap();
            assert!(matches!(c.next().await, Some(Ok(Ok(PeerResponse::Error(PeerError::Internal))))));
        }
        drop(c);
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
    let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("peer::serve")).collect();
    println!("{}", lines.join("\n"));
    assert_eq!(lines.len(), 2, "expected one warning and one count:\n{log}");
    assert!(lines[1].contains("failures=500"), "{log}");
}

/// The peer serves a file in a folder that a local user swaps, atomically and over and over, with
/// a link to an outside folder holding a same-length file: every chunk the client receives is the
/// real one; the rest are refused. A connection opens the file at its first chunk and keeps it, so
/// the race is run with a new connection for every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_folder_for_a_link_never_serves_outside_bytes() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let tmp = tempfile::tempdir().unwrap();
        let (share, outside) = (tmp.path().join("share"), tmp.path().join("outside"));
        let data = write_file(&share, "d/f.bin", 512 * 1024, 34);
        let secret = write_file(&outside, "f.bin", 512 * 1024, 35);
        let meta = meta_of(&data, "d/f.bin");
        let seed = spawn_peer(t.addr(), &share, |c| c.serve.max_uploads_per_ip = 10_000).await;
        std::os::unix::fs::symlink(&outside, share.join("d-link")).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let swapper = std::thread::spawn({
            let (a, b, stop) = (share.join("d"), share.join("d-link"), stop.clone());
            move || {
                use rustix::fs::{renameat_with, RenameFlags, CWD};
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
                    renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
                    n += 1;
                }
                if n % 2 == 1 {
                    renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
                }
                n
            }
        });
        let (mut real, mut refused, mut leaked) = (0, 0, 0);
        for i in 0..1500 {
            let stream = TcpStream::connect(seed.listen_addr()).await.unwrap();
            let mut c = Framed::new(stream, PeerClientCodec::new(1 << 20));
            c.send(hello(&meta)).await.unwrap();
            assert!(matches!(c.next().await, Some(Ok(Ok(PeerResponse::Welcome { .. })))));
            let chunk = i % meta.num_chunks();
            c.send(PeerRequest::GetChunk { chunk }).await.unwrap();
            match c.next().await {
                Some(Ok(Ok(PeerResponse::Chunk { chunk: got, data: bytes }))) => {
                    let (off, len) = meta.chunk_range(meta.chunk(got).unwrap());
                    if bytes[..] == data[off as usize..(off + u64::from(len)) as usize] {
                        real += 1;
                    } else {
                        assert_eq!(bytes[..], secret[off as usize..(off + u64::from(len)) as usize]);
                        leaked += 1;
                    }
                }
                Some(Ok(Ok(PeerResponse::Error(PeerError::Internal)))) => refused += 1,
                other => panic!("unexpected reply {other:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        println!("swaps {swaps}: chunks served {real}, refused {refused}, from outside {leaked}");
        assert_eq!(leaked, 0, "chunks from outside the share were served");
        assert!(real > 0 && refused > 0, "the race did not happen");
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A connection keeps the complete file it serves open, but a file removed from the share is no
/// longer served through it: once the watcher has withdrawn it, requests get `Error(Internal)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_from_the_share_is_no_longer_served_to_open_connections() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let share = tempfile::tempdir().unwrap();
        let data = write_file(share.path(), "gone.bin", 512 * 1024, 36);
        let meta = meta_of(&data, "gone.bin");
        let seed = spawn_peer(t.addr(), share.path(), |c| c.watch = true).await;
        let stream = TcpStream::connect(seed.listen_addr()).await.unwrap();
        let mut c = Framed::new(stream, PeerClientCodec::new(1 << 20));
        c.send(hello(&meta)).await.unwrap();
        assert!(matches!(c.next().await, Some(Ok(Ok(PeerResponse::Welcome { .. })))));
        c.send(PeerRequest::GetChunk { chunk: 0 }).await.unwrap();
        assert!(matches!(c.next().await, Some(Ok(Ok(PeerResponse::Chunk { chunk: 0, .. })))));
        std::fs::remove_file(share.path().join("gone.bin")).unwrap();
        eventually("the file is withdrawn", Duration::from_secs(10), || seed.shares().get("gone.bin").is_none()).await;
        c.send(PeerRequest::GetChunk { chunk: 1 }).await.unwrap();
        match c.next().await {
            Some(Ok(Ok(PeerResponse::Error(PeerError::Internal)))) => {}
            other => panic!("expected Error(Internal), got {other:?}"),
        }
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}
