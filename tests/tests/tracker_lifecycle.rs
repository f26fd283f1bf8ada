//! A `Tracker` handle owns what it started: dropping it without `shutdown()` ends the accept loop
//! and every session (STYLE.md convention 20), while `wait()` keeps it running until its token is
//! cancelled. Every wait is for a condition under a deadline, never a fixed sleep.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proto::tracker::{RequestError, TrackerRequest, TrackerResponse};
use tests::*;

/// How long the tracker may take to wind down once told to.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A tracker whose sessions never expire during a test: only its stopping can close them.
fn config() -> tracker::Config {
    tracker::Config { session_timeout: Duration::from_secs(3600), ..tracker::Config::default() }
}

/// Reads until the tracker closes the connection, under [`STOP_DEADLINE`]; returns what came
/// before the close.
async fn read_until_closed(client: &mut RawClient) -> Vec<TrackerResponse> {
    let read = async {
        let mut got = Vec::new();
        while let Some(reply) = client.recv().await {
            got.push(reply);
        }
        got
    };
    tokio::time::timeout(STOP_DEADLINE, read).await.expect("the tracker did not close the connection")
}

/// Whether `addr` still accepts connections (a closed listener refuses them at once on loopback).
fn accepts(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_tracker() {
    with_timeout(async {
        let t = spawn_tracker(config()).await;
        let (addr, registry) = (t.addr(), t.registry().clone());
        let mut client = RawClient::connect(addr).await;
        assert!(matches!(client.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive));
        assert_eq!(registry.stats().sessions, 1);

        drop(t);

        // The session ends as at shutdown: told so, then closed, and its registrations dropped.
        let got = read_until_closed(&mut client).await;
        assert!(
            matches!(got.as_slice(), [TrackerResponse::Error(RequestError::ShuttingDown)]),
            "expected a ShuttingDown goodbye, got {got:?}"
        );
        eventually("the session closed in the registry", STOP_DEADLINE, || registry.stats().sessions == 0).await;
        // The listener is closed, not merely no longer accepted from.
        eventually("the port refuses connections", STOP_DEADLINE, || !accepts(addr)).await;
    })
    .await;
}

/// `wait()` owns the handle while it waits: the tracker keeps serving until its token is
/// cancelled, and `wait()` returns once it has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_serves_until_the_token_is_cancelled() {
    with_timeout(async {
        let t = spawn_tracker(config()).await;
        let (addr, token) = (t.addr(), t.shutdown_token());
        let mut waiting = Box::pin(t.wait());
        // Polled once, `wait()` has taken the handle and is waiting: the tracker must still run.
        assert!(futures::poll!(&mut waiting).is_pending());
        assert!(!token.is_cancelled(), "waiting stopped the tracker");
        let mut client = RawClient::connect(addr).await;
        assert!(matches!(client.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive));

        token.cancel();

        tokio::time::timeout(STOP_DEADLINE, waiting).await.expect("wait() did not return").unwrap();
        let got = read_until_closed(&mut client).await;
        assert!(matches!(got.as_slice(), [TrackerResponse::Error(RequestError::ShuttingDown)]), "got {got:?}");
        assert!(!accepts(addr));
    })
    .await;
}
