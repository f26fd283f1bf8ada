//! Tests of names, links, boundary sizes, the hash cache and changed files, through the public API.

use super::*;

#[test]
fn every_bad_name_is_invalid_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    fs::write(dir.path().join("ok"), b"x").unwrap();
    let d = data(10, 6);
    for name in ["../x", "/abs", "a//b", "x\0y", "", "a/../b", ".p2p/hash-cache", "a/", "..", "C:x", "a\\b"] {
        let mut meta = FileMeta::from_bytes("ok", CS, &d);
        meta.name = name.to_owned();
        assert!(matches!(store.open_partial(&meta), Err(StoreError::InvalidName(_))), "{name:?}");
        let i = meta.chunk(0).unwrap();
        assert!(matches!(store.read_chunk(&meta, i), Err(StoreError::InvalidName(_))), "{name:?}");
        assert!(matches!(hash_file(&dir.path().join("ok"), name, CS), Err(StoreError::InvalidName(_))));
    }
}

#[test]
fn symlinks_are_neither_scanned_nor_served() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let secret = data(CSU + 3, 7);
    fs::write(outside.join("secret"), &secret).unwrap();
    let store = Store::open(dir.path().join("share")).unwrap();
    let root = store.root().to_path_buf();
    fs::write(root.join("real"), b"real").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();

    let names: Vec<String> = store.scan().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["real"]);

    for name in ["link", "dirlink/secret"] {
        let meta = FileMeta::from_bytes(name, CS, &secret);
        let r = store.read_chunk(&meta, meta.chunk(0).unwrap());
        assert!(matches!(r, Err(StoreError::Symlink { .. })), "{name}: {r:?}");
    }
    // A download cannot be placed through a symlinked folder either.
    let d = data(100, 8);
    let meta = FileMeta::from_bytes("dirlink/new", CS, &d);
    let p = store.open_partial(&meta).unwrap();
    p.write_chunk(meta.chunk(0).unwrap(), &d).unwrap();
    assert!(matches!(p.finish(), Err(StoreError::Symlink { .. })));
    assert!(!outside.join("new").exists());
}

#[test]
fn boundary_sizes_scan_and_assemble() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Scanning picks the chunk size by file size; the sizes straddle the chunk boundaries.
    let dcs = SMALLEST_CHOSEN_CHUNK as usize;
    let scan_sizes = [0, 1, dcs - 1, dcs, dcs + 1, 3 * dcs + 5];
    let mut want = Vec::new();
    for (k, &len) in scan_sizes.iter().enumerate() {
        let d = data(len, 10 + k as u64);
        let name = format!("s/{len:08}");
        fs::create_dir_all(store.root().join("s")).unwrap();
        fs::write(store.root().join(&name), &d).unwrap();
        let meta = FileMeta::from_bytes(&name, choose_chunk_size(len as u64), &d);
        assert_eq!(meta.root, Hash::from(blake3::hash(&d)));
        want.push(meta);
    }
    assert_eq!(store.scan().unwrap(), want);

    // Assembling and serving at the small chunk size, empty file included.
    for (k, len) in [0, 1, CSU - 1, CSU, CSU + 1, 5 * CSU + 9].into_iter().enumerate() {
        let d = data(len, 20 + k as u64);
        let name = format!("a/{len}");
        let meta = FileMeta::from_bytes(&name, CS, &d);
        let on_disk = dir.path().join(format!("src{len}"));
        fs::write(&on_disk, &d).unwrap();
        let hashed = hash_file(&on_disk, &name, CS).unwrap();
        assert_eq!(hashed, meta, "len {len}");
        assert_eq!(hashed.root, Hash::from(blake3::hash(&d)));
        let path = assemble(&store, &meta, &d);
        assert_eq!(fs::read(&path).unwrap(), d, "len {len}");
        for i in meta.chunks() {
            assert_eq!(&store.read_chunk(&meta, i).unwrap()[..], chunk(&meta, &d, i.get()));
        }
    }
    assert_eq!(partial_dir_entries(&store), 0);
}

