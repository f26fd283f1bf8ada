//! Tests of the public API: assembly, rejection of bad data and names, crash resume, the hash
//! cache, symlinks and concurrency. Small chunks ([`MIN_CHUNK_SIZE`]) keep them fast.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use proto::limits::MIN_CHUNK_SIZE;
use proto::{FileMeta, Hash};
use rand::seq::SliceRandom;

use crate::{choose_chunk_size, hash_file, Entry, Store, StoreError, SMALLEST_CHOSEN_CHUNK};

const CS: u32 = MIN_CHUNK_SIZE;
const CSU: usize = CS as usize;

/// Deterministic pseudo-random bytes (xorshift), different for every seed, so chunks differ.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn chunk<'a>(meta: &FileMeta, data: &'a [u8], i: u32) -> &'a [u8] {
    let (off, len) = meta.chunk_range(meta.chunk(i).unwrap());
    &data[off as usize..off as usize + len as usize]
}

fn partial_file(store: &Store, ext: &str) -> PathBuf {
    let dir = store.root().join(".p2p/partial");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    assert_eq!(found.len(), 1, "one .{ext} file expected");
    found.remove(0)
}

fn partial_dir_entries(store: &Store) -> usize {
    fs::read_dir(store.root().join(".p2p/partial")).unwrap().count()
}

/// Writes every chunk of `data` in random order, then finishes; returns the final path.
fn assemble(store: &Store, meta: &FileMeta, data: &[u8]) -> PathBuf {
    let p = store.open_partial(meta).unwrap();
    let mut order: Vec<u32> = (0..meta.num_chunks()).collect();
    order.shuffle(&mut rand::rng());
    for i in order {
        assert!(p.write_chunk(meta.chunk(i).unwrap(), chunk(meta, data, i)).unwrap());
    }
    assert!(p.is_complete());
    assert_eq!(p.bytes_done(), meta.length);
    p.finish().unwrap()
}

#[test]
fn assembles_chunks_written_in_random_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("share")).unwrap();
    let d = data(7 * CSU + 123, 1);
    let meta = FileMeta::from_bytes("dir/sub/f.bin", CS, &d);
    let p = store.open_partial(&meta).unwrap();
    assert_eq!(store.partials().unwrap(), vec![meta.clone()]);
    let mut order: Vec<u32> = (0..meta.num_chunks()).collect();
    order.shuffle(&mut rand::rng());
    for (n, &i) in order.iter().enumerate() {
        let idx = meta.chunk(i).unwrap();
        assert!(matches!(p.read_chunk(idx), Err(StoreError::NotHeld { chunk }) if chunk == i));
        assert!(p.write_chunk(idx, chunk(&meta, &d, i)).unwrap());
        assert!(!p.write_chunk(idx, chunk(&meta, &d, i)).unwrap(), "second write is not new");
        assert_eq!(&p.read_chunk(idx).unwrap()[..], chunk(&meta, &d, i));
        assert_eq!(p.have().count() as usize, n + 1);
    }
    assert!(p.is_complete());
    assert_eq!(p.bytes_done(), meta.length);
    let path = p.finish().unwrap();
    assert_eq!(path, store.root().join("dir/sub/f.bin"));
    assert_eq!(fs::read(&path).unwrap(), d);
    // Bookkeeping is gone, a second finish is an error, and the handle still serves chunks.
    assert!(store.partials().unwrap().is_empty());
    assert_eq!(partial_dir_entries(&store), 0);
    assert!(matches!(p.finish(), Err(StoreError::Finished { .. })));
    assert!(matches!(p.write_chunk(meta.chunk(0).unwrap(), chunk(&meta, &d, 0)), Err(StoreError::Finished { .. })));
    assert_eq!(&p.read_chunk(meta.chunk(2).unwrap()).unwrap()[..], chunk(&meta, &d, 2));
    // Re-sharing keeps the downloaded chunk size (via the cache), without re-hashing.
    let (metas, stats) = store.scan_with_stats().unwrap();
    assert_eq!(metas, vec![meta]);
    assert_eq!((stats.hashed, stats.cached), (0, 1));
}

