//! Symlink races against the store (the threat model's "local user who can write into the share"):
//! a thread swaps a path component for a link to an outside folder or file, atomically and over
//! and over, while the store serves chunks and while downloads are placed. Nothing from outside
//! may be served and nothing may be created outside, however the swaps fall.

// Test helpers, where a failure should panic.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chunkstore::{Store, StoreError};
use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;
use rustix::fs::{renameat_with, RenameFlags, CWD};

/// Upper bounds on every loop, so a slow machine ends the test instead of hanging it.
const MAX_SWAPS: usize = 200_000;
const TIME_LIMIT: Duration = Duration::from_secs(20);

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Swaps `a` and `b` (any kinds) atomically, until `stop` or the bounds; returns the swaps done.
fn swapper(a: &Path, b: &Path, stop: &AtomicBool) -> usize {
    let start = Instant::now();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && n < MAX_SWAPS && start.elapsed() < TIME_LIMIT {
        renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).expect("exchange");
        n += 1;
    }
    // Leave the real thing under its name.
    if n % 2 == 1 {
        renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).expect("exchange back");
    }
    n
}

/// Every file under `dir`, following nothing.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn serving_never_reads_outside_the_share_while_components_are_swapped() {
    let tmp = tempfile::tempdir().unwrap();
    let (share, outside) = (tmp.path().join("share"), tmp.path().join("outside"));
    let cs = MIN_CHUNK_SIZE as usize;
    let (real, secret) = (bytes(4 * cs, 1), bytes(4 * cs, 2));
    fs::create_dir_all(share.join("d")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    // Same lengths inside and out, so a length check alone cannot tell them apart.
    fs::write(share.join("d/f.bin"), &real).unwrap();
    fs::write(share.join("g.bin"), &real).unwrap();
    fs::write(outside.join("f.bin"), &secret).unwrap();
    fs::write(outside.join("g.bin"), &secret).unwrap();
    let store = Store::open(&share).unwrap();
    let metas = store.scan().unwrap();
    assert_eq!(metas.len(), 2);
    // A link beside each: `d` swaps with a link to the outside folder (a middle component),
    // `g.bin` with a link to an outside file (the last component).
    std::os::unix::fs::symlink(&outside, share.join("d-link")).unwrap();
    std::os::unix::fs::symlink(outside.join("g.bin"), share.join("g-link")).unwrap();

    let stop = AtomicBool::new(false);
    let (served, refused, leaked) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let swaps = std::thread::scope(|s| {
        let a = s.spawn(|| swapper(&share.join("d"), &share.join("d-link"), &stop));
        let b = s.spawn(|| swapper(&share.join("g.bin"), &share.join("g-link"), &stop));
        let start = Instant::now();
        let mut buf = Vec::new();
        for k in 0..20_000u32 {
            if start.elapsed() > TIME_LIMIT {
                break;
            }
            let meta = &metas[(k % 2) as usize];
            let i = meta.chunk(k / 2 % meta.num_chunks()).unwrap();
            match store.read_chunk_into(meta, i, &mut buf) {
                Ok(()) => {
                    let (off, len) = meta.chunk_range(i);
                    if buf[..] == real[off as usize..(off + u64::from(len)) as usize] {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        leaked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(StoreError::Symlink { .. } | StoreError::FileChanged { .. }) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        a.join().unwrap() + b.join().unwrap()
    });
    let (served, refused, leaked) = (served.into_inner(), refused.into_inner(), leaked.into_inner());
    println!("swaps {swaps}, chunks served {served}, refused {refused}, from outside {leaked}");
    assert_eq!(leaked, 0, "chunks read from outside the share");
    assert!(
        swaps > 100 && served > 0 && refused > 0,
        "the race did not happen: {swaps} swaps, {served} served, {refused} refused"
    );
}

#[test]
fn downloads_are_never_placed_outside_the_share_while_a_folder_is_swapped() {
    let tmp = tempfile::tempdir().unwrap();
    let (share, outside) = (tmp.path().join("share"), tmp.path().join("outside"));
    fs::create_dir_all(share.join("sub")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let store = Store::open(&share).unwrap();
    std::os::unix::fs::symlink(&outside, share.join("sub-link")).unwrap();

    let stop = AtomicBool::new(false);
    let (mut placed, mut refused) = (Vec::new(), 0);
    let swaps = std::thread::scope(|s| {
        let swapping = s.spawn(|| swapper(&share.join("sub"), &share.join("sub-link"), &stop));
        let start = Instant::now();
        for k in 0..300u32 {
            if start.elapsed() > TIME_LIMIT {
                break;
            }
            let data = bytes(1000 + k as usize, k as u8);
            let meta = FileMeta::from_bytes(&format!("sub/f{k}.bin"), MIN_CHUNK_SIZE, &data);
            let p = store.open_partial(&meta).unwrap();
            p.write_chunk(meta.chunk(0).unwrap(), &data).unwrap();
            match p.finish() {
                Ok(_) => placed.push((k, data)),
                Err(StoreError::Symlink { .. }) => refused += 1,
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapping.join().unwrap()
    });
    println!("swaps {swaps}, downloads placed {}, refused {refused}", placed.len());
    let outside_files = files_under(&outside);
    assert!(outside_files.is_empty(), "files created outside the share: {outside_files:?}");
    // Every placed download is in the real folder with its content.
    for (k, data) in &placed {
        assert_eq!(&fs::read(share.join(format!("sub/f{k}.bin"))).unwrap(), data);
    }
    assert!(swaps > 100 && !placed.is_empty(), "the race did not happen: {swaps} swaps, {} placed", placed.len());
}
