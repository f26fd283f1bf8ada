//! Hostile input against the tracker and the peer: slow frames, abuse of every request, quotas at
//! scale, impersonation, hostile names (also from a hostile tracker), connection floods. Each test
//! also checks that a fresh, well-formed client is served afterwards and that sessions and file
//! descriptors return to their baseline.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::bitmap::{Bitmap, Have};
use proto::codec::TrackerClientCodec;
use proto::limits::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
use proto::tracker::*;
use proto::{FileMeta, Hello, MetaError};
use tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;

fn err(r: TrackerResponse) -> RequestError {
    match r {
        TrackerResponse::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// `n` clients, each sending `per` File Locations requests; returns every request's latency and
/// the number of failures.
async fn locate_load(addr: SocketAddr, n: usize, per: usize) -> (Vec<Duration>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let mut c = RawClient::connect(addr).await;
            let mut lat = Vec::with_capacity(per);
            let mut failed = 0;
            for _ in 0..per {
                let t = Instant::now();
                match c.call(TrackerRequest::FileLocations { name: "f".into() }).await {
                    TrackerResponse::FileLocations(_) => lat.push(t.elapsed()),
                    _ => failed += 1,
                }
            }
            (lat, failed)
        });
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (l, f) = r.unwrap();
        all.extend(l);
        failed += f;
    }
    all.sort();
    (all, failed)
}

/// 200 connections announce near-maximal frames and trickle their bodies, before and after the
/// handshake, while 1,000 well-formed clients work: the per-frame deadline closes every slow one,
/// memory stays bounded, and the good clients see no failure and a p99 within 2x the no-attack
/// baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_frames_are_cut_off_while_others_are_served() {
    with_timeout(async {
        let config = tracker::Config {
            session_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            keepalive: Duration::from_millis(500),
            ..Default::default()
        };
        let t = spawn_tracker(config).await;
        let addr = t.addr();
        let mut seed = RawClient::connect(addr).await;
        seed.register(7000, vec![(test_meta("f", 1, 8), Have::Complete)]).await;
        // The file's holder keeps its session alive, as a real peer does.
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(seed.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
            }
        });
        let fds = open_fds();

        let (base, failed) = locate_load(addr, 1000, 5).await;
        assert_eq!(failed, 0);
        let base_p99 = percentile(&base, 0.99);

        let rss_before = rss_bytes();
        let slow: Vec<_> = (0..200)
            .map(|i| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let announced = if i % 2 == 0 {
                        HANDSHAKE_MAX_FRAME as u32
                    } else {
                        // Handshake first, then a near-maximal frame.
                        let mut c = Framed::new(s, TrackerClientCodec::new(1 << 20));
                        c.send(TrackerRequest::Hello(Hello::current())).await.unwrap();
                        c.next().await.unwrap().unwrap().unwrap();
                        s = c.into_inner();
                        DEFAULT_MAX_FRAME as u32 - 1
                    };
                    s.write_all(&announced.to_be_bytes()).await.unwrap();
                    let start = Instant::now();
                    // One byte a second (well, every 250 ms) until the tracker gives up.
                    loop {
                        if s.write_all(&[0]).await.is_err() {
                            break;
                        }
                        let mut probe = [0u8; 64];
                        match tokio::time::timeout(Duration::from_millis(250), tokio::io::AsyncReadExt::read(&mut s, &mut probe)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => {}
                        }
                        assert!(start.elapsed() < Duration::from_secs(10), "slow connection never closed");
                    }
                    start.elapsed()
                })
            })
            .collect();
        let (under, failed) = locate_load(addr, 1000, 5).await;
        let mut slowest = Duration::ZERO;
        for s in slow {
            slowest = slowest.max(s.await.unwrap());
        }
        let under_p99 = percentile(&under, 0.99);
        let growth = rss_bytes().saturating_sub(rss_before);
        println!(
            "slow frames: closed within {slowest:?}; good clients p99 {base_p99:?} -> {under_p99:?}, {failed} failures; RSS +{} KiB",
            growth / 1024
        );
        assert_eq!(failed, 0, "well-formed clients failed during the attack");
        assert!(slowest < Duration::from_secs(4), "deadline is 2 s, took {slowest:?}");
        // 2x the baseline, with a millisecond of slack so scheduler noise on tiny latencies
        // does not decide the outcome.
        assert!(under_p99 <= base_p99 * 2 + Duration::from_millis(1), "p99 {base_p99:?} -> {under_p99:?}");
        assert!(growth < 64 << 20, "RSS grew {growth} bytes");

        let mut fresh = RawClient::connect(addr).await;
        assert_eq!(fresh.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        drop(fresh);
        let reg = t.registry().clone();
        eventually("only the seed's session is left", Duration::from_secs(10), || reg.stats().sessions == 1).await;
        eventually("descriptors back to baseline", Duration::from_secs(10), || open_fds() <= fds + 2).await;
        assert!(!keepalive.is_finished(), "the seed's session stayed alive throughout");
        keepalive.abort();
        t.shutdown().await.unwrap();
    })
    .await;
}

