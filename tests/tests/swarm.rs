//! Peer integration tests: trackers and peers in-process on port 0, real sockets, real files.
//! Every wait is for a condition (a progress update, a registry state) under a deadline.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use peer::{DownloadOptions, Progress};
use proto::Have;
use tests::*;
use tokio::sync::watch;

/// The seed's demo: peer 1 shares climbing.jpg, peer 2 bear.jpg; peers 2 and 3 download
/// climbing.jpg at the same time, then peer 1 downloads bear.jpg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_scenario() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (1..=3).map(|i| root.path().join(i.to_string())).collect();
        dirs.iter().for_each(|d| std::fs::create_dir_all(d).unwrap());
        let climbing = write_file(&dirs[0], "climbing.jpg", 5 * MIB + 12_345, 1);
        let bear = write_file(&dirs[1], "bear.jpg", 3 * MIB + 77, 2);
        let p1 = spawn_peer(t.addr(), &dirs[0], |_| {}).await;
        let p2 = spawn_peer(t.addr(), &dirs[1], |_| {}).await;
        let p3 = spawn_peer(t.addr(), &dirs[2], |_| {}).await;

        let files = p3.trackers().list_all().await.unwrap();
        assert_eq!(files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), vec!["bear.jpg", "climbing.jpg"]);

        let (r2, r3) = tokio::join!(
            p2.download("climbing.jpg", DownloadOptions::default()),
            p3.download("climbing.jpg", DownloadOptions::default())
        );
        let (r2, r3) = (r2.unwrap(), r3.unwrap());
        assert_eq!(read(&dirs[1], "climbing.jpg"), climbing);
        assert_eq!(read(&dirs[2], "climbing.jpg"), climbing);
        for r in [&r2, &r3] {
            assert_eq!(r.fetched_chunks, meta_of(&climbing, "climbing.jpg").num_chunks());
            assert_eq!(r.sources.iter().map(|s| s.bytes).sum::<u64>(), climbing.len() as u64, "every byte attributed");
        }
        let r1 = p1.download("bear.jpg", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(&dirs[0], "bear.jpg"), bear);
        assert_eq!(r1.sources[0].addr, p2.listen_addr());
        // Downloaded files are served as complete sources afterwards.
        let loc = p1.trackers().locations("climbing.jpg").await.unwrap();
        assert_eq!(loc.total_sources, 2);
        assert!(loc.sources.iter().all(|s| s.have == Have::Complete));
        for p in [p1, p2, p3] {
            p.shutdown().await;
        }
        t.shutdown().await.unwrap();
    })
    .await;
}

/// One capped seed, four downloaders at once: they must trade, so the seed uploads far less than
/// four copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaders_trade_so_the_seed_uploads_little() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let seed_dir = root.path().join("seed");
        std::fs::create_dir_all(&seed_dir).unwrap();
        let size = 12 * MIB;
        let data = write_file(&seed_dir, "big.bin", size, 3);
        let seed = spawn_peer(t.addr(), &seed_dir, |c| c.upload_rate = Some(6 * MIB as u64)).await;
        let mut peers = Vec::new();
        for i in 0..4 {
            let d = root.path().join(format!("d{i}"));
            std::fs::create_dir_all(&d).unwrap();
            peers.push((spawn_peer(t.addr(), &d, |c| c.download.pipeline = 2).await, d));
        }
        let results =
            futures::future::join_all(peers.iter().map(|(p, _)| p.download("big.bin", DownloadOptions::default())))
                .await;
        for ((_, d), r) in peers.iter().zip(results) {
            let r = r.unwrap();
            assert_eq!(read(d, "big.bin"), data);
            assert_eq!(r.sources.iter().map(|s| s.bytes).sum::<u64>(), size as u64);
        }
        let uploaded = seed.uploaded_bytes();
        let ratio = uploaded as f64 / size as f64;
        println!("seed uploaded {uploaded} bytes = {ratio:.2} x file size for 4 downloaders");
        assert!(ratio < 1.3, "seed uploaded {ratio:.2} copies");
        let from_peers: u64 = peers.iter().map(|(p, _)| p.uploaded_bytes()).sum();
        assert!(from_peers > 0, "downloaders served each other");
        for (p, _) in peers {
            p.shutdown().await;
        }
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// No single peer has every chunk: the download still completes from the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_when_no_peer_has_everything() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let data = test_data(6 * MIB + 5, 4);
        let meta = meta_of(&data, "spread.bin");
        let (a, b, c) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));
        // a holds the first half and one more, b the rest: only their union is the file.
        let n = meta.num_chunks();
        make_partial(&a, &meta, &data, 0..=n / 2);
        make_partial(&b, &meta, &data, n / 2..n);
        std::fs::create_dir_all(&c).unwrap();
        let pa = spawn_peer(t.addr(), &a, |_| {}).await;
        let pb = spawn_peer(t.addr(), &b, |_| {}).await;
        let pc = spawn_peer(t.addr(), &c, |_| {}).await;
        let r = pc.download("spread.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(&c, "spread.bin"), data);
        assert_eq!(r.sources.len(), 2);
        for p in [pa, pb, pc] {
            p.shutdown().await;
        }
        t.shutdown().await.unwrap();
    })
    .await;
}

