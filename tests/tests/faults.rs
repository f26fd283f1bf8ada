//! Faults during downloads, in-process: sources that stall, trickle or die mid-chunk, a chunk that
//! every source corrupts, a full disk, graceful shutdown with transfers in flight, and poisoners in
//! a swarm. Nothing corrupt is ever put in place, and every node keeps serving.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use peer::{DownloadOptions, DownloadReport, Error as PeerError};
use proto::tracker::{TrackerRequest, TrackerResponse};
use tests::*;
use tokio::time::Instant;

/// Sources that accept and then say nothing, that trickle a chunk byte by byte, or that die half
/// way through a chunk lose their chunks to the honest seed within the stall deadline; the half
/// chunk is never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_trickling_and_dying_sources_are_replaced() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (s, d) = (root.path().join("s"), root.path().join("d"));
        let data = write_file(&s, "f.bin", 2 * MIB, 11);
        std::fs::create_dir_all(&d).unwrap();
        let meta = meta_of(&data, "f.bin");
        let mut fakes = Vec::new();
        for how in [Misbehave::Stall, Misbehave::Trickle, Misbehave::HalfThenClose] {
            fakes.push(spawn_fake_source(meta.clone(), how).await);
        }
        let ports: Vec<u16> = fakes.iter().map(|(a, _)| a.port()).collect();
        let alive = register_fakes(t.addr(), &meta, &ports).await;
        let seed = spawn_peer(t.addr(), &s, |c| c.upload_rate = Some(4 * MIB as u64)).await;
        let pd = spawn_peer(t.addr(), &d, |c| c.download.stall_timeout = Duration::from_secs(1)).await;

        let start = Instant::now();
        let r = pd.download("f.bin", DownloadOptions::default()).await.unwrap();
        let took = start.elapsed();
        println!("bad sources replaced: download took {took:?}");
        assert_eq!(read(&d, "f.bin"), data);
        for (addr, _) in &fakes {
            assert!(r.sources.iter().filter(|s| s.addr == *addr).all(|s| s.bytes == 0), "{addr} delivered nothing");
        }
        assert_eq!(r.sources.iter().map(|s| s.bytes).sum::<u64>(), data.len() as u64);
        // The seed alone needs half a second; every bad source costs at most a stall deadline.
        assert!(took < Duration::from_secs(8), "took {took:?}");
        alive.abort();
        for (_, task) in fakes {
            task.abort();
        }
        pd.shutdown().await;
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A source of an earlier version 3 answers the downloader's request for batched announcements
/// with `Error(Malformed)`: the downloader takes that as "no batches", not as a refusal, and
/// downloads everything from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_of_an_earlier_version_3_is_downloaded_from() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("d");
        std::fs::create_dir_all(&d).unwrap();
        let data = test_data(MIB, 21);
        let meta = meta_of(&data, "f.bin");
        let (addr, task) = spawn_earlier_source(meta.clone(), data.clone()).await;
        let alive = register_fakes(t.addr(), &meta, &[addr.port()]).await;
        let pd = spawn_peer(t.addr(), &d, |_| {}).await;
        let r = pd.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(&d, "f.bin"), data);
        assert_eq!(r.sources.iter().filter(|s| s.addr == addr).map(|s| s.bytes).sum::<u64>(), data.len() as u64);
        assert!(r.sources.iter().all(|s| s.dropped.is_none()), "no source dropped: {:?}", r.sources);
        alive.abort();
        task.abort();
        pd.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// When every source of the file corrupts every chunk, the download fails after bounded retries
