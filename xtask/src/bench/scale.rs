//! `bench scale`: many downloaders in one process against a few seeds, all at once, to show that
//! the scheduler and the upload side hold many connections: how many complete, how long the last
//! takes beside the seeds' own limit, and the memory of the process holding every node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use peer::{DownloadOptions, Node, NodeConfig};
use tokio::time::Instant;

use super::single::start_tracker;
use super::util::{
    file_root, mib_s, own_peak_rss_mib, proc_status_mib, reset_own_peak_rss, write_random_file, Bins, Proc, Report,
    Scratch, MIB,
};

/// What the scale run is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Downloaders.
    pub(crate) downloaders: usize,
    /// Seeds.
    pub(crate) seeds: usize,
    /// File size, bytes.
    pub(crate) size: u64,
}

/// Set in the child process that runs the measurement.
const CHILD: &str = "P2P_BENCH_SCALE_CHILD";

/// Runs the benchmark in a fresh process of this program, so that its memory figures are its own
/// and not what earlier benchmarks left in this one's heap.
pub(crate) fn run(bins: &Bins, setup: Setup, dir: &Path) -> anyhow::Result<Report> {
    if std::env::var_os(CHILD).is_some() {
        return measure(bins, setup, dir);
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().context("locate this program")?);
    cmd.args(["bench", "--json", "--dir"])
        .arg(dir)
        .args(["scale", "--downloaders", &setup.downloaders.to_string()])
        .args(["--seeds", &setup.seeds.to_string(), "--size", &setup.size.to_string()])
        .env(CHILD, "1");
    let child = Proc::spawn(cmd, "scale benchmark")?;
    let out = child.finish(Duration::from_secs(900))?;
    let mut reports: Vec<Report> = serde_json::from_str(&out).context("parse the scale benchmark's report")?;
    reports.pop().context("the scale benchmark reported nothing")
}

fn measure(bins: &Bins, setup: Setup, dir: &Path) -> anyhow::Result<Report> {
    let scratch = Scratch::new(dir, "scale")?;
    let seed_dirs: Vec<_> = (0..setup.seeds).map(|i| scratch.path().join(format!("seed{i}"))).collect();
    std::fs::create_dir_all(&seed_dirs[0])?;
    let source = seed_dirs[0].join("scale.bin");
    write_random_file(&source, setup.size, 31)?;
    for d in &seed_dirs[1..] {
        std::fs::create_dir_all(d)?;
        std::fs::copy(&source, d.join("scale.bin"))?;
    }
    let root = file_root(&source)?;
    // The tracker is its own process, so the memory figures are the peers' alone.
    let cap = (setup.downloaders + setup.seeds + 100).to_string();
    let (_tracker, addr) = start_tracker(bins, &["--max-connections", &cap])?;
    let addr: SocketAddr = addr.parse().context("tracker address")?;
    let rt = tokio::runtime::Runtime::new().context("start the runtime")?;
    let rss_base = proc_status_mib(std::process::id(), "VmRSS:").unwrap_or(0.0);
    let (times, seeds_uploaded, rss_idle) = rt.block_on(scale(setup, addr, scratch.path(), &seed_dirs))?;
    let peak = own_peak_rss_mib() - rss_base;
    let rss_idle = rss_idle - rss_base;
    drop(rt);
    for i in 0..setup.downloaders {
        let got = file_root(&scratch.path().join(format!("d{i}")).join("scale.bin"))?;
        anyhow::ensure!(got == root, "downloader {i} has a different file");
    }

    let nodes = setup.downloaders + setup.seeds;
    let t = times.last().copied().unwrap_or(0.0);
    let mut r = Report::new(
        "scale",
        format!(
            "{} downloaders and {} seeds, every node in this process, {:.0} MiB file, no rate caps",
            setup.downloaders,
            setup.seeds,
            setup.size as f64 / MIB
        ),
    );
    r.at_least("downloads completed and verified", times.len() as f64, "", setup.downloaders as f64);
    r.row("first done", times.first().copied().unwrap_or(0.0), "s");
    r.row("median done", times.get(times.len() / 2).copied().unwrap_or(0.0), "s");
    r.row("last done", t, "s");
    r.row("aggregate download rate", mib_s(setup.size * setup.downloaders as u64, t), "MiB/s");
    r.row("seeds uploaded / F (the rest came from downloaders)", seeds_uploaded as f64 / setup.size as f64, "copies");
    r.row("memory of every node started, idle (RSS above the bare process)", rss_idle, "MiB");
    r.row("peak memory during the downloads (RSS above the bare process)", peak, "MiB");
    r.row("  per node", peak / nodes as f64, "MiB");
    r.note("every downloaded file was compared with the seeds' BLAKE3 root");
    Ok(r)
}

async fn scale(
    setup: Setup,
    tracker: SocketAddr,
    root: &Path,
    seed_dirs: &[std::path::PathBuf],
) -> anyhow::Result<(Vec<f64>, u64, f64)> {
    let node = |dir: &Path| {
        let mut cfg = NodeConfig::new(tracker, dir);
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        // Every node is on 127.0.0.1: the per-address cap, meant for separate hosts, would make
        // a seed serve 4 of them at a time.
        cfg.serve.max_uploads_per_ip = cfg.serve.max_uploads;
        Node::start(cfg)
    };
    let mut seeds = Vec::new();
    for d in seed_dirs {
        seeds.push(node(d).await?);
    }
    let mut peers = Vec::new();
    for i in 0..setup.downloaders {
        let d = root.join(format!("d{i}"));
        std::fs::create_dir_all(&d)?;
        peers.push(node(&d).await.with_context(|| format!("start downloader {i}"))?);
    }
    let rss_idle = proc_status_mib(std::process::id(), "VmRSS:").unwrap_or(0.0);
    reset_own_peak_rss()?;
    let start = Instant::now();
    let downloads = peers.iter().map(|p| async move {
        p.download("scale.bin", DownloadOptions::default()).await.map(|_| start.elapsed().as_secs_f64())
    });
    let results = tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(downloads))
        .await
        .context("downloads did not finish in 300 s")?;
    let mut times = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        times.push(r.with_context(|| format!("downloader {i}"))?);
    }
    times.sort_by(f64::total_cmp);
    let seeds_uploaded = seeds.iter().map(Node::uploaded_bytes).sum();
    for p in peers.into_iter().chain(seeds) {
        p.shutdown().await;
    }
    Ok((times, seeds_uploaded, rss_idle))
}