/// Out-of-range chunks, unknown files and every kind of inconsistent metadata get typed errors and
/// change nothing.
#[tokio::test]
async fn abusive_requests_get_typed_errors_and_change_nothing() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let mut owner = RawClient::connect(t.addr()).await;
        let good = test_meta("f", 1, 4);
        let mut partial = Bitmap::new(4);
        partial.set(1);
        owner.register(7000, vec![(good.clone(), Have::Partial(partial))]).await;
        let before = t.registry().list(None);
        let loc_before = t.registry().stats();

        let mut bad = RawClient::connect(t.addr()).await;
        bad.register(7001, vec![]).await;
        for chunk in [4, 5, u32::MAX] {
            assert_eq!(
                err(bad.call(TrackerRequest::ChunkRegister { name: "f".into(), chunk }).await),
                RequestError::ChunkOutOfRange { chunk, num_chunks: 4 }
            );
        }
        for req in [
            TrackerRequest::ChunkRegister { name: "ghost".into(), chunk: 0 },
            TrackerRequest::FileLocations { name: "ghost".into() },
            TrackerRequest::FileMeta { name: "ghost".into() },
        ] {
            assert_eq!(err(bad.call(req).await), RequestError::UnknownFile("ghost".into()));
        }
        let mutate = |f: &dyn Fn(&mut FileMeta)| {
            let mut m = test_meta("evil", 2, 3);
            f(&mut m);
            m
        };
        type Check = fn(&RejectReason) -> bool;
        let cases: Vec<(FileMeta, Check)> = vec![
            (mutate(&|m| m.length = 0), |r| matches!(r, RejectReason::InconsistentMeta(MetaError::HashCount { .. }))),
            (mutate(&|m| m.length = u64::MAX), |r| {
                matches!(r, RejectReason::InconsistentMeta(MetaError::TooManyChunks { .. }))
            }),
            (mutate(&|m| m.chunk_size = 0), |r| matches!(r, RejectReason::InconsistentMeta(MetaError::ChunkSize(0)))),
            (mutate(&|m| m.chunk_size = 3000), |r| {
                matches!(r, RejectReason::InconsistentMeta(MetaError::ChunkSize(_)))
            }),
            (mutate(&|m| m.chunk_hashes.push(m.chunk_hashes[0])), |r| {
                matches!(r, RejectReason::InconsistentMeta(MetaError::HashCount { .. }))
            }),
            (mutate(&|m| m.chunk_hashes.clear()), |r| {
                matches!(r, RejectReason::InconsistentMeta(MetaError::HashCount { .. }))
            }),
            (mutate(&|m| m.chunk_hashes.swap(0, 1)), |r| {
                matches!(r, RejectReason::InconsistentMeta(MetaError::RootMismatch))
            }),
            (mutate(&|m| m.root = good.root), |r| matches!(r, RejectReason::InconsistentMeta(MetaError::RootMismatch))),
            // Same name, different content: a conflict, not a second file.
            (test_meta("f", 9, 4), |r| matches!(r, RejectReason::ContentConflict { .. })),
        ];
        let (metas, checks): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
        let results = bad.register(7001, metas.into_iter().map(|m| (m, Have::Complete)).collect()).await;
        for (i, (r, check)) in results.iter().zip(checks).enumerate() {
            assert!(r.as_ref().err().is_some_and(check), "case {i}: {r:?}");
        }
        // The same file twice in one request.
        let dup = bad
            .register(7001, vec![(test_meta("d", 3, 1), Have::Complete), (test_meta("d", 3, 1), Have::Complete)])
            .await;
        assert_eq!(dup[1], Err(RejectReason::Duplicate));
        bad.call(TrackerRequest::Leave).await;

        assert_eq!(t.registry().list(None), before, "the file list is unchanged");
        assert_eq!(t.registry().stats().files, loc_before.files);
        match owner.call(TrackerRequest::FileMeta { name: "f".into() }).await {
            TrackerResponse::FileMeta(m) => assert_eq!(m, good),
            other => panic!("{other:?}"),
        }
        t.shutdown().await.unwrap();
    })
    .await;
}

