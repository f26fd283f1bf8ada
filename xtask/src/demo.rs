//! `cargo xtask demo`: the seed's demo, in one command. A tracker and three peers (share folders
//! `1`, `2`, `3`) run in this process on loopback, talking over real sockets. Peer 1 shares
//! `climbing.jpg`, peer 2 shares `bear.jpg`; peers 2 and 3 download `climbing.jpg` at the same time,
//! then peer 1 downloads `bear.jpg`. Every step is printed with where the data came from, and every
//! file's BLAKE3 hash is checked against the tracker's at the end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use peer::{DownloadOptions, DownloadReport, Node, NodeConfig};

const MIB: usize = 1024 * 1024;

/// Peer 1's upload cap, so that peers 2 and 3 visibly trade chunks with each other.
const SEED_UPLOAD_RATE: u64 = 4 * MIB as u64;

pub(crate) fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let temp;
    let root = match dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary folder")?;
            temp.path().to_path_buf()
        }
    };
    tokio::runtime::Runtime::new().context("cannot start the runtime")?.block_on(demo(&root))
}

/// Deterministic bytes standing in for a photo (no real image ships with the repository).
fn photo(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn demo(root: &Path) -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.join(i.to_string())).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    std::fs::write(dirs[0].join("climbing.jpg"), photo(8 * MIB + 123_456, 1))?;
    std::fs::write(dirs[1].join("bear.jpg"), photo(4 * MIB + 654_321, 2))?;

    let tracker = tracker::Tracker::bind(SocketAddr::from(([127, 0, 0, 1], 0)), tracker::Config::default()).await?;
    println!("== tracker listening on {}", tracker.addr());

    let mut peers = Vec::new();
    let mut names: HashMap<SocketAddr, String> = HashMap::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut cfg = NodeConfig::new(tracker.addr(), d);
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        if i == 0 {
            cfg.upload_rate = Some(SEED_UPLOAD_RATE);
        }
        let node = Node::start(cfg).await.with_context(|| format!("cannot start peer {}", i + 1))?;
        let mut files: Vec<String> = node.shares().snapshot().into_iter().map(|f| f.meta.name).collect();
        files.sort();
        println!("== peer {} serving ./{} on {}: {:?}", i + 1, i + 1, node.listen_addr(), files);
        names.insert(node.listen_addr(), format!("peer {}", i + 1));
        peers.push(node);
    }

    println!("\n== peer 3 asks the tracker for the file list");
    for f in peers[2].trackers().list_all().await? {
        println!(
            "   {:<14} {:>9} bytes  {} chunk(s) of {} KiB  root {}  sources {}",
            f.name,
            f.length,
            f.length.div_ceil(u64::from(f.chunk_size)),
            f.chunk_size / 1024,
            &f.root.to_string()[..16],
            f.sources
        );
    }
    println!("\n== peer 3 asks where climbing.jpg's chunks are");
    let loc = peers[2].trackers().locations("climbing.jpg").await?;
    for s in &loc.sources {
        let held = s.have.to_bitmap(loc.num_chunks).count();
        println!("   {} ({}) holds {held}/{} chunks", s.addr, names.get(&s.addr).map_or("?", |n| n), loc.num_chunks);
    }

    println!(
        "\n== peers 2 and 3 download climbing.jpg at the same time (peer 1 uploads at most 4 MiB/s, so they trade)"
    );
    let (r2, r3) = tokio::join!(
        peers[1].download("climbing.jpg", DownloadOptions::default()),
        peers[2].download("climbing.jpg", DownloadOptions::default())
    );
    print_report("peer 2", &r2?, &names);
    print_report("peer 3", &r3?, &names);

    println!("\n== peer 1 downloads bear.jpg");
    print_report("peer 1", &peers[0].download("bear.jpg", DownloadOptions::default()).await?, &names);

    println!("\n== checking every file against the tracker's BLAKE3 root");
    let mut ok = true;
    for f in peers[0].trackers().list_all().await? {
        for (i, d) in dirs.iter().enumerate() {
            let path = d.join(&f.name);
            if !path.exists() {
                continue;
            }
            let data = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let good = proto::Hash::from(blake3::hash(&data)) == f.root;
            ok &= good;
            println!("   peer {}: {:<14} {}", i + 1, f.name, if good { "ok" } else { "MISMATCH" });
        }
        println!("   {} now has {} complete sources", f.name, f.complete_sources);
    }
    for (i, p) in peers.iter().enumerate() {
        println!("   peer {} uploaded {} bytes", i + 1, p.uploaded_bytes());
    }
    for p in peers {
        p.shutdown().await;
    }
    tracker.shutdown().await?;
    if !ok {
        bail!("a file does not match its hash");
    }
    println!("\ndemo complete: every file verified");
    Ok(())
}

fn print_report(who: &str, r: &DownloadReport, names: &HashMap<SocketAddr, String>) {
    println!("   {who} got {} ({} bytes) in {:.2}s:", r.name, r.length, r.elapsed_secs);
    for s in &r.sources {
        let name = names.get(&s.addr).map_or("?", |n| n);
        println!("     {:>9} bytes ({} chunks) from {name} at {}", s.bytes, s.chunks, s.addr);
    }
}
