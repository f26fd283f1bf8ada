//! The downloader as the tracker and other peers see it: chunk registrations batched and never
//! lost, a finished file registered as complete, announcements only for the content a connection
//! asked for, a downloader that waits for announcements kept connected, and the peer's own
//! endpoint as the tracker records it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use peer::{DownloadOptions, Shared};
use proto::codec::PeerClientCodec;
use proto::peer::{PeerRequest, PeerResponse};
use proto::tracker::{Locations, SourceInfo, TrackerRequest, TrackerResponse};
use proto::{FileMeta, Have};
use tests::*;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// A fake tracker that records every request and lists `seed` as the only source of `meta`.
async fn recording_tracker(
    meta: FileMeta,
    seed: Arc<Mutex<Option<SocketAddr>>>,
) -> (SocketAddr, Arc<Mutex<Vec<TrackerRequest>>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let (addr, task) = spawn_fake_tracker(move |req| {
        seen.lock().unwrap().push(req.clone());
        match req {
            TrackerRequest::Register(r) => TrackerResponse::Registered { results: vec![Ok(()); r.files.len()] },
            TrackerRequest::FileMeta { .. } => TrackerResponse::FileMeta(Arc::new(meta.clone())),
            TrackerRequest::FileLocations { .. } => {
                let sources =
                    seed.lock().unwrap().iter().map(|&addr| SourceInfo { addr, have: Have::Complete }).collect();
                TrackerResponse::FileLocations(Locations {
                    root: meta.root,
                    num_chunks: meta.num_chunks(),
                    total_sources: 1,
                    sources,
                    availability: vec![1; meta.num_chunks() as usize],
                })
            }
            TrackerRequest::ChunkRegister { .. } | TrackerRequest::ChunkRegisterBatch { .. } => {
                TrackerResponse::ChunkRegistered
            }
            _ => TrackerResponse::KeepAlive,
        }
    })
    .await;
    (addr, log, task)
}

/// Chunk registrations recorded for `name`: (requests, chunks registered).
fn registrations(log: &[TrackerRequest], name: &str) -> (usize, BTreeSet<u32>) {
    let mut requests = 0;
    let mut chunks = BTreeSet::new();
    for req in log {
        match req {
            TrackerRequest::ChunkRegister { name: n, chunk } if n == name => {
                requests += 1;
                chunks.insert(*chunk);
            }
            TrackerRequest::ChunkRegisterBatch { name: n, chunks: c } if n == name => {
                requests += 1;
                chunks.extend(c);
            }
            _ => {}
        }
    }
    (requests, chunks)
}

/// Review defect 1: registrations go in batches (not one round trip per chunk), and a finished
/// download is registered as complete before `download` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_registrations_are_batched_and_the_finished_file_registered_complete() {
    with_timeout(async {
        let (s, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = write_file(s.path(), "f.bin", 4 * MIB, 41);
        let meta = meta_of(&data, "f.bin");
        let n = meta.num_chunks();
        assert!(n >= 64, "{n} chunks: too few to tell batches from single registrations");
        let seed_addr = Arc::new(Mutex::new(None));
        let (tracker, log, _t) = recording_tracker(meta.clone(), seed_addr.clone()).await;
        let seed = spawn_peer(tracker, s.path(), |_| {}).await;
        *seed_addr.lock().unwrap() = Some(seed.listen_addr());
        // Capped at 8 MiB/s: half a second, so several batch intervals pass.
        let dl = spawn_peer(tracker, d.path(), |c| c.download_rate = Some(8 * MIB as u64)).await;
        dl.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(d.path(), "f.bin"), data);

        let log = log.lock().unwrap().clone();
        let (requests, chunks) = registrations(&log, "f.bin");
        println!("{requests} chunk registration requests for {n} chunks");
        assert!(requests >= 2 && requests <= n as usize / 8, "{requests} registration requests for {n} chunks");
        assert_eq!(chunks.len(), n as usize, "every chunk registered");
        let last = log.iter().rev().find(|r| matches!(r, TrackerRequest::Register(_))).unwrap();
        let TrackerRequest::Register(reg) = last else { unreachable!() };
        assert_eq!(reg.files.len(), 1);
        assert_eq!((reg.files[0].meta.name.as_str(), &reg.files[0].have), ("f.bin", &Have::Complete));
        dl.shutdown().await;
        seed.shutdown().await;
    })
    .await;
}

/// Review defect 1: a download that stops early (here its deadline) still registers every chunk
/// it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_queued_when_a_download_stops_are_not_lost() {
    with_timeout(async {
        let (s, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = write_file(s.path(), "f.bin", 4 * MIB, 42);
        let meta = meta_of(&data, "f.bin");
        let seed_addr = Arc::new(Mutex::new(None));
        let (tracker, log, _t) = recording_tracker(meta.clone(), seed_addr.clone()).await;
        let seed = spawn_peer(tracker, s.path(), |_| {}).await;
        *seed_addr.lock().unwrap() = Some(seed.listen_addr());
        let dl = spawn_peer(tracker, d.path(), |c| c.download_rate = Some(2 * MIB as u64)).await;
        let opts = DownloadOptions { deadline: Some(Duration::from_millis(700)), ..Default::default() };
        let err = dl.download("f.bin", opts).await.unwrap_err();
        assert!(matches!(err, peer::Error::Deadline { .. }), "{err}");
        let Some(Shared::Partial { partial, .. }) = dl.shares().get("f.bin") else { panic!("no partial") };
        let stored: BTreeSet<u32> = partial.have().iter_ones().collect();
        assert!(!stored.is_empty() && stored.len() < meta.num_chunks() as usize, "{} stored", stored.len());
        let (_, registered) = registrations(&log.lock().unwrap(), "f.bin");
        assert_eq!(registered, stored, "every stored chunk registered by the time download returned");
        dl.shutdown().await;
        seed.shutdown().await;
    })
    .await;
}

