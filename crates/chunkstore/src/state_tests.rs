//! Tests of a store keeping its state outside the share (`Store::open_with_state`): opening,
//! scanning and serving write nothing in the share, which may be read-only (a read-only bind
//! mount where the tests run as root, so the kernel enforces it even for root); the partial folder
//! appears with the first download, resumes from it, and is swept only where it can be written.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;

use crate::test_support::Mount;
use crate::{Store, StoreError};

const CS: u32 = MIN_CHUNK_SIZE;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 251) as u8).wrapping_add(seed)).collect()
}

/// Every entry below `dir` with its kind, length and modification time: any write in the tree
/// (an entry created, removed, written or renamed) changes this.
fn snapshot(dir: &Path) -> BTreeMap<String, (bool, u64, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = fs::symlink_metadata(&d).unwrap();
        let rel = d.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        out.insert(rel, (md.is_dir(), md.len(), md.mtime(), md.mtime_nsec()));
        if md.is_dir() {
            stack.extend(fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

/// A share with two files; returns their contents by name.
fn share_with_files(share: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![("a.bin", data(3 * CS as usize + 5, 1)), ("sub/b.bin", data(CS as usize, 2))];
    for (name, d) in &files {
        let path = share.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, d).unwrap();
    }
    files
}

/// Opens, scans twice and serves every chunk, checking what is served.
fn open_scan_serve(share: &Path, state: &Path, files: &[(&str, Vec<u8>)]) -> Store {
    let store = Store::open_with_state(share, state).unwrap();
    let (metas, stats) = store.scan_with_stats().unwrap();
    assert_eq!(metas.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a.bin", "sub/b.bin"]);
    assert_eq!(stats.hashed, 2);
    for (meta, (_, d)) in metas.iter().zip(files) {
        for i in meta.chunks() {
            let (off, len) = meta.chunk_range(i);
            assert_eq!(&store.read_chunk(meta, i).unwrap()[..], &d[off as usize..(off + u64::from(len)) as usize]);
        }
    }
    assert_eq!(store.scan_with_stats().unwrap().1.cached, 2, "the cache in the state folder works");
    assert!(store.partials().unwrap().is_empty() && store.partial_infos().unwrap().is_empty());
    store
}

#[test]
fn opening_scanning_and_serving_write_nothing_in_the_share() {
    let tmp = tempfile::tempdir().unwrap();
    let (share, state) = (tmp.path().join("share"), tmp.path().join("state/deeper"));
    let files = share_with_files(&share);
    fs::set_permissions(&share, fs::Permissions::from_mode(0o555)).unwrap();
    let before = snapshot(&share);
    let store = open_scan_serve(&share, &state, &files);
    assert_eq!(snapshot(&share), before, "nothing was written in the share");
    assert!(!share.join(".p2p").exists());
    assert!(state.join("hash-cache").is_file());
    assert_eq!(store.state_dir(), fs::canonicalize(&state).unwrap());
    assert_eq!(store.root(), fs::canonicalize(&share).unwrap());
    drop(store);

    // Read-only for real: even root cannot write there now.
    if let Some(_ro) = Mount::read_only(&share) {
        assert!(fs::write(share.join("probe"), b"x").is_err(), "the mount is read-only");
        let store = open_scan_serve(&share, &tmp.path().join("state2"), &files);
        // Starting a download needs the partial folder, which cannot be made: a typed error, and
        // still nothing written.
        let meta = FileMeta::from_bytes("new.bin", CS, &data(100, 3));
        match store.open_partial(&meta) {
            Err(StoreError::Io { action: "create folder", path, .. }) => assert!(path.ends_with(".p2p/partial")),
            other => panic!("expected a create folder error, got {other:?}"),
        }
        assert!(matches!(store.remove_partial(&meta), Err(StoreError::NoPartial { .. })));
        assert_eq!(snapshot(&share), before);
    }
    // So that the temporary folder can be removed by a user other than root.
    fs::set_permissions(&share, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A read-only share holding a download and crash leftovers from when it was writable opens (with
/// `open_with_state` and with `open`), lists the download, and leaves the leftovers alone.
#[test]
fn a_read_only_share_with_leftover_bookkeeping_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let files = share_with_files(&share);
    let d = data(4 * CS as usize, 4);
    let meta = FileMeta::from_bytes("c.bin", CS, &d);
    {
        let store = Store::open(&share).unwrap();
        let p = store.open_partial(&meta).unwrap();
        p.write_chunk(meta.chunk(1).unwrap(), &d[CS as usize..2 * CS as usize]).unwrap();
    }
    let partial_dir = share.join(".p2p/partial");
    fs::write(partial_dir.join("0123.data"), b"orphan").unwrap();
    let Some(_ro) = Mount::read_only(&share) else { return };
    let before = snapshot(&share);
    for with_state in [true, false] {
        let store = if with_state {
            Store::open_with_state(&share, tmp.path().join("state")).unwrap()
        } else {
            Store::open(&share).unwrap()
        };
        assert_eq!(store.partials().unwrap(), vec![meta.clone()]);
        let infos = store.partial_infos().unwrap();
        assert_eq!((infos.len(), infos[0].chunks_done, infos[0].bytes_done), (1, 1, u64::from(CS)));
        let names: Vec<String> = store.scan().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, files.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>());
        assert!(partial_dir.join("0123.data").exists(), "the sweep was skipped");
    }
    assert_eq!(snapshot(&share), before, "nothing was written in the share");
}

/// On a writable share the partial folder appears with the first download, a later store resumes
/// from it, and a finished download is recorded in the state folder's cache, not the share's.
#[test]
fn the_partial_folder_is_made_by_the_first_download_and_resumed_from() {
    let tmp = tempfile::tempdir().unwrap();
    let (share, state) = (tmp.path().join("share"), tmp.path().join("state"));
    let store = Store::open_with_state(&share, &state).unwrap();
    assert!(!share.join(".p2p").exists(), "nothing made at open");
    let d = data(3 * CS as usize + 9, 5);
    let meta = FileMeta::from_bytes("dir/f.bin", CS, &d);
    let chunk = |i: u32| {
        let (off, len) = meta.chunk_range(meta.chunk(i).unwrap());
        d[off as usize..(off + u64::from(len)) as usize].to_vec()
    };
    store.open_partial(&meta).unwrap().write_chunk(meta.chunk(0).unwrap(), &chunk(0)).unwrap();
    assert!(share.join(".p2p/partial").is_dir());
    drop(store);

    let store = Store::open_with_state(&share, &state).unwrap();
    assert_eq!(store.partials().unwrap(), vec![meta.clone()]);
    let p = store.open_partial(&meta).unwrap();
    assert_eq!(p.have().iter_ones().collect::<Vec<_>>(), [0], "resumed");
    for i in 1..meta.num_chunks() {
        p.write_chunk(meta.chunk(i).unwrap(), &chunk(i)).unwrap();
    }
    assert_eq!(fs::read(p.finish().unwrap()).unwrap(), d);
    let (metas, stats) = store.scan_with_stats().unwrap();
    assert_eq!((metas, stats.hashed, stats.cached), (vec![meta], 0, 1));
    assert!(state.join("hash-cache").is_file() && !share.join(".p2p/hash-cache").exists());
}

/// Crash leftovers in an existing, writable partial folder are swept at open, as with `open`.
#[test]
fn open_with_state_sweeps_a_writable_partial_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let pd = share.join(".p2p/partial");
    fs::create_dir_all(&pd).unwrap();
    for f in ["0123.data", "0123.have", "4567.meta.tmp"] {
        fs::write(pd.join(f), b"x").unwrap();
    }
    let store = Store::open_with_state(&share, tmp.path().join("state")).unwrap();
    assert_eq!(fs::read_dir(&pd).unwrap().count(), 0);
    assert!(store.partials().unwrap().is_empty());
}

/// A state folder that cannot be made, and a linked `.p2p` (found only when a download needs it:
/// the share still opens and serves).
#[test]
fn state_and_partial_folder_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let not_a_dir = tmp.path().join("file");
    fs::write(&not_a_dir, b"x").unwrap();
    match Store::open_with_state(&share, not_a_dir.join("state")) {
        Err(StoreError::Io { action: "create state folder", .. }) => {}
        other => panic!("expected a create state folder error, got {other:?}"),
    }

    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("partial")).unwrap();
    std::os::unix::fs::symlink(&outside, share.join(".p2p")).unwrap();
    let store = Store::open_with_state(&share, tmp.path().join("state")).unwrap();
    assert!(store.scan().unwrap().is_empty());
    let meta = FileMeta::from_bytes("f", CS, &data(10, 6));
    assert!(matches!(store.partials(), Err(StoreError::Symlink { .. })));
    assert!(matches!(store.partial_infos(), Err(StoreError::Symlink { .. })));
    assert!(matches!(store.open_partial(&meta), Err(StoreError::Symlink { .. })));
    assert_eq!(fs::read_dir(outside.join("partial")).unwrap().count(), 0, "nothing written through the link");
}
