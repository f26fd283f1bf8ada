//! Faults across separate processes, with the real `peer` and `tracker` binaries: a downloader
//! killed with SIGKILL at ten moments resumes each time and never shows a wrong file under its
//! name; a tracker killed with SIGKILL and restarted on the same port mid-swarm has every peer back
//! within two keep-alive intervals and every download completes; SIGTERM stops a tracker, a
//! seed and a downloader cleanly.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

fn peer_cmd(tracker: SocketAddr, args: &[&str], share: &Path) -> Command {
    let mut c = Command::new(binary("peer"));
    c.arg("--tracker")
        .arg(tracker.to_string())
        .args(args)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--share")
        .arg(share)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap();
    let ok = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM {pid}");
}

/// Waits for a line on the child's stderr that starts with `prefix`.
async fn wait_stderr(child: &mut Child, prefix: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with(prefix) {
            // Keep draining in the background so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return line;
        }
    }
    panic!("no line starting with {prefix:?}");
}

/// Starts the tracker binary on `addr` with `extra` options and waits until it listens.
async fn start_tracker(addr: SocketAddr, extra: &[&str]) -> Child {
    let mut child = Command::new(binary("tracker"))
        .args(["--listen", &addr.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_stderr(&mut child, "tracker listening").await;
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A downloader killed with SIGKILL at ten random (seeded) moments: every restart resumes with
/// what was durably stored, no file ever carries the final name with wrong content, and the last
/// run completes with every chunk fetched exactly once overall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloader_killed_ten_times_resumes_and_never_lies() {
    // Built (once) before the clock starts.
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (s, d) = (root.path().join("s"), root.path().join("d"));
        let data = write_file(&s, "f.bin", 16 * MIB, 21);
        std::fs::create_dir_all(&d).unwrap();
        let seed = spawn_peer(t.addr(), &s, |c| c.upload_rate = Some(2 * MIB as u64)).await;
        let meta = meta_of(&data, "f.bin");
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut held = 0;
        for round in 0..10 {
            let mut child = peer_cmd(t.addr(), &["download", "f.bin", "--linger", "0"], &d).spawn().unwrap();
            let after = Duration::from_millis(rng.random_range(150..700));
            tokio::select! {
                _ = tokio::time::sleep(after) => {}
                status = child.wait() => panic!("round {round}: finished before the kill: {status:?}"),
            }
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            // Whatever the moment, the final name never holds wrong content.
            if let Ok(got) = std::fs::read(d.join("f.bin")) {
                assert_eq!(got, data, "round {round}: a wrong file under the final name");
            }
            // What survived is verified when reopened, and never shrinks.
            let store = chunkstore::Store::open(&d).unwrap();
            let now = store.open_partial(&meta).map(|p| p.have().count()).unwrap_or(0);
            drop(store);
            assert!(now >= held, "round {round}: {now} chunks held, had {held}");
            held = now;
        }
        assert!(held > 0 && held < meta.num_chunks(), "kills landed mid-download ({held} chunks held)");

        let out = peer_cmd(t.addr(), &["--json", "download", "f.bin", "--linger", "0"], &d).output().await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["resumed_chunks"].as_u64(), Some(u64::from(held)), "resumed what was held");
        assert_eq!(
            report["resumed_chunks"].as_u64().unwrap() + report["fetched_chunks"].as_u64().unwrap(),
            u64::from(meta.num_chunks())
        );
        assert_eq!(std::fs::read(d.join("f.bin")).unwrap(), data);
        seed.shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}

/// A swarm of separate processes (a seed and three downloaders) whose tracker is killed with
/// SIGKILL and restarted on the same port mid-swarm: every peer is registered again within two
/// keep-alive intervals of the restart, and every download completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_killed_and_restarted_mid_swarm() {
    binary("peer");
    with_timeout(async {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let keepalive = Duration::from_secs(1);
        let timing = ["--keepalive-ms", "1000", "--session-timeout-ms", "4000"];
        let mut tracker = start_tracker(addr, &timing).await;
        let root = tempfile::tempdir().unwrap();
        let s = root.path().join("s");
        let data = write_file(&s, "f.bin", 12 * MIB, 22);
        // Slow enough that the swarm is still at work when the tracker comes back.
        let mut seed = peer_cmd(addr, &["serve", "--upload-rate", "2MiB"], &s).spawn().unwrap();
        wait_stderr(&mut seed, "serving").await;
        let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("d{i}"))).collect();
        let mut downloaders = Vec::new();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
            downloaders.push(peer_cmd(addr, &["download", "f.bin", "--linger", "0"], d).spawn().unwrap());
        }
        // Mid-swarm: every downloader has some chunks registered.
        let sources = |want: u32| async move {
            let Ok(mut c) = tokio::time::timeout(Duration::from_secs(1), RawClient::connect(addr)).await else {
                return false;
            };
            match c.call(proto::tracker::TrackerRequest::FileLocations { name: "f.bin".into() }).await {
                proto::tracker::TrackerResponse::FileLocations(l) => l.total_sources >= want,
                _ => false,
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sources(4).await {
            assert!(Instant::now() < deadline, "the swarm never formed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        tracker.start_kill().unwrap();
        tracker.wait().await.unwrap();
        let _tracker = start_tracker(addr, &timing).await;
        let restarted = Instant::now();
        while !sources(4).await {
            assert!(restarted.elapsed() < Duration::from_secs(10), "peers never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let back = restarted.elapsed();
        println!("tracker restart: all 4 peers registered again {back:?} after it came back");
        assert!(back <= keepalive * 2, "took {back:?}, more than two keep-alive intervals");

        for (mut child, d) in downloaders.into_iter().zip(&dirs) {
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
            assert!(status.success(), "a downloader failed: {status:?}");
            assert_eq!(std::fs::read(d.join("f.bin")).unwrap(), data);
        }
        sigterm(&seed);
        seed.wait().await.unwrap();
    })
    .await;
}

/// SIGTERM stops each binary cleanly with transfers in flight: a seed leaves the tracker before it
/// exits (so it is no longer listed at once), a downloader exits 130 keeping its partial download,
/// and the tracker closes its listener and exits 0, all within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_binary_cleanly() {
    binary("peer");
    with_timeout(async {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut tracker = start_tracker(addr, &[]).await;
        let root = tempfile::tempdir().unwrap();
        let (s, d) = (root.path().join("s"), root.path().join("d"));
        write_file(&s, "f.bin", 8 * MIB, 23);
        std::fs::create_dir_all(&d).unwrap();
        let mut seed = peer_cmd(addr, &["serve", "--upload-rate", "1MiB"], &s).spawn().unwrap();
        wait_stderr(&mut seed, "serving").await;
        let mut dl = peer_cmd(addr, &["download", "f.bin"], &d).spawn().unwrap();
        let mut observer = RawClient::connect(addr).await;
        async fn locate(observer: &mut RawClient) -> u32 {
            match observer.call(proto::tracker::TrackerRequest::FileLocations { name: "f.bin".into() }).await {
                proto::tracker::TrackerResponse::FileLocations(l) => l.total_sources,
                _ => 0,
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while locate(&mut observer).await < 2 {
            assert!(Instant::now() < deadline, "the download never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The downloader: interrupted, exit 130, partial kept.
        sigterm(&dl);
        let status = tokio::time::timeout(Duration::from_secs(5), dl.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(130));
        assert!(!d.join("f.bin").exists());
        assert!(walk_files(&d).iter().any(|f| f.extension().is_some_and(|x| x == "have")), "partial kept");

        // The seed: gone from the tracker by the time it has exited.
        sigterm(&seed);
        let status = tokio::time::timeout(Duration::from_secs(5), seed.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
        let observer_has = locate(&mut observer).await;
        assert_eq!(observer_has, 0, "the seed and the downloader are no longer listed");

        // The tracker: exits 0 and stops listening.
        sigterm(&tracker);
        let status = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
    })
    .await;
}
