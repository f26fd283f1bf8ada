//! Shared pieces of the benchmarks: the report table, the machine's own limits and memory
//! readings; child processes are in `procs.rs` (re-exported here).

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub(crate) use super::procs::{install_interrupt_handler, Bins, OnExit, Proc, Scratch};

/// Bytes in a MiB.
pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// One benchmark's results: rows of figures, each with its target where it has one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    /// The benchmark's name.
    pub(crate) bench: String,
    /// What was run (sizes, counts, rates).
    pub(crate) setup: String,
    /// The figures.
    pub(crate) rows: Vec<Row>,
    /// Remarks worth reading beside the figures.
    pub(crate) notes: Vec<String>,
}

/// One figure.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Row {
    /// What it measures.
    pub(crate) name: String,
    /// The value.
    pub(crate) value: f64,
    /// Its unit ("MiB/s", "s", "ratio", ...).
    pub(crate) unit: String,
    /// The target, as text (e.g. ">= 0.7"), if there is one.
    pub(crate) target: Option<String>,
    /// Whether the target was met.
    pub(crate) met: Option<bool>,
}

impl Report {
    pub(crate) fn new(bench: &str, setup: impl Into<String>) -> Self {
        Self { bench: bench.to_owned(), setup: setup.into(), rows: Vec::new(), notes: Vec::new() }
    }

    /// A figure without a target.
    pub(crate) fn row(&mut self, name: &str, value: f64, unit: &str) {
        self.rows.push(Row { name: name.to_owned(), value, unit: unit.to_owned(), target: None, met: None });
    }

    /// A figure that must be at least `min`.
    pub(crate) fn at_least(&mut self, name: &str, value: f64, unit: &str, min: f64) {
        self.rows.push(Row {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            target: Some(format!(">= {min}")),
            met: Some(value >= min),
        });
    }

