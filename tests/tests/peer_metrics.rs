//! The peer's metrics and probes, end to end: a tracker, a seed, a source that sends garbage and
//! a downloader serving the HTTP API, in-process on port 0. `/metrics` is scraped before, during
//! and after a download and every metric is seen to appear and move; `/ready` follows the
//! tracker going away and coming back on the same port, while `/health` stays 200. (The bound on
//! per-peer series is a unit test in `crates/peer/src/metrics.rs`, with a thousand simulated
//! peers; endgame duplicates, which a real swarm gives only by chance, are counted in
//! `coordinator_tests.rs`.)

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peer::api::ApiConfig;
use peer::DownloadOptions;
use tests::http::{self, Api};
use tests::*;
use tokio::time::Instant;

/// Every sample of a scrape, by series (`name{labels}`).
type Samples = HashMap<String, f64>;

async fn scrape(addr: SocketAddr) -> (String, Samples) {
    let http::Reply { status, content_type, body: text } = http::get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect();
    (text, samples)
}

/// The value of one series (0 when absent).
fn value(s: &Samples, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

/// The sum over every series of a metric (all labels).
fn sum(s: &Samples, metric: &str) -> f64 {
    s.iter().filter(|(k, _)| *k == metric || k.starts_with(&format!("{metric}{{"))).map(|(_, v)| v).sum()
}

/// Metrics that are exported from the start, whatever happened.
const ALWAYS: &[&str] = &[
    "p2p_peer_uploaded_bytes",
    "p2p_peer_downloaded_bytes",
    "p2p_peer_chunks_verified",
    "p2p_peer_chunks_failed",
    "p2p_peer_wasted_bytes",
    "p2p_peer_duplicate_bytes",
    "p2p_peer_sources_connected",
    "p2p_peer_source_strikes",
    "p2p_peer_disk_write_seconds",
    "p2p_peer_upload_connections_open",
    "p2p_peer_upload_connections_opened",
];

/// A downloader fetches a 4 MiB file from a rate-capped seed and a source that sends garbage:
/// during the download its progress series and connected sources show; afterwards chunks
/// verified, bytes by peer, disk writes, the garbage source's failed chunks, strikes, waste and
/// drop have moved, the progress series are gone, and the seed counts its uploads and
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_with_a_download() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let (s, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = write_file(s.path(), "f.bin", 4 << 20, 61);
        let meta = meta_of(&data, "f.bin");
        // Capped so that the download lasts long enough to be seen in progress.
        let seed = Arc::new(spawn_peer(t.addr(), s.path(), |c| c.upload_rate = Some(3 << 20)).await);
        let (bad, _bad_task) = spawn_corrupt_source(meta.clone()).await;
        let _fakes = register_fakes(t.addr(), &meta, &[bad.port()]).await;
        let dl = Arc::new(spawn_peer(t.addr(), d.path(), |_| {}).await);
        let (seed_api, api) =
            (Api::start(seed.clone(), ApiConfig::default()).await, Api::start(dl.clone(), ApiConfig::default()).await);

        let (text, before) = scrape(api.addr).await;
        for name in ALWAYS {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no type:\n{text}");
        }
        assert_eq!(value(&before, "p2p_peer_chunks_verified_total"), 0.0);
        assert!(!text.contains("p2p_peer_download_done_bytes"), "no download yet:\n{text}");

        let fetch = tokio::spawn({
            let dl = dl.clone();
            async move { dl.download("f.bin", DownloadOptions::default()).await }
        });
        // In progress: the file's series, and at least one source connected.
        let done = r#"p2p_peer_download_done_bytes{name="f.bin"}"#;
        let size = r#"p2p_peer_download_size_bytes{name="f.bin"}"#;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, now) = scrape(api.addr).await;
            let partway = value(&now, done) > 0.0 && value(&now, done) < meta.length as f64;
            if partway && value(&now, "p2p_peer_sources_connected") >= 1.0 {
                assert_eq!(value(&now, size), meta.length as f64);
                break;
            }
            assert!(Instant::now() < deadline && !fetch.is_finished(), "never seen in progress: {now:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = fetch.await.unwrap().unwrap();
        assert_eq!(read(d.path(), "f.bin"), data);

        let (text, after) = scrape(api.addr).await;
        let chunks = f64::from(meta.num_chunks());
        assert_eq!(value(&after, "p2p_peer_chunks_verified_total"), chunks);
        // Every copy verified is timed: at least each chunk's first and each failed copy.
        let writes = value(&after, "p2p_peer_disk_write_seconds_count");
        assert!(writes >= chunks + value(&after, "p2p_peer_chunks_failed_total"), "{text}");
        assert!(value(&after, "p2p_peer_disk_write_seconds_sum") > 0.0, "{text}");
        let seed_series = format!(r#"p2p_peer_downloaded_bytes_total{{peer="{}"}}"#, seed.listen_addr());
        assert!(value(&after, &seed_series) > 0.0, "bytes from the seed by its endpoint:\n{text}");
        assert!(sum(&after, "p2p_peer_downloaded_bytes_total") >= meta.length as f64);
        // The garbage source: its copies failed, it was struck and dropped, its bytes wasted.
        let bad_series = format!(r#"p2p_peer_downloaded_bytes_total{{peer="{bad}"}}"#);
        assert!(value(&after, &bad_series) > 0.0, "{text}");
        assert!(value(&after, "p2p_peer_chunks_failed_total") >= 1.0, "{text}");
        assert!(value(&after, "p2p_peer_source_strikes_total") >= 1.0, "{text}");
        assert!(value(&after, "p2p_peer_wasted_bytes_total") >= report.wasted_bytes as f64, "{text}");
        assert!(value(&after, "p2p_peer_wasted_bytes_total") > 0.0, "{text}");
        assert_eq!(
            value(&after, r#"p2p_peer_sources_dropped_total{reason="bad_data"}"#),
            1.0,
            "the garbage source is dropped once:\n{text}"
        );
        assert_eq!(value(&after, "p2p_peer_duplicate_bytes_total"), report.duplicate_bytes as f64);
        // The download ended: its series are gone, and so are its connections.
        assert!(!text.contains("p2p_peer_download_done_bytes{"), "{text}");
        assert!(!text.contains("p2p_peer_download_size_bytes{"), "{text}");
        eventually("sources disconnected", Duration::from_secs(5), || {
            dl.metrics().encode().contains("\np2p_peer_sources_connected 0\n")
        })
        .await;

        // The seed's side: bytes sent to the downloader (by IP), connections opened.
        let (text, up) = scrape(seed_api.addr).await;
        assert!(value(&up, r#"p2p_peer_uploaded_bytes_total{peer="127.0.0.1"}"#) >= meta.length as f64, "{text}");
        assert!(value(&up, "p2p_peer_upload_connections_opened_total") >= 1.0, "{text}");
        assert!(up.contains_key("p2p_peer_upload_connections_open"), "{text}");
        assert_eq!(http::get(api.addr, "/health").await.status, 200);

        api.stop().await;
        seed_api.stop().await;
        Arc::into_inner(dl).unwrap().shutdown().await;
        Arc::into_inner(seed).unwrap().shutdown().await;
    })
    .await;
}

const KEEPALIVE: Duration = Duration::from_millis(300);

fn quick_tracker() -> tracker::Config {
    tracker::Config { keepalive: KEEPALIVE, session_timeout: 3 * KEEPALIVE, ..tracker::Config::default() }
}

/// Polls `path` until it answers `status`, for at most 10 s; `/health` must be 200 meanwhile.
async fn until_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let http::Reply { status: got, body, .. } = http::get(addr, path).await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} still {got} ({body}), not {status}");
        assert_eq!(http::get(addr, "/health").await.status, 200);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A node started before its tracker is alive (200 /health) and not ready (503 /ready, saying
/// why); ready once the tracker is up on that address and the node registered; not ready again
/// when the tracker stops, and ready when it comes back on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_tracker() {
    with_timeout(async {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(spawn_peer(addr, dir.path(), |_| {}).await);
        let api = Api::start(node.clone(), ApiConfig::default()).await;
        let http::Reply { status, body, .. } = http::get(api.addr, "/health").await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
        let http::Reply { status, content_type, body } = http::get(api.addr, "/ready").await;
        assert_eq!((status, content_type.as_str()), (503, "application/json"), "{body}");
        let why: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(why["status"], "not_ready", "{body}");
        assert!(why["reason"].as_str().is_some_and(|r| r.contains("tracker")), "{body}");

        let t = tracker::Tracker::bind(addr, quick_tracker()).await.unwrap();
        let body = until_status(api.addr, "/ready", 200).await;
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((ready["status"].as_str(), ready["trackers_up"].as_u64()), (Some("ready"), Some(1)), "{body}");

        t.shutdown().await.unwrap();
        until_status(api.addr, "/ready", 503).await;
        let t = tracker::Tracker::bind(addr, quick_tracker()).await.unwrap();
        until_status(api.addr, "/ready", 200).await;
        assert_eq!(http::get(api.addr, "/health").await.status, 200);

        api.stop().await;
        Arc::into_inner(node).unwrap().shutdown().await;
        t.shutdown().await.unwrap();
    })
    .await;
}