async fn wait_progress(rx: &mut watch::Receiver<Progress>, what: &str, cond: impl Fn(&Progress) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|p| cond(p)))
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap();
}

/// A source shut down mid-download: the rest comes from the other source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_killed_mid_download() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (s1, s2, d) = (root.path().join("s1"), root.path().join("s2"), root.path().join("d"));
        let data = write_file(&s1, "f.bin", 8 * MIB, 5);
        std::fs::create_dir_all(&s2).unwrap();
        std::fs::copy(s1.join("f.bin"), s2.join("f.bin")).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        let rate = Some(2 * MIB as u64);
        let p1 = spawn_peer(t.addr(), &s1, |c| c.upload_rate = rate).await;
        let p2 = spawn_peer(t.addr(), &s2, |c| c.upload_rate = rate).await;
        let pd = spawn_peer(t.addr(), &d, |c| c.download.pipeline = 1).await;
        let (tx, mut rx) = watch::channel(Progress::default());
        let dl = pd.download("f.bin", DownloadOptions { progress: Some(tx), ..Default::default() });
        let killer = async {
            wait_progress(&mut rx, "some progress", |p| p.chunks_done >= 2 && p.active_sources == 2).await;
            p1.shutdown().await;
        };
        let (r, ()) = tokio::join!(dl, killer);
        let r = r.unwrap();
        assert_eq!(read(&d, "f.bin"), data);
        assert_eq!(r.fetched_chunks, meta_of(&data, "f.bin").num_chunks());
        pd.shutdown().await;
        p2.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A source that serves garbage is detected, dropped, and its chunks are re-fetched elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_source_is_dropped_and_file_is_intact() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (s, d) = (root.path().join("s"), root.path().join("d"));
        let data = write_file(&s, "f.bin", 8 * MIB, 6);
        std::fs::create_dir_all(&d).unwrap();
        let meta = meta_of(&data, "f.bin");
        let (bad_addr, bad_task) = spawn_corrupt_source(meta.clone()).await;
        let mut bad_session = RawClient::connect(t.addr()).await;
        assert_eq!(bad_session.register(bad_addr.port(), vec![(meta.clone(), Have::Complete)]).await, vec![Ok(())]);
        // The honest seed is slow, so the corrupt one certainly gets asked.
        let seed = spawn_peer(t.addr(), &s, |c| c.upload_rate = Some(4 * MIB as u64)).await;
        let pd = spawn_peer(t.addr(), &d, |_| {}).await;
        let r = pd.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(&d, "f.bin"), data);
        let bad = r.sources.iter().find(|s| s.addr == bad_addr).expect("corrupt source in report");
        assert_eq!(bad.bytes, 0);
        assert_eq!(bad.bad_chunks, 2, "dropped after two strikes");
        assert!(bad.dropped.is_some());
        assert_eq!(r.wasted_bytes, bad.wasted_bytes);
        assert!(r.wasted_bytes > 0 && r.refetched_chunks == 2);
        assert_eq!(r.sources.iter().find(|s| s.addr == seed.listen_addr()).unwrap().bytes, data.len() as u64);
        bad_task.abort();
        pd.shutdown().await;
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A download interrupted and restarted resumes without re-fetching stored chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (s, d) = (root.path().join("s"), root.path().join("d"));
        let data = write_file(&s, "f.bin", 10 * MIB, 7);
        std::fs::create_dir_all(&d).unwrap();
        let seed = spawn_peer(t.addr(), &s, |c| c.upload_rate = Some(4 * MIB as u64)).await;
        let pd = spawn_peer(t.addr(), &d, |c| c.download.pipeline = 1).await;
        let (tx, mut rx) = watch::channel(Progress::default());
        let dl = pd.download("f.bin", DownloadOptions { progress: Some(tx), ..Default::default() });
        let stopper = async {
            wait_progress(&mut rx, "some chunks", |p| p.chunks_done >= 3).await;
            pd.shutdown_token().cancel();
        };
        let (r, ()) = tokio::join!(dl, stopper);
        assert!(matches!(r, Err(peer::Error::Cancelled)), "{r:?}");
        pd.shutdown().await;
        assert!(!d.join("f.bin").exists(), "never promoted while incomplete");

        let pd = spawn_peer(t.addr(), &d, |_| {}).await;
        let r = pd.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert!(r.resumed_chunks >= 3, "{r:?}");
        assert_eq!(r.resumed_chunks + r.fetched_chunks, meta_of(&data, "f.bin").num_chunks(), "no chunk fetched twice");
        assert_eq!(read(&d, "f.bin"), data);
        pd.shutdown().await;
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// The tracker restarts on the same address mid-swarm: peers reconnect, re-register, and the
/// download finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_restart_mid_swarm() {
    with_timeout(async {
        let config = tracker::Config { keepalive: Duration::from_millis(100), ..Default::default() };
        let t = spawn_tracker(config.clone()).await;
        let addr = t.addr();
        let root = tempfile::tempdir().unwrap();
        let (s, d) = (root.path().join("s"), root.path().join("d"));
        let data = write_file(&s, "f.bin", 8 * MIB, 8);
        std::fs::create_dir_all(&d).unwrap();
        let seed = spawn_peer(addr, &s, |c| c.upload_rate = Some(3 * MIB as u64)).await;
        let pd = spawn_peer(addr, &d, |c| c.download.pipeline = 1).await;
        let (tx, mut rx) = watch::channel(Progress::default());
        let dl = pd.download("f.bin", DownloadOptions { progress: Some(tx), ..Default::default() });
        let restart = async {
            wait_progress(&mut rx, "some chunks", |p| p.chunks_done >= 2).await;
            t.shutdown().await.unwrap();
            let t2 = tracker::Tracker::bind(addr, config.clone()).await.unwrap();
            let reg = t2.registry().clone();
            eventually("both peers re-registered", Duration::from_secs(10), || reg.stats().sessions == 2).await;
            t2
        };
        let (r, t2) = tokio::join!(dl, restart);
        r.unwrap();
        assert_eq!(read(&d, "f.bin"), data);
        // Both are now complete sources on the new tracker.
        let reg = t2.registry().clone();
        eventually("downloader registered as complete", Duration::from_secs(10), || {
            reg.list(None).0.first().is_some_and(|f| f.complete_sources == 2)
        })
        .await;
        pd.shutdown().await;
        seed.shutdown().await;
        t2.shutdown().await.unwrap();
    })
    .await;
}

