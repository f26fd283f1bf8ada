//! Connections per source, shared by every download of the process: several files downloading at
//! once from one seed open at most this many connections to it between them, so a process
//! fetching a folder stays within what a serving peer grants one address, and leaves the rest of
//! its slots to other downloaders.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget: a semaphore per source endpoint, created on first use, forgotten when unused.
#[derive(Debug)]
pub(crate) struct SourceBudget {
    per_source: usize,
    sources: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
}

/// One connection's place in the budget, given back when dropped.
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    addr: SocketAddr,
    budget: Arc<SourceBudget>,
}

impl SourceBudget {
    /// At most `per_source` connections (at least 1) to each source at once.
    pub(crate) fn new(per_source: usize) -> Arc<SourceBudget> {
        Arc::new(SourceBudget { per_source: per_source.max(1), sources: Mutex::default() })
    }

    /// Waits for a place for a connection to `addr`.
    pub(crate) async fn acquire(self: &Arc<Self>, addr: SocketAddr) -> Slot {
        let semaphore = {
            let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
            sources.entry(addr).or_insert_with(|| Arc::new(Semaphore::new(self.per_source))).clone()
        };
        // Never closed, so acquiring cannot fail; were it to, the connection goes ahead unbudgeted.
        let permit = semaphore.acquire_owned().await.ok();
        Slot { permit, addr, budget: self.clone() }
    }

    /// Sources with a connection open or waited for (for tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut sources = self.budget.sources.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.permit.take());
        // Only the map holds it: nobody is connected or waiting, so forget the source (a
        // long-running node meets many).
        if sources.get(&self.addr).is_some_and(|s| Arc::strong_count(s) == 1) {
            sources.remove(&self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn connections_to_one_source_wait_for_a_place_and_unused_sources_are_forgotten() {
        let budget = SourceBudget::new(2);
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        let b: SocketAddr = ([127, 0, 0, 1], 2).into();
        let first = budget.acquire(a).await;
        let second = budget.acquire(a).await;
        let other = budget.acquire(b).await;
        assert!(budget.acquire(a).now_or_never().is_none(), "a third connection to a waits");
        drop(first);
        let third = budget.acquire(a).now_or_never();
        assert!(third.is_some(), "and gets the place given back");
        drop((third, second, other));
        assert_eq!(budget.tracked(), 0, "sources nobody uses are forgotten");
    }
}