#[test]
fn wrong_chunk_is_rejected_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(4 * CSU, 2);
    let meta = FileMeta::from_bytes("f", CS, &d);
    let p = store.open_partial(&meta).unwrap();
    let c1 = meta.chunk(1).unwrap();
    let mut bad = chunk(&meta, &d, 1).to_vec();
    bad[100] ^= 0xff;
    let cases: [&[u8]; 4] = [&bad, chunk(&meta, &d, 0), &chunk(&meta, &d, 1)[1..], &[]];
    for case in cases {
        assert!(matches!(p.write_chunk(c1, case), Err(StoreError::HashMismatch { chunk: 1 })));
    }
    assert_eq!(p.have().count(), 0);
    assert_eq!(p.bytes_done(), 0);
    assert!(!p.has(1));
    assert!(matches!(p.read_chunk(c1), Err(StoreError::NotHeld { chunk: 1 })));
    // The data file holds only zeros: nothing of the bad data reached it.
    let on_disk = fs::read(partial_file(&store, "data")).unwrap();
    assert!(on_disk.iter().all(|&b| b == 0));
    assert!(fs::read(partial_file(&store, "have")).unwrap().iter().all(|&b| b == 0));
    assert!(matches!(p.finish(), Err(StoreError::Incomplete { have: 0, total: 4, .. })));
}

#[test]
fn resume_keeps_good_chunks_and_drops_torn_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(10 * CSU + 5, 3);
    let meta = FileMeta::from_bytes("big.iso", CS, &d);
    {
        let p = store.open_partial(&meta).unwrap();
        for i in [0, 1, 2, 3, 10] {
            p.write_chunk(meta.chunk(i).unwrap(), chunk(&meta, &d, i)).unwrap();
        }
    } // dropped mid-download
    assert_eq!(store.partials().unwrap(), vec![meta.clone()]);
    assert!(store.scan().unwrap().is_empty(), "partials and the cache are never scanned");

    // Simulate a crash: chunk 2 half-written (its bit reached the disk), chunk 3 overwritten with
    // garbage, and chunk 5's bit set though its bytes never arrived.
    let data_file = fs::OpenOptions::new().write(true).open(partial_file(&store, "data")).unwrap();
    data_file.write_all_at(&vec![0u8; CSU / 2], 2 * CS as u64 + CS as u64 / 2).unwrap();
    data_file.write_all_at(&data(CSU, 99), 3 * CS as u64).unwrap();
    let have_path = partial_file(&store, "have");
    let mut have = fs::read(&have_path).unwrap();
    have[0] |= 1 << 5;
    fs::write(&have_path, &have).unwrap();

    let p = store.open_partial(&meta).unwrap();
    let held: Vec<u32> = p.have().iter_ones().collect();
    assert_eq!(held, vec![0, 1, 10]);
    assert_eq!(p.bytes_done(), 2 * CS as u64 + 5);
    // The cleared bits were persisted too.
    drop(p);
    let p = store.open_partial(&meta).unwrap();
    assert_eq!(p.have().iter_ones().collect::<Vec<_>>(), vec![0, 1, 10]);
    for i in 0..meta.num_chunks() {
        let fresh = p.write_chunk(meta.chunk(i).unwrap(), chunk(&meta, &d, i)).unwrap();
        assert_eq!(fresh, !held.contains(&i));
    }
    assert_eq!(fs::read(p.finish().unwrap()).unwrap(), d);
}

