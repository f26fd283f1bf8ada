//! The budget of bytes queued to clients: replies encoded into a connection's write buffer and
//! not yet written to its socket, counted per connection and in total across all of them.
//!
//! Each connection keeps its count current ([`Queued::set`] as its bytes leave) and asks before
//! it queues a reply ([`Queued::admit`]). When a reply would take the total over the budget, the
//! connections furthest behind (most bytes unsent) are dropped, largest first, until it fits:
//! their counts are released at once and their cancellation token tells their task to close the
//! connection (freeing the buffer). Only connections further behind than the one asking are ever
//! dropped, so a client that reads its replies is never dropped to make room for one that does
//! not. If dropping all of those could not make room, nobody is dropped and the reply is refused
//! ([`Refused::Overloaded`]): the session answers with a typed error instead.
//!
//! A synchronous structure behind one `Mutex`, taken briefly per reply and per write that makes
//! progress, never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

/// The shared budget.
#[derive(Debug)]
pub(crate) struct Backlog {
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The sum of `conns[_].unsent`.
    total: usize,
    next_id: u64,
    conns: HashMap<u64, Conn>,
}

#[derive(Debug)]
struct Conn {
    unsent: usize,
    /// Cancelled when the connection is dropped to make room.
    dropped: CancellationToken,
}

/// Why a reply was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Even with every connection further behind dropped, the reply would not fit the budget.
    Overloaded {
        /// The budget.
        max: usize,
    },
    /// This connection was itself dropped to make room for another's reply.
    Dropped,
}

impl Backlog {
    /// An empty backlog with a budget of `max` bytes.
    pub(crate) fn new(max: usize) -> Arc<Backlog> {
        Arc::new(Backlog { max, state: Mutex::default() })
    }

    /// Bytes queued over all connections.
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// A new connection's account, with nothing queued.
    pub(crate) fn join(self: &Arc<Self>) -> Queued {
        let dropped = CancellationToken::new();
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        st.conns.insert(id, Conn { unsent: 0, dropped: dropped.clone() });
        Queued { backlog: self.clone(), id, dropped }
    }

    // A panic while holding the lock leaves counts that are at worst off by one update: take the
    // lock over rather than spreading the panic to every connection.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's account in the [`Backlog`]; dropping it releases what it still counts.
#[derive(Debug)]
pub(crate) struct Queued {
    backlog: Arc<Backlog>,
    id: u64,
    /// Cancelled when the connection is dropped to make room: its task selects on it at every
    /// wait, and closes the connection.
    dropped: CancellationToken,
}

impl Queued {
    /// This connection now has `unsent` bytes queued (after some left, or after encoding).
    pub(crate) fn set(&self, unsent: usize) {
        let mut guard = self.backlog.lock();
        let st = &mut *guard;
        if let Some(c) = st.conns.get_mut(&self.id) {
            st.total = st.total - c.unsent + unsent;
            c.unsent = unsent;
        }
    }

    /// Counts `len` more bytes for this connection, dropping connections further behind if the
    /// total would exceed the budget (see the module docs).
    pub(crate) fn admit(&self, len: usize) -> Result<(), Refused> {
        let max = self.backlog.max;
        let mut guard = self.backlog.lock();
        let st = &mut *guard;
        let Some(mine) = st.conns.get(&self.id).map(|c| c.unsent) else { return Err(Refused::Dropped) };
        if st.total + len > max {
            let mut behind: Vec<(usize, u64)> = st
                .conns
                .iter()
                .filter(|(id, c)| **id != self.id && c.unsent > mine)
                .map(|(id, c)| (c.unsent, *id))
                .collect();
            let freeable: usize = behind.iter().map(|(unsent, _)| unsent).sum();
            if st.total - freeable + len > max {
                return Err(Refused::Overloaded { max });
            }
            // Furthest behind first.
            behind.sort_unstable_by(|a, b| b.cmp(a));
            for (unsent, id) in behind {
                if st.total + len <= max {
                    break;
                }
                if let Some(c) = st.conns.remove(&id) {
                    c.dropped.cancel();
                }
                st.total -= unsent;
            }
        }
        st.total += len;
        if let Some(c) = st.conns.get_mut(&self.id) {
            c.unsent += len;
        }
        Ok(())
    }

    /// Completes when this connection has been dropped to make room.
    pub(crate) async fn dropped(&self) {
        self.dropped.cancelled().await
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut st = self.backlog.lock();
        if let Some(c) = st.conns.remove(&self.id) {
            st.total -= c.unsent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_budget_nothing_is_dropped() {
        let b = Backlog::new(100);
        let (x, y) = (b.join(), b.join());
        x.admit(60).unwrap();
        y.admit(40).unwrap();
        assert_eq!(b.total(), 100);
        x.set(10);
        assert_eq!(b.total(), 50);
        drop(y);
        assert_eq!(b.total(), 10);
        assert!(!x.dropped.is_cancelled());
    }

    /// The connections furthest behind go first, and only as many as needed.
    #[test]
    fn the_furthest_behind_are_dropped_until_the_reply_fits() {
        let b = Backlog::new(100);
        let (a, c, d, me) = (b.join(), b.join(), b.join(), b.join());
        a.admit(50).unwrap();
        c.admit(30).unwrap();
        d.admit(15).unwrap();
        me.admit(5).unwrap();
        assert_eq!(b.total(), 100);
        // 30 more: dropping a (50) is enough; c and d stay.
        me.admit(30).unwrap();
        assert!(a.dropped.is_cancelled() && !c.dropped.is_cancelled() && !d.dropped.is_cancelled());
        assert_eq!(b.total(), 80);
        // A dropped connection's later updates count for nothing, and its own requests are refused.
        a.set(1000);
        assert_eq!(b.total(), 80);
        assert_eq!(a.admit(1), Err(Refused::Dropped));
        // 60 for a fresh connection: me (35) then c (30) must go; d (15) stays.
        let fresh = b.join();
        fresh.admit(60).unwrap();
        assert!(me.dropped.is_cancelled() && c.dropped.is_cancelled() && !d.dropped.is_cancelled());
        assert_eq!(b.total(), 75);
        drop((a, c, me));
        assert_eq!(b.total(), 75);
        assert!(!fresh.dropped.is_cancelled());
    }

    /// Connections no further behind than the asker are never dropped for it, and nobody is
    /// dropped for a reply that would not fit anyway.
    #[test]
    fn nobody_is_dropped_in_vain() {
        let b = Backlog::new(100);
        let (a, me) = (b.join(), b.join());
        a.admit(40).unwrap();
        me.admit(40).unwrap();
        assert_eq!(me.admit(30), Err(Refused::Overloaded { max: 100 }), "a is no further behind than me");
        assert!(!a.dropped.is_cancelled());
        let fresh = b.join();
        assert_eq!(fresh.admit(101), Err(Refused::Overloaded { max: 100 }), "larger than the whole budget");
        assert!(!a.dropped.is_cancelled() && !me.dropped.is_cancelled());
        assert_eq!(b.total(), 80);
        // Behind a and me both, a fresh connection's 30 bytes drop one of them, not both.
        fresh.admit(30).unwrap();
        assert_eq!(u8::from(a.dropped.is_cancelled()) + u8::from(me.dropped.is_cancelled()), 1);
        assert_eq!(b.total(), 70);
    }
}