/// Says Hello for `meta` to the peer at `addr` and returns the connection after its welcome.
async fn open(addr: SocketAddr, meta: &FileMeta) -> (Framed<TcpStream, PeerClientCodec>, Have) {
    let mut conn = Framed::new(TcpStream::connect(addr).await.unwrap(), PeerClientCodec::new(4 * MIB));
    let hello = PeerRequest::Hello { hello: proto::Hello::current(), name: meta.name.clone(), root: meta.root };
    conn.send(hello).await.unwrap();
    match conn.next().await {
        Some(Ok(Ok(PeerResponse::Welcome { have }))) => (conn, have),
        other => panic!("no welcome: {other:?}"),
    }
}

/// Review defect 2: a peer serving a partial download of one content under a name, which then
/// downloads other content under that name, does not announce the new content's chunks to
/// connections that asked for the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_for_other_content_under_the_same_name_hear_nothing_of_a_download() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let (s, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let new = write_file(s.path(), "f.bin", MIB, 43);
        let seed = spawn_peer(t.addr(), s.path(), |_| {}).await;
        // An earlier run left a partial download of other content under the same name.
        let old = test_data(MIB, 44);
        let old_meta = meta_of(&old, "f.bin");
        make_partial(p.path(), &old_meta, &old, 0..4);
        let peer = spawn_peer(t.addr(), p.path(), |_| {}).await;
        let (mut conn, have) = open(peer.listen_addr(), &old_meta).await;
        assert_eq!(have.to_bitmap(old_meta.num_chunks()).count(), 4);

        peer.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(p.path(), "f.bin"), new);
        // Anything announced before now arrives before the answer to this request.
        conn.send(PeerRequest::GetChunk { chunk: 0 }).await.unwrap();
        match conn.next().await {
            Some(Ok(Ok(m @ (PeerResponse::Have { .. } | PeerResponse::HaveMany { .. })))) => {
                panic!("announced chunks of other content: {m:?}")
            }
            Some(Ok(Ok(_))) | None => {}
            Some(other) => panic!("{other:?}"),
        }
        peer.shutdown().await;
        seed.shutdown().await;
    })
    .await;
}

/// Review defect 6: a downloader with nothing to ask, being told of new chunks, is not cut off
/// by the upload server's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_hearing_announcements_is_not_idle() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let (s, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = write_file(s.path(), "f.bin", 2 * MIB, 45);
        let meta = meta_of(&data, "f.bin");
        let seed = spawn_peer(t.addr(), s.path(), |_| {}).await;
        let idle = Duration::from_millis(300);
        let peer = Arc::new(
            spawn_peer(t.addr(), p.path(), |c| {
                c.serve.idle_timeout = idle;
                c.download_rate = Some(MIB as u64);
            })
            .await,
        );
        let downloading = tokio::spawn({
            let peer = peer.clone();
            async move { peer.download("f.bin", DownloadOptions::default()).await }
        });
        let shared = || matches!(peer.shares().get("f.bin"), Some(Shared::Partial { .. }));
        eventually("the download is served", Duration::from_secs(10), shared).await;
        let (mut conn, _) = open(peer.listen_addr(), &meta).await;
        let start = Instant::now();
        let mut heard = 0;
        // Three idle timeouts, hearing announcements and asking nothing.
        while start.elapsed() < 3 * idle {
            match tokio::time::timeout(idle, conn.next()).await {
                Ok(Some(Ok(Ok(PeerResponse::Have { .. })))) => heard += 1,
                Ok(other) => panic!("after {:?} and {heard} announcements: {other:?}", start.elapsed()),
                Err(_) => panic!("no announcement for {idle:?}: the download is too fast for this test"),
            }
        }
        assert!(heard > 3, "{heard}");
        downloading.await.unwrap().unwrap();
        Arc::into_inner(peer).unwrap().shutdown().await;
        seed.shutdown().await;
    })
    .await;
}

/// Review defect 7: a peer listening on all interfaces knows the endpoint the tracker records for
/// it (so it can leave itself out of its sources).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_all_interfaces_knows_its_endpoint_as_the_tracker_records_it() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let (s, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_file(s.path(), "f.bin", 64 * 1024, 46);
        let node = spawn_peer(t.addr(), s.path(), |c| c.listen = SocketAddr::from(([0, 0, 0, 0], 0))).await;
        let port = node.listen_addr().port();
        let endpoint = node.trackers().endpoint().unwrap();
        assert_eq!(endpoint, SocketAddr::from(([127, 0, 0, 1], port)));
        let other = spawn_peer(t.addr(), d.path(), |_| {}).await;
        let loc = other.trackers().locations("f.bin").await.unwrap();
        assert_eq!(loc.sources.iter().map(|s| s.addr).collect::<Vec<_>>(), vec![endpoint]);
        other.shutdown().await;
        node.shutdown().await;
    })
    .await;
}