/// One session registering a million files, then a hundred thousand sessions with one file each:
/// the per-session and global quotas hold with typed reasons, replies stay bounded, and memory
/// stays bounded at the quotas. The million go over the wire; the hundred thousand sessions are
/// opened on the registry itself (the same code path without the sockets, which would exceed the
/// process's descriptor limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_at_scale() {
    with_timeout(async {
        let mut config = tracker::Config::default();
        config.limits.max_files_per_session = 20_000;
        config.limits.max_files_total = 25_000;
        let t = spawn_tracker(config).await;
        let rss_before = rss_bytes();
        let mut c = RawClient::connect(t.addr()).await;
        let meta = |i: usize| FileMeta::from_bytes(&format!("m/{i}"), proto::limits::MIN_CHUNK_SIZE, &i.to_le_bytes());
        let (mut ok, mut quota) = (0, 0);
        for batch in 0..(1_000_000usize.div_ceil(1024)) {
            let files =
                (batch * 1024..((batch + 1) * 1024).min(1_000_000)).map(|i| (meta(i), Have::Complete)).collect();
            for r in c.register(7000, files).await {
                match r {
                    Ok(()) => ok += 1,
                    Err(RejectReason::SessionQuota { max: 20_000 }) => quota += 1,
                    Err(other) => panic!("{other:?}"),
                }
            }
        }
        assert_eq!((ok, quota), (20_000, 980_000));
        // Replies stay bounded however much is registered.
        match c.call(TrackerRequest::FileList { after: None }).await {
            TrackerResponse::FileList { files, more } => assert!(files.len() <= 1000 && more),
            other => panic!("{other:?}"),
        }

        let reg = t.registry().clone();
        let (mut ok, mut global) = (0, 0);
        let mut sessions = Vec::new();
        for i in 0..100_000usize {
            let p = reg.open_session(SocketAddr::from(([127, 0, 0, 1], 1)));
            let file = RegisterFile { meta: meta(2_000_000 + i), have: Have::Complete };
            match reg.register(p, SocketAddr::from(([127, 0, 0, 1], 9000)), vec![file]).unwrap()[0] {
                Ok(()) => ok += 1,
                Err(RejectReason::GlobalQuota { max: 25_000 }) => global += 1,
                ref other => panic!("{other:?}"),
            }
            sessions.push(p);
        }
        assert_eq!((ok, global), (5_000, 95_000));
        assert_eq!(reg.stats().files, 25_000);
        let growth = rss_bytes().saturating_sub(rss_before);
        println!("quotas: 25,000 files and 100,001 sessions held in {} MiB", growth >> 20);
        assert!(growth < 512 << 20, "RSS grew {growth} bytes");
        for p in sessions {
            reg.close_session(p);
        }
        c.call(TrackerRequest::Leave).await;
        assert_eq!(reg.stats().files, 0);
        t.shutdown().await.unwrap();
    })
    .await;
}

