//! What an upload connection owes its downloader in announcements of newly stored chunks, and
//! when it pays.
//!
//! A downloader that is itself downloading stores tens to thousands of chunks a second, and tells
//! every one of its own downloaders of each. One write per chunk per connection made these
//! announcements most of a swarm's writes, packets and wake-ups (30 per chunk at N = 32). So they
//! are gathered: the first after a quiet spell goes out at once (a lone chunk is not delayed), then
//! at most one write per [`ServeConfig::announce_interval`](super::ServeConfig) (on the process's
//! grid of ticks, `tick.rs`, so many connections' writes share a wake-up) carries everything
//! stored meanwhile, and any reply the connection sends in between (a chunk, most often) carries
//! the pending ones in the same write, for free. While a write is scheduled the connection does
//! not listen to the news at all, so storing a chunk wakes only the connections that are due.

use std::time::Duration;

use proto::peer::{PeerResponse, MAX_HAVE_MANY};
use proto::Bitmap;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;

use crate::shares::Shared;

/// One connection's announcements.
pub(super) struct Announcer {
    /// The download's news of stored chunks; None for a complete file or once the download ended.
    news: Option<broadcast::Receiver<u32>>,
    /// Chunks the downloader knows this server holds: its Welcome, and every announcement since.
    told: Bitmap,
    /// Chunks stored and not yet announced.
    pending: Vec<u32>,
    /// The downloader understands [`PeerResponse::HaveMany`].
    batched: bool,
    interval: Duration,
    /// The earliest time an announcement may go out on its own write.
    next_write: Instant,
    /// When the pending ones go out, if they wait for `next_write`.
    due: Option<Instant>,
}

impl Announcer {
    /// Subscribes to `shared`'s news, then takes the snapshot the Welcome sends, so no chunk
    /// falls between the two. Returns the announcer and that snapshot.
    pub(super) fn new(shared: &Shared, interval: Duration) -> Self {
        let news = match shared {
            Shared::Partial { news, .. } => Some(news.subscribe()),
            Shared::Complete(_) => None,
        };
        let told = shared.have().to_bitmap(shared.meta().num_chunks());
        Announcer { news, told, pending: Vec::new(), batched: false, interval, next_write: Instant::now(), due: None }
    }

    /// What the Welcome lists: the snapshot the announcer starts from, so that no chunk it lists
    /// is announced again.
    pub(super) fn welcome(&self, shared: &Shared) -> proto::Have {
        match shared {
            Shared::Complete(_) => proto::Have::Complete,
            Shared::Partial { .. } => proto::Have::Partial(self.told.clone()),
        }
    }

    /// The downloader sent [`proto::peer::PeerRequest::BatchedHaves`].
    pub(super) fn batch(&mut self) {
        self.batched = true;
    }

    /// Resolves when pending announcements should go out on a write of their own. Cancel-safe:
    /// what it learned before being dropped is kept. Never resolves for a complete file.
    pub(super) async fn due(&mut self, shared: &Shared) {
        loop {
            if let Some(at) = self.due {
                tokio::time::sleep_until(at).await;
                self.due = None;
                self.collect(shared);
                return;
            }
            let Some(rx) = self.news.as_mut() else {
                if self.pending.is_empty() {
                    std::future::pending::<()>().await;
                }
                return;
            };
            let first = rx.recv().await;
            self.take(shared, first);
            self.collect(shared);
            if self.pending.is_empty() {
                continue;
            }
            if Instant::now() >= self.next_write {
                return;
            }
            self.due = Some(self.next_write);
        }
    }

