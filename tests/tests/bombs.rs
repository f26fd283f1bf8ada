//! Length bombs against the tracker: length prefixes of 0xFFFFFFFF and max+1 on 1,000 connections
//! (before and after the handshake), and postcard bodies claiming huge Vec/String lengths inside
//! small frames. Each bad connection is closed promptly (or, for a bad body, answered with a typed
//! error), nothing large is allocated, RSS barely moves, and a fresh client is served afterwards.
//!
//! Alone in its test binary: it installs a counting global allocator and reads its own RSS.

#![allow(clippy::unwrap_used)]
// The counting allocator is the only unsafe code in the project: it forwards to the system
// allocator and records the largest request.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::codec::TrackerClientCodec;
use proto::limits::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
use proto::tracker::{RequestError, TrackerRequest, TrackerResponse};
use proto::Hello;
use tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    let mut c = Framed::new(TcpStream::connect(addr).await.unwrap(), TrackerClientCodec::new(1 << 20));
    c.send(TrackerRequest::Hello(Hello::current())).await.unwrap();
    assert!(matches!(c.next().await, Some(Ok(Ok(TrackerResponse::Welcome(_))))));
    c.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_bombs_are_closed_without_large_allocations() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let addr = t.addr();
        // Warm up, then measure from a baseline.
        let mut warm = RawClient::connect(addr).await;
        assert_eq!(warm.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        drop(warm);
        let rss_before = rss_bytes();
        let fds_before = open_sockets();
        COUNTING.store(true, Ordering::Relaxed);

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000u32 {
            tasks.spawn(async move {
                let (mut s, prefix) = match i % 4 {
                    0 => (TcpStream::connect(addr).await.unwrap(), u32::MAX),
                    1 => (TcpStream::connect(addr).await.unwrap(), HANDSHAKE_MAX_FRAME as u32 + 1),
                    2 => (handshaken(addr).await, u32::MAX),
                    _ => (handshaken(addr).await, DEFAULT_MAX_FRAME as u32 + 1),
                };
                s.write_all(&prefix.to_be_bytes()).await.unwrap();
                s.write_all(&[0u8; 64]).await.unwrap();
                time_until_closed(&mut s).await
            });
        }
        let mut slowest = Duration::ZERO;
        while let Some(r) = tasks.join_next().await {
            slowest = slowest.max(r.unwrap());
        }
        assert!(slowest < Duration::from_secs(2), "a bomb connection stayed open {slowest:?}");

        // Bodies that claim huge collections inside small frames: typed error, session goes on.
        let bombs: Vec<Vec<u8>> = vec![
            // Register { listen: V4 1.2.3.4:5, files: Vec claiming 2^32-1 entries }
            vec![1, 0, 1, 2, 3, 4, 5, 0xff, 0xff, 0xff, 0xff, 0x0f],
            // FileMeta { name: String claiming 2^32-1 bytes }
            vec![3, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'],
            // FileList { after: Some(String claiming 2^63 bytes) }
            vec![2, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ];
        for _ in 0..100 {
            let mut c = RawClient::connect(addr).await;
            for body in &bombs {
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(body);
                c.send_raw(&frame).await;
                assert!(matches!(c.recv().await, Some(TrackerResponse::Error(RequestError::Malformed(_)))));
            }
            assert_eq!(c.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        }
        COUNTING.store(false, Ordering::Relaxed);

        let largest = LARGEST.load(Ordering::Relaxed);
        let growth = rss_bytes().saturating_sub(rss_before);
        println!("length bombs: largest single allocation {largest} bytes, RSS growth {} KiB", growth / 1024);
        assert!(largest <= 2 * 1024 * 1024, "largest allocation {largest} bytes");
        assert!(growth < 64 * 1024 * 1024, "RSS grew {growth} bytes");

        // Still serving; sessions and descriptors back to baseline.
        let mut fresh = RawClient::connect(addr).await;
        assert_eq!(fresh.register(7000, vec![]).await, vec![]);
        drop(fresh);
        let reg = t.registry().clone();
        eventually("sessions back to zero", Duration::from_secs(5), || reg.stats().sessions == 0).await;
        eventually("fds back to baseline", Duration::from_secs(5), || open_sockets() <= fds_before + 2).await;
        t.shutdown().await.unwrap();
    })
    .await;
}