    /// A figure that must be at most `max`.
    pub(crate) fn at_most(&mut self, name: &str, value: f64, unit: &str, max: f64) {
        self.rows.push(Row {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            target: Some(format!("<= {max}")),
            met: Some(value <= max),
        });
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Whether every target was met.
    pub(crate) fn targets_met(&self) -> bool {
        self.rows.iter().all(|r| r.met != Some(false))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== bench {}: {}", self.bench, self.setup)?;
        for r in &self.rows {
            let value = if r.value.abs() >= 100.0 || r.value == r.value.trunc() {
                format!("{:.0}", r.value)
            } else {
                format!("{:.3}", r.value)
            };
            let verdict = match r.met {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            writeln!(
                f,
                "  {:<52} {:>12} {:<8} {:>10} {:>7}",
                r.name,
                value,
                r.unit,
                r.target.as_deref().unwrap_or(""),
                verdict
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// The Kumar–Ross lower bound on the time to give every one of N downloaders a file of `f` bytes
/// (Kumar & Ross, 2006), with unequal rates: `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))`, seconds.
/// `seed` is the seed's upload rate, `uploads` every downloader's (bytes/s, one per downloader),
/// `d_min` the slowest download rate, `None` when downloads are uncapped (the term drops out).
pub(crate) fn kumar_ross(f: f64, seed: f64, uploads: &[f64], d_min: Option<f64>) -> f64 {
    let n = uploads.len() as f64;
    let total: f64 = seed + uploads.iter().sum::<f64>();
    let mut t = (f / seed).max(n * f / total);
    if let Some(d) = d_min {
        t = t.max(f / d);
    }
    t
}

/// The `p`-th percentile (0 < p ≤ 100) of ascending `sorted` by the nearest-rank method: the
/// smallest value with at least p% of the values at or below it. 0 for an empty slice.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// MiB/s for `bytes` moved in `secs`.
pub(crate) fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB / secs.max(1e-9)
}

/// Fills `buf` with fast pseudo-random bytes (xorshift64), continuing from `state`. Random-ish so
/// that no layer (file system, page cache, compression) can shortcut repeated or zero data.
pub(crate) fn fill(buf: &mut [u8], state: &mut u64) {
    for word in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// Writes `size` pseudo-random bytes to `path` in 1 MiB blocks, then fsyncs. Returns the rate in
/// MiB/s, which is the machine's sequential disk write rate when `path` is on the disk under test.
pub(crate) fn write_random_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<f64> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut block = vec![0u8; 1 << 20];
    let mut state = seed | 1;
    fill(&mut block, &mut state);
    let start = Instant::now();
    let mut left = size;
    let mut counter = 0u64;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        // One random block, varied per block by a counter, so generating data costs nothing
        // measurable and no two blocks are equal.
        counter += 1;
        block[..8].copy_from_slice(&counter.to_le_bytes());
        f.write_all(&block[..n]).with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    Ok(mib_s(size, start.elapsed().as_secs_f64()))
}

/// The machine's own limits, measured in the run that uses them.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Limits {
    /// A raw TCP copy over loopback, MiB/s.
    pub(crate) loopback_tcp: f64,
    /// BLAKE3 on one thread, MiB/s.
    pub(crate) blake3_one_core: f64,
    /// BLAKE3 on all cores, MiB/s.
    pub(crate) blake3_all_cores: f64,
    /// Sequential write then fsync, MiB/s.
    pub(crate) disk_write: f64,
}

impl Limits {
    /// Measures each limit over `bytes` bytes, the disk in `dir`.
    pub(crate) fn measure(dir: &Path, bytes: u64) -> anyhow::Result<Limits> {
        let (blake3_one_core, blake3_all_cores) = blake3_rates(bytes);
        let probe = dir.join("disk-write-probe.bin");
        let disk_write = write_random_file(&probe, bytes, 7)?;
        fs::remove_file(&probe).with_context(|| format!("remove {}", probe.display()))?;
        Ok(Limits { loopback_tcp: loopback_tcp(bytes)?, blake3_one_core, blake3_all_cores, disk_write })
    }

    /// The lowest of them: no transfer that verifies and stores data can beat it.
    pub(crate) fn min(&self) -> f64 {
        self.loopback_tcp.min(self.blake3_all_cores).min(self.disk_write)
    }

    pub(crate) fn rows(&self, r: &mut Report) {
        r.row("limit: raw TCP copy over loopback", self.loopback_tcp, "MiB/s");
        r.row("limit: BLAKE3, one core", self.blake3_one_core, "MiB/s");
        r.row("limit: BLAKE3, all cores", self.blake3_all_cores, "MiB/s");
        r.row("limit: sequential disk write + fsync", self.disk_write, "MiB/s");
    }
}

/// BLAKE3 rates (one core, all cores) over `bytes` bytes hashed from a 64 MiB buffer in memory.
fn blake3_rates(bytes: u64) -> (f64, f64) {
    let mut buf = vec![0u8; 64 << 20];
    fill(&mut buf, &mut 3);
    let rounds = bytes.div_ceil(buf.len() as u64).max(1);
    let time = |f: &dyn Fn(&mut blake3::Hasher)| {
        let start = Instant::now();
        let mut h = blake3::Hasher::new();
        for _ in 0..rounds {
            f(&mut h);
        }
        std::hint::black_box(h.finalize());
        mib_s(rounds * buf.len() as u64, start.elapsed().as_secs_f64())
    };
    let one = time(&|h| {
        h.update(&buf);
    });
    let all = time(&|h| {
        h.update_rayon(&buf);
    });
    (one, all)
}

/// A raw TCP copy of `bytes` bytes over loopback, 1 MiB writes and reads, MiB/s.
fn loopback_tcp(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind loopback")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut block = vec![0u8; 1 << 20];
    fill(&mut block, &mut 5);
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).context("connect loopback")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        s.write_all(&block[..n])?;
        left -= n as u64;
    }
    drop(s);
    let got = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    anyhow::ensure!(got == bytes, "loopback copy lost bytes");
    Ok(mib_s(bytes, start.elapsed().as_secs_f64()))
}

/// A plain file copy over loopback TCP, the reference for any downloader: one thread reads `src`
/// in 1 MiB blocks and sends them; the other receives them, writes them to `dst` and fsyncs.
/// No hashing, no protocol. MiB/s from connect to fsync done.
pub(crate) fn tcp_file_copy(src: &Path, dst: &Path) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind loopback")?;
    let addr = listener.local_addr()?;
    let dst = dst.to_path_buf();
    let receiver = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut out = File::create(&dst).with_context(|| format!("create {}", dst.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => {
                    out.write_all(&buf[..n])?;
                    total += n as u64;
                }
            }
        }
        out.sync_all()?;
        Ok(total)
    });
    let start = Instant::now();
    let mut input = File::open(src).with_context(|| format!("open {}", src.display()))?;
    let size = input.metadata()?.len();
    let mut s = TcpStream::connect(addr).context("connect loopback")?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match input.read(&mut buf)? {
            0 => break,
            n => s.write_all(&buf[..n])?,
        }
    }
    drop(s);
    let got = receiver.join().map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    anyhow::ensure!(got == size, "TCP file copy lost bytes");
    Ok(mib_s(size, start.elapsed().as_secs_f64()))
}

