//! `bench swarm`: one seed and N downloaders, every peer's upload capped at the same rate, all
//! downloading at once, measured against the optimum for swarm distribution (Kumar & Ross, 2006):
//!
//! ```text
//! T_min = max( F/u_s , N·F/(u_s + Σ u_i) )      (downloads uncapped, so F/d_min drops out)
//! ```
//!
//! This mode runs every peer in this process with the peer's own rate caps (portable); `netns.rs`
//! runs each peer as its own process on its own network-namespace host with `tc` shaping.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use peer::{DownloadOptions, Node, NodeConfig};
use tokio::time::Instant;

use super::util::{file_root, kumar_ross, mib_s, percentile, write_random_file, Report, Scratch, MIB};

/// Time to the last verified copy must be within this factor of the optimum.
pub(crate) const TIME_TARGET: f64 = 1.25;
/// The seed may upload at most this many copies of the file.
pub(crate) const SEED_TARGET: f64 = 1.5;

/// What a swarm run is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Downloaders.
    pub(crate) n: usize,
    /// File size, bytes.
    pub(crate) size: u64,
    /// Upload cap of every peer, bytes/s.
    pub(crate) rate: u64,
}

impl Setup {
    /// The Kumar–Ross lower bound with equal upload rates and uncapped downloads, seconds.
    pub(crate) fn t_min(&self) -> f64 {
        let u = self.rate as f64;
        kumar_ross(self.size as f64, u, &vec![u; self.n], None)
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "1 seed + {} downloaders, {:.0} MiB file, every upload capped at {:.1} MiB/s",
            self.n,
            self.size as f64 / MIB,
            self.rate as f64 / MIB
        )
    }
}

/// What happened in a run, whichever the mode.
pub(crate) struct Outcome {
    /// Seconds from start until each downloader had its verified file, ascending.
    pub(crate) times: Vec<f64>,
    /// Bytes the seed uploaded.
    pub(crate) seed_uploaded: u64,
    /// Bytes downloaders uploaded to each other.
    pub(crate) peers_uploaded: u64,
}

/// The report rows shared by both modes.
pub(crate) fn report(name: &str, setup: &Setup, mode: &str, o: &Outcome) -> Report {
    let mut r = Report::new(name, format!("{} ({mode})", setup.describe()));
    let t = o.times.last().copied().unwrap_or(0.0);
    let t_min = setup.t_min();
    r.row("T_min = max(F/u_s, N·F/(u_s + Σu_i))", t_min, "s");
    r.row("first downloader done", o.times.first().copied().unwrap_or(0.0), "s");
    r.row("T: last downloader done (verified file in place)", t, "s");
    completion_rows(&mut r, &o.times, t_min, TIME_TARGET);
    r.at_most("seed uploaded / F", o.seed_uploaded as f64 / setup.size as f64, "copies", SEED_TARGET);
    r.row("downloaders uploaded to each other / F", o.peers_uploaded as f64 / setup.size as f64, "copies");
    r.row("aggregate download rate", mib_s(setup.size * setup.n as u64, t), "MiB/s");
    r
}

/// Completion percentiles over the bound: p50 and p90 (nearest rank) and the last (max), the
/// last with its target. `times` ascending, seconds.
pub(crate) fn completion_rows(r: &mut Report, times: &[f64], bound: f64, target: f64) {
    let b = bound.max(1e-9);
    r.row("completion p50 / T_min", percentile(times, 50.0) / b, "ratio");
    r.row("completion p90 / T_min", percentile(times, 90.0) / b, "ratio");
    r.at_most("completion max / T_min (T / T_min)", percentile(times, 100.0) / b, "ratio", target);
}

pub(crate) fn run(setup: Setup, dir: &Path) -> anyhow::Result<Report> {
    let scratch = Scratch::new(dir, "swarm")?;
    let seed_dir = scratch.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    let source = seed_dir.join("swarm.bin");
    write_random_file(&source, setup.size, 21)?;
    let root = file_root(&source)?;
    let rt = tokio::runtime::Runtime::new().context("start the runtime")?;
    let outcome = rt.block_on(swarm(setup, scratch.path(), &seed_dir))?;
    for i in 0..setup.n {
        let got = file_root(&scratch.path().join(format!("d{i}")).join("swarm.bin"))?;
        anyhow::ensure!(got == root, "downloader {i} has a different file");
    }
    let mut r = report("swarm", &setup, "in-process peers, the peer's own rate caps", &outcome);
    r.note("every downloaded file was compared with the seed's BLAKE3 root");
    Ok(r)
}

async fn swarm(setup: Setup, root: &Path, seed_dir: &Path) -> anyhow::Result<Outcome> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let tracker = tracker::Tracker::bind(loopback, tracker::Config::default()).await?;
    let node = |dir: &Path| {
        let mut cfg = NodeConfig::new(tracker.addr(), dir);
        cfg.listen = loopback;
        // Every node is on 127.0.0.1: the per-address cap, meant for separate hosts, would make
        // a seed serve 4 of them at a time.
        cfg.serve.max_uploads_per_ip = cfg.serve.max_uploads;
        cfg.upload_rate = Some(setup.rate);
        Node::start(cfg)
    };
    let seed = node(seed_dir).await?;
    let mut peers = Vec::new();
    for i in 0..setup.n {
        let d = root.join(format!("d{i}"));
        std::fs::create_dir_all(&d)?;
        peers.push(node(&d).await?);
    }
    let start = Instant::now();
    let downloads = peers.iter().map(|p| async move {
        let r = p.download("swarm.bin", DownloadOptions::default()).await;
        r.map(|_| start.elapsed().as_secs_f64())
    });
    let results = tokio::time::timeout(
        Duration::from_secs_f64(setup.t_min() * 20.0 + 60.0),
        futures::future::join_all(downloads),
    )
    .await
    .context("the swarm did not finish in 20 × T_min")?;
    let mut times = Vec::new();
    for r in results {
        times.push(r?);
    }
    times.sort_by(f64::total_cmp);
    let outcome = Outcome {
        times,
        seed_uploaded: seed.uploaded_bytes(),
        peers_uploaded: peers.iter().map(Node::uploaded_bytes).sum(),
    };
    for p in peers {
        p.shutdown().await;
    }
    seed.shutdown().await;
    tracker.shutdown().await?;
    Ok(outcome)
}
