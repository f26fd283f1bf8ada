//! Hostile input against the tracker and the peer: abuse of every request, quotas at scale,
//! impersonation, hostile names (also from a hostile tracker). After each attack the attacked node
//! is shown to serve a well-formed client and to have changed nothing it should not have. Floods,
//! which measure descriptors and latency, are in `floods.rs`; length bombs in `bombs.rs`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use proto::bitmap::{Bitmap, Have};
use proto::tracker::*;
use proto::{FileMeta, MetaError};
use tests::*;

fn err(r: TrackerResponse) -> RequestError {
    match r {
        TrackerResponse::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
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
            TrackerResponse::FileMeta(m) => assert_eq!(*m, good),
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
                    let observed = std::net::IpAddr::from([127, 0, 0, 1]);
                    assert_eq!(err(r), RequestError::ForeignEndpoint { announced: elsewhere, observed });
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
                TrackerResponse::FileMeta(std::sync::Arc::new(m))
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
