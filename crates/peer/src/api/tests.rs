//! The API's access rule and request checks, without a tracker: a node whose tracker is down, and
//! the router served on loopback with the client address it sees set by `MockConnectInfo`, so a
//! remote client is simulated without sending anything off the host. (End-to-end downloads are in
//! `tests/tests/api.rs`.)

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use tokio::net::TcpListener;

use super::server::{admit, local_host_header, router, ApiState, Denied};
use super::*;
use crate::node::{Node, NodeConfig};

/// A node whose tracker does not exist (nothing listens on port 1): it starts, serves, and every
/// tracker request waits.
async fn lonely_node(dir: &std::path::Path) -> Arc<Node> {
    let mut cfg = NodeConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), dir);
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.request_timeout = Duration::from_secs(1);
    Arc::new(Node::start(cfg).await.unwrap())
}

/// Serves the API on loopback as if every client came from `seen_as`.
async fn serve_as(node: Arc<Node>, config: ApiConfig, seen_as: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(ApiState::new(node, &config), config.max_body).layer(MockConnectInfo(seen_as));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A client that does not probe (`connect` would fail where a test expects a refusal).
fn client(addr: SocketAddr, token: Option<&str>) -> ApiClient {
    ApiClient::new(addr, token.map(str::to_owned)).unwrap()
}

const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40000);
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000);

#[test]
fn without_a_token_only_loopback_clients_are_admitted() {
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(127, 1, 2, 3)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
    ] {
        assert_eq!(admit(ip, None, None), Ok(()), "{ip}");
    }
    for ip in [
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6("fe80::1".parse().unwrap()),
        IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
    ] {
        assert_eq!(admit(ip, None, None), Err(Denied::Forbidden), "{ip}");
        // A header does not help when no token is configured.
        assert_eq!(admit(ip, None, Some(b"Bearer x")), Err(Denied::Forbidden), "{ip}");
    }
}

#[test]
fn without_a_token_requests_must_be_addressed_to_a_loopback_name() {
    for host in ["localhost", "localhost:7700", "LOCALHOST:1", "127.0.0.1:7700", "127.9.9.9", "[::1]:7700", "[::1]"] {
        assert!(local_host_header(Some(host.as_bytes())), "{host}");
    }
    assert!(local_host_header(None), "no Host header: not a browser");
    for host in
        ["evil.example", "evil.example:7700", "localhost.evil.example", "192.168.1.2:7700", "[fe80::1]:1", "", "::1"]
    {
        assert!(!local_host_header(Some(host.as_bytes())), "{host}");
    }
}

#[test]
fn with_a_token_every_request_must_carry_it() {
    let token = blake3::hash(b"s3cret");
    let remote = REMOTE.ip();
    for ip in [remote, LOCAL.ip()] {
        assert_eq!(admit(ip, Some(&token), Some(b"Bearer s3cret")), Ok(()));
        assert_eq!(admit(ip, Some(&token), Some(b"bearer s3cret")), Ok(()), "the scheme's case does not matter");
        for bad in [&b"Bearer s3cre"[..], b"Bearer s3cret ", b"Bearer ", b"Basic s3cret", b"s3cret", b""] {
            assert_eq!(
                admit(ip, Some(&token), Some(bad)),
                Err(Denied::Unauthorized),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(admit(ip, Some(&token), None), Err(Denied::Unauthorized));
    }
}

#[tokio::test]
async fn a_remote_client_is_refused_with_403_unless_a_token_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let node = lonely_node(dir.path()).await;
    let api = serve_as(node.clone(), ApiConfig::default(), REMOTE).await;
    let e = client(api, None).list().await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("forbidden")), "{e}");
    // Every path, known or not.
    let e = client(api, None).files().await.unwrap_err();
    assert_eq!(e.status(), Some(403));

    let config = ApiConfig { token: Some("tok".into()), ..ApiConfig::default() };
    let api = serve_as(node.clone(), config.clone(), REMOTE).await;
    assert!(client(api, Some("tok")).list().await.unwrap().is_empty());
    let e = client(api, None).list().await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")), "{e}");
    // `connect` checks the token at once.
    let e = ApiClient::connect(api, Some("nope".into())).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    ApiClient::connect(api, Some("tok".into())).await.unwrap();
}

