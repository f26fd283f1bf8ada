//! A `peer::Node` dropped without `shutdown()` stops its tasks: its listening port closes and its
//! tracker session ends, even while a clone of its session handle is still held elsewhere.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tests::*;

/// How long a dropped node may take to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Whether something accepts connections at `addr` (loopback: refused or accepted at once).
fn accepting(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[tokio::test]
async fn dropping_a_node_closes_its_listening_port() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "a.bin", 10_000, 1);
        let node = spawn_peer(t.addr(), dir.path(), |_| {}).await;
        let listen = node.listen_addr();
        assert!(accepting(listen), "a running node accepts peers");

        drop(node);
        eventually("the dropped node's port refuses connections", STOP_DEADLINE, || !accepting(listen)).await;
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn dropping_a_node_ends_its_tracker_session_even_with_a_handle_held() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let reg = t.registry().clone();
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "a.bin", 10_000, 1);
        let node = spawn_peer(t.addr(), dir.path(), |_| {}).await;
        eventually("the node is registered", STOP_DEADLINE, || reg.stats().sessions == 1).await;
        // A handle that outlives the node must not keep the node's session alive.
        let session = node.trackers().clone();

        drop(node);
        eventually("the dropped node's tracker session is gone", STOP_DEADLINE, || reg.stats().sessions == 0).await;
        let r = session.list_all().await;
        assert!(matches!(r, Err(peer::Error::SessionClosed)), "{r:?}");
        t.shutdown().await.unwrap();
    })
    .await;
}
