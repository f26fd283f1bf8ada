//! The peer's local HTTP API, end to end: a tracker, a seed and a node serving the API, all
//! in-process on port 0; the API driven through `peer::api::ApiClient` and, where the request
//! itself must be malformed, through raw HTTP/1.1 on a socket. Every wait is for a condition
//! under a deadline. (Refusing a client on another host needs one: that rule is tested in the
//! peer crate, `api/tests.rs`, with the client address simulated, since tests send nothing off
//! the loopback interface.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use peer::api::{ApiClient, ApiConfig, DownloadRequest, DownloadState, SeedPolicy, Status};
use peer::Shared;
use serde_json::Value;
use tests::http::{self, Api};
use tests::*;

/// The API's client.
async fn client(api: &Api) -> ApiClient {
    ApiClient::connect(api.addr, None).await.unwrap()
}

/// One request over raw HTTP/1.1: the status and the JSON body.
async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let reply = http::request(addr, method, path, headers, body).await;
    let json = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {reply:?}"));
    (reply.status, json)
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Asserts the one error shape: `{"error": {"code", "message"}}`.
fn assert_error(reply: &(u16, Value), status: u16, code: &str) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["error"]["code"], code, "{}", reply.1);
    assert!(reply.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", reply.1);
}

fn names(names: &[&str]) -> DownloadRequest {
    DownloadRequest { names: names.iter().map(|n| n.to_string()).collect(), ..Default::default() }
}