/// The bitmap file is brought up to date every `SAVE_EVERY` stored chunks, not with each, and when
/// the download is closed; a crash in between loses only the listing of the chunks since (their
/// data is fetched again), never lists a chunk that was not written.
#[test]
fn the_bitmap_file_is_saved_every_few_chunks_and_on_close() {
    let every = crate::partial::SAVE_EVERY;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(3 * every as usize * CSU, 5);
    let meta = FileMeta::from_bytes("big.iso", CS, &d);
    let listed = |store: &Store| {
        let bytes = fs::read(partial_file(store, "have")).unwrap();
        proto::Bitmap::from_parts(meta.num_chunks(), bytes).unwrap().count()
    };
    let p = store.open_partial(&meta).unwrap();
    for i in 0..every - 1 {
        p.write_chunk(meta.chunk(i).unwrap(), chunk(&meta, &d, i)).unwrap();
    }
    assert_eq!(listed(&store), 0, "not saved yet");
    assert_eq!(store.partial_infos().unwrap()[0].chunks_done, every - 1, "an open download tells its memory");
    p.write_chunk(meta.chunk(every - 1).unwrap(), chunk(&meta, &d, every - 1)).unwrap();
    assert_eq!(listed(&store), every);
    // A chunk already held does not count towards the next save.
    p.write_chunk(meta.chunk(0).unwrap(), chunk(&meta, &d, 0)).unwrap();
    for i in every..every + 3 {
        p.write_chunk(meta.chunk(i).unwrap(), chunk(&meta, &d, i)).unwrap();
    }
    assert_eq!(listed(&store), every);
    drop(p);
    assert_eq!(listed(&store), every + 3, "saved when closed");
    let p = store.open_partial(&meta).unwrap();
    assert_eq!(p.have().count(), every + 3);
}

#[test]
fn corrupt_bookkeeping_restarts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(3 * CSU, 4);
    let meta = FileMeta::from_bytes("f", CS, &d);
    {
        let p = store.open_partial(&meta).unwrap();
        p.write_chunk(meta.chunk(0).unwrap(), chunk(&meta, &d, 0)).unwrap();
    }
    fs::write(partial_file(&store, "have"), [0xff, 0xff]).unwrap(); // wrong size
    assert_eq!(store.open_partial(&meta).unwrap().have().count(), 0);
    fs::write(partial_file(&store, "meta"), b"garbage").unwrap();
    assert!(store.partials().unwrap().is_empty());
    let p = store.open_partial(&meta).unwrap();
    assert_eq!(p.have().count(), 0);
    assert_eq!(store.partials().unwrap(), vec![meta]);
}

/// Without the read-back, finishing trusts the chunks verified on arrival: it reads nothing back,
/// so a byte changed on disk afterwards is not caught (that is what `read_back` is for). A data
/// file whose length changed is read back and judged whatever was asked.
#[test]
fn finishing_without_the_read_back_reads_back_only_a_file_whose_length_changed() {
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(6 * CSU + 1, 5);
    let quick = crate::Finish { read_back: false, replace: false };
    for (name, truncate) in [("kept.bin", false), ("cut.bin", true)] {
        let meta = FileMeta::from_bytes(name, CS, &d);
        let p = store.open_partial(&meta).unwrap();
        for i in 0..meta.num_chunks() {
            p.write_chunk(meta.chunk(i).unwrap(), chunk(&meta, &d, i)).unwrap();
        }
        let data_file = fs::OpenOptions::new().write(true).open(partial_file(&store, "data")).unwrap();
        if truncate {
            data_file.set_len(2 * CS as u64).unwrap();
            assert!(matches!(
                p.finish_with(&AtomicBool::new(false), quick),
                Err(StoreError::WholeFileMismatch { bad_chunks, .. }) if bad_chunks >= 4
            ));
            assert!(!store.root().join(name).exists());
        } else {
            data_file.write_all_at(b"rot", 3 * CS as u64 + 7).unwrap();
            let placed = p.finish_with(&AtomicBool::new(false), quick).unwrap();
            assert_ne!(fs::read(placed).unwrap(), d, "not read back, so not caught");
        }
    }
}

#[test]
fn whole_file_mismatch_is_caught_before_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(6 * CSU + 1, 5);
    let meta = FileMeta::from_bytes("out.bin", CS, &d);
    let p = store.open_partial(&meta).unwrap();
    for i in 0..meta.num_chunks() {
        p.write_chunk(meta.chunk(i).unwrap(), chunk(&meta, &d, i)).unwrap();
    }
    let data_file = fs::OpenOptions::new().write(true).open(partial_file(&store, "data")).unwrap();
    data_file.write_all_at(b"rot", 3 * CS as u64 + 7).unwrap();
    assert!(matches!(p.finish(), Err(StoreError::WholeFileMismatch { bad_chunks: 1, .. })));
    assert!(!store.root().join("out.bin").exists());
    assert!(!p.has(3), "the bad chunk is marked missing");
    assert_eq!(p.have().count(), meta.num_chunks() - 1);
    assert!(p.write_chunk(meta.chunk(3).unwrap(), chunk(&meta, &d, 3)).unwrap());
    assert_eq!(fs::read(p.finish().unwrap()).unwrap(), d);
}

