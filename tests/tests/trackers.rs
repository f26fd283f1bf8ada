//! Trackers as a deployment meets them: several of them sharing the files by rendezvous hashing
//! (one lost mid-swarm moves its files to the next, and the swarm finishes), one that is not up
//! yet when peers start, and trackers given by host name.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peer::{DownloadOptions, HostPort, Progress};
use tests::*;
use tokio::sync::watch;
use tokio::time::Instant;

const KEEPALIVE: Duration = Duration::from_millis(300);

fn quick_tracker() -> tracker::Config {
    tracker::Config { keepalive: KEEPALIVE, session_timeout: 3 * KEEPALIVE, ..tracker::Config::default() }
}

fn lists(t: &tracker::Tracker, name: &str) -> bool {
    t.registry().list(None).0.iter().any(|f| f.name == name)
}

/// Three trackers, every peer given the same list: the file is registered with the first in its
/// rendezvous order only; that tracker is stopped while four downloaders are a third of the way
/// through; the file is registered with the next tracker within two keep-alive intervals, and
/// every download finishes and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracker_moves_its_files_to_the_next_and_the_swarm_finishes() {
    with_timeout(async {
        let mut trackers = Vec::new();
        for _ in 0..3 {
            trackers.push(Some(spawn_tracker(quick_tracker()).await));
        }
        let addrs: Vec<SocketAddr> = trackers.iter().flatten().map(tracker::Tracker::addr).collect();
        let list: Vec<HostPort> = addrs.iter().copied().map(HostPort::from).collect();
        let order = peer::rendezvous_order(&list, "f.bin");
        let (first, next) = (order[0], order[1]);
        let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let data = write_file(dirs[0].path(), "f.bin", 8 * MIB, 51);
        let with_list = |c: &mut peer::NodeConfig| c.trackers = list.clone();
        let seed = spawn_peer(addrs[0], dirs[0].path(), |c| {
            with_list(c);
            c.upload_rate = Some(4 * MIB as u64);
        })
        .await;
        let t = |trackers: &[Option<tracker::Tracker>], i: usize| trackers[i].as_ref().map(|t| lists(t, "f.bin"));
        eventually("the file is at its tracker", Duration::from_secs(10), || t(&trackers, first) == Some(true)).await;
        assert_eq!(
            (t(&trackers, next), t(&trackers, order[2])),
            (Some(false), Some(false)),
            "at its first tracker only"
        );

        let mut downloads = Vec::new();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let mut progress_tx = Some(progress_tx);
        for d in &dirs[1..] {
            let node = Arc::new(
                spawn_peer(addrs[0], d.path(), |c| {
                    with_list(c);
                    c.upload_rate = Some(4 * MIB as u64);
                })
                .await,
            );
            let opts = DownloadOptions { progress: progress_tx.take(), ..Default::default() };
            let n = node.clone();
            downloads.push((node, tokio::spawn(async move { n.download("f.bin", opts).await })));
        }
        let third = |p: &Progress| p.num_chunks > 0 && p.chunks_done * 3 >= p.num_chunks;
        let mut watching = progress.clone();
        watching.wait_for(third).await.unwrap();
        assert!(progress.borrow().chunks_done < progress.borrow().num_chunks, "too fast to lose a tracker mid-swarm");
        let killed = Instant::now();
        trackers[first].take().unwrap().shutdown().await.unwrap();
        eventually("the file is at its next tracker", Duration::from_secs(10), || t(&trackers, next) == Some(true))
            .await;
        let moved = killed.elapsed();
        println!("file registered with its next tracker {moved:?} after the kill (keep-alive {KEEPALIVE:?})");
        assert!(moved <= 2 * KEEPALIVE + Duration::from_millis(300), "{moved:?}");

        for (i, (node, task)) in downloads.into_iter().enumerate() {
            let report = task.await.unwrap().unwrap();
            assert_eq!(read(dirs[i + 1].path(), "f.bin"), data, "downloader {i}");
            assert!(!report.already_complete);
            Arc::into_inner(node).unwrap().shutdown().await;
        }
        seed.shutdown().await;
    })
    .await;
}

/// Peers started while their tracker is down keep trying: they start, and once the tracker is up
/// on that address they connect and register, and the download goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_started_before_their_tracker_wait_for_it() {
    with_timeout(async {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let (s, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = write_file(s.path(), "f.bin", MIB, 52);
        let seed = spawn_peer(addr, s.path(), |_| {}).await;
        let dl = spawn_peer(addr, d.path(), |_| {}).await;
        let t = tracker::Tracker::bind(addr, quick_tracker()).await.unwrap();
        eventually("both peers connect", Duration::from_secs(10), || t.registry().stats().sessions == 2).await;
        eventually("the seed registers", Duration::from_secs(10), || lists(&t, "f.bin")).await;
        dl.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(d.path(), "f.bin"), data);
        dl.shutdown().await;
        seed.shutdown().await;
    })
    .await;
}

/// A tracker given by name (`localhost:PORT`) is resolved when connecting; a peer listening on
/// every interface of both families (the default) is reached at the address the tracker saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_by_name_and_peers_on_every_interface() {
    with_timeout(async {
        let t = spawn_tracker(quick_tracker()).await;
        let by_name: HostPort = format!("localhost:{}", t.addr().port()).parse().unwrap();
        let (s, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = write_file(s.path(), "f.bin", MIB, 53);
        let everywhere = |c: &mut peer::NodeConfig| {
            c.trackers = vec![by_name.clone()];
            c.listen = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
        };
        let seed = spawn_peer(t.addr(), s.path(), everywhere).await;
        let dl = spawn_peer(t.addr(), d.path(), everywhere).await;
        dl.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(d.path(), "f.bin"), data);
        let loc = dl.trackers().locations("f.bin").await.unwrap();
        assert_eq!(loc.sources.len(), 1);
        assert!(loc.sources[0].addr.ip().is_loopback(), "{:?}", loc.sources[0].addr);
        dl.shutdown().await;
        seed.shutdown().await;
    })
    .await;
}