/// A peer that is still downloading announces each chunk it stores to the downloaders connected
/// to it (unsolicited Have messages), so they can ask for it at once instead of waiting for the
/// tracker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloading_peer_announces_new_chunks() {
    announces_new_chunks(false).await;
}

/// The same to a downloader that asked for batches (`BatchedHaves`): only `HaveMany` messages,
/// every chunk in exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloading_peer_announces_new_chunks_in_batches() {
    announces_new_chunks(true).await;
}

async fn announces_new_chunks(batched: bool) {
    use futures::{SinkExt, StreamExt};
    use proto::codec::PeerClientCodec;
    use proto::peer::{PeerRequest, PeerResponse};
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (s, d) = (root.path().join("s"), root.path().join("d"));
        let data = write_file(&s, "f.bin", 2 * MIB, 9);
        std::fs::create_dir_all(&d).unwrap();
        let meta = meta_of(&data, "f.bin");
        let seed = spawn_peer(t.addr(), &s, |c| c.upload_rate = Some(MIB as u64)).await;
        let pd = spawn_peer(t.addr(), &d, |_| {}).await;
        let (tx, mut rx) = watch::channel(Progress::default());
        let dl = pd.download("f.bin", DownloadOptions { progress: Some(tx), ..Default::default() });
        let watcher = async {
            wait_progress(&mut rx, "a first chunk", |p| p.chunks_done >= 1).await;
            let stream = tokio::net::TcpStream::connect(pd.listen_addr()).await.unwrap();
            let mut c = tokio_util::codec::Framed::new(stream, PeerClientCodec::new(1 << 20));
            // In one write, as the reference downloader sends them.
            c.feed(PeerRequest::Hello { hello: proto::Hello::current(), name: "f.bin".into(), root: meta.root })
                .await
                .unwrap();
            if batched {
                c.feed(PeerRequest::BatchedHaves).await.unwrap();
            }
            c.flush().await.unwrap();
            let Some(Ok(Ok(PeerResponse::Welcome { have: Have::Partial(mut known) }))) = c.next().await else {
                panic!("expected a partial welcome")
            };
            assert!(known.count() >= 1 && !known.is_full());
            // Every chunk not in the welcome is announced, once, as the download stores it.
            while !known.is_full() {
                match c.next().await {
                    Some(Ok(Ok(PeerResponse::Have { chunk }))) if !batched => {
                        assert!(known.set(chunk), "chunk {chunk} twice")
                    }
                    Some(Ok(Ok(PeerResponse::HaveMany { chunks }))) if batched => {
                        assert!(!chunks.is_empty() && chunks.len() <= proto::peer::MAX_HAVE_MANY);
                        for chunk in chunks {
                            assert!(known.set(chunk), "chunk {chunk} twice");
                        }
                    }
                    other => panic!("expected an announcement (batched: {batched}), got {other:?}"),
                }
            }
            // And what was announced is served.
            c.send(PeerRequest::GetChunk { chunk: meta.num_chunks() - 1 }).await.unwrap();
            assert!(matches!(c.next().await, Some(Ok(Ok(PeerResponse::Chunk { .. })))));
        };
        let (r, ()) = tokio::join!(dl, watcher);
        r.unwrap();
        pd.shutdown().await;
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A seed hands out each chunk once before any twice when asked for fresh chunks, across its
/// connections, a substitute always of the asked chunk's length (the short last chunk is sent only
/// when asked for); once every chunk went out, it answers exactly what is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_hands_out_fresh_chunks_first() {
    use futures::{SinkExt, StreamExt};
    use proto::codec::PeerClientCodec;
    use proto::peer::{PeerRequest, PeerResponse};
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let data = write_file(root.path(), "f.bin", 4 * 64 * 1024 + 1000, 10);
        let meta = meta_of(&data, "f.bin");
        assert_eq!(meta.num_chunks(), 5);
        let seed = spawn_peer(t.addr(), root.path(), |_| {}).await;
        let open = || async {
            let stream = tokio::net::TcpStream::connect(seed.listen_addr()).await.unwrap();
            let mut c = tokio_util::codec::Framed::new(stream, PeerClientCodec::new(1 << 20));
            let hello = PeerRequest::Hello { hello: proto::Hello::current(), name: "f.bin".into(), root: meta.root };
            c.send(hello).await.unwrap();
            assert!(matches!(c.next().await, Some(Ok(Ok(PeerResponse::Welcome { have: Have::Complete })))));
            c
        };
        let (mut a, mut b) = (open().await, open().await);
        let mut got = Vec::new();
        for i in 0..5 {
            // Everyone asks for chunk 0; the seed spreads the full-size ones, then has none left.
            let c = if i % 2 == 0 { &mut a } else { &mut b };
            c.send(PeerRequest::GetFresh { chunk: 0 }).await.unwrap();
            let Some(Ok(Ok(PeerResponse::Chunk { chunk, data: bytes }))) = c.next().await else { panic!("no chunk") };
            let (off, len) = meta.chunk_range(meta.chunk(chunk).unwrap());
            assert_eq!(
                &bytes[..],
                &data[off as usize..(off + u64::from(len)) as usize],
                "chunk {chunk} is what it says"
            );
            got.push(chunk);
        }
        got.sort();
        assert_eq!(got, vec![0, 0, 1, 2, 3], "each full-size chunk once before any twice; never the short one");
        a.send(PeerRequest::GetFresh { chunk: 4 }).await.unwrap();
        assert!(matches!(a.next().await, Some(Ok(Ok(PeerResponse::Chunk { chunk: 4, .. })))));
        // All sent once: fresh or not, the chunk asked for is the chunk sent.
        a.send(PeerRequest::GetFresh { chunk: 3 }).await.unwrap();
        assert!(matches!(a.next().await, Some(Ok(Ok(PeerResponse::Chunk { chunk: 3, .. })))));
        b.send(PeerRequest::GetChunk { chunk: 3 }).await.unwrap();
        assert!(matches!(b.next().await, Some(Ok(Ok(PeerResponse::Chunk { chunk: 3, .. })))));
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}
