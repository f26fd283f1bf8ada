//! The writer stage of one download: verifies arriving chunks (BLAKE3, in the chunk store) and
//! writes them, while the sources keep receiving. It decides nothing: it reports to the
//! coordinator what the store said of each copy. Its queue is bounded, so a download holds a
//! bounded number of chunks in memory however many sources it has.
//!
//! A chunk of ordinary size is verified and written on the event loop itself: hashing 64 KiB and
//! copying it into the page cache take tens of microseconds, less than handing it to a blocking
//! thread and being woken by it when done (two context switches per chunk, the largest share of a
//! downloader's CPU on a rate-limited link). A write can block, though, when the kernel throttles
//! writers because the disk is behind; one that took longer than [`SLOW_WRITE`] sends the
//! download's chunks to blocking threads (up to `parallel` at once) for [`BACK_OFF`].

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::Bytes;
use chunkstore::{Partial, StoreError};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use proto::ChunkIndex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::coordinator::Input;
use super::scheduler::SourceId;
use crate::error::Error;

/// Largest chunk verified and written on the event loop (larger ones take long enough to hash
/// that a blocking thread is worth its hand-off).
pub(crate) const INLINE_MAX: usize = 256 * 1024;
/// A store on the event loop that took longer than this means the disk is pushing back.
pub(crate) const SLOW_WRITE: Duration = Duration::from_millis(5);
/// How long a download's stores stay on blocking threads after a slow one.
pub(crate) const BACK_OFF: Duration = Duration::from_secs(10);

/// A chunk received from a source, on its way to verification and storage.
pub(crate) struct Arrived {
    pub(crate) source: SourceId,
    pub(crate) chunk: u32,
    pub(crate) data: Bytes,
    /// The source task's token: once the coordinator has dropped the source, what it sent is not
    /// worth a hash.
    pub(crate) from: CancellationToken,
}

/// Where the next chunk is stored: on the event loop, or (after a slow store, until `until`) on
/// blocking threads.
#[derive(Debug, Default)]
struct Placement {
    until: Option<Instant>,
}

impl Placement {
    fn inline(&mut self, len: usize, now: Instant) -> bool {
        if self.until.is_some_and(|u| now >= u) {
            self.until = None;
        }
        self.until.is_none() && len <= INLINE_MAX
    }

    /// A store on the event loop took `took`.
    fn took(&mut self, took: Duration, now: Instant) {
        if took > SLOW_WRITE {
            tracing::debug!(?took, "slow chunk store: storing on blocking threads for a while");
            self.until = Some(now + BACK_OFF);
        }
    }
}

/// Stores arriving chunks until the sources are gone; on blocking threads up to `parallel` at
/// once; each verify-and-write is timed into `latency`.
pub(crate) async fn run(
    partial: Partial,
    mut arrived: mpsc::Receiver<Arrived>,
    inbox: mpsc::UnboundedSender<Input>,
    parallel: usize,
    latency: Histogram,
) {
    let mut storing = FuturesUnordered::new();
    let mut placement = Placement::default();
    loop {
        tokio::select! {
            Some(input) = storing.next(), if !storing.is_empty() => {
                let _ = inbox.send(input);
            }
            a = arrived.recv(), if storing.len() < parallel => match a {
                Some(a) => match checked(&partial, a) {
                    Err(input) => { let _ = inbox.send(input); }
                    Ok((a, idx)) if placement.inline(a.data.len(), Instant::now()) => {
                        let start = Instant::now();
                        // A panic in the store fails the download, as on a blocking thread,
                        // rather than ending this task and leaving the download waiting.
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| partial.write_chunk(idx, &a.data)))
                            .map_err(|_| Error::Io { action: "store a chunk", source: std::io::Error::other("panicked") });
                        let took = start.elapsed();
                        latency.observe(took.as_secs_f64());
                        placement.took(took, Instant::now());
                        let _ = inbox.send(outcome(&a, r));
                    }
                    Ok((a, idx)) => storing.push(store(partial.clone(), a, idx, latency.clone())),
                },
                None => break,
            },
        }
    }
    while let Some(input) = storing.next().await {
        let _ = inbox.send(input);
    }
}

/// `a` with its chunk index, or what became of it without a store: discarded (its source was
/// dropped: not worth a hash), or bad (out of range).
fn checked(partial: &Partial, a: Arrived) -> Result<(Arrived, ChunkIndex), Input> {
    let (source, chunk, bytes) = (a.source, a.chunk, a.data.len() as u64);
    if a.from.is_cancelled() {
        return Err(Input::Discarded { source, bytes });
    }
    match partial.meta().chunk(chunk) {
        Ok(idx) => Ok((a, idx)),
        // Sources check the range before passing a chunk on; were one not to, its copy is bad.
        Err(_) => Err(Input::Bad { source, chunk, bytes }),
    }
}