#[test]
fn concurrent_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(16 * CSU + 77, 50);
    let path: &Path = &store.root().join("f");
    fs::write(path, &d).unwrap();
    let meta = hash_file(path, "f", CS).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (store, meta, d) = (store.clone(), &meta, &d);
            s.spawn(move || {
                for k in 0..meta.num_chunks() {
                    let i = (k + t * 5) % meta.num_chunks();
                    let got = store.read_chunk(meta, meta.chunk(i).unwrap()).unwrap();
                    assert_eq!(&got[..], chunk(meta, d, i));
                }
            });
        }
    });

    // Writers sharing bitmap bytes must not lose each other's bits, in memory or on disk.
    let target = FileMeta::from_bytes("copy", CS, &d);
    let p = store.open_partial(&target).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (p, target, d) = (p.clone(), &target, &d);
            s.spawn(move || {
                for i in (t..target.num_chunks()).step_by(4) {
                    assert!(p.write_chunk(target.chunk(i).unwrap(), chunk(target, d, i)).unwrap());
                }
            });
        }
    });
    assert!(p.is_complete());
    drop(p);
    let p = store.open_partial(&target).unwrap();
    assert!(p.is_complete(), "every bit reached the disk");
    assert_eq!(fs::read(p.finish().unwrap()).unwrap(), d);
}

#[test]
fn open_partial_twice_shares_one_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(2 * CSU, 60);
    let meta = FileMeta::from_bytes("f", CS, &d);
    let a = store.open_partial(&meta).unwrap();
    let b = store.open_partial(&meta).unwrap();
    a.write_chunk(meta.chunk(0).unwrap(), chunk(&meta, &d, 0)).unwrap();
    assert!(b.has(0));
    let mut bad = meta.clone();
    bad.root = Hash([0; 32]);
    assert!(matches!(store.open_partial(&bad), Err(StoreError::InvalidMeta(_))));
}

#[test]
fn finish_refuses_to_replace_a_different_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(3 * CSU, 70);
    let meta = FileMeta::from_bytes("f", CS, &d);
    fs::write(store.root().join("f"), b"something else").unwrap();
    let p = store.open_partial(&meta).unwrap();
    for i in meta.chunks() {
        p.write_chunk(i, chunk(&meta, &d, i.get())).unwrap();
    }
    assert!(matches!(p.finish(), Err(StoreError::AlreadyExists { .. })));
    assert_eq!(fs::read(store.root().join("f")).unwrap(), b"something else");
    assert_eq!(store.partials().unwrap(), vec![meta.clone()], "the download is kept");

    // With an identical file in place, finishing just drops the download.
    fs::write(store.root().join("f"), &d).unwrap();
    assert_eq!(p.finish().unwrap(), store.root().join("f"));
    assert_eq!(partial_dir_entries(&store), 0);
}

#[test]
fn open_sweeps_orphaned_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pd = store.root().join(".p2p/partial");
    fs::write(pd.join("0123.data"), b"x").unwrap();
    fs::write(pd.join("0123.have"), b"x").unwrap();
    fs::write(pd.join("4567.meta.tmp"), b"x").unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(partial_dir_entries(&store), 0);
}

/// After a background flush fails, the download can never be put in place from this copy: every
/// `finish` fails, naming the flush, and nothing appears under the name.
#[test]
fn a_failed_background_flush_is_never_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(3 * CSU, 40);
    let meta = FileMeta::from_bytes("f", CS, &d);
    let p = store.open_partial(&meta).unwrap();
    for i in meta.chunks() {
        p.write_chunk(i, chunk(&meta, &d, i.get())).unwrap();
    }
    p.fail_flush_for_test();
    for _ in 0..2 {
        match p.finish() {
            Err(StoreError::Io { action: "flush", .. }) => {}
            other => panic!("expected a flush error, got {other:?}"),
        }
    }
    assert!(!store.root().join("f").exists());
}

