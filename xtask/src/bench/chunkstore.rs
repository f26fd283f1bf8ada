//! `bench chunkstore`: the chunk store's hashing and assembly throughput, measured beside the
//! machine's own limits (raw BLAKE3 on one and all cores, sequential disk writes), plus peak
//! memory, in one run over one temporary file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chunkstore::{choose_chunk_size, hash_file, Store};
use serde::Serialize;

/// Block size for the raw reads and writes the store is compared with.
const BLOCK: usize = 1 << 20;
const MIB: f64 = 1024.0 * 1024.0;

/// hash_file throughput must reach this fraction of raw multi-threaded BLAKE3.
const HASH_TARGET: f64 = 0.8;
/// Assembly throughput must reach this fraction of the sequential disk write rate.
const ASSEMBLY_TARGET: f64 = 0.7;
/// Peak resident memory allowed during hashing and during assembly, in MiB.
const RSS_TARGET_MIB: f64 = 64.0;

/// Figures of one benchmark run. Rates are MiB/s; the source file is in the page cache, so the
/// hashing figures measure CPU, and the write figures include an fsync.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Bytes in the test file.
    pub(crate) size: u64,
    /// Chunk size used (as a scan would choose).
    pub(crate) chunk_size: u32,
    /// Cores available.
    pub(crate) cores: usize,
    /// (1) `blake3::Hasher::update` on one thread, file read in 1 MiB blocks.
    pub(crate) blake3_single_mib_s: f64,
    /// (2) `blake3::Hasher::update_mmap_rayon`, all cores.
    pub(crate) blake3_all_cores_mib_s: f64,
    /// (3) `chunkstore::hash_file`.
    pub(crate) hash_file_mib_s: f64,
    /// (3) / (2); target >= 0.8.
    pub(crate) hash_file_ratio: f64,
    /// (4) Sequential write of the file in 1 MiB blocks, then fsync.
    pub(crate) disk_write_mib_s: f64,
    /// (5) `open_partial` + `write_chunk` of every chunk in order + `finish`.
    pub(crate) assembly_mib_s: f64,
    /// (5) / (4); target >= 0.7.
    pub(crate) assembly_ratio: f64,
    /// (6) Peak RSS (VmHWM) during `hash_file`, MiB; target < 64.
    pub(crate) hash_peak_rss_mib: f64,
    /// (6) Peak RSS (VmHWM) during assembly, MiB; target < 64.
    pub(crate) assembly_peak_rss_mib: f64,
    /// Whether every target above was met.
    pub(crate) targets_met: bool,
}

/// Fills `buf` with fast pseudo-random bytes (xorshift64), continuing from `state`. Random-ish
/// so that no layer (file system, page cache) can shortcut repeated or zero data.
fn fill(buf: &mut [u8], state: &mut u64) {
    for word in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// Resets the process's peak-RSS counter (VmHWM), so the next reading covers one phase only.
fn reset_peak_rss() -> anyhow::Result<()> {
    fs::write("/proc/self/clear_refs", "5").context("reset peak RSS via /proc/self/clear_refs")
}

/// The process's peak RSS (VmHWM) since the last reset, in MiB.
fn peak_rss_mib() -> anyhow::Result<f64> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb / 1024.0)
}

fn rate(bytes: u64, start: Instant) -> f64 {
    bytes as f64 / MIB / start.elapsed().as_secs_f64()
}

/// Writes `size` bytes to `path` in 1 MiB blocks from `next_block`, then fsyncs.
fn write_file(path: &Path, size: u64, mut next_block: impl FnMut(&mut [u8])) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        next_block(&mut buf[..n]);
        f.write_all(&buf[..n]).with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    Ok(())
}

