//! Tests of the registry of open downloads under concurrency: a resume in progress (held at a
//! hook, standing in for a long re-hash) blocks neither other downloads' opens nor their
//! `finish`, and two opens of one download at once still get one handle. Every wait is on an
//! event, bounded by a deadline that only a failing test reaches; none sleeps.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;

use crate::partials::Event;
use crate::Store;

const CS: u32 = MIN_CHUNK_SIZE;

/// How long a test waits for something that should happen at once, before calling it stuck.
const STUCK: Duration = Duration::from_secs(10);

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

fn write(p: &crate::Partial, d: &[u8], chunks: impl IntoIterator<Item = u32>) {
    let meta = p.meta().clone();
    for i in chunks {
        let (off, len) = meta.chunk_range(meta.chunk(i).unwrap());
        p.write_chunk(meta.chunk(i).unwrap(), &d[off as usize..(off + u64::from(len)) as usize]).unwrap();
    }
}

/// A download of `name` with its first `held` of `chunks` chunks on disk and no handle open, so
/// the next open resumes it (re-hashing those chunks).
fn on_disk(store: &Store, name: &str, chunks: u32, held: u32) -> (FileMeta, Vec<u8>) {
    let d = data((chunks * CS) as usize, chunks as u8);
    let meta = FileMeta::from_bytes(name, CS, &d);
    write(&store.open_partial(&meta).unwrap(), &d, 0..held);
    (meta, d)
}

/// A hold on the opens of one download (see [`gate`]).
struct Gate {
    /// A message each time an open starts creating or resuming the download.
    entered: Receiver<()>,
    /// One message lets one held open go on.
    release: Sender<()>,
    /// A message each time an open waits for another open of the download.
    waiting: Receiver<()>,
    /// How many times the download was created or resumed.
    opened: Arc<AtomicUsize>,
}

/// Makes every open of `name` in `store` stop where it creates or resumes the download, until
/// released, and report what it does.
fn gate(store: &Store, name: &'static str) -> Gate {
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel::<()>();
    let (waiting_tx, waiting) = channel();
    let release_rx = Mutex::new(release_rx);
    let opened = Arc::new(AtomicUsize::new(0));
    let count = opened.clone();
    store.partials_for_test().set_hook(Arc::new(move |event| match event {
        Event::Opening(n) if n == name => {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv_timeout(STUCK);
        }
        Event::Waiting(n) if n == name => {
            let _ = waiting_tx.send(());
        }
        _ => {}
    }));
    Gate { entered, release, waiting, opened }
}

#[test]
fn resuming_one_download_blocks_neither_opens_nor_finishes_of_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (big, _) = on_disk(&store, "big.bin", 16, 8);
    let (done_meta, done) = on_disk(&store, "done.bin", 3, 0);
    let ready = store.open_partial(&done_meta).unwrap();
    write(&ready, &done, 0..3);
    let fresh = FileMeta::from_bytes("fresh.bin", CS, &data(2 * CS as usize, 7));
    let gate = gate(&store, "big.bin");

    std::thread::scope(|s| {
        let resuming = s.spawn(|| store.open_partial(&big));
        gate.entered.recv_timeout(STUCK).expect("the resume started");
        // The resume is now held part way, as a long re-hash would hold it.
        let (tx, rx) = channel();
        let (ready, store, fresh) = (&ready, &store, &fresh);
        s.spawn(move || {
            let finished = ready.finish();
            let opened = store.open_partial(fresh).map(|p| p.has(0));
            let _ = tx.send((finished, opened));
        });
        let others = rx.recv_timeout(STUCK);
        // Let the resume go on whatever happened, so the threads end.
        gate.release.send(()).unwrap();
        let (finished, opened) = others.expect("another download's finish or open waited for a resume");
        assert_eq!(fs::read(finished.unwrap()).unwrap(), done);
        assert!(!opened.unwrap());
        let resumed = resuming.join().unwrap().unwrap();
        assert_eq!(resumed.have().count(), 8, "the resume kept the chunks on disk");
    });
}

#[test]
fn two_opens_of_one_download_at_once_share_one_handle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (big, d) = on_disk(&store, "big.bin", 16, 8);
    let gate = gate(&store, "big.bin");

    std::thread::scope(|s| {
        let first = s.spawn(|| store.open_partial(&big));
        gate.entered.recv_timeout(STUCK).expect("the first open started resuming");
        let second = s.spawn(|| store.open_partial(&big));
        // Released only once the second open is known to wait for the first.
        let waited = gate.waiting.recv_timeout(STUCK);
        gate.release.send(()).unwrap();
        waited.expect("the second open did not wait for the first");
        let (a, b) = (first.join().unwrap().unwrap(), second.join().unwrap().unwrap());
        assert_eq!(gate.opened.load(Ordering::SeqCst), 1, "the download was resumed twice");
        write(&a, &d, [12]);
        assert!(b.has(12), "the two opens returned different handles");
    });
}

#[test]
fn opening_a_finished_download_again_starts_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (meta, d) = on_disk(&store, "f.bin", 3, 0);
    let p = store.open_partial(&meta).unwrap();
    write(&p, &d, 0..3);
    let path = p.finish().unwrap();
    // `p` is alive and finished: a new open must not hand it out (its files are gone).
    let again = store.open_partial(&meta).unwrap();
    assert!(!again.has(0));
    write(&again, &d, 0..3);
    assert_eq!(again.finish().unwrap(), path, "the identical file in place is kept");
    assert_eq!(fs::read(path).unwrap(), d);
}