/// Polls until `cond` holds for the download's status, failing after 30 s.
async fn until(api: &ApiClient, id: &str, what: &str, cond: impl Fn(&Status) -> bool) -> Status {
    let start = tokio::time::Instant::now();
    loop {
        let s = api.status(id).await.unwrap();
        if cond(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn partial_files(share: &Path) -> usize {
    std::fs::read_dir(share.join(".p2p/partial")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_downloads_through_the_api_and_shows_in_the_lists() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (src, dst) = (root.path().join("seed"), root.path().join("dl"));
        let a = write_file(&src, "set/a.bin", 300_000, 1);
        let b = write_file(&src, "set/sub/b.bin", 1_000_000, 2);
        write_file(&src, "other.bin", 1000, 3);
        let seed = spawn_peer(t.addr(), &src, |_| {}).await;
        let node = Arc::new(spawn_peer(t.addr(), &dst, |_| {}).await);
        let api = Api::start(node.clone(), ApiConfig::default()).await;
        let client = client(&api).await;

        let req = DownloadRequest { seed: Some(SeedPolicy::Time { secs: 60 }), ..names(&["set/"]) };
        let started = client.start(&req).await.unwrap();
        assert_eq!(started.files, 2);
        let mut polls = 0;
        let done = client.wait(&started.id, |_| polls += 1).await.unwrap();
        assert!(polls >= 1);
        let s = &done.summary;
        assert_eq!((s.state, s.files, s.files_done, s.files_failed), (DownloadState::Done, 2, 2, 0), "{done:?}");
        assert_eq!((s.bytes_done, s.bytes_total), (1_300_000, 1_300_000));
        assert_eq!(s.seed, Some(SeedPolicy::Time { secs: 60 }), "the seeding policy is recorded");
        assert!(s.finished_at.is_some_and(|f| f >= s.started_at) && s.error.is_none());
        let results = done.results.as_ref().unwrap();
        assert_eq!(
            results.iter().map(|r| (r.name.as_str(), r.ok)).collect::<Vec<_>>(),
            [("set/a.bin", true), ("set/sub/b.bin", true)]
        );
        assert_eq!(results.iter().map(|r| r.fetched_bytes).sum::<u64>(), 1_300_000);
        assert!(read(&dst, "set/a.bin") == a && read(&dst, "set/sub/b.bin") == b);
        assert!(!dst.join("other.bin").exists());

        let list = client.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].id.as_str(), list[0].state), (started.id.as_str(), DownloadState::Done));
        let files = client.files().await.unwrap();
        let listed: Vec<_> = files.iter().map(|f| (f.name.as_str(), f.size, f.complete)).collect();
        assert_eq!(listed, [("set/a.bin", 300_000, true), ("set/sub/b.bin", 1_000_000, true)]);
        assert!(files.iter().all(|f| f.chunks_held == f.chunks_total && f.root.len() == 64));
        // The same over raw HTTP, as curl would see it.
        let (status, body) = raw(api.addr, "GET", "/v1/downloads", &[], b"").await;
        assert_eq!((status, &body["downloads"][0]["state"]), (200, &Value::from("done")), "{body}");

        api.stop().await;
        seed.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_error_and_starts_nothing() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (src, dst) = (root.path().join("seed"), root.path().join("dl"));
        write_file(&src, "data/x.bin", 5000, 1);
        write_file(&src, "clash.bin", 5000, 2);
        write_file(&dst, "clash.bin", 5000, 3);
        let seed = spawn_peer(t.addr(), &src, |_| {}).await;
        let node = Arc::new(spawn_peer(t.addr(), &dst, |_| {}).await);
        let api = Api::start(node.clone(), ApiConfig::default()).await;
        let a = api.addr;

        // Unknown ids.
        assert_error(&raw(a, "GET", "/v1/downloads/42", &[], b"").await, 404, "not_found");
        assert_error(&raw(a, "DELETE", "/v1/downloads/42", &[], b"").await, 404, "not_found");
        assert_error(&raw(a, "GET", "/v1/downloads/not-a-number", &[], b"").await, 404, "not_found");
        // Malformed bodies.
        assert_error(&raw(a, "POST", "/v1/downloads", &[JSON], b"{\"names\": [").await, 400, "bad_request");
        assert_error(&raw(a, "POST", "/v1/downloads", &[JSON], b"{\"names\": \"x\"}").await, 400, "bad_request");
        assert_error(&raw(a, "POST", "/v1/downloads", &[JSON], b"{\"nmes\": [\"x\"]}").await, 400, "bad_request");
        assert_error(&raw(a, "POST", "/v1/downloads", &[JSON], b"{}").await, 400, "bad_request");
        let seed_bad = br#"{"names": ["data/"], "seed": {"policy": "sometimes"}}"#;
        assert_error(&raw(a, "POST", "/v1/downloads", &[JSON], seed_bad).await, 400, "bad_request");
        let no_type = raw(a, "POST", "/v1/downloads", &[], b"{\"names\": [\"data/\"]}").await;
        assert_error(&no_type, 415, "unsupported_media_type");
        // Unknown paths and wrong methods.
        assert_error(&raw(a, "GET", "/v1/nothing", &[], b"").await, 404, "not_found");
        assert_error(&raw(a, "GET", "/", &[], b"").await, 404, "not_found");
        assert_error(&raw(a, "PUT", "/v1/downloads", &[], b"").await, 405, "method_not_allowed");
        assert_error(&raw(a, "POST", "/v1/files", &[], b"").await, 405, "method_not_allowed");
        assert_error(&raw(a, "PATCH", "/v1/downloads/1", &[], b"").await, 405, "method_not_allowed");

        // Well-formed, but naming what does not exist or cannot be: typed errors.
        let client = client(&api).await;
        let refused = |req: DownloadRequest, status: u16, code: &'static str| {
            let client = client.clone();
            async move {
                let e = client.start(&req).await.unwrap_err();
                assert_eq!((e.status(), e.code()), (Some(status), Some(code)), "{req:?}: {e}");
            }
        };
        refused(names(&["data/x.bin", "no/such.bin"]), 404, "not_found").await;
        refused(names(&["nothing-here/"]), 404, "not_found").await;
        refused(names(&["*.nothing"]), 404, "not_found").await;
        let unknown_root = DownloadRequest { roots: vec!["ab".repeat(32)], ..Default::default() };
        refused(unknown_root, 404, "not_found").await;
        refused(names(&["../escape"]), 400, "bad_request").await;
        refused(names(&[&format!("data/x.bin@{}", "ab".repeat(8))]), 409, "root_mismatch").await;
        refused(names(&["clash.bin"]), 409, "conflict").await;
        let manifest = format!("{}  data/x.bin\n{}  data/x.bin\n", "ab".repeat(32), "cd".repeat(32));
        refused(DownloadRequest { manifest: Some(manifest), ..Default::default() }, 400, "bad_request").await;
        assert!(client.list().await.unwrap().is_empty(), "nothing was started");
        assert_eq!(partial_files(&dst), 0, "nothing was written");

        // `replace` lifts the conflict.
        let started = client.start(&DownloadRequest { replace: true, ..names(&["clash.bin"]) }).await.unwrap();
        let done = client.wait(&started.id, |_| {}).await.unwrap();
        assert_eq!(done.summary.state, DownloadState::Done, "{done:?}");
        assert!(read(&dst, "clash.bin") == read(&src, "clash.bin"));

        api.stop().await;
        seed.shutdown().await;
    })
    .await;
}

