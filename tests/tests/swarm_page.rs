//! The tracker's swarm page in a real headless browser: a tracker with HTTP, a capped seed and
//! three downloaders in-process; Chromium renders `/#file=NAME` (`--dump-dom`, its JS run under a
//! virtual time budget) while the chunks spread and again once every download is done, and the
//! rendered DOM (not the JSON) must show the file, the peers and a chunk map whose copies grow
//! until every cell shows every holder. A screenshot is taken mid-transfer (written to
//! `docs/swarm-page.png` when P2P_UPDATE_SCREENSHOT is set). Skipped when Chromium is missing,
//! unless P2P_REQUIRE_TOOLS is set (CI installs it).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use peer::DownloadOptions;
use tests::{eventually, spawn_peer, spawn_tracker, with_timeout, write_file, MIB};

/// Chromium's binary, or a skip message; required when P2P_REQUIRE_TOOLS is set.
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|bin| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(std::env::var_os("P2P_REQUIRE_TOOLS").is_none(), "chromium is required (apt-get install chromium)");
        eprintln!("SKIPPED the swarm page test: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// Runs headless Chromium on `url` with `extra` arguments, the page's JS given `budget_ms` of
/// virtual time; returns stdout.
async fn browse(bin: &'static str, profile: &Path, url: String, extra: Vec<String>, budget_ms: u32) -> String {
    let profile = profile.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(bin)
            .args(["--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// What the rendered chunk map shows.
#[derive(Debug)]
struct Map {
    cells: usize,
    /// Cells by holders shown (0..=4).
    by_holders: [usize; 5],
    copies: u64,
}

/// The value of the attribute `name` on the map's element.
fn map_attr(dom: &str, name: &str) -> Option<u64> {
    let map = &dom[dom.find(r#"id="map""#)?..];
    let tag = &map[..map.find('>')?];
    let at = tag.find(&format!(r#"data-{name}=""#))? + name.len() + 7;
    tag[at..].split('"').next()?.parse().ok()
}

fn map(dom: &str) -> Map {
    let mut by_holders = [0; 5];
    for (k, n) in by_holders.iter_mut().enumerate() {
        *n = dom.matches(&format!(r#"data-holders="{k}""#)).count();
    }
    Map { cells: dom.matches("data-holders=").count(), by_holders, copies: map_attr(dom, "copies").unwrap_or(0) }
}

#[tokio::test]
async fn the_page_shows_chunks_spreading_through_a_swarm() {
    let Some(bin) = chromium() else { return };
    with_timeout(async {
        let mut t = spawn_tracker(tracker::Config::default()).await;
        let http: SocketAddr = t.bind_http(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let seed_dir = root.path().join("seed");
        std::fs::create_dir_all(&seed_dir).unwrap();
        let name = "data/swarm.bin";
        write_file(&seed_dir, name, 8 * MIB, 7);
        // One copy leaves the seed in about 8 s: the downloaders trade the rest among themselves.
        let seed = spawn_peer(t.addr(), &seed_dir, |c| c.upload_rate = Some(MIB as u64)).await;
        eventually("the seed registered", Duration::from_secs(10), || t.registry().stats().files == 1).await;
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = root.path().join(format!("d{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            nodes.push(Arc::new(spawn_peer(t.addr(), &dir, |_| {}).await));
        }
        let downloads: Vec<_> = nodes
            .iter()
            .map(|n| {
                let n = n.clone();
                tokio::spawn(async move { n.download(name, DownloadOptions::default()).await.map(|_| ()) })
            })
            .collect();

        let profile = tempfile::tempdir().unwrap();
        let url = format!("http://{http}/#file={}", name.replace('/', "%2F"));
        let early = browse(bin, profile.path(), url.clone(), vec!["--dump-dom".into()], 2500).await;
        // The files table, the peers and the map were rendered by the page's script.
        assert!(early.contains(&format!(r#"data-name="{name}""#)), "the file is listed:\n{early}");
        assert_eq!(early.matches(r#"class="peer""#).count(), 4, "the seed and three downloaders");
        let chunks = map_attr(&early, "chunks").expect("the chunk map is drawn") as usize;
        let first = map(&early);
        assert_eq!(first.cells, chunks, "one cell per chunk (under the cap)");
        assert!(first.by_holders[1] > 0, "chunks only the seed has, mid-transfer: {first:?}");
        assert!(first.copies < 4 * chunks as u64, "mid-transfer: {first:?}");

        // A screenshot while the chunks spread.
        let shot = profile.path().join("swarm-page.png");
        let args = vec![format!("--screenshot={}", shot.display()), "--window-size=1200,800".into()];
        browse(bin, profile.path(), url.clone(), args, 2500).await;
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        if std::env::var_os("P2P_UPDATE_SCREENSHOT").is_some() {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/swarm-page.png");
            std::fs::write(docs, &png).unwrap();
        }

        for d in downloads {
            d.await.unwrap().unwrap();
        }
        eventually("every holding complete", Duration::from_secs(10), || {
            t.registry().file_rows(1).rows.first().is_some_and(|f| f.complete == 4)
        })
        .await;
        let done = browse(bin, profile.path(), url, vec!["--dump-dom".into()], 2500).await;
        let last = map(&done);
        assert_eq!(last.cells, chunks);
        assert_eq!(last.by_holders[4], chunks, "every chunk with all four holders: {last:?}");
        assert_eq!(last.copies, 4 * chunks as u64);
        assert!(last.copies > first.copies, "the map changed as the chunks spread");

        for n in nodes {
            Arc::into_inner(n).unwrap().shutdown().await;
        }
        seed.shutdown().await;
        let _ = &mut t;
        t.shutdown().await.unwrap();
    })
    .await;
}
