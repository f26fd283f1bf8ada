//! The tracker's HTTP listener (`tracker --http`): every metric of `/metrics` present and moving
//! under a small swarm, `/health` and `/ready`, the endpoint gone with the tracker and back with a
//! new one, the JSON API's errors (unknown paths 404, wrong methods 405, one error shape), its
//! caps, and a port in use refused with the address named (library and binary).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use peer::DownloadOptions;
use proto::tracker::{TrackerRequest, TrackerResponse};
use tests::{binary, eventually, spawn_peer, spawn_tracker, with_timeout, write_file, RawClient, MIB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request over a fresh connection: the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let reply = tests::http::request(addr, method, path, &[], b"").await;
    (reply.status, reply.body)
}

/// The value of the series `series` (name with its labels, as printed) in a scrape.
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} not in the scrape:\n{scrape}"))
        .trim()
        .parse()
        .unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    body
}

async fn tracker_with_http() -> (tracker::Tracker, SocketAddr) {
    let mut t = spawn_tracker(tracker::Config::default()).await;
    let http = t.bind_http(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    assert_eq!(t.http_addr(), Some(http));
    (t, http)
}

#[tokio::test]
async fn every_metric_appears_and_moves_with_a_swarm() {
    with_timeout(async {
        let (t, http_addr) = tracker_with_http().await;
        let before = scrape(http_addr).await;
        for name in [
            "tracker_sessions",
            "tracker_files",
            "tracker_holdings",
            "tracker_metadata_bytes",
            "tracker_queued_bytes",
            // Counters' HELP names the family; their series end in `_total`.
            "tracker_requests",
            "tracker_request_duration_seconds",
            "tracker_connections_refused",
        ] {
            assert!(before.contains(&format!("# HELP {name} ")), "{name} with HELP text");
        }
        assert_eq!(value(&before, "tracker_sessions"), 0.0);
        assert_eq!(value(&before, "tracker_metadata_bytes"), 0.0);
        let register = r#"tracker_requests_total{kind="register",outcome="ok"}"#;
        assert_eq!(value(&before, register), 0.0);

        // A seed and two downloaders: the file registered, located, its chunks registered.
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("p{i}"))).collect();
        dirs.iter().for_each(|d| std::fs::create_dir_all(d).unwrap());
        write_file(&dirs[0], "data/set.bin", 2 * MIB, 1);
        let seed = spawn_peer(t.addr(), &dirs[0], |_| {}).await;
        eventually("the seed registered", Duration::from_secs(10), || t.registry().stats().files == 1).await;
        let a = spawn_peer(t.addr(), &dirs[1], |_| {}).await;
        let b = spawn_peer(t.addr(), &dirs[2], |_| {}).await;
        let (ra, rb) = tokio::join!(
            a.download("data/set.bin", DownloadOptions::default()),
            b.download("data/set.bin", DownloadOptions::default())
        );
        ra.unwrap();
        rb.unwrap();
        eventually("both downloaders complete", Duration::from_secs(10), || t.registry().stats().holdings == 3).await;

        // An error answered, and a connection refused at the handshake.
        let mut raw = RawClient::connect(t.addr()).await;
        let unknown = raw.call(TrackerRequest::FileMeta { name: "no/such".into() }).await;
        assert!(matches!(unknown, TrackerResponse::Error(_)), "{unknown:?}");
        let mut garbage = TcpStream::connect(t.addr()).await.unwrap();
        garbage.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
        let mut sink = Vec::new();
        let _ = garbage.read_to_end(&mut sink).await;

        let after = scrape(http_addr).await;
        // Three peers and the raw client.
        assert_eq!(value(&after, "tracker_sessions"), 4.0, "{after}");
        assert_eq!(value(&after, "tracker_files"), 1.0);
        assert_eq!(value(&after, "tracker_holdings"), 3.0);
        assert!(value(&after, "tracker_metadata_bytes") > 0.0);
        assert!(value(&after, register) >= 3.0, "every peer registered");
        let locations = r#"tracker_requests_total{kind="file_locations",outcome="ok"}"#;
        assert!(value(&after, locations) > value(&before, locations));
        let chunks = value(&after, r#"tracker_requests_total{kind="chunk_register_batch",outcome="ok"}"#)
            + value(&after, r#"tracker_requests_total{kind="chunk_register",outcome="ok"}"#);
        assert!(chunks > 0.0, "downloaders registered chunks");
        assert_eq!(value(&after, r#"tracker_requests_total{kind="file_meta",outcome="error"}"#), 1.0);
        let timed = r#"tracker_request_duration_seconds_count{kind="register"}"#;
        assert!(value(&after, timed) > value(&before, timed));
        assert!(value(&after, r#"tracker_request_duration_seconds_sum{kind="file_locations"}"#) > 0.0);
        assert_eq!(value(&after, r#"tracker_connections_refused_total{reason="handshake"}"#), 1.0);
        assert!(value(&after, "tracker_queued_bytes") >= 0.0);
        // The request-path counters' label sets are bounded: 12 kinds x ok/error.
        assert_eq!(after.matches("tracker_requests_total{").count(), 24);

        drop(raw);
        for node in [seed, a, b] {
            node.shutdown().await;
        }
        eventually("the sessions closed", Duration::from_secs(10), || t.registry().stats().sessions == 0).await;
        let gone = scrape(http_addr).await;
        assert_eq!(value(&gone, "tracker_sessions"), 0.0);
        assert_eq!(value(&gone, "tracker_metadata_bytes"), 0.0);
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn health_and_ready_follow_the_tracker() {
    with_timeout(async {
        let (t, http_addr) = tracker_with_http().await;
        let (status, body) = http(http_addr, "GET", "/health").await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
        let (status, body) = http(http_addr, "GET", "/ready").await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
        t.shutdown().await.unwrap();
        // The HTTP listener stops with the tracker.
        let refused = TcpStream::connect(http_addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");

        let (t, http_addr) = tracker_with_http().await;
        assert_eq!(http(http_addr, "GET", "/ready").await.0, 200, "a new tracker is ready");
        assert_eq!(http(http_addr, "GET", "/health").await.0, 200);
        // Dropping the handle stops it too.
        drop(t);
        eventually_refused(http_addr).await;
    })
    .await;
}

async fn eventually_refused(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections");
}

#[tokio::test]
async fn the_api_answers_bad_paths_and_methods_with_json_errors() {
    with_timeout(async {
        let (t, http_addr) = tracker_with_http().await;
        let mut raw = RawClient::connect(t.addr()).await;
        let meta = tests::test_meta("deep/dir/f.bin", 1, 3);
        assert!(raw.register(7000, vec![(meta, proto::Have::Complete)]).await.iter().all(Result::is_ok));

        let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
        let (status, body) = http(http_addr, "GET", "/api/v1/files/deep/dir/f.bin").await;
        assert_eq!(status, 200, "{body}");
        let file = json(&body);
        assert_eq!((file["name"].as_str(), file["chunks"].as_u64()), (Some("deep/dir/f.bin"), Some(3)));
        assert_eq!(file["cells"], serde_json::json!([1, 1, 1]));
        let (status, body) = http(http_addr, "GET", "/api/v1/files").await;
        assert_eq!(status, 200);
        assert_eq!((json(&body)["total"].as_u64(), json(&body)["files"][0]["complete"].as_u64()), (Some(1), Some(1)));
        let (status, body) = http(http_addr, "GET", "/api/v1/peers").await;
        assert_eq!((status, json(&body)["peers"][0]["files"].as_u64()), (200, Some(1)));

        for (method, path, want, code) in [
            ("GET", "/api/v1/nope", 404, "not_found"),
            ("GET", "/api/v2/files", 404, "not_found"),
            ("GET", "/api/v1/files/no/such/file", 404, "not_found"),
            ("POST", "/api/v1/files", 405, "method_not_allowed"),
            ("DELETE", "/api/v1/files/deep/dir/f.bin", 405, "method_not_allowed"),
            ("PUT", "/metrics", 405, "method_not_allowed"),
        ] {
            let (status, body) = http(http_addr, method, path).await;
            assert_eq!(status, want, "{method} {path}: {body}");
            let error = &json(&body)["error"];
            assert_eq!(error["code"].as_str(), Some(code), "{method} {path}: {body}");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let (status, page) = http(http_addr, "GET", "/").await;
        assert_eq!(status, 200);
        assert!(page.contains("/page.js") && !page.contains("http://") && !page.contains("https://"), "no CDN");
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn lists_are_capped_at_the_row_limit() {
    with_timeout(async {
        let (t, http_addr) = tracker_with_http().await;
        let mut raw = RawClient::connect(t.addr()).await;
        let n = tracker::http::MAX_ROWS + 5;
        // Registered in batches within the per-request file limit.
        let metas: Vec<_> = (0..n).map(|i| tests::test_meta(&format!("many/{i:05}"), i as u64, 1)).collect();
        for batch in metas.chunks(500) {
            let files = batch.iter().map(|m| (m.clone(), proto::Have::Complete)).collect();
            assert!(raw.register(7000, files).await.iter().all(Result::is_ok));
        }
        let (status, body) = http(http_addr, "GET", "/api/v1/files").await;
        assert_eq!(status, 200);
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["files"].as_array().unwrap().len(), tracker::http::MAX_ROWS);
        assert_eq!((page["total"].as_u64(), page["more"].as_u64()), (Some(n as u64), Some(5)));
        t.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn http_on_a_port_in_use_is_refused_naming_the_address() {
    with_timeout(async {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap();
        let mut t = spawn_tracker(tracker::Config::default()).await;
        let err = t.bind_http(addr).await.unwrap_err().to_string();
        assert!(err.contains(&format!("cannot listen for HTTP on {addr}")), "{err}");
        assert_eq!(t.http_addr(), None);
        t.shutdown().await.unwrap();

        // The binary: exit 1, one line naming the address.
        let bin = binary("tracker");
        let out = tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .args(["--listen", "127.0.0.1:0", "--http", &addr.to_string()])
                .env("RUST_LOG", "off")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].starts_with(&format!("tracker: cannot listen for HTTP on {addr}: ")), "{stderr}");
        drop(busy);
    })
    .await;
}
