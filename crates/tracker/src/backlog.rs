//! The budget of bytes queued to clients: replies encoded into a connection's write buffer and
//! not yet written to its socket, counted per connection and in total across all of them.
//!
//! Each connection keeps its count current ([`Queued::set`] as its bytes leave) and asks before
//! it queues a reply ([`Queued::admit`]). When a reply would take the total over the budget, the
//! connections furthest behind are dropped until it fits: those whose replies have made no
//! progress for [`STALLED`] (they are not reading), the longest stalled first, then the most bytes
//! unsent. Their counts are released at once and their cancellation token tells their task to
//! close the connection (freeing the buffer). A client that keeps reading, however slowly, is
//! never dropped, so opening fresh connections and asking cannot evict an honest slow reader. If
//! dropping every stalled connection could not make room, nobody is dropped and the reply is
//! refused ([`Refused::Overloaded`]): the session answers with a typed error instead, and may ask
//! again.
//!
//! A synchronous structure behind one `Mutex`, taken briefly per reply and per write that makes
//! progress, never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A connection whose queued replies made no progress for this long is not reading, and may be
/// dropped to make room. Long enough that a reader whose socket drains in bursts (the kernel
/// takes a new batch only when it is down to its low-water mark) is never taken for one.
pub(crate) const STALLED: Duration = Duration::from_secs(1);

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
    /// When its replies last made progress, or when it last went from nothing queued to
    /// something: how long it has been stalled is measured from here.
    since: Instant,
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
        st.conns.insert(id, Conn { unsent: 0, since: Instant::now(), dropped: dropped.clone() });
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
        self.set_at(unsent, Instant::now());
    }

    fn set_at(&self, unsent: usize, now: Instant) {
        let mut guard = self.backlog.lock();
        let st = &mut *guard;
        if let Some(c) = st.conns.get_mut(&self.id) {
            if unsent < c.unsent {
                c.since = now;
            }
            st.total = st.total - c.unsent + unsent;
            c.unsent = unsent;
        }
    }

    /// Counts `len` more bytes for this connection, dropping stalled connections if the total
    /// would exceed the budget (see the module docs).
    pub(crate) fn admit(&self, len: usize) -> Result<(), Refused> {
        self.admit_at(len, Instant::now())
    }

    fn admit_at(&self, len: usize, now: Instant) -> Result<(), Refused> {
        let max = self.backlog.max;
        let mut guard = self.backlog.lock();
        let st = &mut *guard;
        if !st.conns.contains_key(&self.id) {
            return Err(Refused::Dropped);
        }
        if st.total + len > max {
            // (stalled since, unsent, id) of every other connection not reading.
            let mut behind: Vec<(Instant, usize, u64)> = st
                .conns
                .iter()
                .filter(|(id, c)| **id != self.id && c.unsent > 0 && now.saturating_duration_since(c.since) >= STALLED)
                .map(|(id, c)| (c.since, c.unsent, *id))
                .collect();
            let freeable: usize = behind.iter().map(|(_, unsent, _)| unsent).sum();
            if st.total - freeable + len > max {
                return Err(Refused::Overloaded { max });
            }
            // Furthest behind first: stalled the longest, then the most unsent.
            behind.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            for (_, unsent, id) in behind {
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
            if c.unsent == 0 {
                // It starts waiting on its client now.
                c.since = now;
            }
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

    /// Stalled connections go first, the longest stalled first, and only as many as needed.
    #[test]
    fn the_furthest_behind_are_dropped_until_the_reply_fits() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let b = Backlog::new(100);
        let (a, c, d, me) = (b.join(), b.join(), b.join(), b.join());
        a.admit_at(50, at(0)).unwrap();
        c.admit_at(30, at(100)).unwrap();
        d.admit_at(15, at(200)).unwrap();
        me.admit_at(5, at(300)).unwrap();
        assert_eq!(b.total(), 100);
        // Nobody has stalled long enough yet: refused, nobody dropped.
        assert_eq!(me.admit_at(30, at(900)), Err(Refused::Overloaded { max: 100 }));
        // 30 more once all have stalled: dropping a (stalled longest) is enough; c and d stay.
        me.admit_at(30, at(2000)).unwrap();
        assert!(a.dropped.is_cancelled() && !c.dropped.is_cancelled() && !d.dropped.is_cancelled());
        assert_eq!(b.total(), 80);
        // A dropped connection's later updates count for nothing, and its own requests are refused.
        a.set_at(1000, at(2000));
        assert_eq!(b.total(), 80);
        assert_eq!(a.admit_at(1, at(2000)), Err(Refused::Dropped));
        // c keeps reading (progress at 2500); me and d stall. 60 for a fresh connection at 3000:
        // d (stalled since 200) then me (since 300) go, c stays although it has the most unsent.
        c.set_at(29, at(2500));
        let fresh = b.join();
        fresh.admit_at(40, at(3000)).unwrap();
        assert!(d.dropped.is_cancelled() && me.dropped.is_cancelled() && !c.dropped.is_cancelled());
        assert_eq!(b.total(), 69);
        drop((a, d, me));
        assert_eq!(b.total(), 69);
        assert!(!fresh.dropped.is_cancelled());
    }

    /// A reader that keeps making progress is never dropped, whatever it has queued, and nobody
    /// is dropped for a reply that would not fit anyway.
    #[test]
    fn readers_are_never_dropped_and_nobody_in_vain() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let b = Backlog::new(100);
        let (reader, idle) = (b.join(), b.join());
        reader.admit_at(90, at(0)).unwrap();
        for ms in (500..10_000).step_by(500) {
            reader.set_at(90 - (ms / 500) as usize, at(ms));
        }
        let fresh = b.join();
        assert_eq!(fresh.admit_at(50, at(10_000)), Err(Refused::Overloaded { max: 100 }));
        assert!(!reader.dropped.is_cancelled());
        assert_eq!(idle.admit_at(101, at(10_000)), Err(Refused::Overloaded { max: 100 }), "larger than the budget");
        assert!(!reader.dropped.is_cancelled() && !idle.dropped.is_cancelled());
        // Once it stops reading for the stall time, it may go.
        fresh.admit_at(50, at(9_500 + STALLED.as_millis() as u64)).unwrap();
        assert!(reader.dropped.is_cancelled());
    }
}
