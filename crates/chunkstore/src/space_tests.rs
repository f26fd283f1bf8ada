//! Tests of disk space: `Partial::reserve` on a small tmpfs (mounted by the test where it runs as
//! root), the decision it makes from what `fallocate` said (every outcome, including the fallback
//! for file systems that cannot preallocate), `Store::free_space`, and how sizes read.

use std::fs;
use std::io;
use std::path::Path;

use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;
use rustix::io::Errno;

use crate::error::human_bytes;
use crate::space::judge_reservation;
use crate::test_support::Mount;
use crate::{Partial, Store, StoreError};

const CS: u32 = MIN_CHUNK_SIZE;
const MIB: u64 = 1024 * 1024;

fn data(len: u64, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 13 + i / 509) as u8).wrapping_add(seed)).collect()
}

fn write(p: &Partial, d: &[u8], chunks: impl IntoIterator<Item = u32>) {
    let meta = p.meta().clone();
    for i in chunks {
        let (off, len) = meta.chunk_range(meta.chunk(i).unwrap());
        p.write_chunk(meta.chunk(i).unwrap(), &d[off as usize..(off + u64::from(len)) as usize]).unwrap();
    }
}

/// On a 2 MiB tmpfs: a 4 MiB download cannot reserve its space (before and after some chunks
/// arrived, each time naming what it still needs and what is free) and stays whole; a 1 MiB one
/// reserves, takes its space at once, and completes.
#[test]
fn reserve_fails_at_once_on_a_full_disk_and_keeps_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("small");
    fs::create_dir_all(&share).unwrap();
    let Some(_mount) = Mount::tmpfs(&share, "2m") else { return };
    let store = Store::open_with_state(&share, tmp.path().join("state")).unwrap();
    let free = store.free_space().unwrap();
    assert!(free > 0 && free <= 2 * MIB, "{free}");

    let big_data = data(4 * MIB, 1);
    let big = FileMeta::from_bytes("big.iso", CS, &big_data);
    let p = store.open_partial(&big).unwrap();
    let check_no_space = |p: &Partial, needed: u64| match p.reserve() {
        Err(StoreError::NoSpace { path, needed: n, free: f }) => {
            assert_eq!(path, store.root().join("big.iso"));
            assert_eq!(n, needed);
            assert!(f > 0 && f <= 2 * MIB, "{f}");
            let shown = StoreError::NoSpace { path, needed: n, free: f }.to_string();
            assert!(shown.contains(&format!("needs {}, {} free", human_bytes(n), human_bytes(f))), "{shown}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    };
    check_no_space(&p, 4 * MIB);
    write(&p, &big_data, 0..32);
    check_no_space(&p, 4 * MIB - 32 * u64::from(CS));
    // The download is kept whole: listed, its chunks held.
    assert_eq!(store.partials().unwrap(), vec![big.clone()]);
    assert_eq!(p.have().count(), 32);
    assert!(share.join(".p2p/partial").read_dir().unwrap().any(|e| e.unwrap().path().extension().unwrap() == "meta"));
    drop(p);
    store.remove_partial(&big).unwrap();

    let small_data = data(MIB, 2);
    let small = FileMeta::from_bytes("small.bin", CS, &small_data);
    let p = store.open_partial(&small).unwrap();
    let before = store.free_space().unwrap();
    p.reserve().unwrap();
    assert!(store.free_space().unwrap() + MIB <= before, "the space was taken at once");
    assert!(store.partial_infos().unwrap()[0].disk_bytes >= MIB);
    p.reserve().unwrap();
    write(&p, &small_data, 0..small.num_chunks());
    p.reserve().unwrap();
    assert_eq!(fs::read(p.finish().unwrap()).unwrap(), small_data);
    drop(store);
}

/// Reserving on an ordinary file system: nothing to do for a complete download or an empty file,
/// and a download with room reserves.
#[test]
fn reserve_with_room_and_with_nothing_left_to_reserve() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert!(store.free_space().unwrap() > 0);
    let d = data(5 * u64::from(CS) + 3, 3);
    let meta = FileMeta::from_bytes("f", CS, &d);
    let p = store.open_partial(&meta).unwrap();
    p.reserve().unwrap();
    write(&p, &d, 0..meta.num_chunks());
    p.reserve().unwrap();
    let empty = store.open_partial(&FileMeta::from_bytes("empty", CS, b"")).unwrap();
    empty.reserve().unwrap();
    assert_eq!(fs::read(p.finish().unwrap()).unwrap(), d);
    p.reserve().unwrap();
}

/// Every outcome of what `fallocate` said, including the fallback for file systems without it
/// and a failure to ask for the free space, which no test can bring about portably on disk.
#[test]
fn judging_a_reservation() {
    let (dest, data) = (Path::new("/share/f"), Path::new("/share/.p2p/partial/x.data"));
    let free = |n: u64| move || -> io::Result<u64> { Ok(n) };
    assert!(judge_reservation(Ok(()), 10, free(0), dest, data).is_ok());
    match judge_reservation(Err(Errno::NOSPC), 10, free(3), dest, data) {
        Err(StoreError::NoSpace { path, needed: 10, free: 3 }) => assert_eq!(path, dest),
        other => panic!("{other:?}"),
    }
    // No fallocate on this file system: the free space decides.
    assert!(matches!(
        judge_reservation(Err(Errno::OPNOTSUPP), 10, free(9), dest, data),
        Err(StoreError::NoSpace { needed: 10, free: 9, .. })
    ));
    assert!(judge_reservation(Err(Errno::OPNOTSUPP), 10, free(10), dest, data).is_ok());
    // Other failures, of fallocate or of asking for the free space, name the data file.
    match judge_reservation(Err(Errno::IO), 10, free(10), dest, data) {
        Err(StoreError::Io { action: "reserve space for", path, .. }) => assert_eq!(path, data),
        other => panic!("{other:?}"),
    }
    let broken = || -> io::Result<u64> { Err(io::Error::from(io::ErrorKind::PermissionDenied)) };
    for errno in [Errno::NOSPC, Errno::OPNOTSUPP] {
        match judge_reservation(Err(errno), 10, broken, dest, data) {
            Err(StoreError::Io { action: "check free space of", path, .. }) => assert_eq!(path, data),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn sizes_read_like_people_write_them() {
    let cases = [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (300 * MIB, "300 MiB"),
        (1288 * MIB, "1.3 GiB"),
        (1229 * MIB, "1.2 GiB"),
        (4 * MIB, "4 MiB"),
        (u64::MAX, "16 EiB"),
    ];
    for (bytes, shown) in cases {
        assert_eq!(human_bytes(bytes), shown, "{bytes}");
    }
    let e = StoreError::NoSpace { path: "/share/movie.mkv".into(), needed: 1229 * MIB, free: 300 * MIB };
    assert_eq!(e.to_string(), "not enough disk space for /share/movie.mkv: needs 1.2 GiB, 300 MiB free");
}
