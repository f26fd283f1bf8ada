//! `bench single`: one peer serves a file, another downloads it over loopback, each a separate
//! process, beside the machine's limits measured in the same run (raw loopback TCP copy, BLAKE3,
//! sequential disk write). Also the downloader's peak memory.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::util::{
    file_root, mib_s, tcp_file_copy, write_random_file, Bins, Limits, PeakRss, Proc, Report, Scratch, MIB,
};

/// The download must reach this fraction of the lowest machine limit.
const RATE_TARGET: f64 = 0.7;
/// The downloader's peak RSS must stay under this, MiB.
const RSS_TARGET_MIB: f64 = 64.0;

/// Starts a tracker process on a loopback port chosen by the OS; returns it with its address.
pub(crate) fn start_tracker(bins: &Bins, extra: &[&str]) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(&bins.tracker);
    cmd.args(["--listen", "127.0.0.1:0"]).args(extra).env("RUST_LOG", "warn");
    let tracker = Proc::spawn(cmd, "tracker")?;
    let addr = tracker
        .wait_line(Duration::from_secs(10), |l| l.strip_prefix("tracker listening on ").map(|a| a.trim().to_owned()))?;
    Ok((tracker, addr))
}

/// Starts `peer serve` on `share` and waits until it has hashed and registered its files.
pub(crate) fn start_seed(bins: &Bins, tracker: &str, share: &Path, extra: &[&str]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&bins.peer);
    cmd.args(["--tracker", tracker, "serve", "--listen", "127.0.0.1:0", "--share"]).arg(share).args(extra);
    let seed = Proc::spawn(cmd, "seed")?;
    seed.wait_line(Duration::from_secs(300), |l| l.starts_with("serving ").then_some(()))?;
    Ok(seed)
}

pub(crate) fn run(bins: &Bins, size: u64, dir: &Path) -> anyhow::Result<Report> {
    let scratch = Scratch::new(dir, "single")?;
    let (seed_dir, dl_dir) = (scratch.path().join("seed"), scratch.path().join("dl"));
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::create_dir_all(&dl_dir)?;
    let source = seed_dir.join("bench.bin");
    write_random_file(&source, size, 11)?;
    let limits = Limits::measure(scratch.path(), size)?;
    let copy_path = scratch.path().join("tcp-copy.bin");
    let tcp_copy = tcp_file_copy(&source, &copy_path)?;
    std::fs::remove_file(&copy_path)?;

    let (_tracker, addr) = start_tracker(bins, &[])?;
    let _seed = start_seed(bins, &addr, &seed_dir, &[])?;
    let mut cmd = Command::new(&bins.peer);
    cmd.args([
        "--tracker",
        &addr,
        "--json",
        "download",
        "bench.bin",
        "--linger",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--share",
    ])
    .arg(&dl_dir);
    let dl = Proc::spawn(cmd, "downloader")?;
    let peak = PeakRss::watch(dl.pid());
    let out = dl.finish(Duration::from_secs(600))?;
    let peak_rss = peak.stop();
    let report: serde_json::Value = serde_json::from_str(&out).context("parse the downloader's JSON report")?;
    let secs = report["elapsed_secs"].as_f64().context("no elapsed_secs in the report")?;
    anyhow::ensure!(
        file_root(&dl_dir.join("bench.bin"))? == file_root(&source)?,
        "the downloaded file differs from the source"
    );

    let rate = mib_s(size, secs);
    let mut r = Report::new(
        "single",
        format!("one seed, one downloader, separate processes, {:.0} MiB file over loopback", size as f64 / MIB),
    );
    limits.rows(&mut r);
    r.row("download time (metadata to verified file in place)", secs, "s");
    r.row("download rate", rate, "MiB/s");
    r.at_least("download rate / min(limits)", rate / limits.min(), "ratio", RATE_TARGET);
    r.row("reference: raw TCP copy of the file over loopback, into a file, fsync", tcp_copy, "MiB/s");
    r.at_least("download rate / raw TCP file copy", rate / tcp_copy, "ratio", RATE_TARGET);
    r.row("download rate / raw loopback TCP (socket only, no disk)", rate / limits.loopback_tcp, "ratio");
    r.at_most("downloader peak RSS", peak_rss, "MiB", RSS_TARGET_MIB);
    r.note("the download time includes the final whole-file verification and fsync, as the disk limit does");
    r.note("the socket-only ratio is informational: no download that writes a file can beat the disk");
    Ok(r)
}
