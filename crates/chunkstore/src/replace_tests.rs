//! Tests of `Partial::finish_replacing_until`: a different regular file under the name is swapped
//! for the verified download in one rename (across file systems too, via a verified copy); a
//! link, a folder, or a rename that fails leaves everything as it was, the download kept.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;

use crate::test_support::{Immutable, Mount};
use crate::{hash_file, Partial, Store, StoreError};

const CS: u32 = MIN_CHUNK_SIZE;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 17 + i / 401) as u8).wrapping_add(seed)).collect()
}

/// A download of `name` with every chunk written, not yet finished.
fn complete(store: &Store, name: &str, seed: u8) -> (Partial, Vec<u8>) {
    let d = data(4 * CS as usize + 21, seed);
    let meta = FileMeta::from_bytes(name, CS, &d);
    let p = store.open_partial(&meta).unwrap();
    for i in meta.chunks() {
        let (off, n) = meta.chunk_range(i);
        p.write_chunk(i, &d[off as usize..(off + u64::from(n)) as usize]).unwrap();
    }
    (p, d)
}

fn replace(p: &Partial) -> Result<std::path::PathBuf, StoreError> {
    p.finish_replacing_until(&AtomicBool::new(false))
}

/// Entries of `dir` (not recursive), sorted: no temporary is left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_different_file_is_replaced_and_the_result_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let root = store.root().to_path_buf();
    fs::create_dir_all(root.join("dir")).unwrap();
    fs::write(root.join("dir/f"), b"old content").unwrap();
    fs::hard_link(root.join("dir/f"), root.join("old-link")).unwrap();
    let (p, d) = complete(&store, "dir/f", 1);
    assert!(matches!(p.finish(), Err(StoreError::AlreadyExists { .. })), "plain finish still refuses");
    // Interrupted before the check: the old file stays.
    assert!(matches!(p.finish_replacing_until(&AtomicBool::new(true)), Err(StoreError::Interrupted { .. })));
    assert_eq!(fs::read(root.join("dir/f")).unwrap(), b"old content");

    let path = replace(&p).unwrap();
    assert_eq!(path, root.join("dir/f"));
    assert_eq!(fs::read(&path).unwrap(), d);
    assert_eq!(hash_file(&path, "dir/f", CS).unwrap(), *p.meta());
    // The name was swapped, not the old file overwritten: its other name still holds it.
    assert_eq!(fs::read(root.join("old-link")).unwrap(), b"old content");
    assert_eq!(entries(&root.join("dir")), ["f"]);
    assert!(store.partials().unwrap().is_empty());
    assert!(matches!(replace(&p), Err(StoreError::Finished { .. })));
    // Recorded in the hash cache at its download's chunk size.
    let (metas, stats) = store.scan_with_stats().unwrap();
    assert!(metas.contains(p.meta()));
    assert_eq!((stats.cached, stats.hashed), (1, 1));
}

#[test]
fn a_folder_or_a_link_at_the_name_is_refused_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("share")).unwrap();
    let root = store.root().to_path_buf();
    fs::create_dir_all(root.join("f/inner")).unwrap();
    fs::write(root.join("f/inner/keep"), b"keep me").unwrap();
    let outside = tmp.path().join("target");
    fs::write(&outside, b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
    let (pf, df) = complete(&store, "f", 2);
    let (pl, dl) = complete(&store, "l", 3);

    match replace(&pf) {
        Err(StoreError::NotRegular { path }) => assert_eq!(path, root.join("f")),
        other => panic!("expected NotRegular, got {other:?}"),
    }
    match replace(&pl) {
        Err(StoreError::Symlink { path }) => assert_eq!(path, root.join("l")),
        other => panic!("expected Symlink, got {other:?}"),
    }
    assert_eq!(fs::read(root.join("f/inner/keep")).unwrap(), b"keep me");
    assert_eq!(fs::read_link(root.join("l")).unwrap(), outside);
    assert_eq!(fs::read(&outside).unwrap(), b"outside");
    assert_eq!(entries(&root), [".p2p", "f", "l"]);
    assert_eq!(store.partials().unwrap().len(), 2, "both downloads kept");
    assert!(pf.is_complete() && pl.is_complete());

    // Once the name is free (or a regular file), the same downloads finish.
    fs::remove_dir_all(root.join("f")).unwrap();
    fs::remove_file(root.join("l")).unwrap();
    fs::write(root.join("l"), b"regular now").unwrap();
    assert_eq!(fs::read(replace(&pf).unwrap()).unwrap(), df);
    assert_eq!(fs::read(replace(&pl).unwrap()).unwrap(), dl);
}

/// An identical file under the name is kept (same inode), and a stale temporary from a crash is
/// replaced rather than in the way.
#[test]
fn an_identical_file_is_kept_and_a_stale_temporary_is_no_obstacle() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let root = store.root().to_path_buf();
    let (p, d) = complete(&store, "same", 4);
    fs::write(root.join("same"), &d).unwrap();
    let inode = fs::metadata(root.join("same")).unwrap().ino();
    assert_eq!(replace(&p).unwrap(), root.join("same"));
    assert_eq!(fs::metadata(root.join("same")).unwrap().ino(), inode);

    let (q, e) = complete(&store, "other", 5);
    fs::write(root.join("other"), b"different").unwrap();
    fs::write(root.join(format!(".p2p-{}.tmp", crate::files::partial_id(q.meta()))), b"stale").unwrap();
    assert_eq!(fs::read(replace(&q).unwrap()).unwrap(), e);
    assert_eq!(entries(&root), [".p2p", "other", "same"]);
}

/// A rename that fails (the old file is immutable) leaves the old file, removes the temporary
/// name and keeps the download whole; once possible, the replacement succeeds.
#[test]
fn a_failed_rename_is_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let root = store.root().to_path_buf();
    fs::write(root.join("f"), b"old").unwrap();
    let (p, d) = complete(&store, "f", 6);
    {
        let Some(_frozen) = Immutable::new(&root.join("f")) else { return };
        match replace(&p) {
            Err(StoreError::Io { action: "move into place", path, .. }) => assert_eq!(path, root.join("f")),
            other => panic!("expected a failed move, got {other:?}"),
        }
        assert_eq!(fs::read(root.join("f")).unwrap(), b"old");
        assert_eq!(entries(&root), [".p2p", "f"]);
        assert!(p.is_complete());
        assert_eq!(store.partials().unwrap(), vec![p.meta().clone()]);
    }
    assert_eq!(fs::read(replace(&p).unwrap()).unwrap(), d);
}

/// A destination folder on another file system gets a verified copy, renamed over the old file.
#[test]
fn a_file_on_another_file_system_is_replaced_by_a_verified_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("share")).unwrap();
    let mnt = store.root().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let Some(_mount) = Mount::tmpfs(&mnt, "4m") else { return };
    fs::write(mnt.join("f"), b"old on another file system").unwrap();
    let (p, d) = complete(&store, "mnt/f", 7);
    assert_eq!(fs::read(replace(&p).unwrap()).unwrap(), d);
    assert_eq!(entries(&mnt), ["f"]);
    assert!(store.partials().unwrap().is_empty());
    drop((p, store));
}
