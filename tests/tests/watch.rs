//! Watched shares: files added to a running peer's share folder are registered once they stop
//! changing, changed ones re-registered with their new root, deleted and renamed ones withdrawn.
//! Tracker and peers in-process on port 0, real files; every wait is for a condition under a
//! deadline (the one exception, the slow writer, waits because writing slowly is the scenario).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use peer::DownloadOptions;
use proto::Hash;
use tests::*;
use tokio::time::Instant;

/// How soon a change must be seen by other peers.
const LATENCY: Duration = Duration::from_secs(2);

fn watching(c: &mut peer::NodeConfig) {
    c.watch = true;
}

/// The tracker's listing of `name`: its length and root, if listed.
fn listed(t: &tracker::Tracker, name: &str) -> Option<(u64, Hash)> {
    t.registry().list(None).0.into_iter().find(|f| f.name == name).map(|f| (f.length, f.root))
}

/// Writes `data` to `dir/name` (creating folders) in one go, as a copy would.
fn put(dir: &Path, name: &str, data: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// A file copied into a watched share is listed, and downloadable by another peer, within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_copied_in_is_listed_and_downloadable_within_two_seconds() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (root.path().join("a"), root.path().join("b"));
        let a = spawn_peer(t.addr(), &a_dir, watching).await;
        let b = spawn_peer(t.addr(), &b_dir, |_| {}).await;
        let data = test_data(3 * MIB + 17, 1);
        let meta = meta_of(&data, "in/new.bin");

        let start = Instant::now();
        put(&a_dir, "in/new.bin", &data);
        eventually("the new file listed", LATENCY, || listed(&t, "in/new.bin") == Some((meta.length, meta.root))).await;
        let report = b.download("in/new.bin", DownloadOptions::default()).await.unwrap();
        let took = start.elapsed();
        assert!(took < LATENCY, "listed and downloaded {took:?} after the write");
        assert_eq!(report.root, meta.root.to_string());
        assert_eq!(read(&b_dir, "in/new.bin"), data);
        assert!(matches!(a.shares().get("in/new.bin"), Some(peer::Shared::Complete(m)) if m.root == meta.root));
        b.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

/// A file written slowly (six writes 500 ms apart) is never registered before it is complete:
/// the listing, polled all along, never shows it with a partial length or root; once complete,
/// it shows the whole file's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_is_registered_only_once_complete() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a");
        let a = spawn_peer(t.addr(), &dir, watching).await;
        let parts: Vec<Vec<u8>> = (0..6).map(|i| test_data(100_000 + i, i as u64)).collect();
        let whole: Vec<u8> = parts.concat();
        let meta = meta_of(&whole, "slow.bin");

        let path = dir.join("slow.bin");
        let writer = async {
            let mut f = std::fs::File::create(&path).unwrap();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    // The writer is slow: that is the scenario.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                f.write_all(part).unwrap();
                f.flush().unwrap();
            }
        };
        let done = std::sync::atomic::AtomicBool::new(false);
        let watcher = async {
            let mut polls = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(seen) = listed(&t, "slow.bin") {
                    assert_eq!(seen, (meta.length, meta.root), "registered before it was complete");
                }
                polls += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            polls
        };
        let (_, polls) = tokio::join!(
            async {
                writer.await;
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            },
            watcher
        );
        assert!(polls > 100, "the listing was polled while writing ({polls} polls)");
        let finished = Instant::now();
        eventually("the whole file listed", LATENCY, || listed(&t, "slow.bin") == Some((meta.length, meta.root))).await;
        assert!(finished.elapsed() < LATENCY);
        a.shutdown().await;
    })
    .await;
}

