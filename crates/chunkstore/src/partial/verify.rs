//! Making a finishing download durable and checking it whole: the flushes of its data file (the
//! flush-behind while chunks arrive, the fsync when finishing), each on a background thread, and
//! the read-back of the whole file against the root hash. Both heed the stop flag of
//! [`Partial::finish_until`] between chunks and while waiting, and neither is left half done in a
//! way that matters: an interrupted check just ends, and a flush left running records its outcome
//! for the next finish to see.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::meta::root_from_chunks;
use proto::Hash;
use rayon::prelude::*;
use tracing::warn;

use super::{Partial, FLUSH_BEHIND};
use crate::error::{io_err, StoreError};
use crate::hash::hash_chunk_at;
use crate::sync::lock;

/// How often a finish waiting for a flush looks at its stop flag (the flush's end wakes it at once).
const WAIT_POLL: Duration = Duration::from_millis(20);

impl Partial {
    /// Starts writeback of the data file on a background thread once [`FLUSH_BEHIND`] bytes were
    /// written since the last one started (see there for why).
    pub(super) fn flush_behind(&self, written: u64) {
        let inner = &self.inner;
        if inner.unflushed.fetch_add(written, Ordering::Relaxed) + written < FLUSH_BEHIND
            || inner.flushing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        inner.unflushed.store(0, Ordering::Relaxed);
        // If no thread can be started, the final fsync does all the work, as it would without this.
        self.spawn_flush("flush", File::sync_data);
    }

    /// Runs `sync` on the data file on a background thread, for the flush the caller marked as
    /// running (`flushing`). The thread clears the mark when done and keeps a failure for good,
    /// as `action` (see `flush_error`): whoever waits for the mark then finds it. Returns false,
    /// the mark cleared, if no thread could be started.
    fn spawn_flush(&self, action: &'static str, sync: fn(&File) -> io::Result<()>) -> bool {
        let flusher = self.inner.clone();
        let spawned = std::thread::Builder::new().name("p2p-flush".into()).spawn(move || {
            if let Err(e) = sync(&flusher.data) {
                warn!(name = flusher.meta.name, action, error = %e, "background flush of a download failed");
                lock(&flusher.flush_error).get_or_insert((action, e.kind(), e.to_string()));
            }
            flusher.flushing.store(false, Ordering::Release);
            // Under the lock a waiter checks `flushing` with, so the signal cannot fall between
            // its check and its wait.
            let _held = lock(&flusher.flush_error);
            flusher.flush_ended.notify_all();
        });
        if spawned.is_err() {
            self.inner.flushing.store(false, Ordering::Release);
        }
        spawned.is_ok()
    }

    /// [`StoreError::Interrupted`] if `stop` is set.
    fn heed(&self, stop: &AtomicBool) -> Result<(), StoreError> {
        if stop.load(Ordering::Relaxed) {
            return Err(StoreError::Interrupted { name: self.inner.meta.name.clone() });
        }
        Ok(())
    }

    /// Waits until no flush of the data file is running (a running one holds the answer to
    /// whether earlier writes reached the disk), looking at `stop` meanwhile. Woken by the flush's
    /// end, not by polling: a wake-up per millisecond of a long fsync is a cost of its own.
    fn wait_for_flush(&self, stop: &AtomicBool) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut held = lock(&inner.flush_error);
        while inner.flushing.load(Ordering::Acquire) {
            self.heed(stop)?;
            held = match inner.flush_ended.wait_timeout(held, WAIT_POLL) {
                Ok((held, _)) => held,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        Ok(())
    }

    /// Makes the data file durable and, if `read_back`, checks it whole against the root hash:
    /// restores its length if someone changed it, then fsyncs it on a background thread while
    /// reading it back and hashing it on all cores. A mismatch marks the bad chunks missing
    /// ([`StoreError::WholeFileMismatch`]). Gives up with [`StoreError::Interrupted`] once `stop`
    /// is set, leaving the fsync to finish in the background.
    pub(super) fn verify(&self, stop: &AtomicBool, read_back: bool) -> Result<(), StoreError> {
        self.heed(stop)?;
        let inner = &*self.inner;
        let meta = &inner.meta;
        let data_path = &inner.data_path;
        let len = inner.data.metadata().map_err(io_err("stat", data_path))?.len();
        // Someone extended or truncated the data file: restore its length, and let the hash below
        // judge the content, read back whether asked for or not.
        let read_back = read_back || len != meta.length;
        if len != meta.length {
            inner.data.set_len(meta.length).map_err(io_err("resize", data_path))?;
        }
        // The fsync runs meanwhile on its own thread: both must succeed before the file is put in
        // place, and on a disk the flush takes longer than the hash, which it then hides. A
        // flush-behind still running goes first (it must be waited for anyway); the fsync is
        // then this finish's flush, which a later finish waits for if this one is interrupted.
        while inner.flushing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            self.wait_for_flush(stop)?;
        }
        let background = self.spawn_flush("fsync", File::sync_all);
        // The whole file, read back from disk and hashed on all cores. Hashing it chunk by chunk
        // (each a BLAKE3 subtree) and merging gives exactly blake3(file) while reading through one
        // buffer per core; hashing a memory map would grow resident memory to the file's size.
        // The stop flag is looked at before each chunk.
        let n = if read_back { meta.num_chunks() } else { 0 };
        let hashes: Vec<Hash> = (0..n)
            .into_par_iter()
            .map(|i| {
                self.heed(stop)?;
                hash_chunk_at(&inner.data, meta.length, meta.chunk_size, n, i).map_err(io_err("read back", data_path))
            })
            .collect::<Result<_, StoreError>>()?;
        if read_back && root_from_chunks(meta.length, meta.chunk_size, &hashes) != meta.root {
            // Mark the chunks that went bad on disk as missing, so the downloader fetches them
            // again instead of starting over.
            let mut st = lock(&inner.state);
            let mut bad = 0;
            for (i, (got, want)) in hashes.iter().zip(&meta.chunk_hashes).enumerate() {
                if got != want {
                    st.have.clear(i as u32);
                    bad += 1;
                }
            }
            self.persist_all(&mut st)?;
            warn!(name = meta.name, bad_chunks = bad, "assembled file does not match its root hash");
            return Err(StoreError::WholeFileMismatch { name: meta.name.clone(), bad_chunks: bad });
        }
        if background {
            self.wait_for_flush(stop)?;
        } else {
            inner.data.sync_all().map_err(io_err("fsync", data_path))?;
        }
        if let Some((action, kind, msg)) = lock(&inner.flush_error).clone() {
            return Err(io_err(action, data_path)(io::Error::new(kind, msg)));
        }
        Ok(())
    }
}

#[cfg(test)]
impl Partial {
    /// Records a background flush failure as if the disk had reported one, for tests of what
    /// `finish` does after it.
    pub(crate) fn fail_flush_for_test(&self) {
        *lock(&self.inner.flush_error) = Some(("flush", io::ErrorKind::Other, "injected writeback error".into()));
    }

    /// Marks a flush as running (or no longer), as a slow flush-behind would, for tests of a
    /// finish that waits for one.
    pub(crate) fn hold_flush_for_test(&self, running: bool) {
        self.inner.flushing.store(running, Ordering::Release);
    }
}