/// 10,000 attempts by one session to act for another (chunk registers, leaves, registrations at
/// another host's address) leave the other's registrations exactly as they were.
#[tokio::test]
async fn no_session_can_act_for_another() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let mut victim = RawClient::connect(t.addr()).await;
        let mut observer = RawClient::connect(t.addr()).await;
        let (f, g) = (test_meta("f", 1, 8), test_meta("g", 2, 2));
        let mut held = Bitmap::new(8);
        held.set(3);
        victim.register(7100, vec![(f.clone(), Have::Partial(held.clone())), (g.clone(), Have::Complete)]).await;
        let view = |l: TrackerResponse| match l {
            TrackerResponse::FileLocations(l) => {
                l.sources.into_iter().filter(|s| s.addr.port() == 7100).map(|s| s.have).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        let before = view(observer.call(TrackerRequest::FileLocations { name: "f".into() }).await);
        assert_eq!(before, vec![Have::Partial(held.clone())]);

        let mut attacker = RawClient::connect(t.addr()).await;
        let elsewhere: SocketAddr = "10.0.0.1:7100".parse().unwrap();
        let mut foreign_refused = 0;
        for i in 0..10_000u32 {
            match i % 4 {
                0 => {
                    attacker.call(TrackerRequest::ChunkRegister { name: "f".into(), chunk: i % 8 }).await;
                }
                1 => {
                    attacker.call(TrackerRequest::Leave).await;
                }
                2 => {
                    let r =
                        attacker.call(TrackerRequest::Register(Register { listen: elsewhere, files: vec![] })).await;
                    assert_eq!(err(r), RequestError::BadEndpoint(elsewhere));
                    foreign_refused += 1;
                }
                _ => {
                    // Registering at its own address is its own business.
                    attacker.register(7200, vec![]).await;
                }
            }
        }
        assert_eq!(foreign_refused, 2_500);
        attacker.call(TrackerRequest::Leave).await;
        let after = view(observer.call(TrackerRequest::FileLocations { name: "f".into() }).await);
        assert_eq!(after, before, "the victim's holding is untouched");
        assert_eq!(t.registry().list(None).0.iter().find(|s| s.name == "g").map(|s| s.sources), Some(1));
        // The victim's own session still works and still owns its files.
        assert_eq!(
            victim.call(TrackerRequest::ChunkRegister { name: "f".into(), chunk: 0 }).await,
            TrackerResponse::ChunkRegistered
        );
        t.shutdown().await.unwrap();
    })
    .await;
}

const HOSTILE_NAMES: &[&str] = &[
    "../../etc/passwd",
    "/abs",
    "a/../../b",
    "..\\..\\x",
    "C:\\x",
    "C:x",
    "x\0y",
    "",
    ".",
    "..",
    "a//b",
    "a/",
    "tab\there",
    "bell\u{7}",
    ".p2p/partial/x",
    ".P2P/hash-cache",
];

fn long_names() -> Vec<String> {
    vec!["n".repeat(4096), format!("d/{}", "c".repeat(256))]
}