/// with an error naming a chunk; the partial download is kept, never put in place, and the peer
/// goes on serving its other files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_every_source_corrupts_fails_clearly_and_the_peer_keeps_serving() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (d, other) = (root.path().join("d"), root.path().join("other"));
        let own = write_file(&d, "own.bin", MIB / 2, 12);
        std::fs::create_dir_all(&other).unwrap();
        let data = test_data(MIB, 13);
        let meta = meta_of(&data, "f.bin");
        let mut poisoners = Vec::new();
        for _ in 0..3 {
            poisoners.push(spawn_corrupt_source(meta.clone()).await);
        }
        let ports: Vec<u16> = poisoners.iter().map(|(a, _)| a.port()).collect();
        let alive = register_fakes(t.addr(), &meta, &ports).await;
        let pd = spawn_peer(t.addr(), &d, |_| {}).await;

        let start = Instant::now();
        let r = pd.download("f.bin", DownloadOptions::default()).await;
        let Err(e @ (PeerError::NoHonestSource { .. } | PeerError::ChunkFailed { .. })) = r else {
            panic!("expected the chunk to be reported unobtainable, got {r:?}")
        };
        println!("all sources corrupt: {e} (after {:?})", start.elapsed());
        assert!(e.to_string().contains("chunk "), "the error names the chunk: {e}");
        assert!(!d.join("f.bin").exists(), "never put in place");
        assert!(
            walk_files(&d).iter().any(|f| f.extension().is_some_and(|x| x == "meta")),
            "the partial download is kept for later"
        );
        // With a tighter bound on failures per chunk, the first bad copy ends it, naming the chunk.
        let strict_dir = root.path().join("strict");
        let strict = spawn_peer(t.addr(), &strict_dir, |c| c.download.max_chunk_failures = 1).await;
        let r = strict.download("f.bin", DownloadOptions::default()).await;
        assert!(matches!(r, Err(PeerError::ChunkFailed { attempts: 1, .. })), "{r:?}");
        strict.shutdown().await;
        // Still serving its own file.
        let po = spawn_peer(t.addr(), &other, |_| {}).await;
        po.download("own.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(&other, "own.bin"), own);
        alive.abort();
        for (_, task) in poisoners {
            task.abort();
        }
        po.shutdown().await;
        pd.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A download onto a full disk (a 2 MiB tmpfs) fails at once with a clear storage error ("needs
/// X, Y free"); no chunk that was not stored is marked done or registered, no file is put in
/// place, and the partial download is kept. Skipped, saying so,
/// where mounting a tmpfs is not permitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_cleanly() {
    with_timeout(async {
        let root = tempfile::tempdir().unwrap();
        let small = root.path().join("small");
        std::fs::create_dir_all(&small).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&small)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            println!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        }
        let _unmount = Unmount(small.clone());

        let t = spawn_tracker(tracker::Config::default()).await;
        let s = root.path().join("s");
        write_file(&s, "big.bin", 4 * MIB, 14);
        let seed = spawn_peer(t.addr(), &s, |_| {}).await;
        let d = small.join("share");
        let pd = spawn_peer(t.addr(), &d, |_| {}).await;
        let r = pd.download("big.bin", DownloadOptions::default()).await;
        // The space is reserved before anything is fetched: the download fails at once, saying
        // how much it needs and how much is free.
        let Err(e @ PeerError::Store(chunkstore::StoreError::NoSpace { needed, .. })) = &r else {
            panic!("expected a NoSpace error, got {r:?}")
        };
        println!("full disk: {e:#}");
        assert_eq!(*needed, 4 * MIB as u64);
        assert!(e.to_string().contains("needs 4 MiB"), "{e}");
        assert!(!d.join("big.bin").exists(), "no file put in place");

        // What the tracker was told this peer holds is exactly what it verifiably holds.
        let mut observer = RawClient::connect(t.addr()).await;
        let registered = match observer.call(TrackerRequest::FileLocations { name: "big.bin".into() }).await {
            TrackerResponse::FileLocations(l) => {
                l.sources.into_iter().find(|s| s.addr == pd.listen_addr()).map(|s| s.have.to_bitmap(l.num_chunks))
            }
            other => panic!("{other:?}"),
        };
        pd.shutdown().await;
        let store = chunkstore::Store::open(&d).unwrap();
        let metas = store.partials().unwrap();
        let partial = store.open_partial(&metas[0]).unwrap();
        let held = partial.have();
        if let Some(registered) = registered {
            assert!(registered.iter_ones().all(|c| held.get(c)), "registered a chunk it does not hold");
        }
        assert!(!partial.is_complete());
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// Shutting a seed down mid-transfer: it stops within seconds, the tracker stops listing it at
/// once, and the downloader finishes from the other seed. Shutting the tracker down with sessions
/// open: its listener closes and it returns promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_transfers_in_flight() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (s1, s2, d) = (root.path().join("s1"), root.path().join("s2"), root.path().join("d"));
        let data = write_file(&s1, "f.bin", 4 * MIB, 15);
        std::fs::create_dir_all(&s2).unwrap();
        std::fs::copy(s1.join("f.bin"), s2.join("f.bin")).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        let rate = Some(2 * MIB as u64);
        let p1 = spawn_peer(t.addr(), &s1, |c| c.upload_rate = rate).await;
        let p2 = spawn_peer(t.addr(), &s2, |c| c.upload_rate = rate).await;
        let pd = spawn_peer(t.addr(), &d, |_| {}).await;
        let (tx, mut rx) = tokio::sync::watch::channel(peer::Progress::default());
        let dl = pd.download("f.bin", DownloadOptions { progress: Some(tx), ..Default::default() });
        let p1_addr = p1.listen_addr();
        let stopper = async {
            tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|p| p.chunks_done >= 4 && p.active_sources == 2))
                .await
                .unwrap()
                .unwrap();
            let start = Instant::now();
            p1.shutdown().await;
            let took = start.elapsed();
            assert!(took < Duration::from_secs(5), "seed shutdown took {took:?}");
            // At once: its Leave was answered before shutdown returned.
            let loc = t.registry().list(None).0;
            assert_eq!(loc.iter().find(|f| f.name == "f.bin").map(|f| f.complete_sources), Some(1));
            took
        };
        let (r, took) = tokio::join!(dl, stopper);
        let r: DownloadReport = r.unwrap();
        println!("seed stopped mid-transfer in {took:?}");
        assert_eq!(read(&d, "f.bin"), data);
        assert!(r.sources.iter().any(|s| s.addr == p1_addr && s.bytes > 0), "p1 had been serving");

        let addr = t.addr();
        let start = Instant::now();
        t.shutdown().await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
        pd.shutdown().await;
        p2.shutdown().await;
    })
    .await;
}