#[path = "scan_tests.rs"]
mod scan;

/// Serving reads: a chunk read from the page cache only is either all there, with the right
/// bytes, or reported as not cached (then the blocking read gives it); a chunk a partial does not
/// hold is `NotHeld` either way; a served file opened once keeps serving, and a file truncated
/// under it fails with `FileChanged`.
#[test]
fn chunks_are_read_from_the_page_cache_or_reported_missing_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(4 * CSU + 9, 8);
    let meta = FileMeta::from_bytes("p.bin", CS, &d);
    let p = store.open_partial(&meta).unwrap();
    p.write_chunk(meta.chunk(1).unwrap(), chunk(&meta, &d, 1)).unwrap();
    let mut buf = Vec::new();
    assert!(p.read_chunk_cached(meta.chunk(1).unwrap(), &mut buf).unwrap(), "just written: cached");
    assert_eq!(buf, chunk(&meta, &d, 1));
    assert!(matches!(p.read_chunk_cached(meta.chunk(2).unwrap(), &mut buf), Err(StoreError::NotHeld { chunk: 2 })));

    fs::write(dir.path().join("c.bin"), &d).unwrap();
    let meta = FileMeta::from_bytes("c.bin", CS, &d);
    let served = store.open_served(&meta).unwrap();
    // Ask the kernel to drop the file's pages (a hint: tmpfs keeps them).
    let f = fs::File::open(dir.path().join("c.bin")).unwrap();
    f.sync_all().unwrap();
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    for i in 0..meta.num_chunks() {
        let idx = meta.chunk(i).unwrap();
        if served.read_chunk_cached(idx, &mut buf).unwrap() {
            assert_eq!(buf, chunk(&meta, &d, i), "chunk {i} from the cache");
        }
        served.read_chunk_into(idx, &mut buf).unwrap();
        assert_eq!(buf, chunk(&meta, &d, i), "chunk {i}");
    }
    // An index from a longer file's metadata is out of range here.
    let longer = FileMeta::from_bytes("c.bin", CS, &data(8 * CSU, 8));
    assert!(matches!(served.read_chunk_into(longer.chunk(6).unwrap(), &mut buf), Err(StoreError::InvalidMeta(_))));
    fs::OpenOptions::new().write(true).open(dir.path().join("c.bin")).unwrap().set_len(CS as u64).unwrap();
    assert!(matches!(served.read_chunk_into(meta.chunk(3).unwrap(), &mut buf), Err(StoreError::FileChanged { .. })));
}

/// A file of one chunk (or none) is downloaded into an unnamed file: nothing appears in the
/// partial folder, stale bookkeeping of an earlier run under its id is removed, and finishing
/// places exactly the verified bytes.
#[test]
fn one_chunk_downloads_keep_no_bookkeeping_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let partial_dir = store.root().join(".p2p/partial");
    let listing = || {
        let mut v: Vec<String> = fs::read_dir(&partial_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let d = data(CSU - 3, 9);
    for (name, bytes) in [("small.bin", &d[..]), ("empty.bin", &[][..])] {
        let meta = FileMeta::from_bytes(name, CS, bytes);
        // An earlier run's files under this download's id.
        let id = crate::files::partial_id(&meta);
        for ext in ["meta", "data", "have"] {
            fs::write(partial_dir.join(format!("{id}.{ext}")), b"stale").unwrap();
        }
        let p = store.open_partial(&meta).unwrap();
        assert_eq!(listing(), Vec::<String>::new(), "{name}: nothing named in the partial folder");
        if meta.num_chunks() == 1 {
            let mut buf = Vec::new();
            assert!(p.write_chunk(meta.chunk(0).unwrap(), bytes).unwrap());
            p.read_chunk_into(meta.chunk(0).unwrap(), &mut buf).unwrap();
            assert_eq!(buf, bytes);
        }
        let placed = p.finish().unwrap();
        assert_eq!(fs::read(placed).unwrap(), bytes, "{name}");
        assert_eq!(listing(), Vec::<String>::new());
    }
}