/// A deleted file disappears from the listing within 2 s; a renamed file appears under its new
/// name and not under the old; a folder renamed takes its files with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_renamed_files_are_withdrawn() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a");
        let gone = write_file(&dir, "gone.bin", 50_000, 1);
        let moved = write_file(&dir, "old.bin", 60_000, 2);
        let inner = write_file(&dir, "set/x.bin", 70_000, 3);
        let a = spawn_peer(t.addr(), &dir, watching).await;
        assert!(listed(&t, "gone.bin").is_some() && listed(&t, "old.bin").is_some(), "registered at start");

        let start = Instant::now();
        std::fs::remove_file(dir.join("gone.bin")).unwrap();
        eventually("the deleted file withdrawn", LATENCY, || listed(&t, "gone.bin").is_none()).await;
        assert!(start.elapsed() < LATENCY);
        assert!(a.shares().get("gone.bin").is_none());

        let start = Instant::now();
        std::fs::rename(dir.join("old.bin"), dir.join("new.bin")).unwrap();
        let root_of = meta_of(&moved, "new.bin").root;
        eventually("the renamed file under its new name only", LATENCY, || {
            listed(&t, "old.bin").is_none() && listed(&t, "new.bin").map(|l| l.1) == Some(root_of)
        })
        .await;
        assert!(start.elapsed() < LATENCY);

        // A folder renamed: its files are withdrawn under the old names and shared under the new.
        std::fs::rename(dir.join("set"), dir.join("set2")).unwrap();
        let root_of = meta_of(&inner, "set2/x.bin").root;
        eventually("the folder's file under its new name only", LATENCY, || {
            listed(&t, "set/x.bin").is_none() && listed(&t, "set2/x.bin").map(|l| l.1) == Some(root_of)
        })
        .await;
        drop(gone);
        a.shutdown().await;
    })
    .await;
}

/// A file whose content changes is re-registered with its new root (the tracker refuses a
/// name's second content while it is held: the peer unregisters the old first), and another
/// peer downloads the new content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_registered_with_its_new_root() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (root.path().join("a"), root.path().join("b"));
        let old = write_file(&a_dir, "f.bin", 200_000, 1);
        let a = spawn_peer(t.addr(), &a_dir, watching).await;
        assert_eq!(listed(&t, "f.bin").map(|l| l.1), Some(meta_of(&old, "f.bin").root));

        let new = test_data(300_000, 2);
        let meta = meta_of(&new, "f.bin");
        let start = Instant::now();
        put(&a_dir, "f.bin", &new);
        eventually("the new root listed", LATENCY, || listed(&t, "f.bin") == Some((meta.length, meta.root))).await;
        assert!(start.elapsed() < LATENCY);
        assert_eq!(t.registry().stats().holdings, 1, "the old content's holding is gone");

        let b = spawn_peer(t.addr(), &b_dir, |_| {}).await;
        b.download("f.bin", DownloadOptions::default()).await.unwrap();
        assert_eq!(read(&b_dir, "f.bin"), new);
        b.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

/// A watching peer's own downloads are neither registered twice nor withdrawn: the finished
/// file stays shared with its root, and the tracker lists both peers as sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_peers_own_download_stays_shared() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (root.path().join("a"), root.path().join("b"));
        let data = write_file(&a_dir, "d.bin", 2 * MIB, 5);
        let meta = meta_of(&data, "d.bin");
        let a = spawn_peer(t.addr(), &a_dir, |_| {}).await;
        let b = spawn_peer(t.addr(), &b_dir, watching).await;
        b.download("d.bin", DownloadOptions::default()).await.unwrap();
        let sources = || t.registry().list(None).0.into_iter().find(|f| f.name == "d.bin").map(|f| f.complete_sources);
        eventually("both peers complete sources", LATENCY, || sources() == Some(2)).await;
        // Longer than the watcher takes to look at the finished file (two settle times).
        let settled = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < settled {
            assert_eq!(sources(), Some(2), "the downloaded file stays registered");
            assert!(matches!(b.shares().get("d.bin"), Some(peer::Shared::Complete(m)) if m.root == meta.root));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.shutdown().await;
        a.shutdown().await;
    })
    .await;
}
