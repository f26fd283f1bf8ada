//! `bench folder`: a data set of many files (1,000 by default: most under 16 KB, a tenth around
//! 64 KiB, a few of 1.5 MiB, nested folders) from 2 capped seeds to N uncapped downloaders, each
//! fetching the whole folder in one batch; then one file of the same total size, same seeds, new
//! downloaders, in the same run. The seeds' uplinks are the scarce resource, so the optimum is
//! T_min = F / (sum of the seeds' caps), and every byte a seed sends twice costs time.
//!
//! Targets (issue 12): the folder within 1.3 times the one file's time, and the seeds uploading
//! at most 1.2 copies of the folder between them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use peer::{BatchOptions, DownloadOptions, Node, NodeConfig, Selector};
use tokio::time::Instant;

use super::util::{file_root, fs_type, write_random_file, Report, Scratch, MIB};

/// The folder's time over the one file's.
const TIME_TARGET: f64 = 1.3;
/// Copies of the folder the seeds upload between them.
const SEED_TARGET: f64 = 1.2;

/// What a run is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Files in the folder.
    pub(crate) files: usize,
    /// Downloaders.
    pub(crate) n: usize,
    /// Upload cap of each of the 2 seeds, bytes/s.
    pub(crate) seed_rate: u64,
}

const SEEDS: usize = 2;

/// One phase's figures.
struct Phase {
    /// Seconds until the last downloader had everything, verified.
    last: f64,
    /// Bytes the seeds uploaded in the phase.
    seeds_uploaded: u64,
}

pub(crate) fn run(setup: Setup, dir: &Path) -> anyhow::Result<Report> {
    let scratch = Scratch::new(dir, "folder")?;
    let seed_dirs: Vec<_> = (0..SEEDS).map(|i| scratch.path().join(format!("seed{i}"))).collect();
    let files = tests::write_folder(&seed_dirs[0], "set", setup.files);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    write_random_file(&seed_dirs[0].join("one.bin"), total, 12)?;
    for d in &seed_dirs[1..] {
        tests::copy_tree(&seed_dirs[0], d);
    }
    let one_root = file_root(&seed_dirs[0].join("one.bin"))?;
    let rt = tokio::runtime::Runtime::new().context("start the runtime")?;
    let (folder, one) = rt.block_on(phases(setup, scratch.path(), &seed_dirs))?;
    for i in 0..setup.n {
        let d = scratch.path().join(format!("folder{i}"));
        for (name, data) in &files {
            let got = std::fs::read(d.join(name)).with_context(|| format!("downloader {i}: {name}"))?;
            anyhow::ensure!(got == *data, "downloader {i} has a different {name}");
        }
        let got = file_root(&scratch.path().join(format!("one{i}")).join("one.bin"))?;
        anyhow::ensure!(got == one_root, "downloader {i} has a different one.bin");
    }

    let f = total as f64;
    let t_min = f / (SEEDS as f64 * setup.seed_rate as f64);
    let mut r = Report::new(
        "folder",
        format!(
            "{} files ({:.1} MiB) from {SEEDS} seeds capped at {:.1} MiB/s each to {} uncapped downloaders, \
             one batch each (in-process peers)",
            files.len(),
            f / MIB,
            setup.seed_rate as f64 / MIB,
            setup.n
        ),
    );
    r.row("T_min = F / (sum of the seeds' caps)", t_min, "s");
    r.row("folder: last downloader done", folder.last, "s");
    r.row("folder / T_min", folder.last / t_min, "ratio");
    r.row("one file of the same size: last downloader done", one.last, "s");
    r.row("one file / T_min", one.last / t_min, "ratio");
    r.at_most("folder time / one file's time", folder.last / one.last, "ratio", TIME_TARGET);
    r.at_most("folder: seeds uploaded / F", folder.seeds_uploaded as f64 / f, "copies", SEED_TARGET);
    r.row("one file: seeds uploaded / F", one.seeds_uploaded as f64 / f, "copies");
    r.note("every downloaded file was compared with the seeds' bytes");
    let fs = fs_type(scratch.path()).unwrap_or_else(|| "an unknown file system".into());
    r.note(format!(
        "scratch folder on {fs}: each file downloaded costs the file system a few file creations and \
         removals, which a folder of many files multiplies (docs/BENCHMARKS.md); `--dir /dev/shm` \
         measures the transfer alone"
    ));
    Ok(r)
}

/// The folder phase, then the one-file phase, with the same tracker and seeds.
async fn phases(setup: Setup, root: &Path, seed_dirs: &[std::path::PathBuf]) -> anyhow::Result<(Phase, Phase)> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let tracker = tracker::Tracker::bind(loopback, tracker::Config::default()).await?;
    let node = |dir: &Path, rate: Option<u64>| {
        let mut cfg = NodeConfig::new(tracker.addr(), dir);
        cfg.listen = loopback;
        // Every node is on 127.0.0.1: the per-address cap is meant for separate hosts.
        cfg.serve.max_uploads_per_ip = cfg.serve.max_uploads;
        cfg.upload_rate = rate;
        Node::start(cfg)
    };
    let mut seeds = Vec::new();
    for d in seed_dirs {
        seeds.push(node(d, Some(setup.seed_rate)).await?);
    }
    let uploaded = |seeds: &[Node]| seeds.iter().map(Node::uploaded_bytes).sum::<u64>();
    let limit = Duration::from_secs(600);

    let mut peers = Vec::new();
    for i in 0..setup.n {
        peers.push(node(&root.join(format!("folder{i}")), None).await?);
    }
    let selectors = [Selector::parse("set/")?];
    let start = Instant::now();
    let runs = peers.iter().map(|p| async {
        let targets = peer::resolve(p.trackers(), &selectors).await?;
        let report = p.download_all(targets, BatchOptions::default()).await?;
        anyhow::ensure!(report.failed == 0, "{} files failed", report.failed);
        Ok(start.elapsed().as_secs_f64())
    });
    let times = tokio::time::timeout(limit, futures::future::join_all(runs)).await.context("the folder phase")?;
    let folder = Phase { last: last(times)?, seeds_uploaded: uploaded(&seeds) };
    for p in peers.drain(..) {
        p.shutdown().await;
    }

    for i in 0..setup.n {
        peers.push(node(&root.join(format!("one{i}")), None).await?);
    }
    let start = Instant::now();
    let runs = peers.iter().map(|p| async {
        p.download("one.bin", DownloadOptions::default()).await?;
        Ok(start.elapsed().as_secs_f64())
    });
    let times = tokio::time::timeout(limit, futures::future::join_all(runs)).await.context("the one-file phase")?;
    let one = Phase { last: last(times)?, seeds_uploaded: uploaded(&seeds) - folder.seeds_uploaded };
    for p in peers.into_iter().chain(seeds) {
        p.shutdown().await;
    }
    tracker.shutdown().await?;
    Ok((folder, one))
}

fn last(times: Vec<anyhow::Result<f64>>) -> anyhow::Result<f64> {
    times.into_iter().try_fold(0.0, |m: f64, t| Ok(m.max(t?)))
}