/// Every hostile name is refused by the tracker with a typed reason, whichever request carries it.
#[tokio::test]
async fn tracker_refuses_hostile_names() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let mut c = RawClient::connect(t.addr()).await;
        c.register(7000, vec![]).await;
        let names: Vec<String> = HOSTILE_NAMES.iter().map(|s| s.to_string()).chain(long_names()).collect();
        for name in &names {
            let mut m = test_meta("x", 1, 1);
            m.name = name.clone();
            assert!(
                matches!(c.register(7000, vec![(m, Have::Complete)]).await[0], Err(RejectReason::InvalidName(_))),
                "{name:?}"
            );
            for req in [
                TrackerRequest::FileMeta { name: name.clone() },
                TrackerRequest::FileLocations { name: name.clone() },
                TrackerRequest::ChunkRegister { name: name.clone(), chunk: 0 },
            ] {
                assert!(matches!(err(c.call(req).await), RequestError::InvalidName(_)), "{name:?}");
            }
        }
        assert_eq!(t.registry().stats().files, 0);
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A hostile tracker cannot make a peer write outside its share folder: names it hands out are
/// refused, and names the user gives are refused before anything is asked. Nothing is created
/// anywhere but inside the share folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tracker_cannot_make_a_peer_write_outside_its_share() {
    with_timeout(async {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("a/b/c/share");
        std::fs::create_dir_all(&share).unwrap();
        let names: Vec<String> = HOSTILE_NAMES.iter().map(|s| s.to_string()).chain(long_names()).collect();
        let hostile = Arc::new(names.clone());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Whatever is asked, the answer is metadata under the next hostile name (self-consistent
        // otherwise), and locations pointing nowhere useful.
        let (addr, fake) = spawn_fake_tracker(move |req| match req {
            TrackerRequest::Register(r) => TrackerResponse::Registered { results: vec![Ok(()); r.files.len()] },
            TrackerRequest::FileMeta { .. } => {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut m = test_meta("x", 1, 2);
                m.name = hostile[i % hostile.len()].clone();
                TrackerResponse::FileMeta(m)
            }
            TrackerRequest::KeepAlive => TrackerResponse::KeepAlive,
            _ => TrackerResponse::Error(RequestError::UnknownFile("?".into())),
        })
        .await;
        let node = spawn_peer(addr, &share, |_| {}).await;
        for _ in 0..names.len() {
            // A safe name asked for, a hostile one answered.
            let r = node.download("innocent.bin", peer::DownloadOptions::default()).await;
            assert!(matches!(r, Err(peer::Error::BadMeta { .. } | peer::Error::TrackerProtocol(_))), "{r:?}");
        }
        for name in &names {
            let r = node.download(name, peer::DownloadOptions::default()).await;
            assert!(matches!(r, Err(peer::Error::InvalidName { .. })), "{name:?}: {r:?}");
        }
        node.shutdown().await;
        fake.abort();
        let files = walk_files(root.path());
        assert!(
            files.iter().all(|f| f.starts_with("a/b/c/share/.p2p")),
            "files appeared outside the bookkeeping folder: {files:?}"
        );
        assert!(walk_files(&share.join(".p2p/partial")).is_empty(), "no download was started");
    })
    .await;
}

/// 2,000 idle connections and connect/close churn: extras beyond the cap are told so and closed,
/// idle ones are closed at the handshake deadline, descriptors come back, and a fresh client is
/// served within a second of the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_capped_and_recovers() {
    with_timeout(async {
        let config =
            tracker::Config { max_connections: 1000, handshake_timeout: Duration::from_secs(1), ..Default::default() };
        let t = spawn_tracker(config).await;
        let addr = t.addr();
        let fds = open_fds();

        let mut idle = Vec::new();
        for _ in 0..2000 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Churn meanwhile: connect and drop at once.
        for _ in 0..2000 {
            drop(TcpStream::connect(addr).await.unwrap());
        }
        // Every idle connection ends: refused with a word (over the cap) or closed at the deadline.
        let mut refused = 0;
        let start = Instant::now();
        for s in idle {
            let mut c = Framed::new(s, TrackerClientCodec::new(1 << 20));
            match c.next().await {
                Some(Ok(Ok(TrackerResponse::Error(RequestError::TooManyConnections { max: 1000 })))) => refused += 1,
                None | Some(Err(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        let drained = start.elapsed();
        println!(
            "connection flood: {refused} of 2000 idle connections refused at the cap; all closed within {drained:?}"
        );
        assert!(refused >= 1000, "only {refused} refused");
        assert!(drained < Duration::from_secs(5));

        let start = Instant::now();
        let mut fresh = RawClient::connect(addr).await;
        assert_eq!(fresh.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        let served = start.elapsed();
        assert!(served < Duration::from_secs(1), "fresh client waited {served:?}");
        drop(fresh);
        eventually("descriptors back to baseline", Duration::from_secs(10), || open_fds() <= fds + 2).await;
        let reg = t.registry().clone();
        eventually("no session left", Duration::from_secs(10), || reg.stats().sessions == 0).await;
        t.shutdown().await.unwrap();
    })
    .await;
}
