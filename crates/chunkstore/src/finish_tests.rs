//! Tests of an interruptible finish (`Partial::finish_until`): a stop flag set before or during
//! the whole-file check, or while a flush runs, gives `Interrupted`, places nothing and keeps the
//! download whole, so a later finish succeeds. No test sleeps: each waits on an event or a thread.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;

use crate::{Partial, Store, StoreError};

const CS: u32 = MIN_CHUNK_SIZE;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 4099) as u8).wrapping_add(seed)).collect()
}

/// A download of `name` (`len` bytes) with every chunk written, not yet finished.
fn complete(store: &Store, name: &str, len: usize, seed: u8) -> (Partial, Vec<u8>) {
    let d = data(len, seed);
    let meta = FileMeta::from_bytes(name, CS, &d);
    let p = store.open_partial(&meta).unwrap();
    for i in meta.chunks() {
        let (off, n) = meta.chunk_range(i);
        p.write_chunk(i, &d[off as usize..(off + u64::from(n)) as usize]).unwrap();
    }
    assert!(p.is_complete());
    (p, d)
}

fn partial_files(store: &Store) -> usize {
    fs::read_dir(store.root().join(".p2p/partial")).unwrap().count()
}

/// After an interrupted finish: nothing under the name, the bookkeeping and every chunk kept, the
/// same download handed out again; then a plain finish places the file.
fn check_kept_then_finish(store: &Store, p: &Partial, d: &[u8]) {
    let name = p.meta().name.clone();
    assert!(!store.root().join(&name).exists(), "nothing placed");
    assert!(p.have().is_full() && p.is_complete());
    assert_eq!(partial_files(store), 3, "meta, data and bitmap kept");
    let last = p.meta().chunk(p.meta().num_chunks() - 1).unwrap();
    assert_eq!(&p.read_chunk(last).unwrap()[..], &d[p.meta().chunk_range(last).0 as usize..]);
    assert!(store.open_partial(p.meta()).unwrap().is_complete(), "still open, still whole");
    let path = p.finish().unwrap();
    assert_eq!(fs::read(path).unwrap(), d);
    assert_eq!(partial_files(store), 0);
}

#[test]
fn stop_set_before_finishing_interrupts_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (p, d) = complete(&store, "sub/f.bin", 5 * CS as usize - 7, 1);
    let stop = AtomicBool::new(true);
    let err = p.finish_until(&stop).unwrap_err();
    assert!(matches!(&err, StoreError::Interrupted { name } if name == "sub/f.bin"), "{err:?}");
    assert_eq!(err.to_string(), "finishing \"sub/f.bin\" was interrupted; the partial download is kept");
    // Again: an interrupted finish can be interrupted again.
    assert!(matches!(p.finish_until(&stop), Err(StoreError::Interrupted { .. })));
    check_kept_then_finish(&store, &p, &d);
    assert!(matches!(p.finish_until(&AtomicBool::new(false)), Err(StoreError::Finished { .. })));
}

/// Even an empty file (nothing to read back) heeds a stop set before.
#[test]
fn stop_set_before_finishing_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (p, d) = complete(&store, "empty", 0, 0);
    assert!(matches!(p.finish_until(&AtomicBool::new(true)), Err(StoreError::Interrupted { .. })));
    assert!(!store.root().join("empty").exists());
    assert_eq!(fs::read(p.finish_until(&AtomicBool::new(false)).unwrap()).unwrap(), d);
}

/// Stop set from another thread while a file of 512 chunks is read back and hashed: whichever
/// comes first, the outcome is whole: placed, or interrupted with everything kept.
#[test]
fn stop_set_while_verifying_either_interrupts_cleanly_or_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for round in 0..3u8 {
        let name = format!("big{round}");
        let (p, d) = complete(&store, &name, 512 * CS as usize, round);
        let stop = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(2));
        let stopper = {
            let (stop, start) = (stop.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                stop.store(true, Ordering::Relaxed);
            })
        };
        start.wait();
        let result = p.finish_until(&stop);
        stopper.join().unwrap();
        match result {
            Ok(path) => assert_eq!(fs::read(path).unwrap(), d),
            Err(StoreError::Interrupted { .. }) => check_kept_then_finish(&store, &p, &d),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}

/// A finish waits for a running flush (it holds the answer to whether earlier writes reached
/// the disk), and a stop set meanwhile ends the wait; once the flush is over, finish succeeds.
#[test]
fn a_finish_waiting_for_a_flush_heeds_stop_and_then_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (p, d) = complete(&store, "f", 8 * CS as usize, 3);
    p.hold_flush_for_test(true);
    // With the flush held, only the stop flag can end this finish.
    let stop = Arc::new(AtomicBool::new(false));
    let finishing = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || p.finish_until(&stop))
    };
    stop.store(true, Ordering::Relaxed);
    assert!(matches!(finishing.join().unwrap(), Err(StoreError::Interrupted { .. })));
    assert!(!store.root().join("f").exists());
    // A finish waiting for the held flush goes on once it is over.
    let finishing = {
        let p = p.clone();
        std::thread::spawn(move || p.finish())
    };
    p.hold_flush_for_test(false);
    assert_eq!(fs::read(finishing.join().unwrap().unwrap()).unwrap(), d);
}
