//! What the tracker says about itself every `Config::summary_interval`: one `info` line with the
//! registry's counts and the requests answered since the previous line, by kind, so an operator
//! sees at a glance whether the tracker is busy and with what.
//!
//! Requests are counted with relaxed atomic increments in [`Shared`] (no lock per request: the
//! counts need no order with anything else), and the summary task swaps them to zero at each
//! line.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use proto::tracker::TrackerRequest;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::registry::Stats;
use crate::session::Shared;

/// The kinds of request the summary counts apart: the three a swarm makes most, and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Register,
    Locations,
    /// Chunk Register and Chunk Register Batch.
    ChunkRegister,
    /// File List, File Meta, Find Root, Leave, Unregister, Keep-Alive, a second Hello, and frames
    /// that hold no request.
    Other,
}

impl Kind {
    /// The kind of `request`.
    pub(crate) fn of(request: &TrackerRequest) -> Kind {
        match request {
            TrackerRequest::Register(_) => Kind::Register,
            TrackerRequest::FileLocations { .. } => Kind::Locations,
            TrackerRequest::ChunkRegister { .. } | TrackerRequest::ChunkRegisterBatch { .. } => Kind::ChunkRegister,
            _ => Kind::Other,
        }
    }
}

/// Requests answered since the last summary, by [`Kind`].
#[derive(Debug, Default)]
pub(crate) struct Counters([AtomicU64; 4]);

impl Counters {
    /// One more request of `kind`: a relaxed increment, the whole cost on the request's path.
    pub(crate) fn count(&self, kind: Kind) {
        self.0[kind as usize].fetch_add(1, Relaxed);
    }

    /// The counts so far, by kind (in [`Kind`]'s order), starting again from zero.
    fn take(&self) -> [u64; 4] {
        self.0.each_ref().map(|c| c.swap(0, Relaxed))
    }
}

/// Logs a summary every `config.summary_interval` (never if it is zero) until `shutdown`.
/// Spawned on the tracker's task tracker, so the tracker waits for it to stop.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let period = shared.config.summary_interval;
    if period.is_zero() {
        return;
    }
    let mut last = Instant::now();
    let mut ticks = tokio::time::interval_at(last + period, period);
    // After a stall (a suspended machine), one line for the whole gap rather than a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        let counts = shared.counters.take();
        info!("{}", line(shared.registry.stats(), counts, now - last));
        last = now;
    }
}

/// The summary's words: `3 sessions, 2 files, 4 holdings; 0.15 requests/s over the last 60.0 s
/// (9: register 1, locations 3, chunk register 2, other 3)`.
pub(crate) fn line(stats: Stats, counts: [u64; 4], elapsed: Duration) -> String {
    let [register, locations, chunks, other] = counts;
    let total = counts.iter().sum::<u64>();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { total as f64 / secs } else { 0.0 };
    format!(
        "{}, {}, {}; {rate:.2} requests/s over the last {secs:.1} s \
         ({total}: register {register}, locations {locations}, chunk register {chunks}, other {other})",
        Count(stats.sessions, "session"),
        Count(stats.files, "file"),
        Count(stats.holdings, "holding")
    )
}

/// A count and its noun, plural unless one (`1 file`, `2 files`), for the log.
pub(crate) struct Count(pub(crate) usize, pub(crate) &'static str);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Count(n, noun) = *self;
        write!(f, "{n} {noun}{}", if n == 1 { "" } else { "s" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_plainly() {
        let stats = Stats { sessions: 3, files: 2, holdings: 4 };
        assert_eq!(
            line(stats, [1, 3, 2, 3], Duration::from_secs(60)),
            "3 sessions, 2 files, 4 holdings; 0.15 requests/s over the last 60.0 s \
             (9: register 1, locations 3, chunk register 2, other 3)"
        );
        let counters = Counters::default();
        [Kind::Register, Kind::Other, Kind::Other].into_iter().for_each(|k| counters.count(k));
        assert_eq!(counters.take(), [1, 0, 0, 2]);
        assert_eq!(counters.take(), [0; 4], "taking starts again from zero");
        let one = Stats { sessions: 1, files: 1, holdings: 0 };
        assert!(line(one, [0; 4], Duration::ZERO).starts_with("1 session, 1 file, 0 holdings; 0.00 requests/s"));
    }
}
