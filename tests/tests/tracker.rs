//! Tracker integration tests: a real tracker in-process on port 0, driven over TCP by raw protocol
//! clients. No fixed sleeps: every wait is for a condition, under a deadline.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::bitmap::{Bitmap, Have};
use proto::codec::{TrackerClientCodec, LEN_PREFIX};
use proto::tracker::*;
use proto::{HandshakeError, Hello, NameError};
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

fn cfg() -> tracker::Config {
    tracker::Config::default()
}

#[tokio::test]
async fn every_request_happy_path() {
    with_timeout(async {
        let t = spawn_tracker(cfg()).await;
        let mut a = RawClient::connect(t.addr()).await;
        let mut b = RawClient::connect(t.addr()).await;
        assert_eq!(a.welcome.observed.ip(), t.addr().ip());
        let m = test_meta("photos/climbing.jpg", 1, 5);
        assert_eq!(a.register(7001, vec![(m.clone(), Have::Complete)]).await, vec![Ok(())]);

        match b.call(TrackerRequest::FileList { after: None }).await {
            TrackerResponse::FileList { files, more } => {
                assert!(!more);
                assert_eq!(files.len(), 1);
                assert_eq!(
                    (files[0].name.as_str(), files[0].length, files[0].root),
                    (m.name.as_str(), m.length, m.root)
                );
                assert_eq!((files[0].sources, files[0].complete_sources), (1, 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            b.call(TrackerRequest::FileMeta { name: m.name.clone() }).await,
            TrackerResponse::FileMeta(std::sync::Arc::new(m.clone()))
        );

        let loc = |r| match r {
            TrackerResponse::FileLocations(l) => l,
            other => panic!("{other:?}"),
        };
        let l = loc(b.call(TrackerRequest::FileLocations { name: m.name.clone() }).await);
        assert_eq!(l.sources, vec![SourceInfo { addr: "127.0.0.1:7001".parse().unwrap(), have: Have::Complete }]);
        assert_eq!(l.availability, vec![1; 5]);

        // b becomes a source of chunk 3 by registering it.
        assert_eq!(b.register(7002, vec![]).await, vec![]);
        assert_eq!(
            b.call(TrackerRequest::ChunkRegister { name: m.name.clone(), chunk: 3 }).await,
            TrackerResponse::ChunkRegistered
        );
        let l = loc(a.call(TrackerRequest::FileLocations { name: m.name.clone() }).await);
        let mut want = Bitmap::new(5);
        want.set(3);
        assert_eq!(l.sources, vec![SourceInfo { addr: "127.0.0.1:7002".parse().unwrap(), have: Have::Partial(want) }]);
        assert_eq!(l.availability, vec![1, 1, 1, 2, 1]);

        assert_eq!(a.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        assert_eq!(a.call(TrackerRequest::Leave).await, TrackerResponse::Left);
        let l = loc(b.call(TrackerRequest::FileLocations { name: m.name.clone() }).await);
        assert_eq!((l.total_sources, l.availability), (0, vec![0, 0, 0, 1, 0]));
        assert_eq!(b.call(TrackerRequest::Leave).await, TrackerResponse::Left);
        assert_eq!(
            b.call(TrackerRequest::FileMeta { name: m.name.clone() }).await,
            TrackerResponse::Error(RequestError::UnknownFile(m.name.clone())),
            "a file with no sources left disappears"
        );
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn every_rejection_reason_over_the_wire() {
    with_timeout(async {
        let mut config = cfg();
        config.limits.max_files_per_session = 3;
        let t = spawn_tracker(config).await;
        let mut a = RawClient::connect(t.addr()).await;
        let mut b = RawClient::connect(t.addr()).await;
        let good = test_meta("f", 1, 2);
        let mut conflict = test_meta("f", 2, 2);
        conflict.name = "f".into();
        let mut bad_name = test_meta("x", 1, 1);
        bad_name.name = "../../etc/passwd".into();
        let mut bad_hashes = test_meta("h", 1, 3);
        bad_hashes.chunk_hashes.pop();
        assert_eq!(a.register(7001, vec![(good.clone(), Have::Complete)]).await, vec![Ok(())]);
        let res = b
            .register(
                7002,
                vec![
                    (conflict, Have::Complete),
                    (bad_name, Have::Complete),
                    (bad_hashes, Have::Complete),
                    (test_meta("p", 1, 2), Have::Partial(Bitmap::new(9))),
                    (test_meta("d", 1, 1), Have::Complete),
                    (test_meta("d", 1, 1), Have::Complete),
                    (test_meta("e", 1, 1), Have::Complete),
                    (test_meta("g", 1, 1), Have::Complete),
                    (test_meta("i", 1, 1), Have::Complete),
                ],
            )
            .await;
        assert_eq!(res[0], Err(RejectReason::ContentConflict { existing: good.root }));
        assert_eq!(res[1], Err(RejectReason::InvalidName(NameError::DotComponent)));
        assert!(matches!(res[2], Err(RejectReason::InconsistentMeta(proto::MetaError::HashCount { .. }))));
        assert_eq!(res[3], Err(RejectReason::BitmapLength { want: 2, got: 9 }));
        assert_eq!(
            &res[4..],
            &[Ok(()), Err(RejectReason::Duplicate), Ok(()), Ok(()), Err(RejectReason::SessionQuota { max: 3 })]
        );

        let mut c = RawClient::connect(t.addr()).await;
        let e = |r| match r {
            TrackerResponse::Error(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            e(c.call(TrackerRequest::ChunkRegister { name: "f".into(), chunk: 0 }).await),
            RequestError::NotRegistered
        );
        c.register(7003, vec![]).await;
        assert_eq!(
            e(c.call(TrackerRequest::ChunkRegister { name: "nope".into(), chunk: 0 }).await),
            RequestError::UnknownFile("nope".into())
        );
        assert_eq!(
            e(c.call(TrackerRequest::ChunkRegister { name: "f".into(), chunk: 2 }).await),
            RequestError::ChunkOutOfRange { chunk: 2, num_chunks: 2 }
        );
        assert_eq!(
            e(c.call(TrackerRequest::ChunkRegister { name: "f".into(), chunk: u32::MAX }).await),
            RequestError::ChunkOutOfRange { chunk: u32::MAX, num_chunks: 2 }
        );
        assert!(matches!(
            e(c.call(TrackerRequest::FileLocations { name: "/abs".into() }).await),
            RequestError::InvalidName(NameError::Absolute)
        ));
        assert_eq!(
            e(c.call(TrackerRequest::FileLocations { name: "zzz".into() }).await),
            RequestError::UnknownFile("zzz".into())
        );
        assert_eq!(e(c.call(TrackerRequest::Hello(Hello::current())).await), RequestError::AlreadyOpen);
        let files = vec![RegisterFile { meta: test_meta("q", 1, 1), have: Have::Complete }; 1025];
        let listen = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            e(c.call(TrackerRequest::Register(Register { listen, files })).await),
            RequestError::TooManyFiles { got: 1025, max: 1024 }
        );
        let listen = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            e(c.call(TrackerRequest::Register(Register { listen, files: vec![] })).await),
            RequestError::BadEndpoint(listen)
        );
        // State unchanged by all of that: f still has exactly a as its source.
        let (list, _) = t.registry().list(None);
        assert_eq!(
            list.iter().map(|f| (f.name.as_str(), f.sources)).collect::<Vec<_>>(),
            vec![("d", 1), ("e", 1), ("f", 1), ("g", 1)]
        );
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn sessions_cannot_touch_each_other() {
    with_timeout(async {
        let t = spawn_tracker(cfg()).await;
        let mut a = RawClient::connect(t.addr()).await;
        let mut b = RawClient::connect(t.addr()).await;
        let m = test_meta("f", 1, 4);
        let mut half = Bitmap::new(4);
        half.set(0);
        a.register(7001, vec![(m.clone(), Have::Partial(half))]).await;
        b.register(7002, vec![]).await;
        // b registering chunks of f only ever changes b's own holding.
        for _ in 0..100 {
            b.call(TrackerRequest::ChunkRegister { name: "f".into(), chunk: 1 }).await;
        }
        assert_eq!(b.call(TrackerRequest::Leave).await, TrackerResponse::Left);
        let mut c = RawClient::connect(t.addr()).await;
        match c.call(TrackerRequest::FileLocations { name: "f".into() }).await {
            TrackerResponse::FileLocations(l) => {
                assert_eq!(l.sources.len(), 1);
                assert_eq!(l.sources[0].addr.port(), 7001);
                assert_eq!(l.availability, vec![1, 0, 0, 0]);
            }
            other => panic!("{other:?}"),
        }
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn disconnect_is_an_implicit_leave() {
    with_timeout(async {
        let t = spawn_tracker(cfg()).await;
        let mut a = RawClient::connect(t.addr()).await;
        a.register(7001, vec![(test_meta("f", 1, 2), Have::Complete)]).await;
        assert_eq!(t.registry().stats().files, 1);
        drop(a);
        let reg = t.registry().clone();
        eventually("file removed after disconnect", Duration::from_secs(5), || reg.stats().files == 0).await;
        eventually("session closed", Duration::from_secs(5), || reg.stats().sessions == 0).await;
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn missed_keepalives_expire_the_session() {
    with_timeout(async {
        let mut config = cfg();
        config.keepalive = Duration::from_millis(50);
        config.session_timeout = Duration::from_millis(300);
        let t = spawn_tracker(config).await;
        let mut silent = RawClient::connect(t.addr()).await;
        let mut alive = RawClient::connect(t.addr()).await;
        assert_eq!(alive.welcome.keepalive_ms, 50);
        silent.register(7001, vec![(test_meta("silent", 1, 1), Have::Complete)]).await;
        alive.register(7002, vec![(test_meta("alive", 2, 1), Have::Complete)]).await;
        // Keep `alive` talking until the silent one has been expired; `silent` keeps its socket open.
        let reg = t.registry().clone();
        let start = tokio::time::Instant::now();
        while reg.list(None).0.iter().any(|f| f.name == "silent") {
            assert!(start.elapsed() < Duration::from_secs(5), "silent session never expired");
            assert_eq!(alive.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(250), "expired too early: {:?}", start.elapsed());
        assert_eq!(reg.list(None).0.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), vec!["alive"]);
        // The expired connection is closed by the tracker.
        assert!(silent.recv().await.is_none());
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_are_consistent() {
    with_timeout(async {
        let t = spawn_tracker(cfg()).await;
        let addr = t.addr();
        let shared = test_meta("shared", 7, 3);
        const N: usize = 200;
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let (shared, barrier) = (shared.clone(), barrier.clone());
            tasks.spawn(async move {
                let mut c = RawClient::connect(addr).await;
                let own = test_meta(&format!("own/{i}"), i as u64 + 100, 1);
                let res =
                    c.register(10_000 + i as u16, vec![(shared.clone(), Have::Complete), (own, Have::Complete)]).await;
                assert_eq!(res, vec![Ok(()), Ok(())]);
                barrier.wait().await;
                match c.call(TrackerRequest::FileLocations { name: "shared".into() }).await {
                    TrackerResponse::FileLocations(l) => {
                        assert_eq!(l.total_sources as usize, N - 1);
                        assert_eq!(l.sources.len(), 64);
                        assert_eq!(l.availability, vec![N as u32; 3]);
                        assert!(l.sources.iter().all(|s| s.addr.port() != 10_000 + i as u16));
                    }
                    other => panic!("{other:?}"),
                }
                // Hold the session until everyone has checked.
                barrier.wait().await;
                c
            });
        }
        let mut clients = Vec::new();
        while let Some(r) = tasks.join_next().await {
            clients.push(r.unwrap());
        }
        assert_eq!(t.registry().stats(), tracker::Stats { sessions: N, files: N + 1, holdings: 2 * N });
        // The list pages through all N + 1 files exactly once.
        let mut names = Vec::new();
        let mut after = None;
        loop {
            match clients[0].call(TrackerRequest::FileList { after: after.clone() }).await {
                TrackerResponse::FileList { files, more } => {
                    names.extend(files.into_iter().map(|f| f.name));
                    after = names.last().cloned();
                    if !more {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(names.len(), N + 1);
        drop(clients);
        let reg = t.registry().clone();
        eventually("all sessions gone", Duration::from_secs(10), || reg.stats() == tracker::Stats::default()).await;
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn garbage_and_oversized_frames_leave_others_served() {
    with_timeout(async {
        let mut config = cfg();
        config.max_frame = 64 * 1024;
        let t = spawn_tracker(config).await;
        let mut good = RawClient::connect(t.addr()).await;
        good.register(7001, vec![(test_meta("f", 1, 1), Have::Complete)]).await;

        // A garbage body in a valid frame: a typed error, and the session carries on.
        let mut bad = RawClient::connect(t.addr()).await;
        bad.send_raw(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).await;
        assert!(matches!(bad.recv().await, Some(TrackerResponse::Error(RequestError::Malformed(_)))));
        assert_eq!(bad.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);

        // An oversized frame: an error, then the connection is closed.
        bad.send_raw(&(64 * 1024 + 1u32).to_be_bytes()).await;
        assert!(matches!(bad.recv().await, Some(TrackerResponse::Error(RequestError::Malformed(_)))));
        assert!(bad.recv().await.is_none());

        // Before the handshake the limit is small: a 5 KiB hello is refused.
        let mut raw = TcpStream::connect(t.addr()).await.unwrap();
        raw.write_all(&(5 * 1024u32).to_be_bytes()).await.unwrap();
        let mut sink = Vec::new();
        raw.read_to_end(&mut sink).await.unwrap();

        // Not a hello first; bad magic; wrong version.
        for first in [
            TrackerRequest::Leave,
            TrackerRequest::Hello(Hello { magic: *b"HTTP", version: 1 }),
            TrackerRequest::Hello(Hello { magic: proto::MAGIC, version: 99 }),
        ] {
            let mut c = Framed::new(TcpStream::connect(t.addr()).await.unwrap(), TrackerClientCodec::new(1 << 20));
            c.send(first).await.unwrap();
            match c.next().await {
                Some(Ok(Ok(TrackerResponse::Error(RequestError::Handshake(
                    HandshakeError::Expected | HandshakeError::BadMagic { .. } | HandshakeError::VersionMismatch { .. },
                ))))) => {}
                other => panic!("{other:?}"),
            }
            assert!(c.next().await.is_none(), "closed after a refused handshake");
        }

        // Through all of it, the good client is served.
        match good.call(TrackerRequest::FileLocations { name: "f".into() }).await {
            TrackerResponse::FileLocations(l) => assert_eq!(l.total_sources, 0, "caller excluded"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.registry().stats().files, 1);
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn connection_cap_refuses_extras_clearly() {
    with_timeout(async {
        let mut config = cfg();
        config.max_connections = 2;
        let t = spawn_tracker(config).await;
        let mut a = RawClient::connect(t.addr()).await;
        let _b = RawClient::connect(t.addr()).await;
        let mut c = Framed::new(TcpStream::connect(t.addr()).await.unwrap(), TrackerClientCodec::new(1 << 20));
        match c.next().await {
            Some(Ok(Ok(TrackerResponse::Error(RequestError::TooManyConnections { max: 2 })))) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(a.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        drop(a);
        // Once a slot frees up, a new client gets in.
        let start = tokio::time::Instant::now();
        loop {
            let mut d = Framed::new(TcpStream::connect(t.addr()).await.unwrap(), TrackerClientCodec::new(1 << 20));
            d.send(TrackerRequest::Hello(Hello::current())).await.unwrap();
            if let Some(Ok(Ok(TrackerResponse::Welcome(_)))) = d.next().await {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn shutdown_tells_sessions_and_finishes() {
    with_timeout(async {
        let t = spawn_tracker(cfg()).await;
        let mut a = RawClient::connect(t.addr()).await;
        a.register(7001, vec![(test_meta("f", 1, 1), Have::Complete)]).await;
        let addr = t.addr();
        t.shutdown().await.unwrap();
        assert_eq!(a.recv().await, Some(TrackerResponse::Error(RequestError::ShuttingDown)));
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    })
    .await;
}

/// The size of a File Locations reply for a file of 10,000 chunks and 100 partial sources,
/// measured on the wire. Printed for the docs; bounded so a regression shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_reply_size_for_10k_chunks_100_sources() {
    with_timeout(async {
        let mut config = cfg();
        config.limits.max_locations = 100;
        let t = spawn_tracker(config).await;
        let chunks = 10_000u32;
        let meta = proto::FileMeta::from_bytes("big", proto::limits::MIN_CHUNK_SIZE, &vec![0u8; chunks as usize * 16 * 1024]);
        let mut clients = Vec::new();
        for i in 0..101u16 {
            let mut c = RawClient::connect(t.addr()).await;
            if i > 0 {
                // Every source holds a different, scattered half of the chunks.
                let mut b = Bitmap::new(chunks);
                (0..chunks).filter(|c| (c + u32::from(i)) % 2 == 0).for_each(|c| {
                    b.set(c);
                });
                assert_eq!(c.register(7000 + i, vec![(meta.clone(), Have::Partial(b))]).await, vec![Ok(())]);
            }
            clients.push(c);
        }
        let req = TrackerRequest::FileLocations { name: "big".into() };
        clients[0].conn.send(req).await.unwrap();
        // Measure the raw frame from the socket.
        let stream = clients[0].conn.get_mut();
        let mut len = [0u8; LEN_PREFIX];
        stream.read_exact(&mut len).await.unwrap();
        let body_len = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; body_len];
        stream.read_exact(&mut body).await.unwrap();
        let Ok(TrackerResponse::FileLocations(l)) = postcard::from_bytes::<TrackerResponse>(&body) else { panic!("not locations") };
        assert_eq!(l.sources.len(), 100);
        let bitmaps: usize = l.sources.iter().map(|s| match &s.have { Have::Partial(b) => b.as_bytes().len(), _ => 0 }).sum();
        println!(
            "File Locations reply, 10,000 chunks x 100 partial sources: {} bytes on the wire ({} bytes of bitmaps, {} availability entries)",
            body_len + LEN_PREFIX,
            bitmaps,
            l.availability.len()
        );
        assert!(body_len < 160_000, "reply grew: {body_len} bytes");
        let meta_frame = postcard::to_stdvec(&TrackerResponse::FileMeta(std::sync::Arc::new(meta))).unwrap().len() + LEN_PREFIX;
        println!("File Meta reply for the same file: {meta_frame} bytes");
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A reply that would exceed the frame limit is a typed error and the session carries on; a File
/// List page shrinks to fit the frame instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_exceed_the_frame_limit() {
    with_timeout(async {
        let mut config = cfg();
        config.max_frame = 16 * 1024;
        config.limits.max_locations = 1000;
        let t = spawn_tracker(config).await;
        let addr = t.addr();
        // 300 partial sources of a 400-chunk file: each Register fits, their locations do not.
        let meta = test_meta("wide", 9, 400);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..300u16 {
            let meta = meta.clone();
            tasks.spawn(async move {
                let mut c = RawClient::connect(addr).await;
                let mut b = Bitmap::new(400);
                b.set(u32::from(i) % 400);
                assert_eq!(c.register(9000 + i, vec![(meta, Have::Partial(b))]).await, vec![Ok(())]);
                c
            });
        }
        let mut clients = Vec::new();
        while let Some(c) = tasks.join_next().await {
            clients.push(c.unwrap());
        }
        let c = &mut clients[0];
        match c.call(TrackerRequest::FileLocations { name: "wide".into() }).await {
            TrackerResponse::Error(RequestError::ReplyTooLarge { len, max }) => assert!(len > max && max == 16 * 1024),
            other => panic!("expected ReplyTooLarge, got {other:?}"),
        }
        assert_eq!(c.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);

        // 60 files with 200-byte names: a default 1000-entry page would be ~15 KiB of names.
        let files: Vec<_> = (0..60).map(|i| (test_meta(&format!("{i:0>200}"), i, 1), Have::Complete)).collect();
        for chunk in files.chunks(20) {
            assert!(c.register(9999, chunk.to_vec()).await.iter().all(Result::is_ok));
        }
        let (mut pages, mut names, mut after) = (0, 0, None);
        loop {
            let TrackerResponse::FileList { files, more } = c.call(TrackerRequest::FileList { after }).await else {
                panic!("expected a file list")
            };
            pages += 1;
            names += files.len();
            after = files.last().map(|f| f.name.clone());
            if !more {
                break;
            }
        }
        assert_eq!(names, 61);
        assert!(pages > 1, "the list was cut into pages by size");
        t.shutdown().await.unwrap();
    })
    .await;
}

/// Pipelined requests are all answered, in order (the server batches its replies).
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    with_timeout(async {
        let t = spawn_tracker(cfg()).await;
        let mut c = RawClient::connect(t.addr()).await;
        c.register(7001, vec![(test_meta("f", 1, 4), Have::Partial(Bitmap::new(4)))]).await;
        for chunk in 0..4 {
            c.conn.feed(TrackerRequest::ChunkRegister { name: "f".into(), chunk }).await.unwrap();
            c.conn.feed(TrackerRequest::KeepAlive).await.unwrap();
        }
        c.conn.feed(TrackerRequest::ChunkRegister { name: "f".into(), chunk: 4 }).await.unwrap();
        c.conn.flush().await.unwrap();
        for _ in 0..4 {
            assert_eq!(c.recv().await, Some(TrackerResponse::ChunkRegistered));
            assert_eq!(c.recv().await, Some(TrackerResponse::KeepAlive));
        }
        assert_eq!(
            c.recv().await,
            Some(TrackerResponse::Error(RequestError::ChunkOutOfRange { chunk: 4, num_chunks: 4 }))
        );
        assert_eq!(t.registry().list(None).0[0].complete_sources, 1);
        t.shutdown().await.unwrap();
    })
    .await;
}
