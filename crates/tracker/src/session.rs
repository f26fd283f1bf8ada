//! What a session's parts share: the state every connection task holds (`Shared`), who the
//! session is (`Caller`), why a session ended (`End`), and the two waits every part of a session makes under its end conditions
//! (shutdown, or the connection dropped to make room): writing out what is queued, and a permit
//! for heavy work. The server loop, the request handlers and the reply queue all build on this;
//! none of them on each other's internals.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use proto::codec::CodecError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backlog::{Backlog, Queued};
use crate::config::Config;
use crate::heavy::HeavyPool;
use crate::http::metrics::TrackerMetrics;
use crate::link::{Link, WriteError};
use crate::registry::{PeerId, Registry};
use crate::summary::Counters;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    /// The budget of bytes queued to clients, over all connections.
    pub(crate) backlog: Arc<Backlog>,
    /// Caps the heavy work on the heavy-work threads (large requests decoded and checked, large
    /// replies encoded) at half the cores, at least one: a flood of large Registers waits here
    /// instead of taking every core from the async workers, which keep serving everyone else.
    heavy: Arc<Semaphore>,
    /// The threads that do that heavy work, at lowered priority (see `heavy.rs`).
    pub(crate) pool: HeavyPool,
    /// Requests answered since the last summary line (see `summary.rs`).
    pub(crate) counters: Counters,
    /// What `/metrics` reports (`http/metrics.rs`): counted here, by every session.
    pub(crate) metrics: TrackerMetrics,
    /// Whether the accept loop is running: what `/ready` answers.
    pub(crate) accepting: AtomicBool,
}

/// Who a session is, for the requests it makes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    /// Its identity in the registry.
    pub(crate) peer: PeerId,
    /// Where it connects from (canonical): what the log names.
    pub(crate) remote: SocketAddr,
    /// The tracker's own address its connection reached (canonical): where File Locations lists
    /// the peers on the tracker's host that listen on every interface.
    pub(crate) local: IpAddr,
}

impl Shared {
    pub(crate) fn new(config: Config, registry: Registry) -> Shared {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let backlog = Backlog::new(config.max_queued_bytes);
        let threads = cores.div_ceil(2);
        // Without threads of its own (none can be started), heavy work fails as if it panicked
        // and ends only the session that asked; everything else keeps working.
        let pool = HeavyPool::new(threads).unwrap_or_else(|e| {
            warn!(error = %e, "cannot start the heavy-work threads");
            HeavyPool::unavailable()
        });
        let heavy = Arc::new(Semaphore::new(threads));
        let metrics = TrackerMetrics::new(registry.clone(), backlog.clone());
        Shared {
            config,
            registry,
            backlog,
            heavy,
            pool,
            counters: Counters::default(),
            metrics,
            accepting: AtomicBool::new(false),
        }
    }
}

/// What ended a session, for the log.
#[derive(Debug)]
pub(crate) enum End {
    Closed,
    Expired,
    Shutdown,
    Framing(CodecError),
    SendFailed,
    /// No reply byte left for the session timeout.
    Stalled,
    /// Dropped to make room in the budget of bytes queued to clients.
    Dropped,
    /// Work on the heavy-work threads panicked (a bug), or there are no such threads.
    Panicked,
}

/// Why the session ended, in plain words, for the line that logs it.
impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed => f.write_str("the peer closed the connection"),
            End::Expired => f.write_str("nothing heard from the peer for the session timeout"),
            End::Shutdown => f.write_str("the tracker is shutting down"),
            // A reset or a failed read is the connection failing, not the peer's framing.
            End::Framing(CodecError::Io(e)) => write!(f, "the connection failed ({e})"),
            End::Framing(e) => write!(f, "the peer broke the framing ({e})"),
            End::SendFailed => f.write_str("a reply could not be sent (the connection failed)"),
            End::Stalled => f.write_str("the peer read none of its replies for the session timeout"),
            End::Dropped => f.write_str(
                "dropped to make room: the replies queued to clients were over budget, this peer furthest behind",
            ),
            End::Panicked => f.write_str("its work on the heavy-work threads failed (a bug)"),
        }
    }
}

impl From<WriteError> for End {
    fn from(e: WriteError) -> End {
        match e {
            WriteError::Failed => End::SendFailed,
            WriteError::Stalled => End::Stalled,
        }
    }
}

/// Writes out what is queued, keeping the backlog's count current as bytes leave (see
/// [`Link::flush`] for the deadline on progress); ends early at shutdown or when the connection
/// is dropped to make room.
pub(crate) async fn flush(
    link: &mut Link,
    idle: Duration,
    queued: &Queued,
    shutdown: &CancellationToken,
) -> Result<(), End> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(End::Shutdown),
        _ = queued.dropped() => Err(End::Dropped),
        r = link.flush(idle, |unsent| queued.set(unsent)) => r.map_err(End::from),
    }
}

/// A permit for heavy work on the heavy-work threads, unless the session ends first.
pub(crate) async fn heavy_permit(
    shared: &Shared,
    queued: &Queued,
    shutdown: &CancellationToken,
) -> Result<OwnedSemaphorePermit, End> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(End::Shutdown),
        _ = queued.dropped() => Err(End::Dropped),
        // Never closed.
        p = shared.heavy.clone().acquire_owned() => p.map_err(|_| End::Shutdown),
    }
}