#[tokio::test]
async fn a_bad_token_is_refused_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = lonely_node(dir.path()).await;
    for bad in ["", "with space", "tab\there", "é"] {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let config = ApiConfig { token: Some(bad.into()), ..ApiConfig::default() };
        let r = serve_api(node.clone(), listener, config, tokio_util::sync::CancellationToken::new()).await;
        assert!(matches!(r, Err(ServeError::BadToken)), "{bad:?}: {r:?}");
    }
}

#[tokio::test]
async fn requests_are_checked_before_anything_is_asked_of_a_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let node = lonely_node(dir.path()).await;
    let api = client(serve_as(node, ApiConfig::default(), LOCAL).await, None);
    let bad = [
        DownloadRequest::default(),
        DownloadRequest { names: vec!["../etc/passwd".into()], ..Default::default() },
        DownloadRequest { names: vec!["".into()], ..Default::default() },
        DownloadRequest { names: vec!["[".into()], ..Default::default() },
        DownloadRequest { roots: vec!["xyz".into()], ..Default::default() },
        DownloadRequest { roots: vec!["abcd".into()], ..Default::default() },
        DownloadRequest { manifest: Some("not a manifest\n".into()), ..Default::default() },
        DownloadRequest { names: vec!["a".into()], parallel: Some(0), ..Default::default() },
        DownloadRequest { names: vec!["a".into()], parallel: Some(MAX_PARALLEL + 1), ..Default::default() },
        DownloadRequest { names: vec!["a".into()], deadline_secs: Some(0), ..Default::default() },
        DownloadRequest {
            names: vec!["a".into()],
            seed: Some(SeedPolicy::Ratio { ratio: -1.0 }),
            ..Default::default()
        },
    ];
    for req in bad {
        let e = api.start(&req).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(400), Some("bad_request")), "{req:?}: {e}");
    }
    assert!(api.list().await.unwrap().is_empty(), "nothing started");
}

/// Resolving waits for a tracker at most `resolve_timeout`; the request's slot under the
/// running cap is given back when it fails.
#[tokio::test]
async fn resolving_gives_up_after_the_resolve_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = lonely_node(dir.path()).await;
    let config = ApiConfig { resolve_timeout: Duration::from_millis(300), max_running: 1, ..ApiConfig::default() };
    let api = client(serve_as(node, config, LOCAL).await, None);
    for _ in 0..2 {
        let start = std::time::Instant::now();
        let e = api.start(&DownloadRequest { names: vec!["a".into()], ..Default::default() }).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(503), Some("tracker_unavailable")), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    assert!(api.list().await.unwrap().is_empty());
}

/// One GET over raw HTTP/1.1 (`Connection: close`): the status and the body.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    let status = reply.split(' ').nth(1).unwrap().parse().unwrap();
    (status, reply.split_once("\r\n\r\n").unwrap().1.to_owned())
}

/// The probes are answered to anyone (a load balancer holds no token and may be on another
/// host); `/metrics` follows the access rule like `/v1`. A node whose tracker is down is alive
/// but not ready, and its answer says why without naming the tracker.
#[tokio::test]
async fn probes_are_open_and_metrics_follow_the_access_rule() {
    let dir = tempfile::tempdir().unwrap();
    let node = lonely_node(dir.path()).await;
    let api = serve_as(node.clone(), ApiConfig::default(), REMOTE).await;
    assert_eq!(get(api, "/health", None).await, (200, r#"{"status":"ok"}"#.to_owned()));
    let (status, body) = get(api, "/ready", None).await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((body["status"].as_str(), body["trackers_up"].as_u64()), (Some("not_ready"), Some(0)), "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("tracker") && !r.contains("127.0.0.1")), "{body}");
    assert_eq!(get(api, "/metrics", None).await.0, 403);

    let config = ApiConfig { token: Some("tok".into()), ..ApiConfig::default() };
    let api = serve_as(node.clone(), config, REMOTE).await;
    assert_eq!(get(api, "/health", None).await.0, 200);
    assert_eq!(get(api, "/ready", None).await.0, 503);
    assert_eq!(get(api, "/metrics", None).await.0, 401);
    let (status, text) = get(api, "/metrics", Some("tok")).await;
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE p2p_peer_chunks_verified counter") && text.ends_with("# EOF\n"), "{text}");
}
