//! What the process knows of each source endpoint, shared by every download: a budget of
//! connections (several files downloading at once from one seed open at most this many
//! connections to it between them, so a process fetching a folder stays within what a serving
//! peer grants one address and leaves the rest of its slots to other downloaders), and the rate
//! its connections delivered lately. A file's download starts with what earlier files learned, so
//! a seed already known to be slow (capped, or serving many) is not handed the chunks a faster
//! peer holds, and the first requests to a known source go out at the depth its rate calls for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A rate older than this says little about the source now: it is forgotten.
pub(crate) const RATE_TTL: Duration = Duration::from_secs(60);

/// Endpoints whose rate is remembered at most (a long-running node meets many).
const MAX_RATES: usize = 4096;

/// The book. See the module docs.
#[derive(Debug)]
pub(crate) struct SourceBook {
    per_source: usize,
    slots: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
    rates: Mutex<HashMap<SocketAddr, (f64, Instant)>>,
}

/// One connection's place in the budget, given back when dropped.
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    addr: SocketAddr,
    book: Arc<SourceBook>,
}

impl SourceBook {
    /// At most `per_source` connections (at least 1) to each source at once.
    pub(crate) fn new(per_source: usize) -> Arc<SourceBook> {
        Arc::new(SourceBook { per_source: per_source.max(1), slots: Mutex::default(), rates: Mutex::default() })
    }

    /// Waits for a place for a connection to `addr`.
    pub(crate) async fn acquire(self: &Arc<Self>, addr: SocketAddr) -> Slot {
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.entry(addr).or_insert_with(|| Arc::new(Semaphore::new(self.per_source))).clone()
        };
        // Never closed, so acquiring cannot fail; were it to, the connection goes ahead unbudgeted.
        let permit = semaphore.acquire_owned().await.ok();
        Slot { permit, addr, book: self.clone() }
    }

    /// The bytes per second one connection to `addr` delivered lately, if known.
    pub(crate) fn rate(&self, addr: SocketAddr) -> Option<f64> {
        let rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        rates.get(&addr).filter(|(_, at)| at.elapsed() < RATE_TTL).map(|&(r, _)| r)
    }

    /// Records a connection's smoothed rate (bytes per second); a connection that failed or
    /// stalled records 0.
    pub(crate) fn record(&self, addr: SocketAddr, rate: f64) {
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        if rates.len() >= MAX_RATES && !rates.contains_key(&addr) {
            rates.retain(|_, (_, at)| at.elapsed() < RATE_TTL);
            if rates.len() >= MAX_RATES {
                return;
            }
        }
        rates.insert(addr, (rate, Instant::now()));
    }

    /// Sources with a connection open or waited for (for tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.book.slots.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.permit.take());
        // Only the map holds it: nobody is connected or waiting, so forget the source (a
        // long-running node meets many).
        if slots.get(&self.addr).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(&self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn connections_to_one_source_wait_for_a_place_and_unused_sources_are_forgotten() {
        let book = SourceBook::new(2);
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        let b: SocketAddr = ([127, 0, 0, 1], 2).into();
        let first = book.acquire(a).await;
        let second = book.acquire(a).await;
        let other = book.acquire(b).await;
        assert!(book.acquire(a).now_or_never().is_none(), "a third connection to a waits");
        drop(first);
        let third = book.acquire(a).now_or_never();
        assert!(third.is_some(), "and gets the place given back");
        drop((third, second, other));
        assert_eq!(book.tracked(), 0, "sources nobody uses are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn rates_are_remembered_for_a_while_and_bounded_in_number() {
        let book = SourceBook::new(2);
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        assert_eq!(book.rate(a), None);
        book.record(a, 1000.0);
        assert_eq!(book.rate(a), Some(1000.0));
        tokio::time::advance(RATE_TTL).await;
        assert_eq!(book.rate(a), None, "a stale rate is forgotten");
        // The stale entry and fresh ones fill the book.
        for port in 1..MAX_RATES as u16 {
            book.record(([127, 0, 0, 2], port).into(), 1.0);
        }
        let late: SocketAddr = ([127, 0, 0, 3], 1).into();
        book.record(late, 5.0);
        assert_eq!(book.rate(late), Some(5.0), "the stale entry made room");
        let extra: SocketAddr = ([127, 0, 0, 3], 2).into();
        book.record(extra, 5.0);
        assert_eq!(book.rate(extra), None, "a full book of fresh rates takes no more");
        assert_eq!(book.rates.lock().unwrap().len(), MAX_RATES);
    }
}
