//! `bench chunkstore`: the chunk store's hashing and assembly throughput, measured beside the
//! machine's own limits (raw BLAKE3 on one and all cores, sequential disk writes), plus peak
//! memory, in one run over one temporary file.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chunkstore::{choose_chunk_size, hash_file, Store};

use super::util::{mib_s, own_peak_rss_mib, reset_own_peak_rss, write_random_file, Report, Scratch, MIB};

/// hash_file throughput must reach this fraction of raw multi-threaded BLAKE3.
const HASH_TARGET: f64 = 0.8;
/// Assembly throughput must reach this fraction of the sequential disk write rate.
const ASSEMBLY_TARGET: f64 = 0.7;
/// Peak resident memory allowed during hashing and during assembly, in MiB.
const RSS_TARGET_MIB: f64 = 64.0;

/// Runs the benchmark on a file of `size` bytes in a scratch folder under `dir`. The source file
/// is in the page cache, so the hashing figures measure CPU; the write figures include an fsync.
pub(crate) fn run(size: u64, dir: &Path) -> anyhow::Result<Report> {
    let scratch = Scratch::new(dir, "chunkstore")?;
    let src = scratch.path().join("source.bin");
    write_random_file(&src, size, 0x2545_F491_4F6C_DD1D)?;

    // Raw BLAKE3, one thread, streaming reads.
    let start = Instant::now();
    let mut hasher = blake3::Hasher::new();
    let mut f = File::open(&src).context("open source")?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).context("read source")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let single_root = hasher.finalize();
    let blake3_single = mib_s(size, start.elapsed().as_secs_f64());

    // Raw BLAKE3, all cores, memory-mapped.
    let start = Instant::now();
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(&src).context("hash source (mmap)")?;
    let all_root = hasher.finalize();
    let blake3_all = mib_s(size, start.elapsed().as_secs_f64());
    anyhow::ensure!(single_root == all_root, "blake3 single and multi-threaded disagree");

    // Our hash_file, and its peak memory.
    let chunk_size = choose_chunk_size(size);
    reset_own_peak_rss()?;
    let start = Instant::now();
    let meta = hash_file(&src, "bench.bin", chunk_size)?;
    let hash_rate = mib_s(size, start.elapsed().as_secs_f64());
    let hash_rss = own_peak_rss_mib();
    anyhow::ensure!(meta.root.as_bytes() == all_root.as_bytes(), "hash_file root differs from blake3");

    let wpath = scratch.path().join("write-test.bin");
    let disk_write = write_random_file(&wpath, size, 99)?;
    std::fs::remove_file(&wpath).context("remove write test file")?;

    // Assembly through a partial download, chunks read back from the source one by one.
    let store = Store::open(scratch.path().join("store"))?;
    let source = OpenOptions::new().read(true).open(&src).context("open source")?;
    let mut chunk = vec![0u8; chunk_size as usize];
    reset_own_peak_rss()?;
    let start = Instant::now();
    let partial = store.open_partial(&meta)?;
    for i in meta.chunks() {
        let (off, len) = meta.chunk_range(i);
        let data = &mut chunk[..len as usize];
        source.read_exact_at(data, off).context("read source chunk")?;
        partial.write_chunk(i, data)?;
    }
    let final_path = partial.finish()?;
    let assembly = mib_s(size, start.elapsed().as_secs_f64());
    let assembly_rss = own_peak_rss_mib();
    anyhow::ensure!(std::fs::metadata(&final_path)?.len() == size, "assembled file has the wrong length");

    let mut r = Report::new(
        "chunkstore",
        format!(
            "{:.0} MiB file, chunk size {} KiB, {} cores",
            size as f64 / MIB,
            chunk_size / 1024,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    );
    r.row("limit: BLAKE3, one thread (1 MiB reads)", blake3_single, "MiB/s");
    r.row("limit: BLAKE3, all cores (mmap, rayon)", blake3_all, "MiB/s");
    r.row("hash_file", hash_rate, "MiB/s");
    r.at_least("hash_file / BLAKE3 all cores", hash_rate / blake3_all, "ratio", HASH_TARGET);
    r.row("limit: sequential disk write + fsync", disk_write, "MiB/s");
    r.row("assembly (write_chunk of every chunk + finish)", assembly, "MiB/s");
    r.at_least("assembly / sequential disk write", assembly / disk_write, "ratio", ASSEMBLY_TARGET);
    r.at_most("peak RSS while hashing", hash_rss, "MiB", RSS_TARGET_MIB);
    r.at_most("peak RSS while assembling", assembly_rss, "MiB", RSS_TARGET_MIB);
    Ok(r)
}