#[test]
fn hash_cache_skips_unchanged_and_rehashes_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let root = store.root().to_path_buf();
    fs::write(root.join("a"), data(3 * CSU, 30)).unwrap();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/b"), data(CSU, 31)).unwrap();

    let (first, s) = store.scan_with_stats().unwrap();
    assert_eq!((s.hashed, s.cached), (2, 0));
    let (second, s) = store.scan_with_stats().unwrap();
    assert_eq!((s.hashed, s.cached), (0, 2));
    assert_eq!(first, second);
    // A fresh Store (a restart) uses the cache on disk.
    let (_, s) = Store::open(dir.path()).unwrap().scan_with_stats().unwrap();
    assert_eq!((s.hashed, s.cached), (0, 2));

    // Different length.
    fs::write(root.join("a"), data(3 * CSU + 1, 32)).unwrap();
    let (metas, s) = store.scan_with_stats().unwrap();
    assert_eq!((s.hashed, s.cached), (1, 1));
    assert_eq!(metas[0], FileMeta::from_bytes("a", choose_chunk_size(3 * CSU as u64 + 1), &data(3 * CSU + 1, 32)));

    // Same length, new content, different mtime (set explicitly: timestamps can be coarse).
    let new_b = data(CSU, 33);
    let f = fs::OpenOptions::new().write(true).open(root.join("d/b")).unwrap();
    f.write_all_at(&new_b, 0).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(10)).unwrap();
    drop(f);
    let (metas, s) = store.scan_with_stats().unwrap();
    assert_eq!((s.hashed, s.cached), (1, 1));
    assert_eq!(metas[1], FileMeta::from_bytes("d/b", choose_chunk_size(CSU as u64), &new_b));

    // A deleted file disappears; a corrupt cache is ignored, not an error.
    fs::remove_file(root.join("a")).unwrap();
    let (metas, s) = store.scan_with_stats().unwrap();
    assert_eq!((metas.len(), s.hashed, s.cached), (1, 0, 1));
    fs::write(root.join(".p2p/hash-cache"), b"not postcard").unwrap();
    let (_, s) = store.scan_with_stats().unwrap();
    assert_eq!((s.hashed, s.cached), (1, 0));
}

#[test]
fn read_chunk_notices_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = data(2 * CSU, 40);
    fs::write(store.root().join("f"), &d).unwrap();
    let meta = hash_file(&store.root().join("f"), "f", CS).unwrap();
    let c1 = meta.chunk(1).unwrap();
    assert_eq!(&store.read_chunk(&meta, c1).unwrap()[..], chunk(&meta, &d, 1));
    fs::write(store.root().join("f"), &d[..CSU]).unwrap();
    assert!(matches!(store.read_chunk(&meta, c1), Err(StoreError::FileChanged { .. })));
    fs::remove_file(store.root().join("f")).unwrap();
    assert!(matches!(store.read_chunk(&meta, c1), Err(StoreError::FileChanged { .. })));
}

/// The watcher's three calls: `entry` tells files (with their state), folders, missing names and
/// what is never shared (links, `.p2p`); `list_files` walks as a scan does, hashing nothing;
/// `hash_files` hashes through the cache (a file scanned before, or hashed once, is not hashed
/// again) and refuses, typed, a file it cannot share.
#[test]
fn entries_listing_and_hashing_files_through_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("share")).unwrap();
    let root = store.root().to_path_buf();
    let a = data(CSU * 2 + 5, 1);
    fs::create_dir(root.join("sub")).unwrap();
    fs::write(root.join("sub/a"), &a).unwrap();
    std::os::unix::fs::symlink(root.join("sub"), root.join("link")).unwrap();

    let state = match store.entry("sub/a").unwrap() {
        Entry::File(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(state.length, a.len() as u64);
    assert_eq!(store.entry("sub").unwrap(), Entry::Folder);
    assert_eq!(store.entry("nothing/a").unwrap(), Entry::Missing);
    assert_eq!(store.entry("sub/b").unwrap(), Entry::Missing);
    assert_eq!(store.entry("link").unwrap(), Entry::Other);
    assert_eq!(store.entry("link/a").unwrap(), Entry::Other, "no path through a link");
    assert_eq!(store.entry(".p2p").unwrap(), Entry::Other);
    assert_eq!(store.entry("../x").unwrap(), Entry::Other);

    assert_eq!(store.list_files().unwrap(), vec![("sub/a".to_owned(), state)]);

    let names = vec!["sub/a".to_owned(), "sub/b".to_owned(), "link/a".to_owned()];
    let out = store.hash_files(&names);
    let (s, meta) = out[0].as_ref().unwrap();
    assert_eq!((*s, meta.root), (state, FileMeta::from_bytes("sub/a", meta.chunk_size, &a).root));
    assert!(matches!(out[1], Err(StoreError::NotShared { .. })), "{:?}", out[1]);
    assert!(matches!(out[2], Err(StoreError::NotShared { .. })), "{:?}", out[2]);
    // Recorded in the cache: a scan now hashes nothing.
    let (_, stats) = store.scan_with_stats().unwrap();
    assert_eq!((stats.hashed, stats.cached), (0, 1));
}
