//! Tests of managing partial downloads: listing them with their progress (`partial_infos`) and
//! removing them (`remove_partial`), refused while open, even while an open is under way.

use std::fs;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;

use crate::files::partial_id;
use crate::partials::Event;
use crate::{Partial, Store, StoreError};

const CS: u32 = MIN_CHUNK_SIZE;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 11 + i / 307) as u8).wrapping_add(seed)).collect()
}

fn write(p: &Partial, d: &[u8], chunks: impl IntoIterator<Item = u32>) {
    let meta = p.meta().clone();
    for i in chunks {
        let (off, len) = meta.chunk_range(meta.chunk(i).unwrap());
        p.write_chunk(meta.chunk(i).unwrap(), &d[off as usize..(off + u64::from(len)) as usize]).unwrap();
    }
}

fn partial_files(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root().join(".p2p/partial"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn partial_infos_tell_progress_age_and_disk_use() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    // The file system's clock is coarse: allow it a second either way.
    let start = SystemTime::now() - Duration::from_secs(1);
    let (da, db) = (data(64 * CS as usize, 1), data(5 * CS as usize + 100, 2));
    let (a, b) = (FileMeta::from_bytes("z/a.bin", CS, &da), FileMeta::from_bytes("b.bin", CS, &db));
    let pa = store.open_partial(&a).unwrap();
    let pb = store.open_partial(&b).unwrap();
    write(&pb, &db, [0, 5]); // the short last chunk too
    let infos = store.partial_infos().unwrap();
    assert_eq!(infos.iter().map(|i| i.meta.name.as_str()).collect::<Vec<_>>(), ["b.bin", "z/a.bin"]);
    let (ib, ia) = (&infos[0], &infos[1]);
    assert_eq!((&ib.meta, ib.chunks_done, ib.num_chunks, ib.bytes_done), (&b, 2, 6, u64::from(CS) + 100));
    assert_eq!(ib.bytes_done, pb.bytes_done());
    assert_eq!((ia.chunks_done, ia.num_chunks, ia.bytes_done), (0, 64, 0));
    let end = SystemTime::now() + Duration::from_secs(1);
    for i in &infos {
        assert!(start <= i.modified && i.modified <= end, "{:?}", i.modified);
    }
    assert!(ib.disk_bytes >= ib.bytes_done, "written chunks take space: {}", ib.disk_bytes);
    assert!(ia.disk_bytes < a.length / 2, "an untouched download is sparse: {}", ia.disk_bytes);
    drop((pa, pb));

    // A bitmap that cannot be read counts as nothing held (as a resume would); a meta that cannot
    // be read is skipped, as by `partials`.
    let dir = store.root().join(".p2p/partial");
    fs::write(dir.join(format!("{}.have", partial_id(&b))), b"\xff").unwrap();
    let infos = store.partial_infos().unwrap();
    assert!(infos.iter().all(|i| i.chunks_done == 0 && i.bytes_done == 0));
    fs::write(dir.join(format!("{}.meta", partial_id(&a))), b"garbage").unwrap();
    let infos = store.partial_infos().unwrap();
    assert_eq!(infos.iter().map(|i| i.meta.name.as_str()).collect::<Vec<_>>(), ["b.bin"]);
}

#[test]
fn remove_partial_removes_only_what_is_not_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (da, db) = (data(4 * CS as usize, 3), data(2 * CS as usize, 4));
    let (a, b) = (FileMeta::from_bytes("a", CS, &da), FileMeta::from_bytes("b", CS, &db));
    let pa = store.open_partial(&a).unwrap();
    write(&pa, &da, [1, 2]);
    let pb = store.open_partial(&b).unwrap();
    drop(pb);

    // Open: refused, and nothing touched.
    let err = store.remove_partial(&a).unwrap_err();
    assert!(matches!(&err, StoreError::PartialInUse { name } if name == "a"), "{err:?}");
    assert_eq!(err.to_string(), "download of \"a\" is open; close it before removing it");
    assert_eq!(partial_files(&store).len(), 6);
    assert_eq!(pa.have().count(), 2);
    let clone = pa.clone();
    drop(pa);
    assert!(matches!(store.remove_partial(&a), Err(StoreError::PartialInUse { .. })), "a clone keeps it open");
    drop(clone);

    store.remove_partial(&a).unwrap();
    assert_eq!(store.partials().unwrap(), vec![b.clone()], "only that one is gone");
    assert_eq!(partial_files(&store).len(), 3);
    let err = store.remove_partial(&a).unwrap_err();
    assert!(matches!(&err, StoreError::NoPartial { name } if name == "a"), "{err:?}");
    assert_eq!(err.to_string(), "no partial download of \"a\"");
    // Opening it again starts over.
    assert_eq!(store.open_partial(&a).unwrap().have().count(), 0);

    // A finished download's handle does not hold anything on disk: nothing left to remove.
    let pb = store.open_partial(&b).unwrap();
    write(&pb, &db, 0..2);
    pb.finish().unwrap();
    assert!(matches!(store.remove_partial(&b), Err(StoreError::NoPartial { .. })));
    // Metadata that is not valid is refused before anything is looked up.
    let mut bad = a.clone();
    bad.name = "../x".into();
    assert!(matches!(store.remove_partial(&bad), Err(StoreError::InvalidName(_))));
    // No partial folder at all.
    let fresh = Store::open_with_state(tmp.path().join("share2"), tmp.path().join("state2")).unwrap();
    assert!(matches!(fresh.remove_partial(&a), Err(StoreError::NoPartial { .. })));
}

/// A download being opened (created or resumed: held at the registry's hook) is in use too; once
/// the open is done and its handle dropped, it can be removed.
#[test]
fn remove_partial_refuses_a_download_being_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let d = data(3 * CS as usize, 5);
    let meta = FileMeta::from_bytes("f", CS, &d);
    write(&store.open_partial(&meta).unwrap(), &d, [0]);
    let (entered_tx, entered) = channel();
    let (release_tx, release) = channel::<()>();
    let release = Arc::new(Mutex::new(release));
    store.partials_for_test().set_hook(Arc::new(move |event| {
        if event == Event::Opening("f") {
            entered_tx.send(()).unwrap();
            release.lock().unwrap().recv().unwrap();
        }
    }));
    let opening = {
        let (store, meta) = (store.clone(), meta.clone());
        std::thread::spawn(move || store.open_partial(&meta).map(|p| p.have().count()))
    };
    entered.recv().unwrap();
    assert!(matches!(store.remove_partial(&meta), Err(StoreError::PartialInUse { .. })));
    release_tx.send(()).unwrap();
    assert_eq!(opening.join().unwrap().unwrap(), 1, "the open resumed the download untouched");
    store.remove_partial(&meta).unwrap();
    assert!(store.partials().unwrap().is_empty());
}
