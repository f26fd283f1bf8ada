//! A local writer's links under the store's predictable names: a hard link planted where the
//! store creates a file is never written through, and a verified download's name is given to the
//! verified file even if its data file's name was taken meanwhile.

use std::fs;

use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;

use crate::files::partial_id;
use crate::Store;

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

fn write_all(store: &Store, meta: &FileMeta, data: &[u8]) -> crate::Partial {
    let p = store.open_partial(meta).unwrap();
    for i in 0..meta.num_chunks() {
        let (off, len) = meta.chunk_range(meta.chunk(i).unwrap());
        p.write_chunk(meta.chunk(i).unwrap(), &data[off as usize..(off + u64::from(len)) as usize]).unwrap();
    }
    p
}

#[test]
fn the_verified_file_is_placed_even_if_its_data_name_was_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("share")).unwrap();
    let data = bytes(3 * MIN_CHUNK_SIZE as usize, 1);
    let meta = FileMeta::from_bytes("f.bin", MIN_CHUNK_SIZE, &data);
    let p = write_all(&store, &meta, &data);
    // Between the last chunk and the placement, another file takes the data file's name.
    let partial = store.root().join(".p2p/partial");
    let evil = partial.join("evil");
    fs::write(&evil, bytes(data.len(), 2)).unwrap();
    fs::rename(&evil, partial.join(format!("{}.data", partial_id(&meta)))).unwrap();
    let path = p.finish().unwrap();
    assert_eq!(fs::read(path).unwrap(), data, "the name went to a file that was never verified");
}

#[test]
fn links_planted_at_the_stores_names_are_never_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let store = Store::open(&share).unwrap();
    let victim = tmp.path().join("victim");
    let original = bytes(5 * MIN_CHUNK_SIZE as usize, 3);
    fs::write(&victim, &original).unwrap();
    let partial = share.join(".p2p/partial");

    // A new download whose data and bitmap names are hard links to the victim.
    let data = bytes(5 * MIN_CHUNK_SIZE as usize, 4);
    let meta = FileMeta::from_bytes("new.bin", MIN_CHUNK_SIZE, &data);
    let id = partial_id(&meta);
    fs::hard_link(&victim, partial.join(format!("{id}.data"))).unwrap();
    fs::hard_link(&victim, partial.join(format!("{id}.have"))).unwrap();
    write_all(&store, &meta, &data).finish().unwrap();
    assert_eq!(fs::read(&victim).unwrap(), original, "written through a link (new download)");

    // A download that looks resumable (its meta matches) but whose data file is a link.
    let data = bytes(5 * MIN_CHUNK_SIZE as usize, 5);
    let meta = FileMeta::from_bytes("resumed.bin", MIN_CHUNK_SIZE, &data);
    let id = partial_id(&meta);
    drop(store.open_partial(&meta).unwrap());
    let store = Store::open(&share).unwrap();
    fs::remove_file(partial.join(format!("{id}.data"))).unwrap();
    fs::hard_link(&victim, partial.join(format!("{id}.data"))).unwrap();
    write_all(&store, &meta, &data).finish().unwrap();
    assert_eq!(fs::read(&victim).unwrap(), original, "written through a link (resumed download)");
    assert_eq!(fs::read(share.join("resumed.bin")).unwrap(), data);

    // The hash cache's temporary.
    fs::hard_link(&victim, share.join(".p2p/hash-cache.tmp")).unwrap();
    fs::write(share.join("other.bin"), b"x").unwrap();
    assert_eq!(store.scan().unwrap().len(), 3);
    assert_eq!(fs::read(&victim).unwrap(), original, "written through a link (hash cache)");
}