/// A seed slow enough that a 4 MiB download is still running when it is cancelled.
fn slow_seed(c: &mut peer::NodeConfig) {
    c.upload_rate = Some(256 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_download_keeps_its_partial_and_leaves_the_others_running() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (src, dst) = (root.path().join("seed"), root.path().join("dl"));
        write_file(&src, "big.bin", 4 * MIB, 1);
        let small = write_file(&src, "small.bin", 300_000, 2);
        let seed = spawn_peer(t.addr(), &src, slow_seed).await;
        let node = Arc::new(spawn_peer(t.addr(), &dst, |_| {}).await);
        let api = Api::start(node.clone(), ApiConfig::default()).await;
        let client = client(&api).await;

        let big = client.start(&names(&["big.bin"])).await.unwrap();
        let running = until(&client, &big.id, "big.bin under way", |s| s.summary.bytes_done > 0).await;
        assert_eq!(running.summary.state, DownloadState::Running);
        assert_eq!(running.active.len(), 1);
        assert_eq!((running.active[0].name.as_str(), running.active[0].bytes_total), ("big.bin", 4 * MIB as u64));
        let other = client.start(&names(&["small.bin"])).await.unwrap();

        let cancelled = client.cancel(&big.id).await.unwrap();
        assert_eq!(cancelled.summary.state, DownloadState::Cancelled, "{cancelled:?}");
        assert!(cancelled.summary.finished_at.is_some(), "it has stopped when DELETE answers");
        assert!(cancelled.summary.bytes_done < 4 * MIB as u64);
        // The partial is kept, served, and listed as such; the file is not in place.
        assert!(partial_files(&dst) > 0);
        assert!(matches!(node.shares().get("big.bin"), Some(Shared::Partial { .. })));
        assert!(!dst.join("big.bin").exists());
        let files = client.files().await.unwrap();
        let big_file = files.iter().find(|f| f.name == "big.bin").unwrap();
        assert!(!big_file.complete && big_file.chunks_held > 0 && big_file.chunks_held < big_file.chunks_total);
        // Cancelling again changes nothing.
        assert_eq!(client.cancel(&big.id).await.unwrap().summary.state, DownloadState::Cancelled);

        // The other download was not touched.
        let done = client.wait(&other.id, |_| {}).await.unwrap();
        assert_eq!(done.summary.state, DownloadState::Done, "{done:?}");
        assert!(read(&dst, "small.bin") == small);
        // And a cancelled download resumes from its partial.
        let again = client.start(&names(&["big.bin"])).await.unwrap();
        let status = until(&client, &again.id, "big.bin resumed", |s| s.summary.bytes_done > 0).await;
        assert!(status.summary.bytes_done >= cancelled.summary.bytes_done);
        client.cancel(&again.id).await.unwrap();

        api.stop().await;
        seed.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_on_every_request() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let node = Arc::new(spawn_peer(t.addr(), root.path(), |_| {}).await);
        let config = ApiConfig { token: Some("open-sesame".into()), ..ApiConfig::default() };
        let api = Api::start(node, config).await;
        let a = api.addr;
        for path in ["/v1/downloads", "/v1/files", "/v1/downloads/1", "/v1/nothing"] {
            assert_error(&raw(a, "GET", path, &[], b"").await, 401, "unauthorized");
            let wrong = [("Authorization", "Bearer open-sesamE")];
            assert_error(&raw(a, "GET", path, &wrong, b"").await, 401, "unauthorized");
            let basic = [("Authorization", "Basic open-sesame")];
            assert_error(&raw(a, "GET", path, &basic, b"").await, 401, "unauthorized");
        }
        let right = [("Authorization", "Bearer open-sesame")];
        let (status, body) = raw(a, "GET", "/v1/downloads", &right, b"").await;
        assert_eq!((status, body), (200, serde_json::json!({"downloads": []})));
        assert_error(&raw(a, "GET", "/v1/nothing", &right, b"").await, 404, "not_found");

        let e = ApiClient::connect(a, None).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")), "{e}");
        let e = ApiClient::connect(a, Some("guess".into())).await.unwrap_err();
        assert_eq!(e.status(), Some(401));
        let client = ApiClient::connect(a, Some("open-sesame".into())).await.unwrap();
        assert!(client.files().await.unwrap().is_empty());
        api.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_downloads_are_capped() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (src, dst) = (root.path().join("seed"), root.path().join("dl"));
        write_file(&src, "big.bin", 4 * MIB, 1);
        write_file(&src, "small.bin", 1000, 2);
        let seed = spawn_peer(t.addr(), &src, slow_seed).await;
        let node = Arc::new(spawn_peer(t.addr(), &dst, |_| {}).await);
        let api = Api::start(node, ApiConfig { max_running: 1, ..ApiConfig::default() }).await;
        let client = client(&api).await;

        let big = client.start(&names(&["big.bin"])).await.unwrap();
        let e = client.start(&names(&["small.bin"])).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(429), Some("too_many_downloads")), "{e}");
        assert_eq!(client.list().await.unwrap().len(), 1, "the refused one was not recorded");
        // Its slot is free once it ends.
        client.cancel(&big.id).await.unwrap();
        let small = client.start(&names(&["small.bin"])).await.unwrap();
        assert_eq!(client.wait(&small.id, |_| {}).await.unwrap().summary.state, DownloadState::Done);

        api.stop().await;
        seed.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_latest_finished_downloads_are_remembered() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let (src, dst) = (root.path().join("seed"), root.path().join("dl"));
        write_file(&src, "f.bin", 1000, 1);
        let seed = spawn_peer(t.addr(), &src, |_| {}).await;
        let node = Arc::new(spawn_peer(t.addr(), &dst, |_| {}).await);
        let api = Api::start(node, ApiConfig { max_finished: 2, ..ApiConfig::default() }).await;
        let client = client(&api).await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let id = client.start(&names(&["f.bin"])).await.unwrap().id;
            assert_eq!(client.wait(&id, |_| {}).await.unwrap().summary.state, DownloadState::Done);
            ids.push(id);
        }
        let kept: Vec<String> = client.list().await.unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(kept, ids[1..]);
        let e = client.status(&ids[0]).await.unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        api.stop().await;
        seed.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_capped() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let root = tempfile::tempdir().unwrap();
        let node = Arc::new(spawn_peer(t.addr(), root.path(), |_| {}).await);

        let small = Api::start(node.clone(), ApiConfig { max_body: 1024, ..ApiConfig::default() }).await;
        let body = serde_json::to_vec(&names(&[&"x".repeat(3000)])).unwrap();
        assert_error(&raw(small.addr, "POST", "/v1/downloads", &[JSON], &body).await, 413, "payload_too_large");
        small.stop().await;

        // By default a big manifest fits (16 MiB): 2 MiB of comments and one line, for a file the
        // tracker does not have.
        let api = Api::start(node, ApiConfig::default()).await;
        let mut manifest = "# padding\n".repeat(200_000);
        manifest.push_str(&format!("{}  missing.bin\n", "ab".repeat(32)));
        let e = client(&api).await.start(&DownloadRequest { manifest: Some(manifest), ..Default::default() }).await;
        let e = e.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")), "{e}");
        api.stop().await;
    })
    .await;
}

/// A client that never finishes its request's headers does not hold the API (and `peer serve`'s
/// Ctrl-C) for ever: past a short grace its connection is cut and the API stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_does_not_hold_up_shutdown() {
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(spawn_peer(t.addr(), dir.path(), |_| {}).await);
        let api = Api::start(node, ApiConfig::default()).await;
        let mut slow = tokio::net::TcpStream::connect(api.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /v1/files HTTP/1.1\r\n").await.unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(10), api.stop()).await;
        assert!(stopped.is_ok(), "the API waited for a request that never ends");
        drop(slow);
    })
    .await;
}