/// Runs the benchmark on a temporary file of `size` bytes created in a temporary folder under
/// `dir` (removed afterwards).
pub(crate) fn run(size: u64, dir: &Path) -> anyhow::Result<Report> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = tempfile::tempdir_in(dir).context("create temporary folder")?;
    let src = tmp.path().join("source.bin");
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    write_file(&src, size, |b| fill(b, &mut state))?;

    // (1) Raw BLAKE3, one thread, streaming reads.
    let start = Instant::now();
    let mut hasher = blake3::Hasher::new();
    let mut f = File::open(&src).context("open source")?;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = f.read(&mut buf).context("read source")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let single_root = hasher.finalize();
    let blake3_single = rate(size, start);

    // (2) Raw BLAKE3, all cores, memory-mapped.
    let start = Instant::now();
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(&src).context("hash source (mmap)")?;
    let all_root = hasher.finalize();
    let blake3_all = rate(size, start);
    anyhow::ensure!(single_root == all_root, "blake3 single and multi-threaded disagree");

    // (3) Our hash_file, and its peak memory.
    let chunk_size = choose_chunk_size(size);
    reset_peak_rss()?;
    let start = Instant::now();
    let meta = hash_file(&src, "bench.bin", chunk_size)?;
    let hash_rate = rate(size, start);
    let hash_rss = peak_rss_mib()?;
    anyhow::ensure!(meta.root.as_bytes() == all_root.as_bytes(), "hash_file root differs from blake3");

    // (4) Sequential disk write rate. One random block, varied per block, so generating data
    // costs nothing measurable.
    let wpath = tmp.path().join("write-test.bin");
    let mut block = vec![0u8; BLOCK];
    fill(&mut block, &mut state);
    let mut counter = 0u64;
    let start = Instant::now();
    write_file(&wpath, size, |b| {
        counter += 1;
        b.copy_from_slice(&block[..b.len()]);
        let n = b.len().min(8);
        b[..n].copy_from_slice(&counter.to_le_bytes()[..n]);
    })?;
    let disk_write = rate(size, start);
    fs::remove_file(&wpath).context("remove write test file")?;

    // (5) Assembly through a partial download, chunks read back from the source one by one.
    let store = Store::open(tmp.path().join("store"))?;
    let source = OpenOptions::new().read(true).open(&src).context("open source")?;
    let mut chunk = vec![0u8; chunk_size as usize];
    reset_peak_rss()?;
    let start = Instant::now();
    let partial = store.open_partial(&meta)?;
    for i in meta.chunks() {
        let (off, len) = meta.chunk_range(i);
        let data = &mut chunk[..len as usize];
        source.read_exact_at(data, off).context("read source chunk")?;
        partial.write_chunk(i, data)?;
    }
    let final_path = partial.finish()?;
    let assembly = rate(size, start);
    let assembly_rss = peak_rss_mib()?;
    anyhow::ensure!(fs::metadata(&final_path)?.len() == size, "assembled file has the wrong length");

    let hash_ratio = hash_rate / blake3_all;
    let assembly_ratio = assembly / disk_write;
    Ok(Report {
        size,
        chunk_size,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        blake3_single_mib_s: blake3_single,
        blake3_all_cores_mib_s: blake3_all,
        hash_file_mib_s: hash_rate,
        hash_file_ratio: hash_ratio,
        disk_write_mib_s: disk_write,
        assembly_mib_s: assembly,
        assembly_ratio,
        hash_peak_rss_mib: hash_rss,
        assembly_peak_rss_mib: assembly_rss,
        targets_met: hash_ratio >= HASH_TARGET
            && assembly_ratio >= ASSEMBLY_TARGET
            && hash_rss < RSS_TARGET_MIB
            && assembly_rss < RSS_TARGET_MIB,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ok = |met: bool| if met { "ok" } else { "MISSED" };
        writeln!(
            f,
            "chunkstore bench: {:.0} MiB file, chunk size {} KiB, {} cores",
            self.size as f64 / MIB,
            self.chunk_size / 1024,
            self.cores
        )?;
        writeln!(f, "{:<38} {:>12} {:>10} {:>8}", "measure", "value", "target", "")?;
        let rows: [(&str, String, String, &str); 9] = [
            ("blake3, 1 thread (1 MiB reads)", format!("{:.0} MiB/s", self.blake3_single_mib_s), String::new(), ""),
            ("blake3, all cores (mmap, rayon)", format!("{:.0} MiB/s", self.blake3_all_cores_mib_s), String::new(), ""),
            ("hash_file", format!("{:.0} MiB/s", self.hash_file_mib_s), String::new(), ""),
            (
                "  hash_file / blake3 all cores",
                format!("{:.2}", self.hash_file_ratio),
                format!(">= {HASH_TARGET}"),
                ok(self.hash_file_ratio >= HASH_TARGET),
            ),
            ("sequential write + fsync", format!("{:.0} MiB/s", self.disk_write_mib_s), String::new(), ""),
            ("assembly (write_chunk all + finish)", format!("{:.0} MiB/s", self.assembly_mib_s), String::new(), ""),
            (
                "  assembly / sequential write",
                format!("{:.2}", self.assembly_ratio),
                format!(">= {ASSEMBLY_TARGET}"),
                ok(self.assembly_ratio >= ASSEMBLY_TARGET),
            ),
            (
                "peak RSS while hashing",
                format!("{:.1} MiB", self.hash_peak_rss_mib),
                format!("< {RSS_TARGET_MIB}"),
                ok(self.hash_peak_rss_mib < RSS_TARGET_MIB),
            ),
            (
                "peak RSS while assembling",
                format!("{:.1} MiB", self.assembly_peak_rss_mib),
                format!("< {RSS_TARGET_MIB}"),
                ok(self.assembly_peak_rss_mib < RSS_TARGET_MIB),
            ),
        ];
        for (name, value, target, verdict) in rows {
            writeln!(f, "{name:<38} {value:>12} {target:>10} {verdict:>8}")?;
        }
        Ok(())
    }
}
