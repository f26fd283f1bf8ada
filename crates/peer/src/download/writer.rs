//! The writer stage of one download: verifies arriving chunks (BLAKE3, in the chunk store) and
//! writes them, on as many blocking threads at once as there are cores, while the sources keep
//! receiving. It decides nothing: it reports to the coordinator what the store said of each copy.
//! Its queue is bounded, so a download holds a bounded number of chunks in memory however many
//! sources it has.

use bytes::Bytes;
use chunkstore::{Partial, StoreError};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::coordinator::Input;
use super::scheduler::SourceId;
use crate::error::Error;

/// A chunk received from a source, on its way to verification and storage.
pub(crate) struct Arrived {
    pub(crate) source: SourceId,
    pub(crate) chunk: u32,
    pub(crate) data: Bytes,
    /// The source task's token: once the coordinator has dropped the source, what it sent is not
    /// worth a hash.
    pub(crate) from: CancellationToken,
}

/// Stores arriving chunks, up to `parallel` at once, until the sources are gone; each
/// verify-and-write is timed into `latency`.
pub(crate) async fn run(
    partial: Partial,
    mut arrived: mpsc::Receiver<Arrived>,
    inbox: mpsc::UnboundedSender<Input>,
    parallel: usize,
    latency: Histogram,
) {
    let mut storing = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(input) = storing.next(), if !storing.is_empty() => {
                let _ = inbox.send(input);
            }
            a = arrived.recv(), if storing.len() < parallel => match a {
                Some(a) => storing.push(store(partial.clone(), a, latency.clone())),
                None => break,
            },
        }
    }
    while let Some(input) = storing.next().await {
        let _ = inbox.send(input);
    }
}

/// Verifies and writes one chunk on a blocking thread; returns what became of it.
async fn store(partial: Partial, a: Arrived, latency: Histogram) -> Input {
    let Arrived { source, chunk, data, from } = a;
    let bytes = data.len() as u64;
    if from.is_cancelled() {
        return Input::Discarded { source, bytes };
    }
    let idx = match partial.meta().chunk(chunk) {
        Ok(idx) => idx,
        // Sources check the range before passing a chunk on; were one not to, its copy is bad.
        Err(_) => return Input::Bad { source, chunk, bytes },
    };
    let write = move || {
        // Timed on the blocking thread: the store's own work, not the wait for a thread.
        let start = std::time::Instant::now();
        let r = partial.write_chunk(idx, &data);
        latency.observe(start.elapsed().as_secs_f64());
        r
    };
    match tokio::task::spawn_blocking(write).await {
        // Newly stored or already held: the coordinator tells the first copy from duplicates.
        Ok(Ok(_)) => Input::Stored { source, chunk, bytes },
        // The download was finished while this copy was queued: a duplicate too.
        Ok(Err(StoreError::Finished { .. })) => Input::Stored { source, chunk, bytes },
        Ok(Err(StoreError::HashMismatch { .. })) => Input::Bad { source, chunk, bytes },
        Ok(Err(e)) => Input::Failed(Error::Store(e)),
        Err(e) => Input::Failed(Error::Io { action: "run storage task", source: std::io::Error::other(e) }),
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