/// A swarm of eight in which two peers serve corrupt data for every chunk: every honest
/// downloader ends with a verified file, both poisoners are dropped, no honest peer is, and the
/// bytes wasted on them are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoners_in_a_swarm_are_dropped_and_honest_peers_finish() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let s = root.path().join("seed");
        let data = write_file(&s, "f.bin", 4 * MIB, 16);
        let meta = meta_of(&data, "f.bin");
        let mut poisoners = Vec::new();
        for _ in 0..2 {
            poisoners.push(spawn_corrupt_source(meta.clone()).await);
        }
        let bad: Vec<_> = poisoners.iter().map(|(a, _)| *a).collect();
        let alive = register_fakes(t.addr(), &meta, &bad.iter().map(|a| a.port()).collect::<Vec<_>>()).await;
        let seed = spawn_peer(t.addr(), &s, |c| c.upload_rate = Some(4 * MIB as u64)).await;
        let mut honest = Vec::new();
        for i in 0..5 {
            let d = root.path().join(format!("d{i}"));
            std::fs::create_dir_all(&d).unwrap();
            honest.push((spawn_peer(t.addr(), &d, |c| c.download.max_chunk_failures = 100).await, d));
        }
        let reports =
            futures::future::join_all(honest.iter().map(|(p, _)| p.download("f.bin", DownloadOptions::default())))
                .await;
        let mut wasted = 0;
        let mut dropped = std::collections::HashSet::new();
        for ((p, d), r) in honest.iter().zip(reports) {
            let r = r.unwrap();
            assert_eq!(read(d, "f.bin"), data, "{}", p.listen_addr());
            for src in &r.sources {
                if src.dropped.is_some() {
                    assert!(bad.contains(&src.addr), "honest peer {} dropped", src.addr);
                    dropped.insert(src.addr);
                }
            }
            wasted += r.wasted_bytes;
        }
        println!("poisoning: {} poisoners dropped, {wasted} bytes wasted on them across 5 downloaders", dropped.len());
        assert_eq!(dropped.len(), 2, "both poisoners dropped");
        assert!(wasted > 0);
        alive.abort();
        for (_, task) in poisoners {
            task.abort();
        }
        for (p, _) in honest {
            p.shutdown().await;
        }
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// With a deadline, a download whose missing chunks no source holds fails when it passes, saying
/// how many are missing and which first; without one it would wait for sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_bounds_the_wait_for_missing_chunks() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (a, d) = (root.path().join("a"), root.path().join("d"));
        let data = test_data(MIB, 17);
        let meta = meta_of(&data, "f.bin");
        // The only source holds every chunk but the last.
        make_partial(&a, &meta, &data, 0..meta.num_chunks() - 1);
        let pa = spawn_peer(t.addr(), &a, |_| {}).await;
        let pd = spawn_peer(t.addr(), &d, |_| {}).await;
        let start = Instant::now();
        let r = pd
            .download("f.bin", DownloadOptions { deadline: Some(Duration::from_secs(1)), ..Default::default() })
            .await;
        let took = start.elapsed();
        let last = meta.num_chunks() - 1;
        assert!(matches!(r, Err(PeerError::Deadline { missing: 1, first }) if first == last), "{r:?}");
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{took:?}");
        pd.shutdown().await;
        pa.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// The upload server's limits: past `max_uploads` a downloader is told `Busy` and closed; a