/// Verifies and writes one chunk on a blocking thread; returns what became of it.
async fn store(partial: Partial, a: Arrived, idx: ChunkIndex, latency: Histogram) -> Input {
    let data = a.data.clone();
    let write = move || {
        // Timed on the blocking thread: the store's own work, not the wait for a thread.
        let start = std::time::Instant::now();
        let r = partial.write_chunk(idx, &data);
        latency.observe(start.elapsed().as_secs_f64());
        r
    };
    let r = tokio::task::spawn_blocking(write).await;
    outcome(&a, r.map_err(|e| Error::Io { action: "run storage task", source: std::io::Error::other(e) }))
}

/// What the store's answer `r` for `a` means to the coordinator.
fn outcome(a: &Arrived, r: Result<Result<bool, StoreError>, Error>) -> Input {
    let (source, chunk, bytes) = (a.source, a.chunk, a.data.len() as u64);
    match r {
        // Newly stored or already held: the coordinator tells the first copy from duplicates.
        Ok(Ok(_)) => Input::Stored { source, chunk, bytes },
        // The download was finished while this copy was queued: a duplicate too.
        Ok(Err(StoreError::Finished { .. })) => Input::Stored { source, chunk, bytes },
        Ok(Err(StoreError::HashMismatch { .. })) => Input::Bad { source, chunk, bytes },
        Ok(Err(e)) => Input::Failed(Error::Store(e)),
        Err(e) => Input::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::FileMeta;

    fn partial(dir: &std::path::Path, data: &[u8]) -> Partial {
        let store = chunkstore::Store::open(dir.to_path_buf()).unwrap();
        store.open_partial(&FileMeta::from_bytes("f", proto::limits::MIN_CHUNK_SIZE, data)).unwrap()
    }

    /// Chunks of ordinary size are stored on the event loop until one store is slow; then on
    /// blocking threads for the back-off, and on the event loop again after it. Large chunks
    /// never are.
    #[test]
    fn stores_leave_the_event_loop_for_a_while_after_a_slow_one() {
        let mut p = Placement::default();
        let t0 = Instant::now();
        assert!(p.inline(64 * 1024, t0));
        assert!(!p.inline(INLINE_MAX + 1, t0), "a large chunk goes to a blocking thread");
        p.took(SLOW_WRITE, t0);
        assert!(p.inline(64 * 1024, t0), "not slower than the limit");
        p.took(SLOW_WRITE * 2, t0);
        assert!(!p.inline(64 * 1024, t0 + BACK_OFF / 2), "backing off");
        assert!(p.inline(64 * 1024, t0 + BACK_OFF), "back on the event loop");
    }

    /// Every copy is reported: stored, bad, out of range (bad, not silently dropped: review
    /// defect 7), or discarded unverified when its source was dropped.
    #[tokio::test]
    async fn reports_what_the_store_said_of_every_copy() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![5u8; 2 * proto::limits::MIN_CHUNK_SIZE as usize];
        let p = partial(dir.path(), &data);
        let half = Bytes::copy_from_slice(&data[..proto::limits::MIN_CHUNK_SIZE as usize]);
        let live = CancellationToken::new();
        let dropped = CancellationToken::new();
        dropped.cancel();
        let (tx, rx) = mpsc::channel(4);
        let (inbox, mut events) = mpsc::unbounded_channel();
        let latency = Histogram::new([0.001, 1.0]);
        let writer = tokio::spawn(run(p.clone(), rx, inbox, 2, latency.clone()));
        let send =
            |source, chunk, data: Bytes, from: &CancellationToken| Arrived { source, chunk, data, from: from.clone() };
        tx.send(send(1, 0, half.clone(), &live)).await.unwrap();
        tx.send(send(2, 1, Bytes::from(vec![6u8; half.len()]), &live)).await.unwrap();
        tx.send(send(3, 7, half.clone(), &live)).await.unwrap();
        tx.send(send(4, 1, half.clone(), &dropped)).await.unwrap();
        drop(tx);
        writer.await.unwrap();
        let mut got = Vec::new();
        while let Ok(e) = events.try_recv() {
            got.push(format!("{e:?}"));
        }
        got.sort();
        let bytes = half.len();
        assert_eq!(
            got,
            vec![
                format!("Bad {{ source: 2, chunk: 1, bytes: {bytes} }}"),
                format!("Bad {{ source: 3, chunk: 7, bytes: {bytes} }}"),
                format!("Discarded {{ source: 4, bytes: {bytes} }}"),
                format!("Stored {{ source: 1, chunk: 0, bytes: {bytes} }}"),
            ]
        );
        assert!(p.has(0) && !p.has(1));
    }
}