    /// Takes whatever news is already queued, without waiting.
    pub(super) fn collect(&mut self, shared: &Shared) {
        while let Some(rx) = self.news.as_mut() {
            let next = match rx.try_recv() {
                Ok(chunk) => Ok(chunk),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            self.take(shared, next);
        }
    }

    fn take(&mut self, shared: &Shared, news: Result<u32, RecvError>) {
        match news {
            Ok(chunk) => {
                if self.told.set(chunk) {
                    self.pending.push(chunk);
                }
            }
            // Fell behind the news: every chunk held now that the downloader was not told of.
            Err(RecvError::Lagged(_)) => {
                let now = shared.have().to_bitmap(self.told.len());
                for chunk in now.iter_ones() {
                    if self.told.set(chunk) {
                        self.pending.push(chunk);
                    }
                }
            }
            Err(RecvError::Closed) => self.news = None,
        }
    }

    /// The messages that announce everything pending (none if nothing is), to go out on the
    /// next write; the next write of announcements alone waits an interval from now.
    pub(super) fn messages(&mut self) -> Vec<PeerResponse> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        // On the process's grid: the next writes of many connections share a wake-up.
        self.next_write = crate::tick::on_tick(Instant::now() + self.interval);
        self.due = None;
        let pending = std::mem::take(&mut self.pending);
        if self.batched {
            pending.chunks(MAX_HAVE_MANY).map(|c| PeerResponse::HaveMany { chunks: c.to_vec() }).collect()
        } else {
            pending.into_iter().map(|chunk| PeerResponse::Have { chunk }).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::FileMeta;

    const INTERVAL: Duration = Duration::from_millis(50);

    /// A partial download of 8 chunks holding none, and its news channel.
    fn shared(dir: &std::path::Path) -> (Shared, broadcast::Sender<u32>, chunkstore::Partial, Vec<u8>) {
        let data = vec![3u8; 8 * proto::limits::MIN_CHUNK_SIZE as usize];
        let meta = FileMeta::from_bytes("f", proto::limits::MIN_CHUNK_SIZE, &data);
        let store = chunkstore::Store::open(dir.to_path_buf()).unwrap();
        let partial = store.open_partial(&meta).unwrap();
        let shared = Shared::partial(partial.clone());
        let Shared::Partial { news, .. } = &shared else { unreachable!() };
        let news = news.clone();
        (shared, news, partial, data)
    }

    fn store(p: &chunkstore::Partial, data: &[u8], i: u32, news: &broadcast::Sender<u32>) {
        let meta = p.meta().clone();
        let (off, len) = meta.chunk_range(meta.chunk(i).unwrap());
        p.write_chunk(meta.chunk(i).unwrap(), &data[off as usize..][..len as usize]).unwrap();
        let _ = news.send(i);
    }

    fn chunks(msgs: Vec<PeerResponse>) -> Vec<Vec<u32>> {
        msgs.into_iter()
            .map(|m| match m {
                PeerResponse::HaveMany { chunks } => chunks,
                PeerResponse::Have { chunk } => vec![chunk],
                other => panic!("not an announcement: {other:?}"),
            })
            .collect()
    }

    /// The first chunk after a quiet spell goes out at once; the ones stored within the next
    /// interval wait for it (and the process's next tick) and go out together, in one message for
    /// a batching downloader.
    #[tokio::test(start_paused = true)]
    async fn the_first_goes_at_once_and_the_rest_wait_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, news, p, data) = shared(dir.path());
        let mut a = Announcer::new(&shared, INTERVAL);
        a.batch();
        store(&p, &data, 0, &news);
        let start = Instant::now();
        a.due(&shared).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(chunks(a.messages()), vec![vec![0]]);
        for i in 1..5 {
            store(&p, &data, i, &news);
        }
        a.due(&shared).await;
        let waited = start.elapsed();
        assert!(waited >= INTERVAL && waited < INTERVAL + crate::tick::TICK, "waited for the interval: {waited:?}");
        assert_eq!(chunks(a.messages()), vec![vec![1, 2, 3, 4]]);
        // After a quiet spell, at once again.
        tokio::time::sleep(INTERVAL + crate::tick::TICK).await;
        store(&p, &data, 5, &news);
        let t = Instant::now();
        a.due(&shared).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert_eq!(chunks(a.messages()), vec![vec![5]]);
    }

    /// What is pending rides on the next reply instead (collect + messages), and the interval
    /// restarts from there; a downloader that did not ask for batches gets single Haves.
    #[tokio::test(start_paused = true)]
    async fn pending_ones_ride_on_a_reply_and_old_downloaders_get_single_haves() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, news, p, data) = shared(dir.path());
        let mut a = Announcer::new(&shared, INTERVAL);
        store(&p, &data, 0, &news);
        a.due(&shared).await;
        assert_eq!(chunks(a.messages()), vec![vec![0]]);
        store(&p, &data, 1, &news);
        store(&p, &data, 2, &news);
        a.collect(&shared);
        let msgs = a.messages();
        assert!(msgs.iter().all(|m| matches!(m, PeerResponse::Have { .. })));
        assert_eq!(chunks(msgs), vec![vec![1], vec![2]]);
        assert!(a.messages().is_empty(), "nothing twice");
    }

    /// Falling behind the news re-reads the bitmap: every chunk held and not told, once; a chunk
    /// the Welcome listed is never announced.
    #[tokio::test(start_paused = true)]
    async fn lagging_rereads_the_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, news, p, data) = shared(dir.path());
        store(&p, &data, 0, &news);
        let mut a = Announcer::new(&shared, INTERVAL);
        a.batch();
        // More news than the channel keeps, of chunks 1..8 (each sent many times).
        for i in 1..8 {
            store(&p, &data, i, &news);
        }
        for _ in 0..crate::shares::NEWS_BACKLOG {
            news.send(7).unwrap();
        }
        a.due(&shared).await;
        let mut got: Vec<u32> = chunks(a.messages()).concat();
        got.sort_unstable();
        assert_eq!(got, (1..8).collect::<Vec<_>>());
    }
}