/// connection that says nothing for `idle_timeout` is closed, freeing its slot; a request frame
/// over 1 KiB after the handshake ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_limits_refuse_clearly() {
    use futures::{SinkExt, StreamExt};
    use proto::codec::PeerClientCodec;
    use proto::peer::{PeerError, PeerRequest, PeerResponse};
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let data = write_file(root.path(), "f.bin", 64 * 1024, 18);
        let meta = meta_of(&data, "f.bin");
        let seed = spawn_peer(t.addr(), root.path(), |c| {
            c.serve.max_uploads = 1;
            c.serve.idle_timeout = Duration::from_millis(500);
        })
        .await;
        let connect = || async {
            let stream = tokio::net::TcpStream::connect(seed.listen_addr()).await.unwrap();
            tokio_util::codec::Framed::new(stream, PeerClientCodec::new(1 << 20))
        };
        let hello = || PeerRequest::Hello { hello: proto::Hello::current(), name: "f.bin".into(), root: meta.root };

        let mut first = connect().await;
        first.send(hello()).await.unwrap();
        assert!(matches!(first.next().await, Some(Ok(Ok(PeerResponse::Welcome { .. })))));
        let mut second = connect().await;
        assert!(matches!(second.next().await, Some(Ok(Ok(PeerResponse::Error(PeerError::Busy))))));
        assert!(second.next().await.is_none(), "closed after Busy");

        // The first says nothing: closed at the idle deadline, and the slot is free again.
        let start = Instant::now();
        assert!(first.next().await.is_none());
        let idle = start.elapsed();
        assert!(idle >= Duration::from_millis(400) && idle < Duration::from_secs(3), "{idle:?}");
        let mut third = connect().await;
        third.send(hello()).await.unwrap();
        assert!(matches!(third.next().await, Some(Ok(Ok(PeerResponse::Welcome { .. })))));

        // A request frame over the 1 KiB limit ends the connection.
        tokio::io::AsyncWriteExt::write_all(third.get_mut(), &2048u32.to_be_bytes()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(third.get_mut(), &[0u8; 2048]).await.unwrap();
        assert!(matches!(third.next().await, None | Some(Err(_))), "closed on an oversized request");
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}