/// Reads a `/proc/PID/status` field in kB, as MiB.
pub(crate) fn proc_status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix(key))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Polls a process's peak RSS (VmHWM) until stopped; the peak is read every few milliseconds, so
/// it is the true high-water mark unless the process peaks in its last moments before exiting.
pub(crate) struct PeakRss {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl PeakRss {
    pub(crate) fn watch(pid: u32) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !s.load(Ordering::Relaxed) {
                match proc_status_mib(pid, "VmHWM:") {
                    Some(v) => peak = peak.max(v),
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        PeakRss { stop, thread }
    }

    /// The highest VmHWM seen, MiB.
    pub(crate) fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

/// Peak RSS (VmHWM) of this process since the last reset, MiB.
pub(crate) fn own_peak_rss_mib() -> f64 {
    proc_status_mib(std::process::id(), "VmHWM:").unwrap_or(0.0)
}

/// Resets this process's peak RSS counter, so the next reading covers one phase only.
pub(crate) fn reset_own_peak_rss() -> anyhow::Result<()> {
    fs::write("/proc/self/clear_refs", "5").context("reset peak RSS via /proc/self/clear_refs")
}

/// BLAKE3 of a file on all cores, for checking results.
pub(crate) fn file_root(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).with_context(|| format!("hash {}", path.display()))?;
    Ok(h.finalize())
}

/// The type of the file system holding `path` (`ext4`, `tmpfs`, ...), from `/proc/self/mounts`: the
/// mount point that is the longest prefix of its canonical path.
pub(crate) fn fs_type(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kumar_ross_equal_rates_is_f_over_u() {
        let t = kumar_ross(64.0, 8.0, &[8.0; 8], None);
        assert!((t - 8.0).abs() < 1e-9);
    }

    #[test]
    fn kumar_ross_unequal_rates() {
        // Half the 8 downloaders at a quarter of the rate: Σu = 4·8 + 4·2 = 40, u_s = 8.
        let mut up = vec![8.0; 4];
        up.extend([2.0; 4]);
        let t = kumar_ross(64.0, 8.0, &up, None);
        assert!((t - 8.0 * 64.0 / 48.0).abs() < 1e-9, "{t}");
        // A slow seed dominates; a slow download cap dominates.
        assert!((kumar_ross(64.0, 1.0, &up, None) - 64.0).abs() < 1e-9);
        assert!((kumar_ross(64.0, 8.0, &up, Some(2.0)) - 32.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert_eq!(percentile(&v, 1.0), 1.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(percentile(&w, 90.0), 8.0);
        assert_eq!(percentile(&w, 50.0), 4.0);
    }
}
