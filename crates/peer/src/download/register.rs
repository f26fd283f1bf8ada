//! Chunk registrations with the tracker, batched: the chunks stored since the last batch go in one
//! `ChunkRegisterBatch` request, at most one every [`BATCH_INTERVAL`], while the download goes on
//! (the data never waits for the tracker). The first chunk after a quiet spell goes at once, so a
//! swarm that starts together learns early who holds what.
//!
//! Nothing queued is lost when the download stops: closing the queue sends what is left. Should
//! the tracker be unreachable, the session's re-registration on reconnect carries every stored
//! chunk anyway (from the partial's bitmap).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::trackers::Trackers;

/// Shortest time between two batches of one download.
pub(crate) const BATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Registers the chunks received on `stored` until it is closed and drained.
pub(crate) async fn run(trackers: Trackers, name: String, mut stored: mpsc::UnboundedReceiver<u32>) {
    let mut last: Option<Instant> = None;
    let mut open = true;
    while open {
        let Some(first) = stored.recv().await else { break };
        let mut batch = vec![first];
        let send_at = last.map_or_else(Instant::now, |l| crate::tick::on_tick(l + BATCH_INTERVAL));
        loop {
            tokio::select! {
                c = stored.recv() => match c {
                    Some(c) => batch.push(c),
                    None => {
                        open = false;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(send_at) => break,
            }
        }
        // Everything already queued rides along.
        while let Ok(c) = stored.try_recv() {
            batch.push(c);
        }
        last = Some(Instant::now());
        let chunks = batch.len();
        if let Err(e) = trackers.chunk_register_batch(&name, batch).await {
            debug!(chunks, error = %e, "chunk registration failed; re-registered on reconnect");
        }
    }
}
