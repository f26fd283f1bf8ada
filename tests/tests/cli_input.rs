//! Bad input through the real `peer` binary, as a user meets it: a tracker name that resolves to
//! nothing or to an address where nothing listens is a run-time error (exit 1, one line on
//! stderr); a malformed tracker list is a usage error (exit 2); an announced endpoint on another
//! host is refused naming both addresses; and a peer started before its tracker keeps trying
//! and registers once the tracker is up, instead of exiting.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tests::netns::{Finished, Proc};
use tests::{binary, with_timeout};
use tokio::time::Instant;

/// `peer ARGS` with the default log level (as a user runs it), bounded in time.
async fn peer(args: &[&str]) -> Finished {
    let mut c = std::process::Command::new(binary("peer"));
    c.args(args).env_remove("RUST_LOG").env_remove("P2P_TRACKER").stdin(Stdio::null());
    let p = Proc::spawn(c, &format!("peer {args:?}")).unwrap();
    p.finish(Duration::from_secs(30)).await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tracker on 127.0.0.1:`port`, waited for until it listens.
async fn tracker(port: u16) -> Proc {
    let mut c = std::process::Command::new(binary("tracker"));
    c.args(["--listen", &format!("127.0.0.1:{port}")]).env("RUST_LOG", "warn");
    let mut p = Proc::spawn(c, "tracker").unwrap();
    p.wait_line("tracker listening", Duration::from_secs(10)).await.unwrap();
    p
}

/// Exit 1 with exactly one line on stderr, which is returned.
fn one_line_failure(end: &Finished) -> &str {
    assert_eq!(end.status.code(), Some(1), "{:?}", end.stderr);
    assert_eq!(end.stderr.len(), 1, "one line on stderr: {:?}", end.stderr);
    &end.stderr[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_trackers_are_one_line_errors() {
    binary("peer");
    with_timeout(async {
        let end = peer(&["--tracker", "nosuch.invalid", "list"]).await;
        let line = one_line_failure(&end);
        assert!(line.contains("nosuch.invalid"), "{line}");
        let end = peer(&["--tracker", "localhost:1", "list"]).await;
        let line = one_line_failure(&end);
        assert!(line.contains("localhost:1"), "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tracker_lists_are_usage_errors() {
    binary("peer");
    with_timeout(async {
        for list in ["a,,b", "", "a,a", "A,a:6969"] {
            let end = peer(&["--tracker", list, "list"]).await;
            assert_eq!(end.status.code(), Some(2), "--tracker {list:?}: {:?}", end.stderr);
        }
    })
    .await;
}

/// Without --allow-foreign-endpoints, a peer announcing another host's address is refused, and
/// the message names both the address announced and the one the tracker saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_announced_endpoint_is_refused_naming_both_addresses() {
    binary("peer");
    with_timeout(async {
        let port = free_port();
        let _tracker = tracker(port).await;
        let share = tempfile::tempdir().unwrap();
        std::fs::write(share.path().join("a.txt"), b"hello").unwrap();
        let t = format!("127.0.0.1:{port}");
        let s = share.path().to_str().unwrap();
        let args = ["--tracker", &t, "serve", "--share", s, "--listen", "127.0.0.1:0", "--announce", "10.9.9.9"];
        let end = peer(&args).await;
        assert_eq!(end.status.code(), Some(1), "{:?}", end.stderr);
        let line = end.stderr.last().unwrap();
        assert!(line.contains("10.9.9.9") && line.contains("127.0.0.1"), "{line}");
    })
    .await;
}

/// A seed started while its tracker is not up yet keeps trying in the background and registers
/// its file once the tracker starts (1.5 s later), instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_started_before_its_tracker_registers_when_it_comes() {
    binary("peer");
    binary("tracker");
    with_timeout(async {
        let port = free_port();
        let t = format!("127.0.0.1:{port}");
        let share = tempfile::tempdir().unwrap();
        std::fs::write(share.path().join("early.txt"), b"before the tracker").unwrap();
        let mut c = std::process::Command::new(binary("peer"));
        c.args(["--tracker", &t, "serve", "--listen", "127.0.0.1:0", "--share"]).arg(share.path());
        let mut seed = Proc::spawn(c, "seed").unwrap();
        // The scenario, not a wait for a condition: the tracker comes up late.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!seed.exited(), "the peer gave up before its tracker started\n{}", seed.log());
        let _tracker = tracker(port).await;
        let started = Instant::now();
        loop {
            let end = peer(&["--tracker", &t, "--json", "list"]).await;
            if end.status.success() {
                let files: serde_json::Value = serde_json::from_str(&end.stdout).unwrap();
                if files.as_array().unwrap().iter().any(|f| f["name"] == "early.txt") {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(15), "never registered\n{}", seed.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("registered {:?} after the tracker started", started.elapsed());
        assert!(!seed.exited(), "the peer still serves\n{}", seed.log());
    })
    .await;
}
